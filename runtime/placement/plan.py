"""Where each hit block of a placed request comes from: one rule for every execution.

A hit block is served from the cheapest place holding it: the prefill engine's HBM
cache (nothing moves), its node's DRAM (a host-to-GPU copy), another node's DRAM
over the compute network (``cache.peer_fetch``; the decode node's included), and
what no cache holds from storage, by the decision's two paths. Caches hold leading
blocks (whole prefixes), so the sources are consecutive ranges of the prompt in
that order.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.cluster import ClusterSpec
from runtime.request import Request
from runtime.slots import slot_init
from runtime.view import PrefixView


@slot_init
@dataclass(frozen=True, slots=True)
class LoadPlan:
    """Hit tokens by source; ``peer_node`` is the node whose DRAM serves
    ``dram_peer_tokens`` (-1 when none does). The sources sum to the hit tokens."""

    hbm_tokens: int
    dram_local_tokens: int
    dram_peer_tokens: int
    peer_node: int
    storage_tokens: int

    @property
    def cached_tokens(self) -> int:
        return self.hbm_tokens + self.dram_local_tokens + self.dram_peer_tokens

    def peer_engine(self, prefill_engine: int, gpus: int) -> int:
        """The engine whose CNIC sends the peer's blocks: the peer node's engine on the
        prefill engine's rail (the same local GPU index); -1 without a peer."""
        return self.peer_node * gpus + prefill_engine % gpus if self.dram_peer_tokens else -1


def load_plan(spec: ClusterSpec, request: Request, prefix: PrefixView | None,
              prefill_engine: int, decode_engine: int) -> LoadPlan:
    """The sources of ``request``'s hit tokens if it is placed on these engines."""
    hit = request.hit_tokens
    if prefix is None or hit == 0:
        return LoadPlan(0, 0, 0, -1, hit)
    tokens = prefix.block_tokens
    hbm = min(prefix.hbm_blocks[prefill_engine] * tokens, hit)
    pe_node = prefill_engine // spec.node.gpus
    local_end = min(prefix.dram_blocks[pe_node] * tokens, hit)
    local = local_end - hbm if local_end > hbm else 0
    covered = hbm if hbm > local_end else local_end
    peer_node, peer = -1, 0
    if spec.cache.peer_fetch:
        peer_node = best_peer(prefix.dram_blocks, pe_node, decode_engine // spec.node.gpus)
        if peer_node >= 0:
            peer_end = min(prefix.dram_blocks[peer_node] * tokens, hit)
            if peer_end > covered:
                peer, covered = peer_end - covered, peer_end
            else:
                peer_node = -1
    return LoadPlan(hbm, local, peer, peer_node, hit - covered)


def best_peer(dram_blocks: tuple[int, ...], pe_node: int, de_node: int) -> int:
    """The other node holding the most leading blocks (ties: the decode node, whose CNIC
    the request uses anyway, then the lowest id); -1 when no other node holds any."""
    best, most = -1, 0
    for node, blocks in enumerate(dram_blocks):
        if node != pe_node and (blocks > most or (blocks == most and blocks and node == de_node)):
            best, most = node, blocks
    return best
