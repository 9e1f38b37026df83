"""The cache-aware router as llm-d practises it: prefix-hit score by tier plus load score.

llm-d's scheduler scores each engine by where the request's prefix sits (static
tier weights: GPU 1.0, CPU 0.8, shared storage 0.4) and by its queue, and takes
the highest weighted sum; with disaggregation the decode engine is chosen after the
prefill engine. Dynamo's router does the same with other constants (host DRAM
0.75, disk 0.25 of a GPU hit).
"""

from __future__ import annotations

from agents.heuristics.common import Heuristic, number, shorter_queue_share, with_room
from runtime.decision import Decision, Defer, WaitFor
from runtime.placement.order import DEFAULT_MAX_WAIT_S
from runtime.placement.plan import load_plan
from runtime.request import Request
from runtime.view import ClusterView, EngineView

#: Tier weights of a hit block: the engine's HBM (llm-d's GPU tier), its node's DRAM
#: (CPU), another node's DRAM (a remote tier, as llm-d's shared storage). Storage
#: holds every hit block for every engine, so it scores nothing.
HBM_WEIGHT, DRAM_WEIGHT, PEER_WEIGHT = 1.0, 0.8, 0.4
PATHS = ("pe", "shorter")


class CacheAware(Heuristic):
    """Prefill engine by ``prefix_weight × prefix score + load_weight × load score``
    (highest wins; ties: lowest id). The prefix score is the tier-weighted share of the
    request's hit tokens the engine would get from caches; the load score is llm-d's
    queue scorer over unfinished tokens, ``(max tok - tok) / (max tok - min tok)``
    (1 when all are equal). Then the decode engine with room and the fewest ``tok``;
    reads on the PE side (``path=pe``) or on the shorter-queue side (``path=shorter``).
    Defers when no decode engine has room.
    """

    name = "cache_aware"

    def __init__(self, path: str = "pe", prefix_weight: float = 3.0, load_weight: float = 2.0,
                 *, order: str = "fifo", max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        super().__init__(order=order, max_wait_s=max_wait_s)
        if path not in PATHS:
            raise ValueError(f"cache_aware: path must be one of {', '.join(PATHS)}, "
                             f"got {path!r}")
        self.path = path
        self.prefix_weight = number("prefix_weight", prefix_weight, inclusive=True)
        self.load_weight = number("load_weight", load_weight, inclusive=True)

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer:
        room = with_room(view.decode_engines(), request, view.spec)
        if not room:
            return Defer("no decode engine has room", WaitFor.DECODE)
        pe = self.choose_prefill(request, view)
        de = min(room, key=lambda e: (e.tok, e.engine_id))
        if self.path == "pe" or request.hit_tokens == 0:
            share, why = 0.0, "read pe" if request.hit_tokens else "no hits"
        else:
            share, why = shorter_queue_share(request, view, pe, de)
        return Decision(pe.engine_id, de.engine_id, share, f"cache aware, {why}")

    def choose_prefill(self, request: Request, view: ClusterView) -> EngineView:
        pes = view.prefill_engines()
        low = min(e.tok for e in pes)
        spread = max(e.tok for e in pes) - low
        prefix = view.prefix
        cached = (prefix is not None and request.hit_tokens > 0 and prefix.anywhere)

        def score(e: EngineView) -> float:
            load = 1.0 if spread == 0 else 1.0 - (e.tok - low) / spread
            total = self.load_weight * load
            if cached:
                plan = load_plan(view.spec, request, prefix, e.engine_id, -1)
                hits = (HBM_WEIGHT * plan.hbm_tokens + DRAM_WEIGHT * plan.dram_local_tokens
                        + PEER_WEIGHT * plan.dram_peer_tokens)
                total += self.prefix_weight * hits / request.hit_tokens
            return total

        return max(pes, key=lambda e: (score(e), -e.engine_id))
