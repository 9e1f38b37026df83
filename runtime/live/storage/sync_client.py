"""The blocking storage client (threads, tools and tests without an event loop)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence

from runtime.live.blocks import checksum
from runtime.live.storage.protocol import (
    CONNECT_TIMEOUT_S,
    RESPONSE,
    RETRY_S,
    RETRYABLE,
    Op,
    Reply,
    ReplyHead,
    Retry,
    Status,
    StorageConnectionLost,
    StorageError,
    check_get_into,
    decode_reply,
    encode_request,
    ensure_batches,
    reply_error,
    validate_name,
)


class SyncStorageClient:
    """A blocking client over a plain socket, for setup, tools and tests.

    Same operations, errors and reconnection as :class:`StorageClient`; not
    thread-safe.
    """

    def __init__(self, host: str, port: int, timeout: float | None = 30.0,
                 retry_s: float = RETRY_S) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.retry_s = retry_s
        self.reconnects = 0  # connections opened after the first
        try:
            self._sock: socket.socket | None = self._dial()
        except OSError as exc:
            raise StorageError(f"cannot connect to storage at {host}:{port}: {exc}") from exc
        self._closed = False
        self._head = bytearray(RESPONSE.size)

    def close(self) -> None:
        """Close the connection; later calls fail."""
        self._closed = True
        self._drop()

    def __enter__(self) -> SyncStorageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, name: str, replica: int = 0) -> tuple[bytes, str]:
        """``(payload, stored checksum)`` of a replica, unverified."""
        validate_name(name)
        reply = self._call(f"GET {name} replica {replica}",
                           encode_request(Op.GET, name, replica=replica))
        return bytes(reply.body or b""), reply.head.checksum

    def get_into(self, name: str, buf: memoryview | bytearray, replica: int = 0) -> str:
        """Read a replica's payload into ``buf`` (exactly as long); returns its stored checksum."""
        validate_name(name)
        view = check_get_into(buf)
        reply = self._call(f"GET {name} replica {replica}",
                           encode_request(Op.GET, name, replica=replica), into=view)
        if reply.body is not None:
            raise StorageError(f"block {name} holds {reply.head.body_len} bytes, "
                               f"the buffer {view.nbytes}")
        return reply.head.checksum

    def put(self, name: str, data: bytes | bytearray | memoryview,
            digest: str | None = None) -> int:
        """Store ``data`` in every replica (``digest`` defaults to its checksum)."""
        validate_name(name)
        view = memoryview(data).cast("B")
        digest = checksum(view) if digest is None else digest
        head = encode_request(Op.PUT, name, digest=digest, body_len=view.nbytes)
        return self._call(f"PUT {name}", head, view).head.value

    def ensure(self, size: int, names: Sequence[str]) -> int:
        """Create the missing ones among ``names``; returns how many were created."""
        created = 0
        for body in ensure_batches(names):
            head = encode_request(Op.ENSURE, arg=size, body_len=len(body))
            created += self._call(f"ENSURE of {len(names)} blocks", head, body).head.value
        return created

    def repair(self, name: str) -> int:
        """Rewrite the bad replicas of ``name`` from a good one; returns how many."""
        validate_name(name)
        return self._call(f"REPAIR {name}", encode_request(Op.REPAIR, name)).head.value

    def stats(self) -> dict[str, int]:
        """The server's counters."""
        reply = self._call("STATS", encode_request(Op.STATS))
        return dict(json.loads(bytes(reply.body or b"{}")))

    def _call(self, what: str, head: bytes,
              body: bytes | bytearray | memoryview | None = None,
              into: memoryview | None = None) -> Reply:
        """Send a request until a reply comes back (see :class:`StorageClient`)."""
        retry = Retry(f"{self.host}:{self.port}", what, self.retry_s)
        while True:
            try:
                reply, data = self._attempt(head, body, into)
                break
            except RETRYABLE as exc:
                self._drop()  # where the stream stands is unknown: never reuse it
                time.sleep(retry.pause(exc))
            except BaseException:
                self._drop()
                raise
        if reply.status != Status.OK:
            raise reply_error(reply, data)
        return Reply(reply, data)

    def _attempt(self, head: bytes, body: bytes | bytearray | memoryview | None,
                 into: memoryview | None) -> tuple[ReplyHead, bytearray | None]:
        sock = self._connection()
        sock.sendall(head)
        if body is not None:
            sock.sendall(body)
        self._recv_into(sock, memoryview(self._head))
        reply = decode_reply(self._head)
        data: bytearray | None = None
        if reply.body_len:
            if reply.status == Status.OK and into is not None and into.nbytes == reply.body_len:
                self._recv_into(sock, into)
            else:
                data = bytearray(reply.body_len)
                self._recv_into(sock, memoryview(data))
        return reply, data

    def _connection(self) -> socket.socket:
        if self._sock is None:
            if self._closed:
                raise StorageError("storage client is closed")
            self._sock = self._dial()
            self.reconnects += 1
        return self._sock

    def _dial(self) -> socket.socket:
        timeout = CONNECT_TIMEOUT_S if self.timeout is None else self.timeout
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @staticmethod
    def _recv_into(sock: socket.socket, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = sock.recv_into(view[got:])
            if n == 0:
                raise StorageConnectionLost("connection to storage lost: closed by the server")
            got += n


