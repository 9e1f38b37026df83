"""The paper's engine choice, with a request's hit blocks split between both read paths."""

from __future__ import annotations

import math

from agents.heuristics.dualpath import DualPath
from runtime.request import Request
from runtime.view import ClusterView, EngineView


def balanced_de_blocks(blocks: int, block_bytes: float, pe_queue_bytes: float, pe_bytes_s: float,
                       de_queue_bytes: float, de_bytes_s: float) -> int:
    """Blocks (of ``blocks``) to read on the DE node so both sides finish together.

    Each side drains its queued bytes and then its blocks at its SNIC bandwidth;
    the exact balance point is rounded to the whole block count with the earlier
    finish of the slower side (ties: fewer DE blocks) and clamped to ``[0, blocks]``.
    """
    if de_bytes_s <= 0:
        return 0
    if pe_bytes_s <= 0:
        return blocks
    exact = ((de_bytes_s * (pe_queue_bytes + blocks * block_bytes) - pe_bytes_s * de_queue_bytes)
             / (block_bytes * (pe_bytes_s + de_bytes_s)))

    def finish(x: int) -> float:
        return max((pe_queue_bytes + (blocks - x) * block_bytes) / pe_bytes_s,
                   (de_queue_bytes + x * block_bytes) / de_bytes_s)

    low = min(blocks, max(0, math.floor(exact)))
    high = min(blocks, low + 1)
    return high if finish(high) < finish(low) else low


class DualPathSplit(DualPath):
    """:class:`DualPath`'s engines; the hit blocks split so both reads finish together.

    ``decode_share = de_blocks / hit_blocks`` with ``hit_blocks =
    ceil(hit_tokens / block_tokens)``, given each node's queued bytes
    (``read_q_tokens`` × KV bytes per token) and SNIC bandwidth; 0 with no hits.
    """

    name = "dualpath_split"

    def _share(self, request: Request, view: ClusterView, pe: EngineView,
               de: EngineView) -> tuple[float, str]:
        if request.hit_tokens == 0:
            return 0.0, "no hits"
        spec = view.spec
        kv = spec.model.kv_bytes_per_token
        blocks = math.ceil(request.hit_tokens / spec.block_tokens)
        pe_node, de_node = view.nodes[pe.node_id], view.nodes[de.node_id]
        de_blocks = balanced_de_blocks(
            blocks, spec.block_bytes, pe_node.read_q_tokens * kv, pe_node.snic_bytes_s,
            de_node.read_q_tokens * kv, de_node.snic_bytes_s)
        return de_blocks / blocks, f"split {de_blocks}/{blocks} blocks de"
