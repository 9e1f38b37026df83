"""The predictive picker: its predictor, knobs, candidates, exploration and its file."""

from __future__ import annotations

import json
import math

import pytest

from agents.learned import PRETRAINED_ROOT, pretrained_names
from agents.learned.predictive import (
    FEATURES,
    Knobs,
    PredictivePicker,
    Predictor,
    RecordingPicker,
    features,
    shares,
)
from agents.learned.predictor_file import PREDICTOR_FILE, load_predictor, save_predictor
from agents.spec import resolve_policy
from runtime.cost import CostModel
from runtime.decision import Decision
from runtime.placement.plan import load_plan
from runtime.preset import load_preset
from runtime.sim import SimOptions, Simulator
from runtime.workload.agentic import AgenticWorkload
from tests.builders import make_request, make_spec, make_view

CACHES = ("node.dram_cache_gb=0.05", "node.hbm_cache_gb=0.02")


class Recorder:
    """Wraps a policy and keeps every decision it returns."""

    def __init__(self, policy):
        self.policy, self.name, self.decisions = policy, policy.name, []
        self.queue_order = getattr(policy, "queue_order", None)

    def decide(self, request, view):
        answer = self.policy.decide(request, view)
        if isinstance(answer, Decision):
            self.decisions.append((request.request_id, answer.prefill_engine,
                                   answer.decode_engine, answer.decode_share))
        return answer


def simulate(policy, overrides=(), agents=6, seed=3):
    spec = load_preset("tiny", overrides)
    workload = AgenticWorkload(agents, "32k", seed, shuffle=True)
    return Simulator(spec, workload, SimOptions()).run(policy)


def test_paper_knobs_decide_exactly_as_dualpath_split_without_caches():
    paper = Recorder(PredictivePicker(Predictor.prior(),
                                      Knobs(prefill="paper", decode="paper", shares="split")))
    split = Recorder(resolve_policy("dualpath_split").policy)
    simulate(paper)
    simulate(split)
    assert paper.decisions and paper.decisions == split.decisions


def test_predictor_and_knobs_refuse_bad_values():
    with pytest.raises(ValueError, match="expected 7"):
        Predictor((1.0,))
    with pytest.raises(ValueError, match="finite"):
        Predictor((math.nan,) * len(FEATURES))
    with pytest.raises(ValueError, match="knob shares"):
        Knobs(shares="half")
    with pytest.raises(ValueError, match="knob affinity"):
        Knobs(affinity=-1.0)
    with pytest.raises(ValueError, match="knob lane_tokens"):
        Knobs(lane_tokens=1.5)  # type: ignore[arg-type]


def test_prior_predicts_the_analytic_bound():
    spec = make_spec()
    view = make_view(spec, tok=[3_000, 0, 0, 0], read_q=[20_000, 5_000])
    request = make_request(hit=8_000, appended=300)
    cost = CostModel(spec)
    pe, de = view.engines[0], view.engines[spec.prefill_engines]
    plan = load_plan(spec, request, view.prefix, pe.engine_id, de.engine_id)
    rate = cost.prefill_tokens_per_s(request.prompt_tokens)
    for share in shares(view, plan, pe, de, False, 0):
        x = features(cost, view, request, plan, pe, de, share, rate)
        pe_load, de_load, peer, queue, compute, bound, bias = x
        assert bound == pytest.approx(max(pe_load, de_load, peer, queue) + compute)
        assert Predictor.prior().predict(x) == pytest.approx(bound)
        assert bias == 1.0
        assert (pe_load > 0) == (share < 1.0) and (de_load > 0) == (share > 0.0)


def test_the_lane_reads_long_requests_on_the_decode_side_only():
    spec = make_spec()
    view = make_view(spec, read_q=[0, 400_000])  # the DE side is far busier
    request = make_request(hit=8_000, appended=300)
    greedy = PredictivePicker(Predictor.prior()).decide(request, view)
    lane = PredictivePicker(Predictor.prior(), Knobs(lane_tokens=4_096)).decide(request, view)
    short = PredictivePicker(Predictor.prior(), Knobs(lane_tokens=16_384)).decide(request, view)
    assert isinstance(greedy, Decision) and greedy.decode_share == 0.0
    assert isinstance(lane, Decision) and lane.decode_share == 1.0
    assert isinstance(short, Decision) and short.decode_share == 0.0


def test_recording_explores_only_within_the_guard_and_records_every_finished_request():
    picker = RecordingPicker(Predictor.prior(), Knobs(affinity=3.0), explore=1.0, guard=1.1,
                             seed=1)
    seen = []
    choose = picker.choose

    def checked(candidates):
        chosen = choose(candidates)
        best = min(c.score for c in candidates)
        seen.append(chosen.score <= 1.1 * best + 0.05 + 1e-12)
        return chosen

    picker.choose = checked  # type: ignore[method-assign]
    result = simulate(picker, CACHES)
    assert seen and all(seen)
    assert len(picker.samples) == result.metrics["requests"]
    assert all(len(x) == len(FEATURES) and ttft > 0 for x, ttft in picker.samples)


def test_a_predictor_file_round_trips_and_resolves_by_path(tmp_path):
    weights = (0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.01)
    knobs = Knobs(affinity=2.0, lane_tokens=512)
    path = save_predictor(tmp_path / "p", "mine", Predictor(weights), knobs, {"command": "x"})
    picker, body = load_predictor(path.parent)
    assert picker.predictor.weights == weights and picker.knobs == knobs
    assert picker.name == "learned:mine" and body["train"] == {"command": "x"}
    resolved = resolve_policy(str(path), load_preset("tiny"))
    assert isinstance(resolved.policy, PredictivePicker)
    assert simulate(resolved.policy).metrics["requests"] > 0


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "other"}, "not a dualpath-predictor"),
    ({"format_version": 9}, "format_version 9"),
    ({"features": ["a"]}, "are not this code's"),
    ({"weights": [1.0]}, "expected 7"),
    ({"knobs": {"shares": "half"}}, "knob shares"),
])
def test_a_bad_predictor_file_is_refused_naming_the_file(tmp_path, change, message):
    path = save_predictor(tmp_path, "bad", Predictor.prior(), Knobs(), {})
    body = json.loads(path.read_text())
    body.update(change)
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match=message) as err:
        load_predictor(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="policy spec"):
        resolve_policy(str(path), load_preset("tiny"))


def test_every_shipped_predictor_loads_and_decides_on_any_cluster():
    shipped = [n for n in pretrained_names() if (PRETRAINED_ROOT / n / PREDICTOR_FILE).exists()]
    for name in shipped:
        policy = resolve_policy(f"pretrained:{name}", load_preset("tiny")).policy
        assert isinstance(policy, PredictivePicker)
        assert simulate(policy, CACHES).metrics["requests"] > 0


def test_the_action_probability_says_how_likely_the_answer_was():
    from types import SimpleNamespace

    from agents.learned.predictive import Candidate

    def candidate(k: int, score: float) -> Candidate:
        engine = SimpleNamespace(tok=0, engine_id=k)
        return Candidate(engine, engine, 0.0, (0.0,) * len(FEATURES), score, 0)

    pool = [candidate(0, 1.0), candidate(1, 1.1), candidate(2, 5.0)]  # 2 within the guard
    greedy = PredictivePicker(Predictor.prior(), Knobs())
    simulate(greedy, CACHES)
    assert greedy.last_action_prob == 1.0
    picker = RecordingPicker(Predictor.prior(), Knobs(), explore=0.5, guard=1.25, seed=3)
    seen = {}
    for _ in range(200):
        chosen = picker.choose(pool)
        seen[chosen.prefill.engine_id] = picker.last_action_prob
    # The best: kept with 1 - 0.5, drawn with 0.5 / 2; the other near one: 0.5 / 2.
    assert seen == {0: pytest.approx(0.75), 1: pytest.approx(0.25)}
