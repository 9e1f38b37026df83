"""The one-sided transport contract shared by every transport.

A process registers local buffers (:class:`Region`) and publishes their
``descriptor`` (a JSON-serialisable dict). Another process turns that
descriptor into a :class:`RemoteRegion` with :meth:`Transport.connect` and then
reads or writes the buffer without the owner's application code taking part:
the owner's transport (a listener thread, a NIC, UCX's progress thread) applies
the operation. Each process creates its own :class:`Transport`; instances are
never shared across processes.

Every operation returns a :class:`Completion`; the bytes are in place once its
``wait()`` returns. ``write``/``read`` may be called from several threads at
once.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import operator
import socket
import threading
import time
import weakref
from abc import ABC, abstractmethod
from typing import Any, Protocol


class TransportError(RuntimeError):
    """A transfer or a connection failed, or did not finish in time."""


class TransportUnavailable(TransportError):
    """The transport cannot run on this host; the message says why."""


class Region:
    """A registered local buffer.

    ``view`` is a writable, format ``'B'`` memoryview of exactly ``size`` bytes;
    ``descriptor`` is what a peer passes to :meth:`Transport.connect` to reach it.
    The view is invalid once the owning transport is closed.
    """

    def __init__(self, view: memoryview, descriptor: dict[str, Any], owner: Transport) -> None:
        self.view = view
        self.size = len(view)
        self.descriptor = descriptor
        self._owner = owner

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, descriptor={self.descriptor!r})"


class RemoteRegion:
    """A peer's region as seen by this process; made by :meth:`Transport.connect`."""

    def __init__(self, descriptor: dict[str, Any], size: int, owner: Transport) -> None:
        self.descriptor = descriptor
        self.size = size
        self._owner = owner

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, descriptor={self.descriptor!r})"


class Completion(Protocol):
    """The outcome of one write or read."""

    def wait(self, timeout: float | None = None) -> None:
        """Block until done; raise :class:`TransportError` on failure or after ``timeout`` s."""
        ...

    def done(self) -> bool:
        """True once finished (successfully or not); never blocks."""
        ...


class Completed:
    """A completion that finished before it was returned (memcpy-style transports)."""

    def wait(self, timeout: float | None = None) -> None:
        return None

    def done(self) -> bool:
        return True


COMPLETED = Completed()


class FutureCompletion:
    """Completion backed by a ``concurrent.futures.Future`` run on a worker thread."""

    def __init__(self, future: concurrent.futures.Future[None], what: str) -> None:
        self._future = future
        self._what = what

    def wait(self, timeout: float | None = None) -> None:
        try:
            self._future.result(timeout)
        except TransportError:
            raise
        except TimeoutError as exc:
            # socket timeouts are TimeoutErrors too: only a still-running
            # future means that *this* wait ran out of time.
            if not self._future.done():
                raise TransportError(f"{self._what} not done after {timeout} s") from exc
            raise TransportError(f"{self._what} failed: {exc}") from exc
        except Exception as exc:
            raise TransportError(f"{self._what} failed: {exc}") from exc

    def done(self) -> bool:
        return self._future.done()


class PolledCompletion(ABC):
    """Completion whose state is found by polling (NIXL handles, RDMA CQs).

    Subclasses implement :meth:`_poll`. Waiting spins briefly, then sleeps with
    a growing pause capped at ``max_sleep`` so that a waiting thread does not
    hold a core while a long transfer runs.
    """

    max_sleep = 0.0005

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self._finished = False
        self._error: TransportError | None = None

    @abstractmethod
    def _poll(self) -> bool:
        """Return True once the operation finished; raise TransportError if it failed."""

    def done(self) -> bool:
        with self._lock:
            if not self._finished:
                try:
                    self._finished = self._poll()
                except TransportError as exc:
                    self._finished, self._error = True, exc
            return self._finished

    def wait(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause, spins = 0.0, 0
        while not self.done():
            if deadline is not None and time.monotonic() >= deadline:
                raise TransportError(f"{self._what} not done after {timeout} s")
            spins += 1
            if spins > 100:
                pause = min(self.max_sleep, max(2 * pause, 1e-5))
            time.sleep(pause)
        if self._error is not None:
            raise self._error


def check_size(size: int) -> int:
    """Validate a region size: a positive int."""
    try:
        size = operator.index(size)
    except TypeError:
        raise ValueError(f"region size must be an int, got {size!r}") from None
    if size <= 0:
        raise ValueError(f"region size must be > 0 bytes, got {size}")
    return size


def check_span(label: str, offset: int, nbytes: int, size: int, region: str) -> None:
    """Refuse ``[offset, offset + nbytes)`` unless it lies within a region of ``size`` bytes."""
    if offset < 0:
        raise ValueError(f"{label}={offset} is negative")
    if offset + nbytes > size:
        raise ValueError(f"{label}={offset} + nbytes={nbytes} = {offset + nbytes} exceeds "
                         f"the {region}'s size of {size} bytes")


def descriptor_field(descriptor: dict[str, Any], transport: str, key: str, kind: type) -> Any:
    """Read ``descriptor[key]`` of type ``kind``, refusing descriptors of another transport."""
    if not isinstance(descriptor, dict):
        raise ValueError(f"a descriptor must be a dict, got {type(descriptor).__name__}")
    owner = descriptor.get("transport")
    if owner != transport:
        raise ValueError(f"descriptor is for transport {owner!r}, not {transport!r}")
    value = descriptor.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{transport} descriptor field {key!r} must be {kind.__name__}, "
                         f"got {value!r}")
    return value


def advertised_host(bind_host: str) -> str:
    """The address to put in descriptors for a listener bound to ``bind_host``.

    A wildcard bind (all interfaces) is advertised as this host's address.
    """
    if bind_host not in ("", "0.0.0.0", "::"):
        return bind_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.gethostname()


def _as_int(label: str, value: int) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{label} must be an int, got {value!r}") from None


class Transport(ABC):
    """Registers local buffers and moves bytes to and from peers' buffers, one-sidedly.

    Subclasses implement :meth:`register`, :meth:`connect`, :meth:`_write`,
    :meth:`_read` and :meth:`_shutdown`; the public :meth:`write`/:meth:`read`
    check ownership and bounds first, so the hooks only see valid requests
    with ``nbytes > 0``.
    """

    name: str = ""

    def __init__(self) -> None:
        self._closed = False
        self._close_lock = threading.Lock()
        _LIVE.add(self)

    @abstractmethod
    def register(self, size: int) -> Region:
        """Allocate and register a zero-filled local buffer of ``size`` bytes."""

    @abstractmethod
    def connect(self, descriptor: dict[str, Any]) -> RemoteRegion:
        """Resolve a peer's (or this process's) region descriptor; may be called repeatedly."""

    @abstractmethod
    def _write(self, src: Any, src_offset: int, dst: Any, dst_offset: int,
               nbytes: int) -> Completion: ...

    @abstractmethod
    def _read(self, dst: Any, dst_offset: int, src: Any, src_offset: int,
              nbytes: int) -> Completion: ...

    @abstractmethod
    def _shutdown(self) -> None:
        """Free every region and mapping and stop threads; called once."""

    def write(self, src: Region, src_offset: int, dst: RemoteRegion, dst_offset: int,
              nbytes: int) -> Completion:
        """Copy ``src[src_offset:+nbytes]`` into the peer's ``dst[dst_offset:+nbytes]``."""
        src_offset, dst_offset, nbytes = self._check(src, src_offset, dst, dst_offset, nbytes,
                                                     ("src_offset", "dst_offset"))
        if nbytes == 0:
            return COMPLETED
        return self._write(src, src_offset, dst, dst_offset, nbytes)

    def read(self, dst: Region, dst_offset: int, src: RemoteRegion, src_offset: int,
             nbytes: int) -> Completion:
        """Copy the peer's ``src[src_offset:+nbytes]`` into ``dst[dst_offset:+nbytes]``."""
        dst_offset, src_offset, nbytes = self._check(dst, dst_offset, src, src_offset, nbytes,
                                                     ("dst_offset", "src_offset"))
        if nbytes == 0:
            return COMPLETED
        return self._read(dst, dst_offset, src, src_offset, nbytes)

    def close(self) -> None:
        """Free regions (shared segments are unlinked) and stop threads; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _LIVE.discard(self)
        self._shutdown()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"{self.name} transport is closed")

    def _check(self, local: Region, local_offset: int, remote: RemoteRegion, remote_offset: int,
               nbytes: int, labels: tuple[str, str]) -> tuple[int, int, int]:
        self._check_open()
        if not isinstance(local, Region) or local._owner is not self:
            raise ValueError(f"the local region was not registered by this {self.name} transport")
        if not isinstance(remote, RemoteRegion) or remote._owner is not self:
            raise ValueError(f"the remote region was not connected by this {self.name} "
                             f"transport (use connect(descriptor))")
        local_offset = _as_int(labels[0], local_offset)
        remote_offset = _as_int(labels[1], remote_offset)
        nbytes = _as_int("nbytes", nbytes)
        if nbytes < 0:
            raise ValueError(f"nbytes={nbytes} is negative")
        check_span(labels[0], local_offset, nbytes, local.size, "local region")
        check_span(labels[1], remote_offset, nbytes, remote.size, "remote region")
        return local_offset, remote_offset, nbytes

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state}>"


# Transports still open at interpreter exit are closed then, so that shared
# memory is unlinked and threads stop even when the caller forgot.
_LIVE: weakref.WeakSet[Transport] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for transport in list(_LIVE):
        # Best effort at exit: there is no caller left to tell.
        with contextlib.suppress(Exception):
            transport.close()
