"""The paper's scheduler, extended to caches: each candidate placement's TTFT predicted.

Where no cache holds any of the request's prefix this is exactly :class:`DualPath`.
Otherwise it keeps DualPath's decode engine and, for each candidate prefill engine
and each storage path, predicts the request's time to first token from the links'
queues and the engines' loads, and takes the earliest.
"""

from __future__ import annotations

from agents.heuristics.dualpath import DualPath
from runtime.cost import CostModel
from runtime.decision import Decision, Defer, WaitFor
from runtime.placement.ledger import prefill_tokens
from runtime.placement.plan import LoadPlan, load_plan
from runtime.request import Request
from runtime.view import ClusterView, EngineView


class DualPathCache(DualPath):
    """:class:`DualPath` that knows where a request's prefix sits.

    With cached blocks somewhere: DualPath's decode engine; prefill candidates are
    DualPath's own choice, every engine whose HBM cache holds some of the prefix and
    the least-loaded engine of every node whose DRAM holds some (all under β); for each
    and each storage path (all storage blocks on the PE side, or on the DE side), the
    predicted TTFT is ``max(load done, prefill queue drained) + own compute``, where a
    source's load is done when its link has carried its queue and then these bytes, with
    the cost model's per-block submission costs (storage: the node's read queue at its
    SNIC rate, then RDMA for the DE path; the node's DRAM over PCIe; a peer's DRAM over
    its CNIC), and the queue drains at the engine's prefill rate. The earliest wins
    (ties: fewer ``tok``, then lower id).
    """

    name = "dualpath_cache"

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer:
        prefix = view.prefix
        if prefix is None or request.hit_tokens == 0 or not prefix.anywhere:
            return super().decide(request, view)
        de_pick = self.choose_decode(request, view)
        if de_pick is None:
            return Defer("no decode engine has room", WaitFor.DECODE)
        de = de_pick[0]
        candidates = self._candidates(request, view)
        if not candidates:
            return Defer("every prefill engine is over beta", WaitFor.PREFILL)
        cost = self._cost
        assert cost is not None  # set by thresholds()
        rate = cost.prefill_tokens_per_s(request.prompt_tokens)  # at nominal speed
        best: tuple[float, int, int] | None = None
        choice = (0, 0.0)
        for pe in candidates:
            plan = load_plan(view.spec, request, prefix, pe.engine_id, de.engine_id)
            shares = (0.0, 1.0) if plan.storage_tokens else (0.0,)
            for share in shares:
                ttft = predict_ttft(cost, view, request, plan, pe, de, share, rate)
                key = (ttft, pe.tok, pe.engine_id)
                if best is None or key < best:
                    best, choice = key, (pe.engine_id, share)
        assert best is not None
        side = "read de" if choice[1] else "read pe"
        return Decision(choice[0], de.engine_id, choice[1],
                        f"predicted ttft {best[0]:.3g}s, {de_pick[1]}, {side}")

    def _candidates(self, request: Request, view: ClusterView) -> list[EngineView]:
        prefix = view.prefix
        assert prefix is not None
        pes = view.prefill_engines()
        chosen: dict[int, EngineView] = {}
        pick = self.choose_prefill(request, view)
        if pick is not None:
            chosen[pick[0].engine_id] = pick[0]
        _, beta = self.thresholds(request, view.spec)
        gpus = view.spec.node.gpus
        if any(prefix.hbm_blocks):
            for e in pes:
                if e.tok <= beta and prefix.hbm_blocks[e.engine_id]:
                    chosen[e.engine_id] = e
        for node, blocks in enumerate(prefix.dram_blocks[:view.spec.prefill_nodes]):
            if blocks:
                mine = [e for e in pes[node * gpus:(node + 1) * gpus] if e.tok <= beta]
                if mine:
                    e = min(mine, key=lambda e: (e.tok, e.engine_id))
                    chosen[e.engine_id] = e
        return list(chosen.values())


def predict_ttft(cost: CostModel, view: ClusterView, request: Request, plan: LoadPlan,
                 pe: EngineView, de: EngineView, share: float, rate: float) -> float:
    """Seconds from now to ``request``'s first token if placed so (see the class docs);
    ``rate``: tokens per second a nominal engine prefills at this prompt's length."""
    spec = view.spec
    kv = spec.model.kv_bytes_per_token
    cnic = spec.node.cnic_kv_bytes_s
    storage = plan.storage_tokens
    de_tokens = storage if share else 0
    pe_tokens = storage - de_tokens
    load = 0.0
    if pe_tokens or plan.dram_local_tokens:
        pe_node = view.nodes[pe.node_id]
        read = (pe_node.read_q_tokens + pe_tokens) * kv / pe_node.snic_bytes_s if pe_tokens else 0.0
        host = (pe_tokens + plan.dram_local_tokens) * kv
        load = read + host / spec.node.pcie_bytes_s + cost.h2d_overhead_s(host)
    if de_tokens:
        de_node = view.nodes[de.node_id]
        read = (de_node.read_q_tokens + de_tokens) * kv / de_node.snic_bytes_s
        nbytes = de_tokens * kv
        rdma = (read + (view.cnic_backlog_bytes(de.engine_id) + nbytes) / cnic
                + cost.rdma_overhead_s(nbytes))
        load = max(load, rdma)
    if plan.dram_peer_tokens:
        nbytes = plan.dram_peer_tokens * kv
        rdma = ((view.cnic_backlog_bytes(plan.peer_engine(pe.engine_id, spec.node.gpus))
                 + nbytes) / cnic + cost.rdma_overhead_s(nbytes))
        load = max(load, rdma)
    rate *= cost.speed(pe.node_id)
    queued = pe.tok / rate
    return max(load, queued) + prefill_tokens(request) / rate
