"""A node's storage side: its SNIC read queue, write-back link and host DRAM buffer."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from runtime.execution.job import Job
from runtime.execution.link import Link

# Called with (node_id, job, start, end) when a read is issued to the SNIC.
ReadIssued = Callable[[int, Job, float, float], None]


class NodeStorage:
    """Reads are served FIFO at SNIC bandwidth into the host buffer.

    A read is issued once the buffer has room for it (or the buffer is empty,
    so a read larger than the whole buffer still proceeds); the buffer is
    released when the prefill engine has consumed the data.
    """

    __slots__ = ("node_id", "snic", "snic_write", "buffer_bytes", "buffer_used",
                 "pending", "pending_bytes", "_on_issue")

    def __init__(self, node_id: int, snic_bytes_s: float, buffer_bytes: float,
                 on_issue: ReadIssued) -> None:
        self.node_id = node_id
        self.snic = Link(f"snic{node_id}", snic_bytes_s)
        self.snic_write = Link(f"snic{node_id}-write", snic_bytes_s)
        self.buffer_bytes = buffer_bytes
        self.buffer_used = 0.0
        self.pending: deque[tuple[Job, float]] = deque()
        self.pending_bytes = 0.0
        self._on_issue = on_issue

    def enqueue_read(self, job: Job, nbytes: float, now: float) -> None:
        self.pending_bytes += nbytes
        used = self.buffer_used
        if not self.pending and not (used > 0 and used + nbytes > self.buffer_bytes):
            self._issue(job, nbytes, now)  # what pump() would do, without the queue
            return
        self.pending.append((job, nbytes))
        self.pump(now)

    def _issue(self, job: Job, nbytes: float, now: float) -> None:
        self.pending_bytes -= nbytes
        self.buffer_used += nbytes
        start, end = self.snic.reserve(now, nbytes)
        self._on_issue(self.node_id, job, start, end)

    def pump(self, now: float) -> None:
        """Issue queued reads while the buffer has room."""
        pending = self.pending
        while pending:
            job, nbytes = pending[0]
            if self.buffer_used > 0 and self.buffer_used + nbytes > self.buffer_bytes:
                return
            pending.popleft()
            self._issue(job, nbytes, now)

    def release(self, nbytes: float, now: float) -> None:
        self.buffer_used -= nbytes
        if self.buffer_used < 1e-6:
            self.buffer_used = 0.0
        if self.pending:
            self.pump(now)

    def read_queue_bytes(self, now: float) -> float:
        """Bytes requested through this SNIC and not yet read."""
        snic = self.snic  # Link.backlog_bytes, inlined: read for every decision
        busy = snic.busy_until - now
        return self.pending_bytes + (busy * snic.bytes_s if busy > 0 else 0.0)
