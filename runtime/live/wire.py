"""Control messages between the router and the nodes: length-prefixed JSON frames.

Control traffic is small (a few hundred bytes a message); the KV bytes travel by
the transports and the storage protocol, never here. A frame is a 4-byte
big-endian length then a UTF-8 JSON object with a ``"t"`` (type) key: one of the
messages of :mod:`runtime.live.messages`, which encodes and decodes them.
"""

from __future__ import annotations

import asyncio
import json
import struct

from runtime.live.messages import Message, MessageError, decode, encode

_LEN = struct.Struct(">I")
MAX_FRAME = 64 << 20


class WireError(RuntimeError):
    """A malformed frame, or a peer that went away mid-frame."""


class Channel:
    """One control connection: ``send`` is ordered, ``recv`` returns None at EOF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int, attempts: int = 50) -> Channel:
        for attempt in range(attempts):
            try:
                reader, writer = await asyncio.open_connection(host, port)
                return cls(reader, writer)
            except OSError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    def send(self, msg: Message) -> None:
        """Queue ``msg``; the event loop writes it out. A closed channel drops it."""
        if self.closed:
            return
        body = json.dumps(encode(msg), separators=(",", ":")).encode()
        self.writer.write(_LEN.pack(len(body)) + body)

    async def drain(self) -> None:
        if not self.closed:
            await self.writer.drain()

    async def recv(self) -> Message | None:
        try:
            head = await self.reader.readexactly(_LEN.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = True
            return None
        (size,) = _LEN.unpack(head)
        if size > MAX_FRAME:
            raise WireError(f"control frame of {size:,} B exceeds {MAX_FRAME:,} B")
        try:
            body = await self.reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise WireError("peer closed mid-frame") from exc
        try:
            return decode(json.loads(body))
        except MessageError as exc:
            raise WireError(f"control frame {body[:80]!r}: {exc}") from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
