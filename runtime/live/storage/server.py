"""The storage service: an asyncio TCP server over a :class:`BlockFileStore`."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from runtime.live.storage.protocol import (
    CHECKSUM_RE,
    MAX_BODY,
    MAX_NAME,
    NO_CHECKSUM,
    REQUEST,
    REQUEST_MAGIC,
    RESPONSE,
    RESPONSE_MAGIC,
    SENDFILE_MIN,
    BlockNotFound,
    ChecksumMismatch,
    Op,
    Status,
    StorageError,
    StorageProtocolError,
    validate_name,
)
from runtime.live.storage.store import FILE_HEADER, BlockFileStore

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- server


class _FramingLost(Exception):
    """The reply stream can't be continued (a payload was cut short): close the connection."""


_STATUS_OF: tuple[tuple[type[Exception], Status], ...] = (
    (BlockNotFound, Status.NOT_FOUND),
    (ChecksumMismatch, Status.BAD_CHECKSUM),
    (StorageProtocolError, Status.BAD_REQUEST),
    (ValueError, Status.BAD_REQUEST),
    (StorageError, Status.FAILED),
    (OSError, Status.FAILED),
)


class StorageServer:
    """An asyncio TCP server over a :class:`BlockFileStore`.

    GET runs on the loop: small payloads are read and written, large ones go
    from the file to the socket with ``sendfile`` (see :data:`SENDFILE_MIN`).
    PUT, ENSURE and REPAIR, which hash and write whole blocks, run on the
    loop's default executor, where hashing and file writes release the GIL.
    """

    def __init__(self, root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
                 replicas: int = 2, *, fsync: bool = False) -> None:
        self.store = BlockFileStore(Path(root), replicas, fsync)
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stats = dict.fromkeys(
            ("gets", "puts", "bytes_in", "bytes_out", "ensured", "repaired", "errors",
             "connections"), 0)

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return str(self._sockname()[0])

    @property
    def port(self) -> int:
        """The port the server listens on (the bound one when asked for port 0)."""
        return int(self._sockname()[1])

    @property
    def stats(self) -> dict[str, int]:
        """Counts since start: gets, puts, bytes_in, bytes_out, ensured, repaired, errors,
        connections (accepted)."""
        return dict(self._stats)

    async def start(self) -> None:
        """Create the root and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("storage server already started")
        self.store.root.mkdir(parents=True, exist_ok=True)
        removed = self.store.remove_temporaries()
        if removed:
            log.warning("storage: removed %d temporary files a killed writer left", removed)
        # A read buffer of 1 MiB lets a whole PUT payload arrive without pausing reads.
        # SO_REUSEADDR: a server restarted on the port of a killed one binds at once,
        # though the dead one's connections linger in TIME_WAIT.
        self._server = await asyncio.start_server(self._serve, self._host, self._port,
                                                  limit=1 << 20, reuse_address=True)

    async def close(self) -> None:
        """Stop accepting, drop open connections and wait for their handlers."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> StorageServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _sockname(self) -> Any:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("storage server not started")
        return self._server.sockets[0].getsockname()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._stats["connections"] += 1
        try:
            while await self._request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, _FramingLost):
            pass  # the peer left mid-frame, or a reply was cut short
        except asyncio.CancelledError:
            pass  # the server is closing
        finally:
            self._connections.discard(task)
            writer.close()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            head = await reader.readexactly(REQUEST.size)
        except asyncio.IncompleteReadError:
            return False
        magic, op, replica, name_len, arg, digest, body_len = REQUEST.unpack(head)
        if magic != REQUEST_MAGIC:
            await self._error(writer, Status.BAD_REQUEST, f"malformed frame: magic {magic!r}, "
                              f"expected {REQUEST_MAGIC!r}; closing the connection")
            return False
        if body_len > MAX_BODY:
            await self._error(writer, Status.BAD_REQUEST, f"malformed frame: body of {body_len} "
                              f"bytes exceeds {MAX_BODY}; closing the connection")
            return False
        raw_name = await reader.readexactly(name_len)
        body = await reader.readexactly(body_len) if body_len else b""
        try:
            await self._dispatch(op, raw_name, replica, arg, digest, body, writer)
        except (_FramingLost, ConnectionError):
            raise
        except Exception as exc:
            status = next((s for t, s in _STATUS_OF if isinstance(exc, t)), None)
            if status is None:
                log.exception("storage: op %s failed", op)
                status = Status.FAILED
            await self._error(writer, status, str(exc) or type(exc).__name__)
        return True

    async def _dispatch(self, op: int, raw_name: bytes, replica: int, arg: int, digest: bytes,
                        body: bytes, writer: asyncio.StreamWriter) -> None:
        if op == Op.STATS:
            await self._reply(writer, body=json.dumps(self._stats).encode())
            return
        if op == Op.ENSURE:
            names = body.decode("ascii").split("\n") if body else []
            for name in names:
                validate_name(name)
            created = await self._run(self.store.ensure, arg, names)
            self._stats["ensured"] += created
            await self._reply(writer, value=created)
            return
        if op not in (Op.GET, Op.PUT, Op.REPAIR):
            raise StorageProtocolError(f"unknown op {op}")
        try:
            name = validate_name(raw_name.decode("ascii"))
        except UnicodeDecodeError:
            raise ValueError(f"block name {raw_name[:MAX_NAME]!r} is not ASCII") from None
        if op == Op.GET:
            await self._get(name, replica, writer)
        elif op == Op.PUT:
            if not CHECKSUM_RE.fullmatch(digest):
                raise ValueError(f"PUT {name}: checksum {digest!r} is not 32 lowercase hex")
            written = await self._run(self.store.put, name, body, digest.decode("ascii"))
            self._stats["puts"] += 1
            self._stats["bytes_in"] += len(body)
            await self._reply(writer, value=written)
        else:
            fixed = await self._run(self.store.repair, name)
            self._stats["repaired"] += fixed
            await self._reply(writer, value=fixed)

    async def _get(self, name: str, replica: int, writer: asyncio.StreamWriter) -> None:
        # Opening, checking the header and reading a small payload take microseconds
        # from the page cache: a thread hop costs more (measured 2-3x fewer GETs/s).
        f, length, digest = self.store.open(name, replica)
        with f:
            head = RESPONSE.pack(RESPONSE_MAGIC, Status.OK, length, digest.encode("ascii"), length)
            if length < SENDFILE_MIN:
                payload = f.read(length)
                if len(payload) != length:
                    raise StorageError(f"block {name} replica {replica}: payload truncated "
                                       "while read")
                writer.write(head)
                writer.write(payload)
                await writer.drain()
            else:
                writer.write(head)
                await self._sendfile(name, writer, f, length)
        self._stats["gets"] += 1
        self._stats["bytes_out"] += length

    async def _sendfile(self, name: str, writer: asyncio.StreamWriter, f: BinaryIO,
                        length: int) -> None:
        try:
            sent = await asyncio.get_running_loop().sendfile(
                writer.transport, f, FILE_HEADER.size, length)
        except ConnectionError:
            raise
        except Exception as exc:
            raise _FramingLost(f"GET {name}: {exc}") from exc
        if sent != length:  # the file shrank under us: the reply is short
            raise _FramingLost(f"GET {name}: sent {sent} of {length} bytes")

    async def _run(self, fn: Callable[..., int], *args: Any) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))

    async def _reply(self, writer: asyncio.StreamWriter, status: Status = Status.OK,
                     value: int = 0, body: bytes = b"") -> None:
        writer.write(RESPONSE.pack(RESPONSE_MAGIC, status, value, NO_CHECKSUM, len(body)) + body)
        await writer.drain()

    async def _error(self, writer: asyncio.StreamWriter, status: Status, message: str) -> None:
        self._stats["errors"] += 1
        await self._reply(writer, status, body=message.encode("utf-8", "replace"))


