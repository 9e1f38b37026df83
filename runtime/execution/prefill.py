"""A prefill engine: FIFO of ready requests, batches under a compute quota, layer-wise loading.

A batch's timing is computed in closed form. Its hit KV arrives over two
streams: the PE side from the node's host buffer over PCIe, the DE side from
decode nodes' buffers over RDMA (DE CNIC out → PE CNIC in). Each stream
delivers the layers in order at a constant rate, so layer ``i`` is in HBM at
``t_i = max over streams of start + (i+1)·duration/L``. With layer-wise
prefill, layer ``i``'s compute (``c`` = compute/L) starts once its KV is in
and layer ``i-1`` is done, which gives ``finish = max_i (t_i + (L-i)·c)``;
that maximum of a convex function of ``i`` sits at ``i = 0`` or ``i = L-1``.
Without layer-wise prefill, compute starts when all layers are in HBM.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from runtime.cost import CostModel
from runtime.execution.job import Job
from runtime.execution.link import Link, reserve_pair
from runtime.placement import EngineLoad

# Returns the CNIC egress link of an engine.
EngineCnic = Callable[[int], Link]


class PrefillEngine(EngineLoad):
    """A prefill engine's queue, batches and links; its reserved load is the
    :class:`EngineLoad` it is."""

    __slots__ = ("engine_id", "node_id", "ready", "busy", "hbm_bytes", "hbm_used",
                 "cnic_in", "cnic_out", "pcie", "batch", "release_at", "speed")

    def __init__(self, engine_id: int, node_id: int, cost: CostModel) -> None:
        super().__init__()
        node = cost.spec.node
        self.engine_id = engine_id
        self.node_id = node_id
        self.ready: deque[Job] = deque()
        self.busy = False
        self.hbm_bytes = node.pe_hbm_kv_bytes
        self.hbm_used = 0.0
        self.cnic_in = Link(f"cnic{engine_id}-in", node.cnic_kv_bytes_s)
        self.cnic_out = Link(f"cnic{engine_id}-out", node.cnic_kv_bytes_s)
        self.pcie = Link(f"pcie{engine_id}", node.pcie_bytes_s)
        self.batch: list[tuple[Job, int]] = []
        self.release_at = 0.0  # free for the next batch (compute and P→D transfers done)
        self.speed = cost.speed(node_id)

    def form_batch(self, cost: CostModel, layerwise: bool) -> list[tuple[Job, int]]:
        """Take ready requests FIFO while predicted attention fits the quota; chunk the last.

        Without layer-wise prefill a request's whole prompt KV must also fit in HBM.
        """
        quota = cost.spec.prefill_quota_s
        kv_bytes = cost.model.kv_bytes_per_token
        attention_s = cost.chunk_attention_s
        speed = self.speed
        ready = self.ready
        batch: list[tuple[Job, int]] = []
        tokens = 0
        attn = 0.0
        while ready:
            job = ready[0]
            need = 0.0
            if not layerwise and not job.loaded:
                need = job.request.prompt_tokens * kv_bytes
                if batch and self.hbm_used + need > self.hbm_bytes:
                    break
            n = job.remaining
            a = attention_s(n, job.context, tokens + n, speed)
            if batch and attn + a > quota:
                # Chunk: the share of the remaining tokens that fits what is left.
                n = int(n * (quota - attn) / a)
                if n <= 0:
                    break
                a = attention_s(n, job.context, tokens + n, speed)
            elif not batch and a > quota:
                n = max(1, int(n * quota / a))
                a = attention_s(n, job.context, n, speed)
            if need:
                self.hbm_used += need
                job.hbm_bytes = need
            batch.append((job, n))
            tokens += n
            attn += a
            if n < job.remaining:
                break
            ready.popleft()
        return batch

    def batch_finish(self, now: float, batch: list[tuple[Job, int]], cost: CostModel,
                     layerwise: bool, oracle: bool, cnic_out: EngineCnic) -> float:
        """Start ``batch`` at ``now``: reserve its loads, return when its compute ends.

        A job's hit KV comes over PCIe (``pe_bytes`` staged from storage and
        ``dram_bytes`` from the node's DRAM cache) and by RDMA into this engine's CNIC
        (``de_bytes`` from the decode engine's node, ``peer_bytes`` from a peer's DRAM
        cache through engine ``peer_engine``'s CNIC); HBM-cached blocks need nothing."""
        compute = cost.batch_prefill_s([(n, job.context) for job, n in batch], self.speed)
        if oracle:
            return now + compute
        layers = cost.model.layers
        pe_bytes = pe_overhead = 0.0
        de_first = de_last = now
        for job, _ in batch:
            if job.loaded:
                continue
            host = job.pe_bytes + job.dram_bytes
            pe_bytes += host
            pe_overhead += cost.h2d_overhead_s(host)
            de_bytes = job.de_bytes
            if de_bytes > 0:
                start, end = reserve_pair(cnic_out(job.de), self.cnic_in, now, de_bytes,
                                          cost.rdma_overhead_s(de_bytes))
                first = start + (end - start) / layers
                # Comparisons rather than max(): the same result, without a call.
                if first > de_first:
                    de_first = first
                if end > de_last:
                    de_last = end
            if job.peer_bytes > 0:  # rare: a peer's DRAM cache, by RDMA as the DE path
                start, end = reserve_pair(cnic_out(job.peer_engine), self.cnic_in, now,
                                          job.peer_bytes, cost.rdma_overhead_s(job.peer_bytes))
                de_first = max(de_first, start + (end - start) / layers)
                de_last = max(de_last, end)
        h_start, h_end = self.pcie.reserve(now, pe_bytes, pe_overhead)
        h_first = h_start + (h_end - h_start) / layers
        first_layer = h_first if h_first > de_first else de_first  # max(de_first, h_first)
        last_layer = h_end if h_end > de_last else de_last
        if not layerwise:
            return last_layer + compute
        per_layer = compute / layers
        a, b = first_layer + compute, last_layer + per_layer
        return b if b > a else a

    def start(self, now: float, batch: list[tuple[Job, int]]) -> None:
        self.busy = True
        self.batch = batch
        for job, _ in batch:
            if job.t_prefill_start != job.t_prefill_start:  # NaN: its first batch
                job.t_prefill_start = now
