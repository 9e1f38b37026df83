"""The one place that knows how long things take.

Everything the simulator (and the live runtime's engine timing) needs to turn
work into seconds goes through :class:`CostModel`: prefill compute by batch,
decode iterations, and the bandwidth of each kind of link.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from runtime.cluster import ClusterSpec


@dataclass(frozen=True, slots=True)
class Chunk:
    """Part of a request's prefill: ``tokens`` new tokens after ``context`` tokens of prefix."""

    tokens: int
    context: int


class CostModel:
    """Durations for a cluster spec. Stateless; cheap to build."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.model = spec.model
        self._flops = spec.node.gpu_flops
        self.decode_iteration_s = spec.model.decode_iteration_s
        # Read on every KV move (the spec is frozen, so these never go stale).
        self._block_bytes = spec.block_bytes
        self._layers = spec.model.layers
        self._h2d_us = spec.node.h2d_copy_us
        self._rdma_us = spec.node.rdma_write_us

    # -- prefill ------------------------------------------------------------
    # The simulator's hot path calls the ``(tokens, context)`` forms; the Chunk
    # forms wrap them, so each formula is written once.
    def attention_flops(self, tokens: int, context: int) -> float:
        # Attention cost grows with position; the midpoint of the chunk stands
        # for the mean (exact while attention is linear in context).
        return tokens * self.model.attention_flops_per_token(context + tokens / 2)

    def flops(self, tokens: int, context: int) -> float:
        """All prefill FLOPs of ``tokens`` new tokens after ``context`` tokens of prefix."""
        return tokens * self.model.dense_flops_per_token + self.attention_flops(tokens, context)

    def _seconds(self, flops: float, batch_tokens: int) -> float:
        return flops / (self._flops * self.model.efficiency(batch_tokens))

    def prefill_s(self, chunks: Iterable[Chunk]) -> float:
        """Compute time of one prefill batch (all layers)."""
        return self.batch_prefill_s([(c.tokens, c.context) for c in chunks])

    def batch_prefill_s(self, parts: Sequence[tuple[int, int]], speed: float = 1.0) -> float:
        """:meth:`prefill_s` of a batch given as ``(tokens, context)`` pairs, on an engine
        of relative ``speed`` (:meth:`speed`)."""
        # One loop in place of two sums over generators; the additions are the
        # sums' own, in the same order (0 + x is x, whether 0 is an int or a float).
        tokens = 0
        flops = 0.0
        for n, ctx in parts:
            tokens += n
            flops += self.flops(n, ctx)
        if tokens == 0:
            return 0.0
        return self._seconds(flops, tokens) / speed

    def attention_s(self, chunk: Chunk, batch_tokens: int) -> float:
        """Predicted attention time of ``chunk`` in a batch of ``batch_tokens`` (for the quota)."""
        return self.chunk_attention_s(chunk.tokens, chunk.context, batch_tokens)

    def chunk_attention_s(self, tokens: int, context: int, batch_tokens: int,
                          speed: float = 1.0) -> float:
        """:meth:`attention_s` of ``tokens`` new tokens after ``context``."""
        return self._seconds(self.attention_flops(tokens, context), max(batch_tokens, 1)) / speed

    def speed(self, node_id: int) -> float:
        """Relative compute speed of node ``node_id``'s engines (``compute_factors``): every
        prefill and decode duration on them is the nominal one divided by it."""
        return self.spec.compute_factor_of(node_id)

    def prefill_tokens_per_s(self, context: float) -> float:
        """Tokens one GPU prefills per second at ``context``, in large batches."""
        eff = self.model.prefill_efficiency[-1][1]
        return self._flops * eff / self.model.prefill_flops_per_token(context)

    # -- decode -------------------------------------------------------------
    #: ``decode_iteration_s(batch, context_tokens)``: the model's formula, bound in
    #: ``__init__`` (no wrapper call: decode engines retime on every change).
    decode_iteration_s: Callable[[int, float], float]

    # -- bytes and links ----------------------------------------------------
    def kv_bytes(self, tokens: float) -> float:
        return tokens * self.model.kv_bytes_per_token

    @property
    def snic_bytes_s(self) -> float:
        return self.spec.node.snic_bytes_s

    @property
    def cnic_kv_bytes_s(self) -> float:
        return self.spec.node.cnic_kv_bytes_s

    @property
    def pcie_bytes_s(self) -> float:
        return self.spec.node.pcie_bytes_s

    def layer_pieces(self, nbytes: float) -> int:
        """Copies or RDMA writes that move ``nbytes`` of KV into HBM: one per block and layer."""
        return math.ceil(nbytes / self._block_bytes) * self._layers

    def h2d_overhead_s(self, nbytes: float) -> float:
        """Submission time of the host-to-GPU copies of ``nbytes`` (beyond bandwidth)."""
        return self.layer_pieces(nbytes) * self._h2d_us * 1e-6

    def rdma_overhead_s(self, nbytes: float) -> float:
        """Submission time of the RDMA writes of ``nbytes`` (beyond bandwidth)."""
        return self.layer_pieces(nbytes) * self._rdma_us * 1e-6

    def tokens_readable(self, seconds: float) -> float:
        """KV tokens one node's SNIC reads in ``seconds`` (the paper's α is 3 s of this)."""
        return seconds * self.snic_bytes_s / self.model.kv_bytes_per_token
