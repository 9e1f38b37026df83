"""Shared-memory transport: processes on one host write straight into each other's buffers.

Each region is a POSIX shared-memory segment (``/dev/shm/<name>``) created by
its owner. A peer maps the segment once, at :meth:`ShmTransport.connect`, and
a write or read is then a plain memcpy (``numpy.copyto``, which drops the GIL)
between the two mappings; the completion is immediate.

Lifetime: the owner unlinks its segments on :meth:`close` and at interpreter
exit, and registers them with the multiprocessing resource tracker, which
unlinks them should the owner die first. Both sides map segments through
``/dev/shm`` directly rather than through ``SharedMemory``: on Python 3.11
attaching with ``SharedMemory(name)`` registers the segment with the
attaching process's resource tracker too, which then unlinks it (and warns)
when the peer exits, pulling it out from under its owner; and
``SharedMemory.close`` fails while the caller still holds numpy views of the
buffer, where a bare mapping simply outlives its last view.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import threading
from multiprocessing import resource_tracker
from typing import Any

import numpy as np

from runtime.live.transport.base import (
    COMPLETED,
    Completion,
    Region,
    RemoteRegion,
    Transport,
    TransportError,
    check_size,
    descriptor_field,
)

SHM_DIR = "/dev/shm"
# Segment names come from peers' descriptors: accept nothing that could leave SHM_DIR.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def segment_path(name: str) -> str:
    """Where the segment ``name`` lives on this host."""
    return os.path.join(SHM_DIR, name)


class _ShmRegion(Region):
    def __init__(self, name: str, mapping: mmap.mmap, owner: ShmTransport) -> None:
        view = memoryview(mapping)
        super().__init__(view, {"transport": "shm", "name": name, "size": len(view)}, owner)
        self.name = name
        self.mapping: mmap.mmap | None = mapping
        self.array: np.ndarray | None = np.frombuffer(mapping, dtype=np.uint8)

    def free(self, unlink: bool) -> None:
        mapping, self.mapping, self.array = self.mapping, None, None
        if mapping is None:
            return
        _unmap(self.view, mapping)
        if unlink:
            _unlink_segment(self.name)


class _ShmRemote(RemoteRegion):
    def __init__(self, descriptor: dict[str, Any], mapping: mmap.mmap,
                 owner: ShmTransport) -> None:
        super().__init__(descriptor, len(mapping), owner)
        self.mapping: mmap.mmap | None = mapping
        self.array: np.ndarray | None = np.frombuffer(mapping, dtype=np.uint8)

    def free(self) -> None:
        mapping, self.mapping, self.array = self.mapping, None, None
        if mapping is not None:
            _unmap(None, mapping)


class ShmTransport(Transport):
    """One-sided copies through POSIX shared memory; all peers must share the host."""

    name = "shm"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._regions: list[_ShmRegion] = []
        self._remotes: dict[str, _ShmRemote] = {}

    def register(self, size: int) -> Region:
        size = check_size(size)
        self._check_open()
        name = f"dualpath-{os.getpid()}-{secrets.token_hex(6)}"
        region = _ShmRegion(name, _create_segment(name, size), self)
        with self._lock:
            self._regions.append(region)
        return region

    def connect(self, descriptor: dict[str, Any]) -> RemoteRegion:
        name = descriptor_field(descriptor, "shm", "name", str)
        size = check_size(descriptor_field(descriptor, "shm", "size", int))
        if not _NAME_RE.match(name):
            raise ValueError(f"shm descriptor names an invalid segment {name!r}")
        self._check_open()
        with self._lock:
            known = self._remotes.get(name)
            if known is not None and known.size == size:
                return known
            remote = _ShmRemote(dict(descriptor), _map_segment(name, size), self)
            self._remotes[name] = remote
            return remote

    def _write(self, src: _ShmRegion, src_offset: int, dst: _ShmRemote, dst_offset: int,
               nbytes: int) -> Completion:
        _copy(_live(dst.array), dst_offset, _live(src.array), src_offset, nbytes)
        return COMPLETED

    def _read(self, dst: _ShmRegion, dst_offset: int, src: _ShmRemote, src_offset: int,
              nbytes: int) -> Completion:
        _copy(_live(dst.array), dst_offset, _live(src.array), src_offset, nbytes)
        return COMPLETED

    def _shutdown(self) -> None:
        with self._lock:
            regions, self._regions = self._regions, []
            remotes, self._remotes = list(self._remotes.values()), {}
        for remote in remotes:
            remote.free()
        # A forked child inherits this object (and its exit hook); only the
        # creating process may unlink, or the child would pull the segments
        # out from under its parent.
        unlink = os.getpid() == self._pid
        for region in regions:
            region.free(unlink)


def _create_segment(name: str, size: int) -> mmap.mmap:
    path = segment_path(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise TransportError(f"cannot create shm segment {path}: {exc}") from exc
    try:
        os.ftruncate(fd, size)
        mapping = mmap.mmap(fd, size)
    except OSError as exc:
        os.unlink(path)
        raise TransportError(f"cannot size or map shm segment {path} ({size} bytes): {exc}") \
            from exc
    finally:
        os.close(fd)
    # The resource tracker (a helper process) unlinks the segment should this
    # process die without closing the transport.
    resource_tracker.register(_tracker_name(name), "shared_memory")
    return mapping


def _unlink_segment(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(segment_path(name))
    resource_tracker.unregister(_tracker_name(name), "shared_memory")


def _tracker_name(name: str) -> str:
    return "/" + name  # the tracker passes it to shm_unlink(), which wants the leading slash


def _unmap(view: memoryview | None, mapping: mmap.mmap) -> None:
    try:
        if view is not None:
            view.release()
        mapping.close()
    except BufferError:
        pass  # the caller still holds views of it: it is unmapped when the last one goes


def _map_segment(name: str, size: int) -> mmap.mmap:
    path = segment_path(name)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise TransportError(f"shm segment {name!r} does not exist on this host "
                             f"(its owner closed it, or it lives on another host)") from None
    except OSError as exc:
        raise TransportError(f"cannot open shm segment {path}: {exc}") from exc
    try:
        actual = os.fstat(fd).st_size
        if actual < size:
            raise TransportError(f"shm segment {name!r} holds {actual} bytes, "
                                 f"the descriptor claims {size}")
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _live(array: np.ndarray | None) -> np.ndarray:
    if array is None:
        raise TransportError("shm region was freed (its transport is closed)")
    return array


def _copy(dst: np.ndarray, dst_offset: int, src: np.ndarray, src_offset: int,
          nbytes: int) -> None:
    np.copyto(dst[dst_offset:dst_offset + nbytes], src[src_offset:src_offset + nbytes])


def probe() -> str | None:
    """None when shared-memory segments can be created here, else why not."""
    if not os.path.isdir(SHM_DIR):
        return f"{SHM_DIR} does not exist (POSIX shared memory is unavailable)"
    name = f"dualpath-probe-{os.getpid()}-{secrets.token_hex(4)}"
    path = segment_path(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return f"cannot create a shared-memory segment in {SHM_DIR}: {exc}"
    os.close(fd)
    os.unlink(path)
    return None
