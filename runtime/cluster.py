"""The whole PD-disaggregated cluster: how many nodes of each role, their hardware, the model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from runtime.errors import require
from runtime.eviction import EVICTIONS
from runtime.model import ModelSpec
from runtime.node import NodeSpec
from runtime.role import Role


@dataclass(frozen=True)
class CacheSpec:
    """How the KV-cache tiers behave (their sizes are ``node.dram_cache_gb`` and
    ``node.hbm_cache_gb``).

    ``peer_fetch``: a prefill engine may take hit blocks from another node's DRAM
    cache (the decode node's included) over the compute network. ``eviction``: which
    blocks a full cache gives up first (a name of :data:`runtime.eviction.EVICTIONS`).
    """

    peer_fetch: bool = True
    eviction: str = "lru"

    def __post_init__(self) -> None:
        require(isinstance(self.peer_fetch, bool), "cache.peer_fetch",
                f"must be true or false, got {self.peer_fetch!r}")
        require(self.eviction in EVICTIONS, "cache.eviction",
                f"must be one of {', '.join(EVICTIONS)}, got {self.eviction!r}")


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster of prefill nodes then decode nodes, one engine per GPU.

    (Counts are cached properties: they are read on every scheduling decision.)

    Numbering: nodes ``0 .. prefill_nodes-1`` are prefill nodes and the rest
    decode nodes; engines are numbered node by node, so engine ``e`` lives on
    node ``e // node.gpus``. Engines form groups of ``*_group_nodes`` whole
    nodes (the paper's PE and DE groups).

    ``snic_factors`` degrades storage NICs: empty (the default) runs every node
    at the nominal ``node.snic_bytes_s``; otherwise it holds one factor in
    (0, 1] per node, and node ``n`` reads and writes storage at
    :meth:`snic_bytes_s_of` ``(n)`` = nominal × ``snic_factors[n]``.
    ``compute_factors`` likewise makes nodes differ in compute speed: one factor
    > 0 per node (1 = the nominal GPU), which scales the speed of prefill and decode
    on that node's engines (see :class:`runtime.cost.CostModel`).
    """

    name: str
    prefill_nodes: int
    decode_nodes: int
    node: NodeSpec = field(default_factory=NodeSpec)
    model: ModelSpec = field(default_factory=lambda: ModelSpec(
        name="unnamed", layers=1, kv_bytes_per_token=1, dense_flops_per_token=1.0,
        attn_flops_per_ctx_token=0.0))
    block_tokens: int = 64
    prefill_quota_s: float = 0.3
    prefill_group_nodes: int = 1
    decode_group_nodes: int = 1
    decode_max_batch: int = 256
    slo_ttft_s: float = 4.0
    slo_tpot_s: float = 0.05
    snic_factors: tuple[float, ...] = ()
    compute_factors: tuple[float, ...] = ()
    cache: CacheSpec = field(default_factory=CacheSpec)

    def __post_init__(self) -> None:
        require(self.prefill_nodes > 0, "prefill_nodes",
                f"must be > 0 (zero engines), got {self.prefill_nodes}")
        require(self.decode_nodes > 0, "decode_nodes",
                f"must be > 0 (zero engines), got {self.decode_nodes}")
        require(self.block_tokens > 0, "block_tokens", f"must be > 0, got {self.block_tokens}")
        require(self.prefill_quota_s > 0, "prefill_quota_s",
                f"must be > 0, got {self.prefill_quota_s}")
        require(self.decode_max_batch > 0, "decode_max_batch",
                f"must be > 0, got {self.decode_max_batch}")
        require(self.slo_ttft_s > 0, "slo_ttft_s", f"must be > 0, got {self.slo_ttft_s}")
        require(self.slo_tpot_s > 0, "slo_tpot_s", f"must be > 0, got {self.slo_tpot_s}")
        require(self.prefill_group_nodes > 0 and self.prefill_nodes % self.prefill_group_nodes == 0,
                "prefill_group_nodes",
                f"must divide prefill_nodes={self.prefill_nodes}, got {self.prefill_group_nodes}")
        require(self.decode_group_nodes > 0 and self.decode_nodes % self.decode_group_nodes == 0,
                "decode_group_nodes",
                f"must divide decode_nodes={self.decode_nodes}, got {self.decode_group_nodes}")
        self._check_factors("snic_factors", 1.0)
        self._check_factors("compute_factors", math.inf)

    def _check_factors(self, key: str, most: float) -> None:
        factors = getattr(self, key)
        require(isinstance(factors, tuple), key,
                f"must be a tuple of numbers, got {type(factors).__name__} {factors!r}")
        if not factors:
            return
        require(len(factors) == self.nodes, key,
                f"must hold one factor per node ({self.nodes}: {self.prefill_nodes} prefill "
                f"then {self.decode_nodes} decode), got {len(factors)}: {list(factors)}")
        bound = "(0, 1]" if most == 1.0 else "(0, inf)"
        for n, factor in enumerate(factors):
            ok = (isinstance(factor, int | float) and not isinstance(factor, bool)
                  and 0 < factor <= most and math.isfinite(factor))  # NaN fails too
            require(ok, key, f"factor of node {n} must lie in {bound}, got {factor!r}")

    @cached_property
    def nodes(self) -> int:
        return self.prefill_nodes + self.decode_nodes

    @cached_property
    def prefill_engines(self) -> int:
        return self.prefill_nodes * self.node.gpus

    @cached_property
    def decode_engines(self) -> int:
        return self.decode_nodes * self.node.gpus

    @cached_property
    def engines(self) -> int:
        return self.nodes * self.node.gpus

    @property
    def has_cache(self) -> bool:
        """Some KV-cache tier has a size (DRAM per node or HBM per prefill engine)."""
        return self.node.dram_cache_gb > 0 or self.node.hbm_cache_gb > 0

    def snic_bytes_s_of(self, node_id: int) -> float:
        """Storage NIC bandwidth of node ``node_id`` in bytes/s (nominal × its factor)."""
        nominal = self.node.snic_bytes_s
        return nominal * self.snic_factors[node_id] if self.snic_factors else nominal

    def compute_factor_of(self, node_id: int) -> float:
        """Compute speed of node ``node_id``'s engines relative to the nominal GPU."""
        return self.compute_factors[node_id] if self.compute_factors else 1.0

    def node_of(self, engine_id: int) -> int:
        return engine_id // self.node.gpus

    def role_of_node(self, node_id: int) -> Role:
        return Role.PREFILL if node_id < self.prefill_nodes else Role.DECODE

    def role_of(self, engine_id: int) -> Role:
        return self.role_of_node(self.node_of(engine_id))

    def group_of(self, engine_id: int) -> int:
        """Group index within the engine's role."""
        node = self.node_of(engine_id)
        if node < self.prefill_nodes:
            return node // self.prefill_group_nodes
        return (node - self.prefill_nodes) // self.decode_group_nodes

    @property
    def block_bytes(self) -> int:
        """Bytes of one full block (all layers of ``block_tokens`` tokens)."""
        return self.block_tokens * self.model.kv_bytes_per_token
