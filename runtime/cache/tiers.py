"""A cluster's KV-cache tiers: a DRAM cache per node and an HBM cache per prefill engine.

What is cached when (the rules every execution follows):

- blocks a node reads from storage stay in that node's DRAM (when the read is done,
  and only where they continue a prefix the node holds);
- at the end of a request's prefill its prompt's blocks stay in the prefill engine's
  HBM cache and in its node's DRAM (the KV is in HBM; offloading it to host memory
  is what LMCache and Dynamo's block manager do);
- the decode node keeps the prompt blocks it receives from the prefill engine.

A hit block is served from the cheapest place holding it (see
:func:`runtime.placement.plan.load_plan`), and a hit refreshes the blocks it used.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.cache.prefix import prefix_hashes
from runtime.cache.prefix_cache import PrefixCache
from runtime.cluster import ClusterSpec
from runtime.eviction import EVICTIONS
from runtime.placement.plan import LoadPlan
from runtime.request import Request
from runtime.view import PrefixView
from runtime.workload.base import Workload

#: A request's block hashes and the tokens each block holds (:meth:`CacheTiers.hashes`).
Prefix = tuple[Sequence[int], int]


def hash_block_tokens(workload: Workload, block_tokens: int) -> int:
    """Tokens per block of the hashes a workload's requests carry: a trace's own block
    (``trace_block_tokens``, also of a trace inside a mixed workload), else the
    cluster's ``block_tokens`` (agents' chains)."""
    sizes = {int(size) for part in getattr(workload, "parts", (workload,))
             if (size := getattr(part, "trace_block_tokens", None)) is not None}
    if len(sizes) > 1:
        raise ValueError(f"workload {workload.name}: its traces have different block sizes "
                         f"({sorted(sizes)} tokens); caches need one")
    return sizes.pop() if sizes else block_tokens


class CacheTiers:
    """The caches of one cluster, ``None`` where a tier has size 0."""

    def __init__(self, spec: ClusterSpec, hash_tokens: int) -> None:
        self.spec = spec
        self.block_tokens = spec.block_tokens  # of agents' chains
        self.hash_tokens = hash_tokens         # of requests' own hashes
        kv = spec.model.kv_bytes_per_token
        eviction = EVICTIONS[spec.cache.eviction]()
        dram = int(spec.node.dram_cache_bytes // kv)
        hbm = int(spec.node.hbm_cache_bytes // kv)
        self.dram: list[PrefixCache] | None = (
            [PrefixCache(dram, eviction) for _ in range(spec.nodes)] if dram > 0 else None)
        self.hbm: list[PrefixCache] | None = (
            [PrefixCache(hbm, eviction) for _ in range(spec.prefill_engines)] if hbm > 0
            else None)
        self._no_dram = (0,) * spec.nodes
        self._no_hbm = (0,) * spec.prefill_engines

    @staticmethod
    def of(spec: ClusterSpec, workload: Workload) -> CacheTiers | None:
        """The tiers of ``spec``, or ``None`` when it has no cache at all."""
        if not spec.has_cache:
            return None
        return CacheTiers(spec, hash_block_tokens(workload, spec.block_tokens))

    def hashes(self, request: Request) -> tuple[Sequence[int], int]:
        """The request's block hashes and the tokens each block holds."""
        own = request.block_hashes is not None
        return (prefix_hashes(request, self.block_tokens),
                self.hash_tokens if own else self.block_tokens)

    def locate(self, request: Request, prefix: Prefix) -> PrefixView:
        """Where ``request``'s prefix sits: leading blocks per node DRAM and per PE HBM."""
        hashes, tokens = prefix
        return PrefixView(request.request_id, tokens, self._held(self.dram, hashes, self._no_dram),
                          self._held(self.hbm, hashes, self._no_hbm))

    @staticmethod
    def _held(caches: list[PrefixCache] | None, hashes: Sequence[int],
              none: tuple[int, ...]) -> tuple[int, ...]:
        if caches is None or not hashes:
            return none
        first = hashes[0]  # most caches hold no prefix starting there: no call for them
        return tuple([cache.match(hashes) if first in cache.roots else 0 for cache in caches])

    # -- hits and stores ---------------------------------------------------------------
    def served(self, prefix: Prefix, plan: LoadPlan, engine_id: int, node_id: int,
               now: float) -> None:
        """``plan``'s cached blocks were taken for a request of ``prefix`` on prefill engine
        ``engine_id`` of node ``node_id``: each cache that served some is hit."""
        hashes, tokens = prefix
        if plan.hbm_tokens and self.hbm is not None:
            self.hbm[engine_id].touch(hashes, -(-plan.hbm_tokens // tokens), now)
        if self.dram is None:
            return
        if plan.dram_local_tokens:
            local_end = plan.hbm_tokens + plan.dram_local_tokens
            self.dram[node_id].touch(hashes, -(-local_end // tokens), now)
        if plan.dram_peer_tokens:
            self.dram[plan.peer_node].touch(hashes, -(-plan.cached_tokens // tokens), now)

    def read_done(self, prefix: Prefix, node_id: int, first_token: int, end_token: int,
                  now: float) -> None:
        """Node ``node_id`` read tokens ``[first_token, end_token)`` of the prompt from storage.
        A last block read only in part counts as read: the rest of it is computed by the
        prefill, after which the prefill node and the decode node keep the whole block."""
        if self.dram is None or end_token <= first_token:
            return
        hashes, tokens = prefix
        self.dram[node_id].store(hashes, -(-end_token // tokens), tokens, now,
                                 start=first_token // tokens)

    def prefilled(self, prefix: Prefix, engine_id: int, node_id: int, now: float) -> None:
        """A request's prefill ended on ``engine_id``: its prompt blocks stay there."""
        hashes, tokens = prefix
        if self.hbm is not None:
            self.hbm[engine_id].store(hashes, len(hashes), tokens, now)
        if self.dram is not None:
            self.dram[node_id].store(hashes, len(hashes), tokens, now)

    def received(self, prefix: Prefix, node_id: int, now: float) -> None:
        """The decode node ``node_id`` received a request's prompt KV."""
        if self.dram is not None:
            hashes, tokens = prefix
            self.dram[node_id].store(hashes, len(hashes), tokens, now)
