"""The canary without gRPC: arm assignment, the windows, the rollback test, and the
scheduler core feeding it synthetic outcomes (the decision log included)."""

from __future__ import annotations

import math
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from policy_service.canary import (
    Arm,
    CanaryConfig,
    CanaryMonitor,
    CanaryState,
    Moments,
    Regression,
    Series,
    check_request,
    check_share,
    in_canary,
    ratio_regression,
    session_point,
)
from policy_service.cluster_state import ClusterState
from policy_service.codec import view_to_pb
from policy_service.decision_log import DecisionLog
from policy_service.hot_swap import PolicyRefused, PolicyRegistry
from policy_service.metrics import Metrics
from policy_service.scheduler import SchedulerCore
from runtime.decision import Decision
from runtime.preset import load_preset
from tests.builders import make_request, make_view

ROOT = Path(__file__).resolve().parents[2]

# -- arms ---------------------------------------------------------------------------------


def test_a_session_has_one_point_on_every_process():
    here = [session_point(f"agent-{k}") for k in range(5)]
    # Another interpreter, another hash seed: the same points (Python's hash() would differ).
    code = ("from policy_service.canary import session_point; "
            "print([session_point(f'agent-{k}') for k in range(5)])")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert repr(here) == there.strip()
    assert all(0 <= p < 1 for p in here)


def test_the_canary_gets_about_its_share_of_many_sessions():
    sessions = [f"session-{k}" for k in range(20_000)]
    for share in (0.05, 0.2, 0.5):
        got = sum(in_canary(s, share) for s in sessions) / len(sessions)
        assert abs(got - share) < 0.015, (share, got)
    # A session in a smaller share's canary stays in a larger one's.
    assert all(in_canary(s, 0.5) for s in sessions if in_canary(s, 0.2))


@pytest.mark.parametrize("share", [0.0, 1.0, 1.5, -0.1, math.nan])
def test_a_share_outside_the_open_interval_is_refused(share):
    with pytest.raises(ValueError, match=r"share must lie in the open interval \(0, 1\)"):
        check_share(share)
    with pytest.raises(ValueError, match="share"):
        check_request("pe_only", share)


def test_an_empty_spec_ends_the_canary_only_without_a_share():
    check_request("", 0.0)
    check_request("pe_only", 0.2)
    for share in (0.2, math.nan):
        with pytest.raises(ValueError, match="empty spec"):
            check_request("  ", share)


@pytest.mark.parametrize("kwargs,message", [
    ({"max_regression": -0.1}, "max_regression"),
    ({"max_regression": math.inf}, "max_regression"),
    ({"min_completions": 1}, "min_completions"),
    ({"min_completions": 60, "window": 50}, "min_completions"),
    ({"window": 1}, "window"),
    ({"z": 0.0}, "z must be"),
])
def test_bad_configs_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CanaryConfig(**kwargs)


def test_the_default_bound_is_one_sided_95_percent():
    assert CanaryConfig().level == pytest.approx(0.95, abs=1e-4)


# -- the statistics ------------------------------------------------------------------------


def test_a_series_keeps_the_last_values_and_their_exact_moments():
    rng = np.random.default_rng(0)
    series = Series(50)
    values = rng.normal(100.0, 0.01, 1234)  # a large mean and a tiny spread: no cancellation
    for x in values:
        series.add(float(x))
    n, mean, var = series.moments()
    assert n == 50 and series.values() == tuple(values[-50:])
    assert mean == pytest.approx(values[-50:].mean(), rel=1e-12)
    assert var == pytest.approx(values[-50:].var(ddof=1), rel=1e-6)
    series.clear()
    assert series.moments().n == 0


def test_the_regression_bound_is_the_delta_method_on_the_ratio():
    c, h = Moments(40, 0.6, 0.04), Moments(160, 0.4, 0.01)
    found = ratio_regression("ttft", c, h, 1.645)
    assert found is not None
    ratio = 0.6 / 0.4
    var = ratio**2 * (0.04 / (40 * 0.6**2) + 0.01 / (160 * 0.4**2))
    assert found.change == pytest.approx(ratio - 1)
    assert found.lower == pytest.approx(ratio - 1 - 1.645 * math.sqrt(var))
    assert ratio_regression("ttft", c, Moments(1, 0.4, math.nan), 1.645) is None
    assert ratio_regression("ttft", c, Moments(10, 0.0, 0.0), 1.645) is None


def _feed(monitor: CanaryMonitor, n: int, rng: random.Random,
          canary: Callable[[random.Random], float], champion: Callable[[random.Random], float],
          ) -> tuple[int, Regression] | None:
    """Alternate outcomes of the two arms; the completion at which the test failed, and
    the regression it found."""
    for i in range(n):
        arm = Arm.CANARY if i % 2 else Arm.CHAMPION
        ttft = (canary if arm is Arm.CANARY else champion)(rng)
        found = monitor.record(arm, {"ttft_s": ttft, "latency_s": 2.0 + ttft})
        if found is not None:
            return i, found
    return None


def _running(config: CanaryConfig) -> CanaryMonitor:
    monitor = CanaryMonitor(config)
    monitor.start(0.5, ("dualpath", "v1:dualpath"), ("pe_only", "v2:pe_only"))
    return monitor


def test_a_clearly_worse_challenger_fails_the_test_at_its_first_look():
    monitor = _running(CanaryConfig(min_completions=50))
    rng = random.Random(1)
    failed = _feed(monitor, 400, rng, lambda r: r.gauss(0.71, 0.08),
                   lambda r: r.gauss(0.27, 0.03))
    assert failed is not None
    at, found = failed
    assert at == 99  # the 50th outcome of each arm
    assert found.measure == "ttft" and found.challenger.n == found.champion.n == 50
    reason = found.reason(monitor.config)
    assert reason.startswith("ttft: challenger mean 0.7") and "vs champion 0.2" in reason
    assert "one-sided 95% lower bound +" in reason and "past the +10% bound" in reason
    assert reason.endswith("50/50 completions")


def test_equal_and_slightly_worse_challengers_are_held():
    for worse in (1.0, 1.05):
        monitor = _running(CanaryConfig())
        assert _feed(monitor, 4000, random.Random(2), lambda r, w=worse: r.gauss(0.3 * w, 0.05),
                     lambda r: r.gauss(0.3, 0.05)) is None
        assert monitor.state is CanaryState.RUNNING


def test_repeated_looks_rarely_roll_back_an_equal_challenger():
    """A/A canaries (both arms lognormal, sigma 0.5) over 600 completions per arm, looked
    at 50, 100, 200 and 400: false rollbacks stay well under 5% (heavier tails do worse:
    see the README)."""
    rng = random.Random(3)
    rollbacks = sum(
        _feed(_running(CanaryConfig()), 1200, rng,
              lambda r: r.lognormvariate(0, 0.5), lambda r: r.lognormvariate(0, 0.5))
        is not None for _ in range(200))
    assert rollbacks < 10, rollbacks  # measured: 1 of 200 with this seed


def test_outcomes_without_a_measure_or_with_nan_are_skipped():
    monitor = _running(CanaryConfig(min_completions=2))
    monitor.record(Arm.CANARY, {"latency_s": 3.0})
    monitor.record(Arm.CANARY, {"ttft_s": math.inf, "latency_s": 3.5})
    report = monitor.report(samples=True)
    assert report.challenger.ttft_s == () and report.challenger.latency_s == (3.0, 3.5)
    assert report.challenger.completions == 2


# -- the core, fed synthetic outcomes ----------------------------------------------------------

CLUSTER = load_preset("ds27b-1p1d")


def _core(tmp_path, **config) -> SchedulerCore:
    registry = PolicyRegistry(CLUSTER, canary=CanaryConfig(**config))
    registry.swap("dualpath")
    log = DecisionLog(f"sqlite:///{tmp_path / 'log.db'}", flush_interval_s=0.05)
    return SchedulerCore(registry, ClusterState(CLUSTER), Metrics(), log)


def _drive(core: SchedulerCore, ks: range, ttft: Callable[[str, random.Random], float],
           jct_extra: Callable[[str], float] = lambda arm: 2.0) -> list[str]:
    """Schedule request k (session "session-k") on an idle snapshot, then complete it with
    a TTFT drawn for its arm; the arms in order."""
    snapshot = view_to_pb(make_view(CLUSTER))
    rng = random.Random(ks.start)
    arms = []
    for k in ks:
        done = core.schedule([make_request(request_id=k, agent_id=k)], snapshot, "c",
                             sessions=[f"session-{k}"])
        arm = "champion" if done.versions[0] == done.version else "canary"
        t = ttft(arm, rng)
        core.complete("c", k, {"ttft_s": t, "latency_s": t + jct_extra(arm)})
        arms.append(arm)
    return arms


def _bad_ttft(arm: str, rng: random.Random) -> float:
    return rng.gauss(0.71, 0.08) if arm == "canary" else rng.gauss(0.27, 0.03)


def _sample(core: SchedulerCore, name: str, labels: dict[str, str] | None = None) -> float:
    value = core.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_the_core_rolls_back_a_worse_challenger_and_logs_it(tmp_path):
    core = _core(tmp_path)
    core.registry.set_canary("pe_only", 0.5)
    assert _sample(core, "dualpath_canary_share") == 0.5
    arms = _drive(core, range(0, 400), _bad_ttft)
    report = core.registry.canary_report()
    assert report.state is CanaryState.ROLLED_BACK and report.reason.startswith("ttft: ")
    assert min(report.champion.completions, report.challenger.completions) == 50
    assert _sample(core, "dualpath_canary_rollbacks_total", {"reason": "ttft"}) == 1
    assert _sample(core, "dualpath_canary_share") == 0.0
    assert core.registry.canary is None
    # Rolled back at the completion that gave both arms 50: every later session is the
    # champion's at once.
    counts = {"canary": 0, "champion": 0}
    for at, arm in enumerate(arms):  # noqa: B007 - ``at`` is used after the loop
        counts[arm] += 1
        if min(counts.values()) == 50:
            break
    assert set(arms[at + 1:]) == {"champion"} and len(arms[at + 1:]) > 100
    core.close()
    with sqlite3.connect(tmp_path / "log.db") as conn:
        events = conn.execute("SELECT event, spec, share, reason, at FROM canary_events "
                              "ORDER BY event_id").fetchall()
        rows = conn.execute("SELECT arm, policy_spec, decided_at, request_id FROM decisions "
                            "ORDER BY decision_id").fetchall()
    assert [(e[0], e[1], e[2]) for e in events] == [("set", "pe_only", 0.5),
                                                   ("rolled_back", "pe_only", 0.5)]
    assert events[1][3] == report.reason
    canary_rows = [r for r in rows if r[0] == "canary"]
    assert canary_rows and {r[1] for r in canary_rows} == {"pe_only"}
    assert max(r[2] for r in canary_rows) <= events[1][4]
    assert {r[0] for r in rows if r[3] > at} == {"champion"}
    assert {r[1] for r in rows if r[0] == "champion"} == {"dualpath"}


def test_a_jct_regression_rolls_back_under_its_own_label(tmp_path):
    core = _core(tmp_path, min_completions=30)
    core.registry.set_canary("pe_only", 0.5)
    _drive(core, range(0, 300), lambda arm, rng: rng.gauss(0.3, 0.03),
           jct_extra=lambda arm: 4.0 if arm == "canary" else 2.0)
    assert core.registry.canary_report().reason.startswith("jct: ")
    assert _sample(core, "dualpath_canary_rollbacks_total", {"reason": "jct"}) == 1
    core.close()


def test_a_challenger_no_worse_is_held(tmp_path):
    core = _core(tmp_path)
    core.registry.set_canary("pe_only", 0.3)
    arms = _drive(core, range(0, 600), lambda arm, rng: rng.gauss(0.3, 0.05))
    report = core.registry.canary_report()
    assert report.state is CanaryState.RUNNING and core.registry.canary is not None
    assert arms.count("canary") == report.challenger.completions
    assert abs(arms.count("canary") / len(arms) - 0.3) < 0.08
    core.close()


def test_a_champion_swap_restarts_the_windows_and_drops_the_old_ones_outcomes(tmp_path):
    core = _core(tmp_path)
    core.registry.set_canary("pe_only", 0.5)
    snapshot = view_to_pb(make_view(CLUSTER))
    old = [core.schedule([make_request(request_id=k, agent_id=k)], snapshot, "c",
                         sessions=[f"session-{k}"]) for k in range(40)]
    _drive(core, range(100, 120), lambda arm, rng: 0.3)
    assert core.registry.canary_report().champion.completions > 0
    core.registry.swap("dualpath:alpha_s=2")
    report = core.registry.canary_report()
    assert report.state is CanaryState.RUNNING
    assert report.champion.completions == report.challenger.completions == 0
    assert report.champion.spec == "dualpath:alpha_s=2"
    for k in range(len(old)):  # decided by the old champion (or the canary)
        core.complete("c", k, {"ttft_s": 0.3, "latency_s": 2.3})
    counted = sum(d.versions[0] != d.version for d in old)
    assert core.registry.canary_report().champion.completions == 0
    assert core.registry.canary_report().challenger.completions == counted
    core.close()


def test_sessions_keep_their_arm_and_the_agent_id_names_an_unnamed_one(tmp_path):
    core = _core(tmp_path)
    core.registry.set_canary("pe_only", 0.4)
    snapshot = view_to_pb(make_view(CLUSTER))
    requests = [make_request(request_id=t * 100 + a, agent_id=a, turn=t)
                for t in range(3) for a in range(60)]
    done = core.schedule(requests, snapshot, "c", sessions=[""] * len(requests))
    canary = core.registry.canary
    assert canary is not None
    for request, version in zip(done.requests, done.versions, strict=True):
        expected = canary.loaded.version if in_canary(str(request.agent_id), 0.4) else \
            done.version
        assert version == expected
    assert len(set(done.versions)) == 2  # the batch mixes arms
    core.close()


class _Learner:
    """Places every request on the first engines and records the outcomes it is given."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.completed: list[int] = []

    def decide(self, request, view):
        return Decision(0, view.spec.prefill_engines, 0.0, self.name)

    def complete(self, request_id, outcome):
        self.completed.append(request_id)


def test_outcomes_go_to_the_learner_of_the_arm_that_decided(tmp_path):
    built: dict[str, _Learner] = {}

    def build(text, cluster):
        return built.setdefault(text, _Learner(text))

    registry = PolicyRegistry(CLUSTER, build=build)
    registry.swap("a")
    core = SchedulerCore(registry, ClusterState(CLUSTER), Metrics(), None)
    with pytest.raises(PolicyRefused, match="no canary is running"):
        registry.promote_canary()
    registry.set_canary("b", 0.5)
    snapshot = view_to_pb(make_view(CLUSTER))
    done = core.schedule([make_request(request_id=k, agent_id=k) for k in range(50)],
                         snapshot, "c")
    for k in range(50):
        core.complete("c", k, {"ttft_s": 0.1, "latency_s": 1.0})
    by_version = {v: [r.request_id for r, vv in zip(done.requests, done.versions, strict=True)
                      if vv == v] for v in set(done.versions)}
    assert sorted(built["a"].completed) == by_version[done.version]
    assert sorted(built["b"].completed) == by_version[registry.canary.loaded.version]
    core.close()


def test_the_test_looks_at_doubling_sizes_then_every_window():
    looks = []

    class Counting(CanaryMonitor):
        def _test(self):
            looks.append(min(self._seen.values()))
            return super()._test()

    monitor = Counting(CanaryConfig(min_completions=10, window=100))
    monitor.start(0.5, ("dualpath", "v1"), ("pe_only", "v2"))
    assert _feed(monitor, 600, random.Random(4), lambda r: r.gauss(0.3, 0.01),
                 lambda r: r.gauss(0.3, 0.01)) is None
    assert looks == [10, 20, 40, 80, 180, 280]
    monitor.new_champion(("least_tokens", "v3"))  # the windows and the schedule restart
    looks.clear()
    _feed(monitor, 40, random.Random(5), lambda r: 0.3, lambda r: 0.3)
    assert looks == [10, 20]
