"""The asyncio storage client: one connection, calls in order, reconnects and retries."""

from __future__ import annotations

import asyncio
import json
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
    StorageProtocolError,
    check_get_into,
    decode_reply,
    encode_request,
    ensure_batches,
    reply_error,
    validate_name,
)

# ---------------------------------------------------------------------- async client


class _ClientProtocol(asyncio.BufferedProtocol):
    """Reads each reply header, then its body straight into its destination:
    the caller's buffer for :meth:`StorageClient.get_into`, a fresh one else.

    Buffers are handed out exactly as long as what is still due, so a read
    never runs past the reply it belongs to.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost: str | None = None
        self._head = bytearray(RESPONSE.size)
        self._target = memoryview(self._head)
        self._filled = 0
        self._reply: ReplyHead | None = None
        self._body: bytearray | None = None
        self._into: memoryview | None = None
        self._waiter: asyncio.Future[Reply] | None = None

    def expect(self, into: memoryview | None) -> asyncio.Future[Reply]:
        """A future for the next reply, whose OK body of ``len(into)`` bytes lands in ``into``."""
        self._into = into
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._target[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled < len(self._target):
            return
        if self._reply is None:
            self._on_head()
        else:
            self._finish()

    @property
    def usable(self) -> bool:
        """Whether a request can be sent on this connection."""
        return self.lost is None and self.transport is not None \
            and not self.transport.is_closing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.lost or f"connection to storage lost: {exc or 'closed by the server'}"
        self._settle(StorageConnectionLost(self.lost))

    def abort(self, why: str) -> None:
        """Close the connection; the pending request, if any, fails with ``why``."""
        self.lost = self.lost or why
        self._settle(StorageProtocolError(why))
        if self.transport is not None:
            self.transport.abort()

    def _on_head(self) -> None:
        try:
            head = decode_reply(self._head)
        except StorageProtocolError as exc:
            self.abort(str(exc))
            return
        if self._waiter is None:
            self.abort("malformed reply: a reply arrived with no request pending")
            return
        self._reply = head
        self._filled = 0
        if head.body_len == 0:
            self._finish()
        elif head.status == Status.OK and self._into is not None \
                and len(self._into) == head.body_len:
            self._target = self._into
        else:
            self._body = bytearray(head.body_len)
            self._target = memoryview(self._body)

    def _finish(self) -> None:
        assert self._reply is not None
        reply = Reply(self._reply, self._body)
        self._reset()
        self._settle(reply)

    def _settle(self, outcome: Reply | Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self._into = None
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Exception):
            self._reset()
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    def _reset(self) -> None:
        self._reply = None
        self._body = None
        self._target = memoryview(self._head)
        self._filled = 0


class StorageClient:
    """An asyncio client of a :class:`StorageServer`, over one connection at a time.

    Requests on one client are serialised: one is in flight at a time and
    concurrent calls queue for it. For parallel transfers open several
    clients.

    When the connection drops (the server died, or restarts) a call opens a
    new one and is sent again from scratch, a GET into a caller's buffer
    included, pausing :data:`BACKOFF_S` between attempts, for up to
    ``retry_s`` after its first failure; then it raises
    :class:`StorageUnavailable` naming the address and the operation. A call
    cancelled mid-reply closes the connection (the rest of the reply can't be
    told from the next); the next call opens a new one.
    """

    def __init__(self, host: str, port: int, retry_s: float = RETRY_S) -> None:
        self.host = host
        self.port = port
        self.retry_s = retry_s
        self.reconnects = 0  # connections opened after the first
        self._protocol: _ClientProtocol | None = None
        self._open = False
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Open the connection (TCP_NODELAY, as asyncio sets for TCP). Not retried:
        a service that is not there at the start is a setup error."""
        if self._open:
            raise RuntimeError("storage client already connected")
        try:
            self._protocol = await self._dial()
        except OSError as exc:
            raise StorageError(f"cannot connect to storage at {self.host}:{self.port}: {exc}") \
                from exc
        self._open = True

    async def close(self) -> None:
        """Close the connection; a pending request fails, and later ones."""
        self._open = False
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    async def __aenter__(self) -> StorageClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, name: str, replica: int = 0) -> tuple[bytes, str]:
        """``(payload, stored checksum)`` of a replica, as stored: verify it with :func:`verify`."""
        validate_name(name)
        reply = await self._call(f"GET {name} replica {replica}",
                                 encode_request(Op.GET, name, replica=replica))
        return bytes(reply.body or b""), reply.head.checksum

    async def get_into(self, name: str, buf: memoryview | bytearray, replica: int = 0) -> str:
        """Read a replica's payload straight into ``buf``, which must be exactly as
        long; returns the stored checksum (the bytes are not verified)."""
        validate_name(name)
        view = check_get_into(buf)
        reply = await self._call(f"GET {name} replica {replica}",
                                 encode_request(Op.GET, name, replica=replica), into=view)
        if reply.body is not None:
            raise StorageError(f"block {name} holds {reply.head.body_len} bytes, "
                               f"the buffer {view.nbytes}")
        return reply.head.checksum

    async def put(self, name: str, data: bytes | bytearray | memoryview,
                  digest: str | None = None) -> int:
        """Store ``data`` in every replica. ``digest`` defaults to its checksum; the
        server refuses a mismatch with :class:`ChecksumMismatch`. Returns the
        number of replicas written."""
        validate_name(name)
        view = memoryview(data).cast("B")
        digest = checksum(view) if digest is None else digest
        head = encode_request(Op.PUT, name, digest=digest, body_len=view.nbytes)
        return (await self._call(f"PUT {name}", head, view)).head.value

    async def ensure(self, size: int, names: Sequence[str]) -> int:
        """Create the missing ones among ``names`` as :func:`block_content` of ``size``
        bytes (setup). Returns how many were created."""
        created = 0
        for body in ensure_batches(names):
            head = encode_request(Op.ENSURE, arg=size, body_len=len(body))
            created += (await self._call(f"ENSURE of {len(names)} blocks", head, body)).head.value
        return created

    async def repair(self, name: str) -> int:
        """Rewrite the bad replicas of ``name`` from a good one; returns how many."""
        validate_name(name)
        return (await self._call(f"REPAIR {name}", encode_request(Op.REPAIR, name))).head.value

    async def stats(self) -> dict[str, int]:
        """The server's counters (see :attr:`StorageServer.stats`)."""
        reply = await self._call("STATS", encode_request(Op.STATS))
        return dict(json.loads(bytes(reply.body or b"{}")))

    async def _call(self, what: str, head: bytes,
                    body: bytes | bytearray | memoryview | None = None,
                    into: memoryview | None = None) -> Reply:
        """Send a request until a reply comes back (see the class: reconnection)."""
        async with self._lock:
            retry = Retry(f"{self.host}:{self.port}", what, self.retry_s)
            while True:
                try:
                    reply = await self._attempt(head, body, into)
                    break
                except RETRYABLE as exc:
                    await asyncio.sleep(retry.pause(exc))
        if reply.head.status != Status.OK:
            raise reply_error(reply.head, reply.body)
        return reply

    async def _attempt(self, head: bytes, body: bytes | bytearray | memoryview | None,
                       into: memoryview | None) -> Reply:
        protocol = await self._connection()
        assert protocol.transport is not None
        # A fresh expect() per attempt: the reply, and any payload into the caller's
        # buffer, is read from its first byte, whatever a lost attempt had written.
        waiter = protocol.expect(into)
        protocol.transport.write(head)
        if body is not None:
            protocol.transport.write(body)
        try:
            return await waiter
        except asyncio.CancelledError:
            protocol.abort("a request was cancelled mid-reply; connection closed")
            raise

    async def _connection(self) -> _ClientProtocol:
        """The open connection, or a new one if it was lost."""
        if not self._open:
            raise StorageError("storage client is not connected")
        protocol = self._protocol
        if protocol is not None and protocol.usable:
            return protocol
        if protocol is not None:
            protocol.abort(protocol.lost or "connection to storage closed")
        self._protocol = None
        protocol = await self._dial()
        if not self._open:  # closed while dialling
            assert protocol.transport is not None
            protocol.transport.close()
            raise StorageError("storage client is not connected")
        self._protocol = protocol
        self.reconnects += 1
        return protocol

    async def _dial(self) -> _ClientProtocol:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(_ClientProtocol, self.host, self.port), CONNECT_TIMEOUT_S)
        return protocol


# ----------------------------------------------------------------------- sync client


