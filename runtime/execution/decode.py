"""A decode engine: continuous batching, computed in closed form between membership changes.

Between two changes of the batch every iteration takes the same time (the
model's iteration time at the batch's size and context when the segment
began), so the engine only needs an event when its next request finishes.
``iters`` counts iterations run so far (fractional between events); a request
that joins at ``iters = k`` with ``g`` tokens to generate finishes at ``k + g``.
"""

from __future__ import annotations

import heapq

from runtime.cost import CostModel
from runtime.execution.job import Job
from runtime.execution.link import Link
from runtime.placement import EngineLoad


class DecodeEngine(EngineLoad):
    """A decode engine's continuous batch and links; its reserved load is the
    :class:`EngineLoad` it is."""

    __slots__ = ("engine_id", "node_id", "heap", "iters", "t_last", "iter_s", "ctx_base",
                 "version", "cnic_in", "cnic_out", "_cost", "_n", "_speed")

    def __init__(self, engine_id: int, node_id: int, cost: CostModel) -> None:
        node = cost.spec.node
        super().__init__(node.de_hbm_kv_bytes)
        self.engine_id = engine_id
        self.node_id = node_id
        self.heap: list[tuple[float, int, Job]] = []
        self.iters = 0.0
        self.t_last = 0.0
        self.iter_s = 0.0
        # Sum over members of (context at join - iters at join): the batch's
        # context is ctx_base + size * iters, since each iteration adds a token.
        self.ctx_base = 0.0
        self.version = 0
        self.cnic_in = Link(f"cnic{engine_id}-in", node.cnic_kv_bytes_s)
        self.cnic_out = Link(f"cnic{engine_id}-out", node.cnic_kv_bytes_s)
        self._cost = cost
        self._n = 0
        self._speed = cost.speed(node_id)

    def _advance(self, now: float) -> None:
        if self.heap and self.iter_s > 0:
            self.iters += (now - self.t_last) / self.iter_s
        self.t_last = now

    def _retime(self) -> float | None:
        """Recompute the iteration time; return when the next member finishes."""
        self.version += 1
        if not self.heap:
            self.iter_s = 0.0
            return None
        size = len(self.heap)
        self.iter_s = (self._cost.decode_iteration_s(size, self.ctx_base + size * self.iters)
                       / self._speed)  # the cost model's compute factor (CostModel.speed)
        left = self.heap[0][0] - self.iters
        return self.t_last + (left if left > 0.0 else 0.0) * self.iter_s  # max(0.0, left)

    def join(self, job: Job, now: float) -> float | None:
        """Add ``job`` (its first token came from prefill); returns the next finish time."""
        self._advance(now)
        self._n += 1
        tokens = job.request.gen_tokens - 1
        heapq.heappush(self.heap, (self.iters + tokens, self._n, job))
        self.ctx_base += job.request.prompt_tokens + 1 - self.iters
        return self._retime()

    def iters_at(self, now: float) -> float:
        """Iterations run by ``now`` (read only): a member that joined at ``k`` has
        generated ``1 + floor(iters_at(now) - k)`` tokens, its first from prefill."""
        if self.heap and self.iter_s > 0:
            return self.iters + max(0.0, now - self.t_last) / self.iter_s
        return self.iters

    def finish_due(self, now: float) -> tuple[list[Job], float | None]:
        """Remove the members done by ``now``; return them and the next finish time."""
        self._advance(now)
        done: list[Job] = []
        heap = self.heap
        while heap and heap[0][0] <= self.iters + 1e-9:
            target, _, job = heapq.heappop(heap)
            joined_at = target - (job.request.gen_tokens - 1)
            self.ctx_base -= job.request.prompt_tokens + 1 - joined_at
            done.append(job)
        return done, self._retime()
