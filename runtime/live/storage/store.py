"""The block files on disk: their layout, atomic writes, and :class:`BlockFileStore` over a root."""

from __future__ import annotations

import itertools
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runtime.live.blocks import block_content, checksum
from runtime.live.storage.protocol import (
    CHECKSUM_RE,
    CHECKSUM_STR_RE,
    MAX_BODY,
    BlockNotFound,
    StorageError,
    validate_name,
    verify,
)

_TMP_RE = re.compile(r"[0-9a-f]{8,64}\.(\d+)\.\d+\.tmp")


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
        if not CHECKSUM_RE.fullmatch(digest):
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
    hex), so no lookup finds it; :meth:`BlockFileStore.remove_temporaries` deletes
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
class BlockFileStore:
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
        if not isinstance(digest, str) or not CHECKSUM_STR_RE.fullmatch(digest):
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


