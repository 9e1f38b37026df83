"""What a decision reserves, applied to a view: how a scheduler that decides several
requests on one snapshot keeps a burst from landing on one engine."""

from __future__ import annotations

from dataclasses import replace

from runtime.decision import Decision, split_tokens
from runtime.request import Request
from runtime.view import ClusterView, QueueView


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
    engines[pe.engine_id] = replace(pe, seq=pe.seq + 1,
                                    tok=pe.tok + max(request.appended_tokens, 1))
    engines[de.engine_id] = replace(
        de, seq=de.seq + 1, tok=de.tok + request.total_tokens,
        free_hbm_bytes=de.free_hbm_bytes - request.total_tokens * spec.model.kv_bytes_per_token)
    nodes = list(view.nodes)
    pe_tokens, de_tokens = split_tokens(request.hit_tokens, decision.decode_share,
                                        spec.block_tokens)
    for node_id, tokens in ((pe.node_id, pe_tokens), (de.node_id, de_tokens)):
        if tokens:
            node = nodes[node_id]
            nodes[node_id] = replace(node, read_q_tokens=node.read_q_tokens + tokens)
    queue = view.queue
    if queue.requests > 0:
        queue = QueueView(queue.requests - 1, max(0, queue.tokens - request.prompt_tokens))
    return ClusterView(view.time_s, spec, tuple(engines), tuple(nodes), queue)
