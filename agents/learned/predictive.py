"""A cost-based picker whose latency predictor is learned from outcomes.

For each candidate placement of a request — a prefill engine, a decode engine and a
read plan (every storage block on the PE side, every one on the DE side, or split so
both sides finish reading together) — the picker computes the pieces of its time to
first token from the view: how long each source's load takes given its link's queue
(the PE node's storage read and host copy, the DE node's read and RDMA, a peer's DRAM
over RDMA), how long the PE's prefill queue takes to drain at its node's speed, and
its own compute. A :class:`Predictor` (a linear model over those pieces, fitted to the
TTFTs that placed requests actually saw) predicts the candidate's TTFT. The untrained
predictor (``Predictor.prior()``) is the analytic bound ``max(loads, queue) + compute``,
which ``dualpath_cache`` also uses for cached prefixes; the fitted one corrects what the
bound leaves out.

What the picker chooses among, and how it scores, are the knobs of :class:`Knobs`,
which training sets per scenario (or per distribution of clusters) on training seeds.
With ``Knobs(prefill="paper", decode="paper", shares="split")`` it decides exactly as
``dualpath_split`` does where no cache holds anything: the learned policy can always
fall back to the paper's rule.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from agents.heuristics.common import with_room
from agents.heuristics.dualpath import DualPath
from agents.heuristics.dualpath_split import balanced_de_blocks
from runtime.cost import CostModel
from runtime.decision import Decision, Defer, WaitFor
from runtime.placement.ledger import prefill_tokens
from runtime.placement.plan import LoadPlan, load_plan
from runtime.policy import Outcome
from runtime.request import Request
from runtime.view import ClusterView, EngineView

#: The predictor's inputs, in seconds (``bias`` is 1): see :func:`features`.
FEATURES = ("pe_load_s", "de_load_s", "peer_load_s", "queue_s", "compute_s", "bound_s", "bias")
CHOICES = {"prefill": ("paper", "predict"), "decode": ("paper", "predict"),
           "shares": ("split", "predict")}


@dataclass(frozen=True)
class Predictor:
    """TTFT = ``weights`` · :func:`features` (one weight per name of :data:`FEATURES`)."""

    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"predictor has {len(self.weights)} weights, expected "
                             f"{len(FEATURES)} ({', '.join(FEATURES)})")
        if not all(isinstance(w, int | float) and math.isfinite(w) for w in self.weights):
            raise ValueError(f"predictor weights must be finite numbers, got {self.weights}")

    @classmethod
    def prior(cls) -> Predictor:
        """The analytic bound ``max(loads, queue) + compute``, before any training."""
        return cls(tuple(1.0 if name == "bound_s" else 0.0 for name in FEATURES))

    def predict(self, x: Sequence[float]) -> float:
        return sum(w * v for w, v in zip(self.weights, x, strict=True))


@dataclass(frozen=True)
class Knobs:
    """What the picker chooses among and how it scores.

    - ``prefill``: ``paper`` (``dualpath``'s PE, and the PE under β whose HBM holds the
      most of the prefix) or ``predict`` (also the least-loaded PE under β of every prefill node);
    - ``decode``: ``paper`` (``dualpath``'s Z rule) or ``predict`` (also, on every other
      decode node, its least-loaded engine with room that is no busier than the paper's
      choice by more than this request — ``affine_slack`` requests on the node whose
      DRAM holds most of the prefix);
    - ``shares``: ``split`` (the split where both sides finish reading together) or
      ``predict`` (also all on the PE side and all on the DE side);
    - ``affinity``: the score adds ``affinity`` × the reading time of the hit blocks
      that the chosen nodes' DRAM lacks: placed there, they are stored again beside the
      copy another node keeps and evict prefixes other agents' next turns would hit;
    - ``lane_tokens``: a request with at least this many storage tokens reads them all
      on the DE side (0: off). Such reads are the few long ones (a cold or evicted
      context); kept off the PE side they do not hold up the many short reads behind
      them in the PE node's FIFO read queue — at the cost of their own wait.
    """

    prefill: str = "predict"
    decode: str = "predict"
    shares: str = "predict"
    affinity: float = 0.0
    affine_slack: int = 4
    lane_tokens: int = 0

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"knob {name} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")
        if not (isinstance(self.affinity, int | float) and math.isfinite(self.affinity)
                and self.affinity >= 0):
            raise ValueError(f"knob affinity must be a finite number >= 0, got {self.affinity!r}")
        for name in ("affine_slack", "lane_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"knob {name} must be an integer >= 0, got {value!r}")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)  # not frozen: a frozen init costs a microsecond per candidate
class Candidate:
    """One placement: ``x`` its :data:`FEATURES`, ``score`` its predicted TTFT plus the
    affinity term, ``storage`` its storage tokens."""

    prefill: EngineView
    decode: EngineView
    share: float
    x: tuple[float, ...]
    score: float
    storage: int


class PredictivePicker:
    """The picker of this module's docstring, as a :class:`~runtime.policy.Policy`.

    The candidate with the lowest score (predicted TTFT, plus the affinity term) wins;
    with ``lane_tokens`` set, a long read's candidates are its all-DE-side ones where it
    has any. Defers, as ``dualpath`` does, when no decode engine has room or every
    prefill engine is over β. ``last_scores`` holds the chosen candidate's features.
    """

    def __init__(self, predictor: Predictor, knobs: Knobs = Knobs(), *,
                 name: str = "predictive") -> None:
        self.predictor = predictor
        self.knobs = knobs
        self.name = name
        self._rules = DualPath()
        self._cost: CostModel | None = None
        self.last_scores: tuple[float, ...] | None = None
        #: The probability of the last decision's candidate: 1 for the greedy picker.
        self.last_action_prob: float | None = None

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer:
        de_pick = self._rules.choose_decode(request, view)
        if de_pick is None:
            return Defer("no decode engine has room", WaitFor.DECODE)
        pes = self.prefill_candidates(request, view)
        if not pes:
            return Defer("every prefill engine is over beta", WaitFor.PREFILL)
        des = ([de_pick[0]] if self.knobs.decode == "paper"
               else decode_candidates(request, view, de_pick[0], self.knobs))
        self.last_action_prob = 1.0
        best = self.choose(self.candidates(request, view, pes, des))
        self.last_scores = best.x
        return Decision(best.prefill.engine_id, best.decode.engine_id, best.share,
                        f"predicted ttft {self.predictor.predict(best.x):.3g}s")

    def choose(self, candidates: list[Candidate]) -> Candidate:
        """The lowest score (ties: fewer PE ``tok``, then ids) in the request's pool."""
        lane = self.knobs.lane_tokens
        if lane and min(c.storage for c in candidates) >= lane:
            long_reads = [c for c in candidates if c.share == 1.0]
            candidates = long_reads or candidates
        return min(candidates, key=lambda c: (c.score, c.prefill.tok,
                                              c.prefill.engine_id, c.decode.engine_id))

    def candidates(self, request: Request, view: ClusterView, pes: Sequence[EngineView],
                   des: Sequence[EngineView]) -> list[Candidate]:
        cost = self._cost_model(view)
        rate = cost.prefill_tokens_per_s(request.prompt_tokens)
        knobs = self.knobs
        split_only, lane, affinity = knobs.shares == "split", knobs.lane_tokens, knobs.affinity
        w0, w1, w2, w3, w4, w5, w6 = self.predictor.weights
        out = []
        paper_de = des[0]
        for pe in pes:
            for de in des:
                plan = load_plan(view.spec, request, view.prefix, pe.engine_id, de.engine_id)
                spill = affinity * spill_s(view, request, pe, de) if affinity else 0.0
                for share in shares(view, plan, pe, de, split_only, lane):
                    if share == 0.0 and de is not paper_de and not affinity:
                        continue  # reads nothing on the DE side: the same as the paper's DE
                    x = features(cost, view, request, plan, pe, de, share, rate)
                    score = (w0 * x[0] + w1 * x[1] + w2 * x[2] + w3 * x[3] + w4 * x[4]
                             + w5 * x[5] + w6 + spill)
                    out.append(Candidate(pe, de, share, x, score, plan.storage_tokens))
        return out

    def prefill_candidates(self, request: Request, view: ClusterView) -> list[EngineView]:
        """The PEs tried (see :class:`Knobs`); empty when every PE is over β."""
        pick = self._rules.choose_prefill(request, view)
        if pick is None:
            return []
        _, beta = self._rules.thresholds(request, view.spec)
        chosen = {pick[0].engine_id: pick[0]}
        per_node = self.knobs.prefill == "predict"
        prefix = view.prefix
        held = (prefix.hbm_blocks if prefix is not None and request.hit_tokens
                and any(prefix.hbm_blocks) else None)
        least: dict[int, EngineView] = {}
        most: EngineView | None = None
        for e in view.prefill_engines():  # one pass: this runs on every decision
            if e.tok > beta:
                continue
            if per_node:
                other = least.get(e.node_id)
                if other is None or e.tok < other.tok:  # ties: the lower id, seen first
                    least[e.node_id] = e
            if held is not None and held[e.engine_id] and (
                    most is None or held[e.engine_id] > held[most.engine_id]
                    or (held[e.engine_id] == held[most.engine_id] and e.tok < most.tok)):
                most = e
        for e in least.values():
            chosen.setdefault(e.engine_id, e)
        if most is not None:
            chosen.setdefault(most.engine_id, most)
        return list(chosen.values())

    def _cost_model(self, view: ClusterView) -> CostModel:
        if self._cost is None or self._cost.spec is not view.spec:
            self._cost = CostModel(view.spec)
        return self._cost


def decode_candidates(request: Request, view: ClusterView, pick: EngineView,
                      knobs: Knobs) -> list[EngineView]:
    """``pick`` (the paper's choice) and the other decode nodes' candidates (see
    :class:`Knobs`)."""
    if request.hit_tokens == 0:
        return [pick]  # nothing to read: the decode engine changes no load time
    gpus = view.spec.node.gpus
    limit = pick.tok + request.total_tokens
    home = home_node(view) if knobs.affinity else -1
    wider = limit + (knobs.affine_slack - 1) * request.total_tokens
    out = [pick]
    des = view.decode_engines()
    for start in range(0, len(des), gpus):
        node = des[start:start + gpus]
        if node[0].node_id == pick.node_id:
            continue
        most = wider if node[0].node_id == home else limit
        room = [e for e in with_room(node, request, view.spec) if e.tok <= most]
        if room:
            out.append(min(room, key=lambda e: (e.tok, e.engine_id)))
    return out


def home_node(view: ClusterView) -> int:
    """The decode node whose DRAM holds the most leading blocks of the prefix (-1: none)."""
    prefix = view.prefix
    if prefix is None:
        return -1
    first = view.spec.prefill_nodes
    blocks = prefix.dram_blocks[first:]
    most = max(blocks, default=0)
    return first + blocks.index(most) if most else -1


def spill_s(view: ClusterView, request: Request, pe: EngineView, de: EngineView) -> float:
    """Reading time, at the nominal SNIC rate, of the hit blocks that the PE's and the
    DE's node DRAM do not hold."""
    hit = request.hit_tokens
    prefix = view.prefix
    spec = view.spec
    missing = 0
    for node in (pe.node_id, de.node_id):
        cached = prefix.dram_blocks[node] * spec.block_tokens if prefix is not None else 0
        missing += hit - cached if hit > cached else 0
    return missing * spec.model.kv_bytes_per_token / spec.node.snic_bytes_s


def shares(view: ClusterView, plan: LoadPlan, pe: EngineView, de: EngineView,
           split_only: bool, lane_tokens: int) -> tuple[float, ...]:
    """The read plans tried: the split where both sides finish reading together, and
    unless ``split_only`` all on the PE side and all on the DE side (all on the DE side
    also for a read of at least ``lane_tokens``, when set)."""
    storage = plan.storage_tokens
    if not storage:
        return (0.0,)
    spec = view.spec
    kv = spec.model.kv_bytes_per_token
    blocks = -(-storage // spec.block_tokens)
    pe_node, de_node = view.nodes[pe.node_id], view.nodes[de.node_id]
    split = balanced_de_blocks(blocks, spec.block_bytes, pe_node.read_q_tokens * kv,
                               pe_node.snic_bytes_s, de_node.read_q_tokens * kv,
                               de_node.snic_bytes_s) / blocks
    if not split_only:
        return (0.0, 1.0) if split in (0.0, 1.0) else (0.0, 1.0, split)
    if lane_tokens and storage >= lane_tokens and split != 1.0:
        return (split, 1.0)
    return (split,)


def features(cost: CostModel, view: ClusterView, request: Request, plan: LoadPlan,
             pe: EngineView, de: EngineView, share: float, rate: float) -> tuple[float, ...]:
    """:data:`FEATURES` of placing ``request`` so; ``rate``: tokens per second a nominal
    engine prefills at this prompt's length."""
    spec = view.spec
    kv = spec.model.kv_bytes_per_token
    storage = plan.storage_tokens
    block = spec.block_tokens
    de_tokens = round(share * -(-storage // block)) * block if share else 0
    if de_tokens > storage:
        de_tokens = storage
    pe_tokens = storage - de_tokens
    pe_load = de_load = peer_load = 0.0
    local = plan.dram_local_tokens
    if pe_tokens or local:
        host = (pe_tokens + local) * kv
        pe_load = host / spec.node.pcie_bytes_s + cost.h2d_overhead_s(host)
        if pe_tokens:
            node = view.nodes[pe.node_id]
            pe_load += (node.read_q_tokens + pe_tokens) * kv / node.snic_bytes_s
    if de_tokens:
        node = view.nodes[de.node_id]
        nbytes = de_tokens * kv
        de_load = ((node.read_q_tokens + de_tokens) * kv / node.snic_bytes_s
                   + (view.cnic_backlog_bytes(de.engine_id) + nbytes)
                   / spec.node.cnic_kv_bytes_s + cost.rdma_overhead_s(nbytes))
    if plan.dram_peer_tokens:
        nbytes = plan.dram_peer_tokens * kv
        sender = plan.peer_engine(pe.engine_id, spec.node.gpus)
        peer_load = ((view.cnic_backlog_bytes(sender) + nbytes) / spec.node.cnic_kv_bytes_s
                     + cost.rdma_overhead_s(nbytes))
    speed = rate * cost.speed(pe.node_id)
    queue = pe.tok / speed
    compute = prefill_tokens(request) / speed
    slowest = pe_load if pe_load > de_load else de_load
    if peer_load > slowest:
        slowest = peer_load
    bound = (slowest if slowest > queue else queue) + compute
    return (pe_load, de_load, peer_load, queue, compute, bound, 1.0)


class RecordingPicker(PredictivePicker):
    """The picker that gathers training data: with probability ``explore`` it takes a
    random candidate among those scored within ``guard`` × the best (plus 50 ms), so
    exploration never sends a request somewhere predicted far worse (reward feedback
    alone can wreck a cache: exploring is guarded); ``samples`` collects each finished
    request's chosen features and its TTFT."""

    def __init__(self, predictor: Predictor, knobs: Knobs = Knobs(), *,
                 explore: float = 0.0, guard: float = 1.25, seed: int = 0) -> None:
        super().__init__(predictor, knobs, name="predictive-recording")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], got {explore!r}")
        if not guard >= 1.0:
            raise ValueError(f"guard must be >= 1, got {guard!r}")
        self.explore, self.guard = explore, guard
        self._rng = random.Random(seed)
        self._pending: dict[int, tuple[float, ...]] = {}
        self.samples: list[tuple[tuple[float, ...], float]] = []

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer:
        answer = super().decide(request, view)
        if isinstance(answer, Decision) and self.last_scores is not None:
            self._pending[request.request_id] = self.last_scores
        return answer

    def choose(self, candidates: list[Candidate]) -> Candidate:
        best = super().choose(candidates)
        if len(candidates) < 2 or not self.explore:
            return best
        near = [c for c in candidates if c.score <= self.guard * best.score + 0.05]
        chosen = self._rng.choice(near) if self._rng.random() < self.explore else best
        # The best is kept with 1 - explore, and each near one drawn with explore / n.
        self.last_action_prob = (self.explore / len(near)
                                 + (1.0 - self.explore) * (chosen is best))
        return chosen

    def complete(self, request_id: int, outcome: Outcome) -> None:
        x = self._pending.pop(request_id, None)
        if x is not None:
            self.samples.append((x, float(outcome["ttft_s"])))
