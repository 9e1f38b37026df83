"""A child process that owns a region on a transport, for one-sided writes into it.

:class:`PeerProcess` is what the transport bench and the transport tests use to
reach a region owned by another process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from runtime.live.blocks import checksum
from runtime.live.transport import (
    Region,
    Transport,
    TransportError,
    TransportUnavailable,
    make_transport,
)

WAIT_S = 120.0


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
