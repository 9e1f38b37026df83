"""The DualPath paper's scheduler: PE by read-queue threshold α and token cap β,
DE by token threshold Z, the whole request read on the shorter-queue side."""

from __future__ import annotations

from agents.heuristics.common import Heuristic, number, shorter_queue_share
from runtime.cluster import ClusterSpec
from runtime.cost import CostModel
from runtime.decision import Decision, Defer, WaitFor
from runtime.placement.order import DEFAULT_MAX_WAIT_S
from runtime.request import Request
from runtime.view import ClusterView, EngineView


class DualPath(Heuristic):
    """The paper's scheduler (see ``dualpath-facts.md``, "The paper's scheduler").

    PE: skip engines with ``tok > β``; prefer those whose node has ``read_q <= α``,
    lowest ``tok`` first; else the lowest ``tok`` of the rest; none left → defer.
    α is what one node's SNIC reads in ``alpha_s`` seconds, β what one GPU
    prefills in ``beta_s`` seconds at the request's prompt length.

    DE: decode groups in order of total ``tok``; in a group,
    ``Z = z_slack × (queued tokens that fit in the group's free HBM + tok on its
    engines) / engines``; among engines with room prefer ``tok + len <= Z``
    (fewest ``seq``, then lowest ``tok``, then id), else the lowest ``tok`` with
    room; a group with no room passes to the next; none → defer.
    """

    name = "dualpath"

    def __init__(self, *, alpha_s: float = 3.0, beta_s: float = 5.0,
                 z_slack: float = 1.05, order: str = "fifo",
                 max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        super().__init__(order=order, max_wait_s=max_wait_s)
        self.alpha_s = number("alpha_s", alpha_s, inclusive=True, allow_inf=True)
        self.beta_s = number("beta_s", beta_s, allow_inf=True)
        self.z_slack = number("z_slack", z_slack)
        self._cost: CostModel | None = None
        # The last request's thresholds: a decision may need them more than once.
        self._limits: tuple[Request, ClusterSpec, tuple[float, float]] | None = None

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer:
        # The two choices are independent; the decode side is tried first
        # because a full decode tier is the usual reason to defer.
        de = self.choose_decode(request, view)
        if de is None:
            return Defer("no decode engine has room", WaitFor.DECODE)
        pe = self.choose_prefill(request, view)
        if pe is None:
            return Defer("every prefill engine is over beta", WaitFor.PREFILL)
        share, why = self._share(request, view, pe[0], de[0])
        return Decision(pe[0].engine_id, de[0].engine_id, share, f"{pe[1]}, {de[1]}, {why}")

    def thresholds(self, request: Request, spec: ClusterSpec) -> tuple[float, float]:
        """(α, β) in tokens for ``request`` on ``spec``."""
        last = self._limits
        if last is not None and last[0] is request and last[1] is spec:
            return last[2]
        if self._cost is None or self._cost.spec is not spec:
            self._cost = CostModel(spec)
        alpha = self._cost.tokens_readable(self.alpha_s)
        beta = self._cost.prefill_tokens_per_s(request.prompt_tokens) * self.beta_s
        self._limits = (request, spec, (alpha, beta))
        return alpha, beta

    def choose_prefill(self, request: Request,
                       view: ClusterView) -> tuple[EngineView, str] | None:
        alpha, beta = self.thresholds(request, view.spec)
        open_ = [e for e in view.prefill_engines() if e.tok <= beta]
        if not open_:
            return None
        short = [e for e in open_ if view.nodes[e.node_id].read_q_tokens <= alpha]
        pool, why = (short, "pe read_q<=alpha") if short else (open_, "pe read_q>alpha")
        return min(pool, key=lambda e: (e.tok, e.engine_id)), why

    def choose_decode(self, request: Request,
                      view: ClusterView) -> tuple[EngineView, str] | None:
        # Groups are whole nodes and engines are numbered node by node, so each
        # group is a contiguous slice of the decode engines.
        spec = view.spec
        size = spec.decode_group_nodes * spec.node.gpus
        des = view.decode_engines()
        groups = [des[i:i + size] for i in range(0, len(des), size)]
        if len(groups) > 1:
            groups.sort(key=lambda g: (sum(e.tok for e in g), g[0].group))
        length = request.total_tokens
        for engines in groups:
            room, limit = self._room_and_z(engines, request, view)
            if not room:
                continue
            fits = [e for e in room if e.tok + length <= limit]
            if fits:
                return min(fits, key=lambda e: (e.seq, e.tok, e.engine_id)), "de tok+len<=Z"
            return min(room, key=lambda e: (e.tok, e.engine_id)), "de lowest tok"
        return None

    def _room_and_z(self, engines: tuple[EngineView, ...], request: Request,
                    view: ClusterView) -> tuple[list[EngineView], float]:
        """The group's engines with room for ``request`` (the rule of ``common.has_room``)
        and the group's Z, in one pass: this runs on every decision."""
        spec = view.spec
        kv = spec.model.kv_bytes_per_token
        need = request.total_tokens * kv
        cap = spec.decode_max_batch
        room = []
        tok = 0
        free = 0.0
        for e in engines:
            tok += e.tok
            free += e.free_hbm_bytes
            if e.seq < cap and e.free_hbm_bytes >= need:
                room.append(e)
        queued = min(float(view.queue.tokens), free / kv)
        return room, self.z_slack * (queued + tok) / len(engines)

    def _share(self, request: Request, view: ClusterView, pe: EngineView,
               de: EngineView) -> tuple[float, str]:
        return shorter_queue_share(request, view, pe, de)
