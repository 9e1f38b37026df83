"""A one-way link served first come, first served at a fixed bandwidth.

Each transfer occupies the link exclusively from its start to its end, so the
link never carries more than its bandwidth; the intervals are kept for the
utilisation metrics.
"""

from __future__ import annotations


class Link:
    """FIFO server: ``reserve`` returns when a transfer of ``nbytes`` starts and ends."""

    __slots__ = ("name", "bytes_s", "busy_until", "starts", "ends", "sizes")

    def __init__(self, name: str, bytes_s: float) -> None:
        if bytes_s <= 0:
            raise ValueError(f"link {name}: bandwidth must be > 0, got {bytes_s}")
        self.name = name
        self.bytes_s = bytes_s
        self.busy_until = 0.0
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.sizes: list[float] = []

    def reserve(self, earliest: float, nbytes: float,
                overhead_s: float = 0.0) -> tuple[float, float]:
        """Queue ``nbytes`` that may start at ``earliest`` and also hold the link
        ``overhead_s`` (per-transfer submission costs); returns (start, end)."""
        busy = self.busy_until
        start = earliest if earliest > busy else busy
        if nbytes <= 0:
            return start, start
        end = start + nbytes / self.bytes_s + overhead_s
        self.busy_until = end
        self.starts.append(start)
        self.ends.append(end)
        self.sizes.append(nbytes)
        return start, end

    def backlog_bytes(self, now: float) -> float:
        busy = self.busy_until - now
        return busy * self.bytes_s if busy > 0 else 0.0

    @property
    def total_bytes(self) -> float:
        return float(sum(self.sizes))


def reserve_pair(first: Link, second: Link, earliest: float, nbytes: float,
                 overhead_s: float = 0.0) -> tuple[float, float]:
    """Send ``nbytes`` across two links (e.g. DE CNIC out → PE CNIC in), unrolled (hot path).

    Each link serves the transfer in its own FIFO order at its own rate, as
    switch buffers between the hops would let it; the bytes have arrived when
    the slower hop is done. Returns (latest start, latest end). Reserving the
    same interval on both hops at once would leave each link idle while it
    waits for the other, and with many senders and receivers those gaps
    cascade into queues on links that are mostly idle.
    """
    start = end = earliest
    s, e = first.reserve(earliest, nbytes, overhead_s)
    if s > start:
        start = s
    if e > end:
        end = e
    s, e = second.reserve(earliest, nbytes, overhead_s)
    if s > start:
        start = s
    if e > end:
        end = e
    return start, end
