"""Bandwidth of one-sided writes into another process's region, per transport.

For each transport a child process (``spawn``) registers the destination
region, touches every page of it and sends its descriptor back; this process
registers a source region, connects, writes once untimed (to fault in the
mappings and open connections) and then times ``repeats`` writes of ``size``
bytes, each waited for. The figure reported is the **median** of the repeats.
A plain in-process memcpy (``numpy.copyto`` between two preallocated,
touched arrays) of the same size is measured in the same run as the yardstick.
After the last write the child's checksum of its region must match the
source, or the bench raises.

:class:`PeerProcess` (the child) is also what the transport tests use to
reach a region owned by another process.

    python -m runtime.live.bench_transport [--size BYTES] [--repeats N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import statistics
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from runtime.live.transport import (
    TRANSPORTS,
    Region,
    Transport,
    TransportError,
    TransportUnavailable,
    make_transport,
    probe,
)

GIB = float(1 << 30)
WAIT_S = 120.0


def checksum(data: memoryview | bytes) -> str:
    """Digest used to compare a region with what was written into it."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class PeerProcess:
    """A child process that owns one zero-filled region of ``size`` bytes on transport ``name``.

    ``descriptor`` is the region's descriptor. The child answers ``peek``,
    ``poke``, ``push`` and ``checksum`` requests over a pipe; its own code
    never touches the region otherwise, so everything else that happens to it
    is one-sided.
    """

    def __init__(self, name: str, size: int, *, bind_host: str = "127.0.0.1",
                 timeout: float = 60.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._timeout = timeout
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_peer_main, args=(name, size, bind_host, child),
                                        name=f"dualpath-{name}-peer", daemon=True)
        self._process.start()
        child.close()
        try:
            status, payload = self._receive()
        except BaseException:
            self.close()
            raise
        if status == "unavailable":
            self.close()
            raise TransportUnavailable(payload)
        if status != "ready":
            self.close()
            raise TransportError(f"{name} peer process failed to start: {payload}")
        self.descriptor: dict[str, Any] = payload

    def _receive(self) -> tuple[str, Any]:
        if not self._conn.poll(self._timeout):
            raise TransportError(f"peer process silent for {self._timeout} s")
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise TransportError(f"peer process died (exit code {self._process.exitcode})") \
                from None
        return status, payload

    def _call(self, *request: Any) -> Any:
        self._conn.send(request)
        status, payload = self._receive()
        if status != "ok":
            raise TransportError(f"peer process: {payload}")
        return payload

    def peek(self, offset: int, nbytes: int) -> bytes:
        """The bytes ``[offset, offset + nbytes)`` of the child's region."""
        return bytes(self._call("peek", offset, nbytes))

    def poke(self, offset: int, data: bytes) -> None:
        """Have the child itself store ``data`` at ``offset`` of its region."""
        self._call("poke", offset, bytes(data))

    def push(self, descriptor: dict[str, Any], offset: int, remote_offset: int,
             nbytes: int) -> None:
        """Have the child connect to ``descriptor`` and write its bytes ``[offset, +nbytes)``
        there, at ``remote_offset``."""
        self._call("push", descriptor, offset, remote_offset, nbytes)

    def checksum(self, offset: int = 0, nbytes: int | None = None) -> str:
        """:func:`checksum` of ``[offset, offset + nbytes)`` (default: to the end)."""
        return str(self._call("checksum", offset, nbytes))

    def close(self) -> None:
        """Stop the child (its transport closes and frees the region); idempotent."""
        if self._process.is_alive():
            with contextlib.suppress(OSError, EOFError, TransportError):
                self._call("close")
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._conn.close()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _peer_main(name: str, size: int, bind_host: str, conn: Connection) -> None:
    try:
        transport = make_transport(name, bind_host=bind_host)
    except TransportUnavailable as exc:
        conn.send(("unavailable", str(exc)))
        return
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    try:
        region = transport.register(size)
        _touch(region.view)
        conn.send(("ready", region.descriptor))
        _serve_peer(transport, region, conn)
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        transport.close()


def _touch(view: memoryview) -> None:
    """Write every page of ``view``, so that no page fault lands in a timed transfer."""
    np.frombuffer(view, dtype=np.uint8).fill(0)


def _serve_peer(transport: Transport, region: Region, conn: Connection) -> None:
    view = region.view
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        op, args = request[0], request[1:]
        try:
            if op == "close":
                conn.send(("ok", None))
                return
            if op == "peek":
                offset, nbytes = args
                reply: Any = view[offset:offset + nbytes].tobytes()
            elif op == "poke":
                offset, data = args
                view[offset:offset + len(data)] = data
                reply = None
            elif op == "push":
                descriptor, offset, remote_offset, nbytes = args
                remote = transport.connect(descriptor)
                transport.write(region, offset, remote, remote_offset, nbytes).wait(WAIT_S)
                reply = None
            elif op == "checksum":
                offset, nbytes = args
                end = len(view) if nbytes is None else offset + nbytes
                reply = checksum(view[offset:end])
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        else:
            conn.send(("ok", reply))


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


def format_table(result: dict[str, Any]) -> str:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=64 << 20, help="bytes per write")
    parser.add_argument("--repeats", type=int, default=5, help="timed writes per transport")
    parser.add_argument("--transports", nargs="+", default=list(TRANSPORTS),
                        choices=TRANSPORTS)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = bench_transport(args.size, args.repeats, args.transports)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
