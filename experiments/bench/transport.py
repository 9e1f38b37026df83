"""Bandwidth of one-sided writes into another process's region, per transport.

For each transport a child process (:class:`~runtime.live.transport.peer.PeerProcess`,
``spawn``) registers the destination region, touches every page of it and sends its
descriptor back; this process registers a source region, connects, writes once untimed
(to fault in the mappings and open connections) and then times ``repeats`` writes of
``size`` bytes, each waited for. The figure reported is the **median** of the repeats.
A plain in-process memcpy (``numpy.copyto`` between two preallocated, touched arrays)
of the same size is measured in the same run as the yardstick. After the last write the
child's checksum of its region must match the source, or the bench raises.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from runtime.live.blocks import checksum
from runtime.live.transport import (
    TRANSPORTS,
    TransportError,
    TransportUnavailable,
    make_transport,
    probe,
)
from runtime.live.transport.peer import WAIT_S, PeerProcess

GIB = float(1 << 30)


def _median_seconds(run: Any, repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_memcpy(size: int, repeats: int) -> float:
    """GiB/s of ``numpy.copyto`` between two preallocated, touched arrays (median)."""
    src = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)
    dst = np.ones(size, dtype=np.uint8)
    np.copyto(dst, src)
    return size / _median_seconds(lambda _: np.copyto(dst, src), repeats) / GIB


def bench_one(name: str, size: int, repeats: int) -> float:
    """GiB/s of one-sided writes of ``size`` bytes into a child process's region (median)."""
    with PeerProcess(name, size) as peer, contextlib.closing(make_transport(name)) as transport:
        src = transport.register(size)
        np.frombuffer(src.view, dtype=np.uint8)[:] = np.random.default_rng(2).integers(
            0, 256, size, dtype=np.uint8)
        remote = transport.connect(peer.descriptor)
        transport.write(src, 0, remote, 0, size).wait(WAIT_S)

        def write(i: int) -> None:
            # A fresh first byte each time, so the final check sees the last write.
            src.view[0] = (i + 1) & 0xFF
            transport.write(src, 0, remote, 0, size).wait(WAIT_S)

        seconds = _median_seconds(write, repeats)
        expected = checksum(src.view)
        if peer.checksum() != expected:
            raise TransportError(f"{name}: after the last write the destination region does "
                                 f"not hold the bytes written")
    return size / seconds / GIB


def bench_transport(size: int = 64 << 20, repeats: int = 5,
                    names: Iterable[str] = TRANSPORTS) -> dict[str, Any]:
    """Median GiB/s of one-sided writes into another process, per transport, plus memcpy.

    Returns ``{"size_bytes", "repeats", "statistic": "median", "gib_per_s":
    {"memcpy": x, name: y-or-None...}, "unavailable": {name: reason}}``.
    Raises :class:`TransportError` if a destination does not hold the bytes
    written.
    """
    if size <= 0:
        raise ValueError(f"size must be > 0 bytes, got {size}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = tuple(names)
    for name in names:
        if name not in TRANSPORTS:
            raise ValueError(f"unknown transport {name!r}: expected one of "
                             f"{', '.join(TRANSPORTS)}")
    rates: dict[str, float | None] = {"memcpy": bench_memcpy(size, repeats)}
    unavailable: dict[str, str] = {}
    for name in names:
        reason = probe(name)
        if reason is None:
            try:
                rates[name] = bench_one(name, size, repeats)
                continue
            except TransportUnavailable as exc:
                reason = str(exc)
        rates[name] = None
        unavailable[name] = reason
    return {"size_bytes": size, "repeats": repeats, "statistic": "median",
            "gib_per_s": rates, "unavailable": unavailable}


def render_transport(result: dict[str, Any]) -> str:
    """A human-readable table of a :func:`bench_transport` result."""
    rates = result["gib_per_s"]
    memcpy = rates.get("memcpy")
    lines = [f"one-sided writes of {result['size_bytes']:,} B into another process "
             f"({result.get('statistic', 'median')} of {result.get('repeats', '?')})",
             f"{'transport':<10} {'GiB/s':>8} {'% of memcpy':>12}  note"]
    for name, rate in rates.items():
        if rate is None:
            value, share = "-", "-"
            note = result["unavailable"].get(name, "")
        else:
            value = f"{rate:.2f}"
            share = f"{100 * rate / memcpy:.0f}%" if memcpy else "-"
            note = "in-process numpy.copyto (yardstick)" if name == "memcpy" else ""
        lines.append(f"{name:<10} {value:>8} {share:>12}  {note}".rstrip())
    return "\n".join(lines)
