"""TCP transport: one-sided writes and reads emulated over sockets.

The owner of regions runs a listener thread that applies incoming WRITE
frames to its registered memory and answers READ frames itself, so the
owner's application code never takes part (the way UCX's tcp transport
emulates RDMA). Payloads move with ``sendall``/``recv_into`` straight from and
into the regions' memory, with no intermediate copies.

Frames (network byte order)::

    request   magic "DPT1" | op u8 | pad x3 | region u32 | offset u64 | nbytes u64
              then nbytes of payload for WRITE
    response  status u8 | pad x3 | length u64
              then ``length`` bytes: the data of a READ, the size of a region
              for STAT, or a UTF-8 error message when status != 0

Clients keep a small pool of connections per peer; an operation takes one
connection for its whole request/response exchange, so concurrent operations
from several threads run on separate connections. Operations run on a worker
thread pool and complete when the peer's response arrives.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from runtime.live.transport.base import (
    Completion,
    FutureCompletion,
    Region,
    RemoteRegion,
    Transport,
    TransportError,
    advertised_host,
    check_size,
    descriptor_field,
)

MAGIC = b"DPT1"
OP_WRITE, OP_READ, OP_STAT = 1, 2, 3
OK, FAILED = 0, 1
_REQUEST = struct.Struct("!4sBxxxIQQ")
_RESPONSE = struct.Struct("!BxxxQ")
_SMALL = 16 << 10       # payloads up to this size go out in the header's segment
_DRAIN_CHUNK = 1 << 20


class _TcpRegion(Region):
    def __init__(self, region_id: int, array: np.ndarray, host: str, port: int,
                 owner: TcpTransport) -> None:
        descriptor = {"transport": "tcp", "host": host, "port": port, "region": region_id,
                      "size": int(array.size)}
        super().__init__(array.data, descriptor, owner)
        self.region_id = region_id
        self.array = array


class _TcpRemote(RemoteRegion):
    def __init__(self, descriptor: dict[str, Any], peer: _Peer, region_id: int, size: int,
                 owner: TcpTransport) -> None:
        super().__init__(descriptor, size, owner)
        self.peer = peer
        self.region_id = region_id


class TcpTransport(Transport):
    """One-sided writes and reads over TCP; works between any two hosts that can connect.

    ``bind_host`` is the address the region listener binds (port chosen by the
    OS); ``advertise_host`` is the address written into descriptors (defaults
    to ``bind_host``, or this host's name when binding a wildcard address).
    ``workers`` bounds the operations in flight at once; ``io_timeout`` bounds
    each socket call, so a dead peer fails an operation instead of hanging it.
    """

    name = "tcp"

    def __init__(self, bind_host: str = "127.0.0.1", *, advertise_host: str | None = None,
                 workers: int = 4, io_timeout: float = 60.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not io_timeout > 0:
            raise ValueError(f"io_timeout must be > 0 s, got {io_timeout}")
        super().__init__()
        self._bind_host = bind_host
        self._advertise_host = advertise_host or advertised_host(bind_host)
        self._workers = workers
        self._io_timeout = io_timeout
        self._lock = threading.Lock()
        self._regions: dict[int, _TcpRegion] = {}
        self._next_region = 1
        self._server: _Server | None = None
        self._peers: dict[tuple[str, int], _Peer] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # -- owner side ---------------------------------------------------------

    def register(self, size: int) -> Region:
        size = check_size(size)
        with self._lock:
            self._check_open()
            if self._server is None:
                self._server = _Server(self._bind_host, self._lookup, self._io_timeout)
            region_id = self._next_region
            self._next_region += 1
            region = _TcpRegion(region_id, np.zeros(size, dtype=np.uint8),
                                self._advertise_host, self._server.port, self)
            self._regions[region_id] = region
        return region

    def _lookup(self, region_id: int) -> memoryview | None:
        region = self._regions.get(region_id)
        return None if region is None else region.view

    # -- client side --------------------------------------------------------

    def connect(self, descriptor: dict[str, Any]) -> RemoteRegion:
        host = descriptor_field(descriptor, "tcp", "host", str)
        port = descriptor_field(descriptor, "tcp", "port", int)
        region_id = descriptor_field(descriptor, "tcp", "region", int)
        size = check_size(descriptor_field(descriptor, "tcp", "size", int))
        peer = self._peer(host, port)
        # Ask the owner now, so that an unreachable peer or a stale descriptor
        # fails here rather than at the first transfer.
        actual = peer.stat(region_id)
        if actual != size:
            raise TransportError(f"tcp region {region_id} at {host}:{port} holds {actual} bytes, "
                                 f"the descriptor claims {size}")
        return _TcpRemote(dict(descriptor), peer, region_id, size, self)

    def _peer(self, host: str, port: int) -> _Peer:
        with self._lock:
            self._check_open()
            peer = self._peers.get((host, port))
            if peer is None:
                peer = _Peer(host, port, self._io_timeout, keep=self._workers,
                             source=_source_address(self._bind_host))
                self._peers[(host, port)] = peer
            return peer

    def _submit(self, what: str, op: Callable[[], None]) -> Completion:
        with self._lock:
            self._check_open()
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._workers, thread_name_prefix="dualpath-tcp")
            future = self._pool.submit(op)
        return FutureCompletion(future, what)

    def _write(self, src: _TcpRegion, src_offset: int, dst: _TcpRemote, dst_offset: int,
               nbytes: int) -> Completion:
        payload = src.view[src_offset:src_offset + nbytes]
        return self._submit(f"tcp write of {nbytes} B to {dst.peer}",
                            lambda: dst.peer.write(dst.region_id, dst_offset, payload))

    def _read(self, dst: _TcpRegion, dst_offset: int, src: _TcpRemote, src_offset: int,
              nbytes: int) -> Completion:
        into = dst.view[dst_offset:dst_offset + nbytes]
        return self._submit(f"tcp read of {nbytes} B from {src.peer}",
                            lambda: src.peer.read(src.region_id, src_offset, into))

    def _shutdown(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            peers, self._peers = list(self._peers.values()), {}
            pool, self._pool = self._pool, None
            self._regions.clear()
        # Closing the sockets first makes any operation still running fail at
        # once, so the pool's threads can be joined without waiting on a peer.
        for peer in peers:
            peer.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if server is not None:
            server.close()


def _tune(sock: socket.socket, timeout: float | None) -> None:
    # Socket buffer sizes are left to the kernel: setting SO_SNDBUF/SO_RCVBUF
    # turns off its autotuning, which measured slower on loopback.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)


def _recv_exact(sock: socket.socket, into: memoryview) -> bool:
    """Fill ``into`` from ``sock``; False on a clean EOF before the first byte."""
    got, size = 0, len(into)
    while got < size:
        n = sock.recv_into(into[got:], size - got)
        if n == 0:
            if got == 0:
                return False
            raise ConnectionError(f"peer closed the connection after {got} of {size} bytes")
        got += n
    return True


def _recv_bytes(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    if size and not _recv_exact(sock, memoryview(buf)):
        raise ConnectionError("peer closed the connection")
    return bytes(buf)


def _source_address(bind_host: str) -> tuple[str, int] | None:
    """Connect from the listener's own address: in network namespaces an engine's traffic
    must leave through its own CNIC, which routing picks by source address."""
    if bind_host in ("", "0.0.0.0", "::", "localhost", "127.0.0.1"):
        return None
    return (bind_host, 0)


class _Peer:
    """Pooled client connections to one owner's listener."""

    def __init__(self, host: str, port: int, timeout: float, keep: int,
                 source: tuple[str, int] | None = None) -> None:
        self.host, self.port = host, port
        self._source = source
        self._timeout = timeout
        self._keep = keep
        self._lock = threading.Lock()
        self._idle: list[socket.socket] = []
        self._all: set[socket.socket] = set()
        self._closed = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def write(self, region_id: int, offset: int, payload: memoryview) -> None:
        header = _REQUEST.pack(MAGIC, OP_WRITE, region_id, offset, len(payload))

        def exchange(sock: socket.socket) -> None:
            if len(payload) <= _SMALL:
                sock.sendall(header + payload)
            else:
                sock.sendall(header)
                sock.sendall(payload)
            self._response(sock, 0, "write")

        self._with_connection(exchange)

    def read(self, region_id: int, offset: int, into: memoryview) -> None:
        def exchange(sock: socket.socket) -> None:
            sock.sendall(_REQUEST.pack(MAGIC, OP_READ, region_id, offset, len(into)))
            self._response(sock, len(into), "read")
            if not _recv_exact(sock, into):
                raise ConnectionError("peer closed the connection before the data")

        self._with_connection(exchange)

    def stat(self, region_id: int) -> int:
        sizes: list[int] = []

        def exchange(sock: socket.socket) -> None:
            sock.sendall(_REQUEST.pack(MAGIC, OP_STAT, region_id, 0, 0))
            sizes.append(self._response(sock, None, "stat"))

        self._with_connection(exchange)
        return sizes[0]

    def _response(self, sock: socket.socket, expect: int | None, what: str) -> int:
        head = bytearray(_RESPONSE.size)
        if not _recv_exact(sock, memoryview(head)):
            raise ConnectionError("peer closed the connection before answering")
        status, length = _RESPONSE.unpack(head)
        if status != OK:
            message = _recv_bytes(sock, length).decode("utf-8", "replace")
            raise _Refused(f"tcp peer {self} refused the {what}: {message}")
        if expect is not None and length != expect:
            raise ConnectionError(f"peer answered {length} bytes, expected {expect}")
        return int(length)

    def _with_connection(self, exchange: Callable[[socket.socket], None]) -> None:
        sock = self._acquire()
        try:
            exchange(sock)
        except _Refused as exc:
            self._release(sock)  # the stream is still in step: the connection is reusable
            raise TransportError(str(exc)) from None
        except OSError as exc:
            self._discard(sock)
            raise TransportError(f"tcp peer {self}: {exc}") from exc
        except BaseException:
            self._discard(sock)
            raise
        self._release(sock)

    def _acquire(self) -> socket.socket:
        with self._lock:
            if self._closed:
                raise TransportError("tcp transport is closed")
            if self._idle:
                return self._idle.pop()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._timeout,
                                            source_address=self._source)
        except OSError as exc:
            raise TransportError(f"cannot connect to tcp peer {self}: {exc}") from exc
        _tune(sock, self._timeout)
        with self._lock:
            if self._closed:
                sock.close()
                raise TransportError("tcp transport is closed")
            self._all.add(sock)
        return sock

    def _release(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._keep:
                self._idle.append(sock)
                return
            self._all.discard(sock)
        sock.close()

    def _discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._all.discard(sock)
        sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks, self._all, self._idle = list(self._all), set(), []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class _Refused(Exception):
    """The owner answered with an error; the connection stays usable."""


class _Server:
    """Accepts connections and serves WRITE/READ/STAT frames against registered memory."""

    def __init__(self, host: str, lookup: Callable[[int], memoryview | None],
                 timeout: float) -> None:
        self._lookup = lookup
        self._timeout = timeout
        try:
            self._sock = socket.create_server((host, 0), backlog=64)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}: {exc}") from exc
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"dualpath-tcp-accept-{self.port}")
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # the listener was closed
            # Idle pooled connections may sit for long: only frames time out (_serve).
            _tune(conn, None)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name=f"dualpath-tcp-serve-{self.port}")
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        head = bytearray(_REQUEST.size)
        try:
            while _recv_exact(conn, memoryview(head)):
                conn.settimeout(self._timeout)  # a frame has started: it must finish
                self._handle(conn, *_REQUEST.unpack(head))
                conn.settimeout(None)
        except OSError:
            pass  # the peer went away or the transport is closing; the client reports it
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, conn: socket.socket, magic: bytes, op: int, region_id: int, offset: int,
                nbytes: int) -> None:
        if magic != MAGIC:
            raise ConnectionError(f"bad frame magic {magic!r}")
        view = self._lookup(region_id)
        problem = _problem(view, region_id, op, offset, nbytes)
        if problem is not None:
            if op == OP_WRITE:
                _drain(conn, nbytes)  # keep the stream in step so the client reads the answer
            message = problem.encode()
            conn.sendall(_RESPONSE.pack(FAILED, len(message)) + message)
            return
        assert view is not None
        if op == OP_WRITE:
            if not _recv_exact(conn, view[offset:offset + nbytes]):
                raise ConnectionError("peer closed the connection before the payload")
            conn.sendall(_RESPONSE.pack(OK, 0))
        elif op == OP_READ:
            conn.sendall(_RESPONSE.pack(OK, nbytes))
            conn.sendall(view[offset:offset + nbytes])
        else:
            conn.sendall(_RESPONSE.pack(OK, len(view)))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
            threads = list(self._threads)
        # shutdown() wakes a thread blocked in accept() or recv(); close() alone may not.
        for sock in [self._sock, *conns]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._acceptor.join(timeout=5)
        for thread in threads:
            thread.join(timeout=5)


def _problem(view: memoryview | None, region_id: int, op: int, offset: int,
             nbytes: int) -> str | None:
    if op not in (OP_WRITE, OP_READ, OP_STAT):
        return f"unknown op {op}"
    if view is None:
        return f"no region {region_id} (not registered, or its transport closed)"
    if op != OP_STAT and offset + nbytes > len(view):
        return (f"offset={offset} + nbytes={nbytes} exceeds region {region_id}'s size of "
                f"{len(view)} bytes")
    return None


def _drain(conn: socket.socket, nbytes: int) -> None:
    scratch = memoryview(bytearray(min(nbytes, _DRAIN_CHUNK) or 1))
    while nbytes > 0:
        n = conn.recv_into(scratch, min(nbytes, len(scratch)))
        if n == 0:
            raise ConnectionError("peer closed the connection mid-payload")
        nbytes -= n


def probe() -> str | None:
    """None when a loopback listener can be opened here, else why not."""
    try:
        with socket.create_server(("127.0.0.1", 0)):
            return None
    except OSError as exc:
        return f"cannot listen on 127.0.0.1: {exc}"
