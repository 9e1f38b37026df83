"""The storage wire protocol: limits, errors, request and reply framing, the clients' retry budget.

See :mod:`runtime.live.storage` for the frame layout.
"""

from __future__ import annotations

import enum
import re
import struct
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from runtime.live.blocks import checksum

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
NAME_RE = re.compile(r"[0-9a-f]{8,64}")
CHECKSUM_RE = re.compile(rb"[0-9a-f]{32}")
CHECKSUM_STR_RE = re.compile(r"[0-9a-f]{32}")


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
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid block name {name!r}: expected 8-64 lowercase hex characters")
    return name


def verify(name: str, payload: bytes | bytearray | memoryview, expected: str) -> None:
    """Raise :class:`ChecksumMismatch` unless ``payload`` has checksum ``expected``."""
    actual = checksum(payload)
    if actual != expected:
        raise ChecksumMismatch(
            f"block {name}: payload checksum {actual} does not match stored {expected}")


# -------------------------------------------------------------------------- protocol

REQUEST_MAGIC = b"DPRQ"
RESPONSE_MAGIC = b"DPRS"
#: magic, op, replica, name length, arg (ENSURE: size), checksum (PUT), body length.
REQUEST = struct.Struct("<4sBBHQ32sQ")
#: magic, status, 3 pad bytes, value (a count or length), checksum, body length.
RESPONSE = struct.Struct("<4sB3xQ32sQ")
NO_CHECKSUM = b"\0" * 32


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


class ReplyHead(NamedTuple):
    status: int
    value: int
    checksum: str
    body_len: int


def encode_request(op: Op, name: str = "", *, replica: int = 0, arg: int = 0,
                    digest: str = "", body_len: int = 0) -> bytes:
    """A request header followed by the name."""
    raw_name = name.encode("ascii")
    raw_digest = digest.encode("ascii") if digest else NO_CHECKSUM
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


def decode_reply(head: bytes | bytearray) -> ReplyHead:
    magic, status, value, digest, body_len = RESPONSE.unpack(head)
    if magic != RESPONSE_MAGIC:
        raise StorageProtocolError(f"malformed reply: magic {magic!r}, expected {RESPONSE_MAGIC!r}")
    if body_len > MAX_BODY:
        raise StorageProtocolError(f"malformed reply: body of {body_len} bytes")
    text = "" if digest == NO_CHECKSUM else digest.decode("ascii", "replace")
    return ReplyHead(status, value, text, body_len)


def reply_error(head: ReplyHead, body: bytes | bytearray | None) -> StorageError:
    message = bytes(body or b"").decode("utf-8", "replace") or f"status {head.status}"
    return _ERRORS.get(head.status, StorageError)(message)


def ensure_batches(names: Sequence[str]) -> Iterable[bytes]:
    for i in range(0, len(names), ENSURE_BATCH):
        batch = names[i:i + ENSURE_BATCH]
        for name in batch:
            validate_name(name)
        yield "\n".join(batch).encode("ascii")


def check_get_into(buf: memoryview | bytearray) -> memoryview:
    view = memoryview(buf).cast("B")
    if view.readonly:
        raise ValueError("get_into needs a writable buffer")
    return view


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
RETRYABLE: tuple[type[Exception], ...] = (StorageConnectionLost, OSError)


class Retry:
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


class Reply(NamedTuple):
    head: ReplyHead
    body: bytearray | None  # None when the payload went to the caller's buffer


