"""What a decision reserves, applied to a view: how a scheduler that decides several
requests on one snapshot keeps a burst from landing on one engine."""

from __future__ import annotations

from runtime.decision import Decision, split_tokens
from runtime.request import Request
from runtime.view import ClusterView, EngineView, NodeView, QueueView


def reserve(view: ClusterView, request: Request, decision: Decision) -> ClusterView:
    """``view`` after placing ``request`` as ``decision`` says, as the simulator places it.

    The prefill engine gains one sequence and the tokens it must compute, the
    decode engine one sequence, the request's whole context and the HBM for it;
    each side's node gains the hit tokens read through it; the request leaves
    the waiting queue if it was counted there. ``view`` itself is not changed.
    """
    spec = view.spec
    engines = list(view.engines)
    pe = engines[decision.prefill_engine]
    de = engines[decision.decode_engine]
    # Built field by field: dataclasses.replace costs several times more, and a
    # service pays this between every two decisions of a batch.
    engines[pe.engine_id] = EngineView(pe.engine_id, pe.role, pe.node_id, pe.group, pe.seq + 1,
                                       pe.tok + max(request.appended_tokens, 1),
                                       pe.free_hbm_bytes, pe.cnic_busy_until_s)
    need = request.total_tokens * spec.model.kv_bytes_per_token
    engines[de.engine_id] = EngineView(de.engine_id, de.role, de.node_id, de.group, de.seq + 1,
                                       de.tok + request.total_tokens, de.free_hbm_bytes - need,
                                       de.cnic_busy_until_s)
    nodes = list(view.nodes)
    pe_tokens, de_tokens = split_tokens(request.hit_tokens, decision.decode_share,
                                        spec.block_tokens)
    for node_id, tokens in ((pe.node_id, pe_tokens), (de.node_id, de_tokens)):
        if tokens:
            n = nodes[node_id]
            nodes[node_id] = NodeView(n.node_id, n.role, n.read_q_tokens + tokens, n.snic_bytes_s,
                                      n.free_buffer_bytes)
    queue = view.queue
    if queue.requests > 0:
        queue = QueueView(queue.requests - 1, max(0, queue.tokens - request.prompt_tokens))
    return ClusterView(view.time_s, spec, tuple(engines), tuple(nodes), queue)
