"""A one-way link served first come, first served at a fixed bandwidth.

Each transfer occupies the link exclusively from its start to its end, so the
link never carries more than its bandwidth; the intervals are kept for the
utilisation metrics.
"""

from __future__ import annotations

from collections.abc import Sequence


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

    def reserve(self, earliest: float, nbytes: float) -> tuple[float, float]:
        """Queue ``nbytes`` that may start at ``earliest``; returns (start, end)."""
        start = earliest if earliest > self.busy_until else self.busy_until
        if nbytes <= 0:
            return start, start
        end = start + nbytes / self.bytes_s
        self._record(start, end, nbytes)
        return start, end

    def backlog_bytes(self, now: float) -> float:
        busy = self.busy_until - now
        return busy * self.bytes_s if busy > 0 else 0.0

    def _record(self, start: float, end: float, nbytes: float) -> None:
        self.busy_until = end
        self.starts.append(start)
        self.ends.append(end)
        self.sizes.append(nbytes)

    @property
    def total_bytes(self) -> float:
        return float(sum(self.sizes))


def reserve_path(links: Sequence[Link], earliest: float, nbytes: float) -> tuple[float, float]:
    """Reserve the same interval on every link of a path (e.g. DE CNIC out → PE CNIC in).

    The transfer starts when all links are free and runs at the slowest one's rate.
    """
    start = max(earliest, *(link.busy_until for link in links))
    if nbytes <= 0:
        return start, start
    end = start + nbytes / min(link.bytes_s for link in links)
    for link in links:
        link._record(start, end, nbytes)
    return start, end
