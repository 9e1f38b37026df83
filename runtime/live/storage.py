"""The KV block store of the live runtime: files on disk, a TCP server, and its clients.

Nodes read blocks over the network as from a distributed store and write the
blocks their requests produce back to it. A block is a Full Block named by its
token prefix (see :mod:`runtime.live.blocks`); it is stored as ``replicas``
copies, each a file ``<root>/r<k>/<name[:2]>/<name>`` holding a fixed header
(magic, version, payload length, checksum) and then the payload.

The server hands out payloads as stored, without checking them: the reader
verifies the bytes against the checksum (:func:`verify`), so corruption
anywhere between disk and the reader's buffer is caught at the reader, and
REPAIR rewrites bad replicas from a good one.

Wire protocol (little-endian, one reply per request, in order):

* request: ``REQUEST`` header (magic ``DPRQ``, op, replica, name length, arg,
  32-byte checksum, body length), then the name, then the body;
* reply: ``RESPONSE`` header (magic ``DPRS``, status, value, 32-byte checksum,
  body length), then the body: a payload, a JSON object (STATS) or an error
  message.

A request that does not start with the magic, or announces a body over
:data:`MAX_BODY`, leaves the stream unparseable: the server replies with an
error and closes the connection. Any other bad request gets an error reply and
the connection stays open.

Run a server with ``python -m runtime.live.storage --root DIR``; it prints
``storage listening on HOST:PORT`` once it accepts connections.

Surviving a server's death: a block is acknowledged only once its files are
renamed into place, so a server restarted on the same ``--root`` serves every
acknowledged block (and clears the temporaries the dead one left). Restarted
on the same ``--port``, it is found again by the clients, which reconnect and
resend the call they had in flight (see :class:`StorageClient`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import functools
import itertools
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from runtime.live.blocks import block_content, checksum

log = logging.getLogger(__name__)

#: Largest body a frame may carry: a payload, an ENSURE name list or a message.
MAX_BODY = 1 << 28
#: Longest block name, in characters.
MAX_NAME = 64
#: Payloads from this size up are sent with ``sendfile``, smaller ones read and
#: written: below it sendfile's setup costs more than the copy it saves
#: (measured over loopback with 4 clients: up to 128 KiB read-and-write serves
#: as many GETs/s or up to 1.6x more; at 256 KiB-1 MiB sendfile serves 10-35% more).
SENDFILE_MIN = 256 * 1024
#: Names per ENSURE request; clients split longer lists.
ENSURE_BATCH = 65536
_NAME_RE = re.compile(r"[0-9a-f]{8,64}")
_CHECKSUM_RE = re.compile(rb"[0-9a-f]{32}")
_CHECKSUM_STR_RE = re.compile(r"[0-9a-f]{32}")
_TMP_RE = re.compile(r"[0-9a-f]{8,64}\.(\d+)\.\d+\.tmp")

# --------------------------------------------------------------------------- errors


class StorageError(Exception):
    """A storage operation failed; the message says which block and why."""


class BlockNotFound(StorageError):
    """The block (or the asked-for replica of it) is not stored."""


class StorageProtocolError(StorageError):
    """A malformed request or reply, or a connection lost mid-exchange."""


class ChecksumMismatch(StorageError):
    """A payload does not match the checksum it came with."""


class StorageConnectionLost(StorageProtocolError):
    """The connection dropped before a reply was complete: clients reconnect and retry."""


class StorageUnavailable(StorageError):
    """The storage service stayed unreachable for a client's whole retry budget."""


def validate_name(name: str) -> str:
    """``name`` if it is a block name the store accepts (8-64 lowercase hex), else ValueError.

    Names become file names, so nothing else gets through.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid block name {name!r}: expected 8-64 lowercase hex characters")
    return name


def verify(name: str, payload: bytes | bytearray | memoryview, expected: str) -> None:
    """Raise :class:`ChecksumMismatch` unless ``payload`` has checksum ``expected``."""
    actual = checksum(payload)
    if actual != expected:
        raise ChecksumMismatch(
            f"block {name}: payload checksum {actual} does not match stored {expected}")


# ----------------------------------------------------------------------- file layout

FILE_MAGIC = b"DPKV"
FILE_VERSION = 1
#: magic, version, flags (0), payload length, checksum as 32 hex bytes.
FILE_HEADER = struct.Struct("<4sHHQ32s")
_TMP_IDS = itertools.count()


def block_path(root: str | os.PathLike[str], name: str, replica: int) -> Path:
    """Where replica ``replica`` of block ``name`` lives under ``root``."""
    validate_name(name)
    if isinstance(replica, bool) or not isinstance(replica, int) or replica < 0:
        raise ValueError(f"replica must be an int >= 0, got {replica!r}")
    return Path(root) / f"r{replica}" / name[:2] / name


def _open_block(path: Path, name: str, replica: int) -> tuple[BinaryIO, int, str]:
    """The open file of a replica, positioned after its checked header, with the
    payload length and the stored checksum. The payload itself is not checked."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    except FileNotFoundError:
        raise BlockNotFound(f"block {name} not found (replica {replica})") from None
    try:
        raw = f.read(FILE_HEADER.size)
        where = f"block {name} replica {replica}"
        if len(raw) < FILE_HEADER.size:
            raise StorageError(f"{where}: header truncated to {len(raw)} bytes")
        magic, version, _flags, length, digest = FILE_HEADER.unpack(raw)
        if magic != FILE_MAGIC or version != FILE_VERSION:
            raise StorageError(f"{where}: not a version {FILE_VERSION} block file "
                               f"(magic {magic!r}, version {version})")
        if not _CHECKSUM_RE.fullmatch(digest):
            raise StorageError(f"{where}: stored checksum {digest!r} is not 32 hex characters")
        stored = os.fstat(f.fileno()).st_size - FILE_HEADER.size
        if stored != length:
            raise StorageError(f"{where}: header says {length} payload bytes, file holds {stored}")
        return f, length, digest.decode("ascii")
    except BaseException:
        f.close()
        raise


def _write_file(path: Path, payload: bytes | memoryview, digest: str, fsync: bool) -> None:
    """Replace ``path`` atomically by a block file: readers see the old file or the new.

    When this returns the file is written and renamed into place, so a PUT
    acknowledged after it survives the death of the server process (the page
    cache holds the data). With ``fsync`` the data and every directory entry
    on the way to it are on disk first, so it survives a crash of the machine.
    The temporary is ``<name>.<pid>.<n>.tmp``: never a block name (those are
    hex), so no lookup finds it; :meth:`BlockStore.remove_temporaries` deletes
    those a killed writer left.
    """
    header = FILE_HEADER.pack(FILE_MAGIC, FILE_VERSION, 0, len(payload), digest.encode("ascii"))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{next(_TMP_IDS)}.tmp")
    try:
        f = open(tmp, "wb")  # noqa: SIM115 - closed below; the retry needs the bare open
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fsync:  # the new directories' own entries must be durable too
            _fsync_dir(path.parent.parent)
            _fsync_dir(path.parent.parent.parent)
        f = open(tmp, "wb")  # noqa: SIM115
    try:
        with f:
            f.write(header)
            f.write(payload)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _writer_alive(tmp_name: str) -> bool | None:
    """Whether the process that wrote temporary ``tmp_name`` still runs; None if the
    name is not one of :func:`_write_file`'s temporaries."""
    match = _TMP_RE.fullmatch(tmp_name)
    if match is None:
        return None
    pid = int(match[1])
    if pid == os.getpid():
        return True
    if pid <= 0:  # no writer has it; and kill(0, ...) would signal our own group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def corrupt_block(root: str | os.PathLike[str], name: str, replica: int = 0,
                  offset: int | None = None) -> int:
    """Flip every bit of one payload byte of a stored replica (fault injection).

    ``offset`` is into the payload, by default its middle. The header, and so
    the stored checksum, stays as it was. Returns the offset flipped.
    """
    path = block_path(root, name, replica)
    f, length, _ = _open_block(path, name, replica)
    f.close()
    if length == 0:
        raise ValueError(f"block {name} replica {replica} has no payload to corrupt")
    at = length // 2 if offset is None else offset
    if not 0 <= at < length:
        raise ValueError(f"offset {at} is outside block {name}'s {length}-byte payload")
    with open(path, "r+b") as g:
        g.seek(FILE_HEADER.size + at)
        byte = g.read(1)[0]
        g.seek(FILE_HEADER.size + at)
        g.write(bytes([byte ^ 0xFF]))
    return at


@dataclass(frozen=True)
class BlockStore:
    """The block files under ``root``: ``replicas`` copies of each block.

    Synchronous and safe to use from several threads and processes: every
    write replaces a whole file atomically. Names are content addresses, so
    two writes of one name carry the same bytes and the last one wins.
    """

    root: Path
    replicas: int = 2
    fsync: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) \
                or not 1 <= self.replicas <= 255:
            raise ValueError(f"replicas must be an int in [1, 255], got {self.replicas!r}")

    def path(self, name: str, replica: int) -> Path:
        """The file of replica ``replica`` of block ``name``."""
        self._check_replica(replica)
        return block_path(self.root, name, replica)

    def open(self, name: str, replica: int = 0) -> tuple[BinaryIO, int, str]:
        """``(file, payload length, stored checksum)``, the file positioned at the payload."""
        return _open_block(self.path(name, replica), name, replica)

    def read(self, name: str, replica: int = 0) -> tuple[bytes, str]:
        """``(payload, stored checksum)`` of a replica, unverified."""
        f, length, digest = self.open(name, replica)
        with f:
            payload = f.read(length)
        if len(payload) != length:  # shrank since the header was checked
            raise StorageError(f"block {name} replica {replica}: payload truncated while read")
        return payload, digest

    def write(self, name: str, payload: bytes | memoryview, digest: str,
              replicas: Iterable[int] | None = None) -> int:
        """Store ``payload`` under ``name`` with checksum ``digest`` as given, in
        ``replicas`` (all by default). Returns the number of files written."""
        targets = range(self.replicas) if replicas is None else replicas
        written = 0
        for r in targets:
            _write_file(self.path(name, r), payload, digest, self.fsync)
            written += 1
        return written

    def put(self, name: str, payload: bytes | memoryview, digest: str) -> int:
        """:meth:`write` to every replica after checking ``payload`` against ``digest``."""
        validate_name(name)
        if not isinstance(digest, str) or not _CHECKSUM_STR_RE.fullmatch(digest):
            raise ValueError(f"block {name}: checksum {digest!r} is not 32 lowercase hex")
        verify(name, payload, digest)
        return self.write(name, payload, digest)

    def ensure(self, size: int, names: Iterable[str]) -> int:
        """Create the replicas missing from ``names`` with :func:`block_content` of
        ``size`` bytes. Returns how many blocks lacked at least one replica.

        A replica present with another payload length is an error: it means the
        store was set up for another block size.
        """
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_BODY:
            raise ValueError(f"ENSURE size must be an int in [1, {MAX_BODY}], got {size!r}")
        created = 0
        for name in names:
            missing = []
            for r in range(self.replicas):
                try:
                    stored = os.stat(self.path(name, r)).st_size - FILE_HEADER.size
                except FileNotFoundError:
                    missing.append(r)
                    continue
                if stored != size:
                    raise StorageError(f"block {name} replica {r} holds {stored} payload bytes, "
                                       f"ENSURE asked for {size}")
            if missing:
                payload = block_content(name, size)
                self.write(name, payload, checksum(payload), missing)
                created += 1
        return created

    def repair(self, name: str) -> int:
        """Rewrite every replica of ``name`` that is missing, unreadable or fails its
        checksum from the first one that passes. Returns the number rewritten.

        Raises :class:`BlockNotFound` if no replica exists and :class:`StorageError`
        if none passes.
        """
        states: list[str] = []
        good: tuple[bytes, str] | None = None
        for r in range(self.replicas):
            try:
                payload, digest = self.read(name, r)
            except BlockNotFound:
                states.append("missing")
                continue
            except StorageError:
                states.append("unreadable")
                continue
            if checksum(payload) != digest:
                states.append("corrupt")
            elif good is not None and digest != good[1]:
                states.append("different")  # intact but another payload: not this name's
            else:
                states.append("good")
                good = good or (payload, digest)
        if good is None:
            if all(s == "missing" for s in states):
                raise BlockNotFound(f"block {name} not found in any of {self.replicas} replicas")
            detail = ", ".join(f"r{r} {s}" for r, s in enumerate(states))
            raise StorageError(f"block {name}: no replica matches its checksum ({detail})")
        bad = [r for r, s in enumerate(states) if s != "good"]
        return self.write(name, good[0], good[1], bad)

    def remove_temporaries(self) -> int:
        """Delete the temporary files of writers that no longer run (a server killed
        mid-write); returns how many. A live writer's are left: it may still rename
        them into place. Temporaries are never read as blocks either way."""
        removed = 0
        for tmp in self.root.glob("r*/*/*.tmp"):
            if _writer_alive(tmp.name) is False:
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def _check_replica(self, replica: int) -> None:
        if isinstance(replica, bool) or not isinstance(replica, int) \
                or not 0 <= replica < self.replicas:
            raise ValueError(f"replica {replica!r} out of range: the store keeps "
                             f"{self.replicas} replicas")


# -------------------------------------------------------------------------- protocol

REQUEST_MAGIC = b"DPRQ"
RESPONSE_MAGIC = b"DPRS"
#: magic, op, replica, name length, arg (ENSURE: size), checksum (PUT), body length.
REQUEST = struct.Struct("<4sBBHQ32sQ")
#: magic, status, 3 pad bytes, value (a count or length), checksum, body length.
RESPONSE = struct.Struct("<4sB3xQ32sQ")
_NO_CHECKSUM = b"\0" * 32


class Op(enum.IntEnum):
    """Request operations."""

    GET = 1
    PUT = 2
    ENSURE = 3
    REPAIR = 4
    STATS = 5


class Status(enum.IntEnum):
    """Reply statuses; anything but OK carries a message as its body."""

    OK = 0
    NOT_FOUND = 1
    BAD_CHECKSUM = 2
    BAD_REQUEST = 3
    FAILED = 4


_ERRORS: dict[int, type[StorageError]] = {
    Status.NOT_FOUND: BlockNotFound,
    Status.BAD_CHECKSUM: ChecksumMismatch,
    Status.BAD_REQUEST: StorageProtocolError,
    Status.FAILED: StorageError,
}


class _ReplyHead(NamedTuple):
    status: int
    value: int
    checksum: str
    body_len: int


def _encode_request(op: Op, name: str = "", *, replica: int = 0, arg: int = 0,
                    digest: str = "", body_len: int = 0) -> bytes:
    """A request header followed by the name."""
    raw_name = name.encode("ascii")
    raw_digest = digest.encode("ascii") if digest else _NO_CHECKSUM
    if len(raw_digest) != 32:
        raise ValueError(f"checksum {digest!r} is not 32 characters")
    if body_len > MAX_BODY:
        raise ValueError(f"a body of {body_len} bytes exceeds the {MAX_BODY}-byte frame limit")
    if isinstance(replica, bool) or not isinstance(replica, int) or not 0 <= replica <= 255:
        raise ValueError(f"replica must be an int in [0, 255], got {replica!r}")
    if isinstance(arg, bool) or not isinstance(arg, int) or not 0 <= arg < 1 << 64:
        raise ValueError(f"{op.name} argument must be an int in [0, 2**64), got {arg!r}")
    return REQUEST.pack(REQUEST_MAGIC, op, replica, len(raw_name), arg, raw_digest,
                        body_len) + raw_name


def _decode_reply(head: bytes | bytearray) -> _ReplyHead:
    magic, status, value, digest, body_len = RESPONSE.unpack(head)
    if magic != RESPONSE_MAGIC:
        raise StorageProtocolError(f"malformed reply: magic {magic!r}, expected {RESPONSE_MAGIC!r}")
    if body_len > MAX_BODY:
        raise StorageProtocolError(f"malformed reply: body of {body_len} bytes")
    text = "" if digest == _NO_CHECKSUM else digest.decode("ascii", "replace")
    return _ReplyHead(status, value, text, body_len)


def _reply_error(head: _ReplyHead, body: bytes | bytearray | None) -> StorageError:
    message = bytes(body or b"").decode("utf-8", "replace") or f"status {head.status}"
    return _ERRORS.get(head.status, StorageError)(message)


def _ensure_batches(names: Sequence[str]) -> Iterable[bytes]:
    for i in range(0, len(names), ENSURE_BATCH):
        batch = names[i:i + ENSURE_BATCH]
        for name in batch:
            validate_name(name)
        yield "\n".join(batch).encode("ascii")


def _check_get_into(buf: memoryview | bytearray) -> memoryview:
    view = memoryview(buf).cast("B")
    if view.readonly:
        raise ValueError("get_into needs a writable buffer")
    return view


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
    """An asyncio TCP server over a :class:`BlockStore`.

    GET runs on the loop: small payloads are read and written, large ones go
    from the file to the socket with ``sendfile`` (see :data:`SENDFILE_MIN`).
    PUT, ENSURE and REPAIR, which hash and write whole blocks, run on the
    loop's default executor, where hashing and file writes release the GIL.
    """

    def __init__(self, root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
                 replicas: int = 2, *, fsync: bool = False) -> None:
        self.store = BlockStore(Path(root), replicas, fsync)
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
            if not _CHECKSUM_RE.fullmatch(digest):
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
        writer.write(RESPONSE.pack(RESPONSE_MAGIC, status, value, _NO_CHECKSUM, len(body)) + body)
        await writer.drain()

    async def _error(self, writer: asyncio.StreamWriter, status: Status, message: str) -> None:
        self._stats["errors"] += 1
        await self._reply(writer, status, body=message.encode("utf-8", "replace"))


# ---------------------------------------------------------------------- reconnection

#: How long a client keeps reconnecting to retry one call, from the call's first failure.
RETRY_S = 10.0
#: The first and the longest pause between two attempts of a call (it doubles).
BACKOFF_S = (0.05, 0.2)
#: Longest wait for one connection to open.
CONNECT_TIMEOUT_S = 5.0
#: Failures after which a call is sent again on a new connection. A reply the
#: server gave, an error included, is final; so is a malformed one (a bug, not
#: an outage).
_RETRYABLE: tuple[type[Exception], ...] = (StorageConnectionLost, OSError)


class _Retry:
    """The retry budget of one call.

    Every operation is safe to send twice: GET and STATS change nothing,
    ENSURE and REPAIR converge to the same files, and a PUT stores a
    content-addressed block, so a repeat writes the same bytes under the same
    name. (A repeated ENSURE or REPAIR may report fewer files created than
    the first attempt made.)
    """

    def __init__(self, where: str, what: str, budget_s: float) -> None:
        self.where = where
        self.what = what
        self.budget_s = budget_s
        self.failures = 0
        self._deadline: float | None = None
        self._pause = BACKOFF_S[0]

    def pause(self, exc: Exception) -> float:
        """Seconds to wait before the next attempt after ``exc``; raises
        :class:`StorageUnavailable` once the budget is spent."""
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.budget_s
        self.failures += 1
        left = self._deadline - now
        if left <= 0:
            raise StorageUnavailable(
                f"storage at {self.where}: {self.what} failed {self.failures} times over "
                f"{self.budget_s:g} s; giving up (last error: {exc})") from exc
        pause, self._pause = self._pause, min(2 * self._pause, BACKOFF_S[1])
        return min(pause, left)


# ---------------------------------------------------------------------- async client


class _Reply(NamedTuple):
    head: _ReplyHead
    body: bytearray | None  # None when the payload went to the caller's buffer


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
        self._reply: _ReplyHead | None = None
        self._body: bytearray | None = None
        self._into: memoryview | None = None
        self._waiter: asyncio.Future[_Reply] | None = None

    def expect(self, into: memoryview | None) -> asyncio.Future[_Reply]:
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
            head = _decode_reply(self._head)
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
        reply = _Reply(self._reply, self._body)
        self._reset()
        self._settle(reply)

    def _settle(self, outcome: _Reply | Exception) -> None:
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
                                 _encode_request(Op.GET, name, replica=replica))
        return bytes(reply.body or b""), reply.head.checksum

    async def get_into(self, name: str, buf: memoryview | bytearray, replica: int = 0) -> str:
        """Read a replica's payload straight into ``buf``, which must be exactly as
        long; returns the stored checksum (the bytes are not verified)."""
        validate_name(name)
        view = _check_get_into(buf)
        reply = await self._call(f"GET {name} replica {replica}",
                                 _encode_request(Op.GET, name, replica=replica), into=view)
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
        head = _encode_request(Op.PUT, name, digest=digest, body_len=view.nbytes)
        return (await self._call(f"PUT {name}", head, view)).head.value

    async def ensure(self, size: int, names: Sequence[str]) -> int:
        """Create the missing ones among ``names`` as :func:`block_content` of ``size``
        bytes (setup). Returns how many were created."""
        created = 0
        for body in _ensure_batches(names):
            head = _encode_request(Op.ENSURE, arg=size, body_len=len(body))
            created += (await self._call(f"ENSURE of {len(names)} blocks", head, body)).head.value
        return created

    async def repair(self, name: str) -> int:
        """Rewrite the bad replicas of ``name`` from a good one; returns how many."""
        validate_name(name)
        return (await self._call(f"REPAIR {name}", _encode_request(Op.REPAIR, name))).head.value

    async def stats(self) -> dict[str, int]:
        """The server's counters (see :attr:`StorageServer.stats`)."""
        reply = await self._call("STATS", _encode_request(Op.STATS))
        return dict(json.loads(bytes(reply.body or b"{}")))

    async def _call(self, what: str, head: bytes,
                    body: bytes | bytearray | memoryview | None = None,
                    into: memoryview | None = None) -> _Reply:
        """Send a request until a reply comes back (see the class: reconnection)."""
        async with self._lock:
            retry = _Retry(f"{self.host}:{self.port}", what, self.retry_s)
            while True:
                try:
                    reply = await self._attempt(head, body, into)
                    break
                except _RETRYABLE as exc:
                    await asyncio.sleep(retry.pause(exc))
        if reply.head.status != Status.OK:
            raise _reply_error(reply.head, reply.body)
        return reply

    async def _attempt(self, head: bytes, body: bytes | bytearray | memoryview | None,
                       into: memoryview | None) -> _Reply:
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
                           _encode_request(Op.GET, name, replica=replica))
        return bytes(reply.body or b""), reply.head.checksum

    def get_into(self, name: str, buf: memoryview | bytearray, replica: int = 0) -> str:
        """Read a replica's payload into ``buf`` (exactly as long); returns its stored checksum."""
        validate_name(name)
        view = _check_get_into(buf)
        reply = self._call(f"GET {name} replica {replica}",
                           _encode_request(Op.GET, name, replica=replica), into=view)
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
        head = _encode_request(Op.PUT, name, digest=digest, body_len=view.nbytes)
        return self._call(f"PUT {name}", head, view).head.value

    def ensure(self, size: int, names: Sequence[str]) -> int:
        """Create the missing ones among ``names``; returns how many were created."""
        created = 0
        for body in _ensure_batches(names):
            head = _encode_request(Op.ENSURE, arg=size, body_len=len(body))
            created += self._call(f"ENSURE of {len(names)} blocks", head, body).head.value
        return created

    def repair(self, name: str) -> int:
        """Rewrite the bad replicas of ``name`` from a good one; returns how many."""
        validate_name(name)
        return self._call(f"REPAIR {name}", _encode_request(Op.REPAIR, name)).head.value

    def stats(self) -> dict[str, int]:
        """The server's counters."""
        reply = self._call("STATS", _encode_request(Op.STATS))
        return dict(json.loads(bytes(reply.body or b"{}")))

    def _call(self, what: str, head: bytes,
              body: bytes | bytearray | memoryview | None = None,
              into: memoryview | None = None) -> _Reply:
        """Send a request until a reply comes back (see :class:`StorageClient`)."""
        retry = _Retry(f"{self.host}:{self.port}", what, self.retry_s)
        while True:
            try:
                reply, data = self._attempt(head, body, into)
                break
            except _RETRYABLE as exc:
                self._drop()  # where the stream stands is unknown: never reuse it
                time.sleep(retry.pause(exc))
            except BaseException:
                self._drop()
                raise
        if reply.status != Status.OK:
            raise _reply_error(reply, data)
        return _Reply(reply, data)

    def _attempt(self, head: bytes, body: bytes | bytearray | memoryview | None,
                 into: memoryview | None) -> tuple[_ReplyHead, bytearray | None]:
        sock = self._connection()
        sock.sendall(head)
        if body is not None:
            sock.sendall(body)
        self._recv_into(sock, memoryview(self._head))
        reply = _decode_reply(self._head)
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


# ------------------------------------------------------------------------------- CLI


async def _run_server(args: argparse.Namespace) -> None:
    server = StorageServer(args.root, args.host, args.port, args.replicas, fsync=args.fsync)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"storage listening on {server.host}:{server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a storage server until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m runtime.live.storage",
                                     description="Serve KV blocks stored under a directory.")
    parser.add_argument("--root", required=True, help="directory holding the replicas")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument("--replicas", type=int, default=2, help="copies kept of each block")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync each block file and its directory before replying")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(_run_server(args))
    except (OSError, ValueError) as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
