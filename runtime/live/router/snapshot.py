"""The :class:`ClusterView` the router passes to the policy."""

from __future__ import annotations

from runtime.cluster import ClusterSpec
from runtime.live.router.records import DEAD_BACKLOG_TOKENS, NodeState
from runtime.placement import Ledger
from runtime.view import ClusterView, EngineView, NodeView, PrefixView, QueueView


def cluster_view(spec: ClusterSpec, nodes: dict[int, NodeState], ledger: Ledger,
                 queue: QueueView, now: float, prefix: PrefixView | None = None
                 ) -> ClusterView:
    """The view at ``now``: the ledger's engine loads and the nodes' latest reports plus
    what was placed on them since (dead nodes' engines look full); ``prefix``: where the
    request at hand's prefix sits, as the block index knows it."""
    engines = []
    for e in range(spec.engines):
        node = nodes[spec.node_of(e)]
        load = ledger.loads[e]
        seq, tok, free = load.seq, load.tok, load.free_hbm
        if node.dead:
            # An engine that is gone looks full: no HBM, a full batch and a backlog no
            # load-aware policy picks. One that picks it anyway is deferred.
            seq, tok, free = spec.decode_max_batch, DEAD_BACKLOG_TOKENS, 0.0
        engines.append(EngineView(e, spec.role_of(e), spec.node_of(e), spec.group_of(e),
                                  seq, tok, free, node.busy.get(e, 0.0)))
    kvb = spec.model.kv_bytes_per_token
    views = []
    for n in range(spec.nodes):
        state = nodes[n]
        queued = state.read_q + sum(nbytes for _, nbytes in state.placed)
        views.append(NodeView(n, spec.role_of_node(n), queued / kvb,
                              spec.snic_bytes_s_of(n), state.free_buffer))
    return ClusterView(now, spec, tuple(engines), tuple(views), queue, prefix)
