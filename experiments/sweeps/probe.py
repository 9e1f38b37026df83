"""One probe of the online serving capacity: an online run at a fixed arrival rate,
measured against the SLO on mean TTFT and TPOT (the search is :mod:`.capacity`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from agents.running import policy_run
from experiments.evaluation.runner import RunConfig, build_workload
from experiments.evaluation.scenario import Scenario
from runtime.cluster import ClusterSpec
from runtime.execution.metrics import latencies
from runtime.preset import load_preset
from runtime.request import Request
from runtime.sim import SimOptions, Simulator
from runtime.workload.base import Workload

DEFAULT_DURATION_S = 600.0
#: The share of the arrival window that is warm-up when ``Slo.warmup_s`` is not given.
DEFAULT_WARMUP_SHARE = 0.5
#: RunConfig fields that shape the workload; with a scenario they must keep their defaults.
_WORKLOAD_FIELDS = ("preset", "mal", "append_scale", "gen_scale", "tool_latency_s",
                    "think_time_s")

Probe = dict[str, Any]


def positive(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, int | float) and math.isfinite(value)
                                  and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Slo:
    """The online SLO on means; ``None`` takes the preset's threshold (``slo_ttft_s``,
    ``slo_tpot_s``) or, for the warm-up, :data:`DEFAULT_WARMUP_SHARE` of the window."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    warmup_s: float | None = None

    def __post_init__(self) -> None:
        positive("SLO ttft_s", self.ttft_s)
        positive("SLO tpot_s", self.tpot_s)
        w = self.warmup_s
        if w is not None and not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
            raise ValueError(f"warmup_s must be a finite number >= 0, got {w!r}")

    def resolved(self, cluster: ClusterSpec, duration_s: float) -> Slo:
        """Every value filled in for ``cluster`` and an arrival window of ``duration_s``."""
        warmup = DEFAULT_WARMUP_SHARE * duration_s if self.warmup_s is None else self.warmup_s
        if warmup >= duration_s:
            raise ValueError(f"warmup_s {warmup:g} must be shorter than the arrival window "
                             f"duration_s {duration_s:g}: nothing would be measured")
        return Slo(ttft_s=cluster.slo_ttft_s if self.ttft_s is None else self.ttft_s,
                   tpot_s=cluster.slo_tpot_s if self.tpot_s is None else self.tpot_s,
                   warmup_s=warmup)


# -- one probe ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSetup:
    """What every probe of a search shares: the cluster, the policy and the workload's
    shape (from ``cfg``, or from ``scenario``'s agentic workload table when given)."""

    cfg: RunConfig
    cluster: ClusterSpec
    scenario: Scenario | None
    layerwise: bool
    oracle: bool

    def workload(self, aps: float, duration_s: float) -> Workload:
        if self.scenario is None:
            online = replace(self.cfg, online=True, aps=aps, duration_s=duration_s)
            return build_workload(online, self.cluster)
        table = {k: v for k, v in self.scenario.workload_config.items() if k != "agents"}
        table.update(online=True, aps=aps, duration_s=duration_s)
        return replace(self.scenario, workload_config=table).workload(self.cfg.seed)

    @property
    def mal(self) -> str:
        if self.scenario is None:
            return self.cfg.mal
        return str(self.scenario.workload_config.get("mal", "64k"))


def probe_setup(cfg: RunConfig, scenario: Scenario | None) -> ProbeSetup:
    if cfg.trace is not None:
        raise ValueError(f"capacity varies an agentic workload's arrival rate; the trace "
                         f"{cfg.trace} has its own arrival times")
    if cfg.timeline is not None:
        raise ValueError("capacity runs many simulations; it writes no timeline "
                         f"({cfg.timeline})")
    if scenario is None:
        return _switched(cfg, load_preset(cfg.preset, cfg.overrides), None)
    kind = scenario.workload_config.get("kind", "agentic")
    if kind != "agentic":
        raise ValueError(f"scenario {scenario.name!r}: capacity needs an agentic workload, "
                         f"its workload is {kind}")
    defaults = {f.name: f.default for f in fields(RunConfig)}
    changed = [k for k in _WORKLOAD_FIELDS if getattr(cfg, k) != defaults[k]]
    if changed:
        raise ValueError(f"scenario {scenario.name!r} sets the cluster and the workload; "
                         f"leave {', '.join(changed)} at their defaults (of the preset and "
                         "workload options, only --set applies, adding preset overrides)")
    with_overrides = replace(scenario, overrides=scenario.overrides + cfg.overrides)
    cfg = replace(cfg, layerwise=cfg.layerwise and scenario.layerwise)
    return _switched(cfg, with_overrides.cluster(), scenario)


def _switched(cfg: RunConfig, cluster: ClusterSpec, scenario: Scenario | None) -> ProbeSetup:
    """The setup with the run switches in effect; a bad policy spec fails here, before
    any probe."""
    with policy_run(cfg.policy, cluster, layerwise=cfg.layerwise, oracle=cfg.oracle) as chosen:
        return ProbeSetup(cfg, cluster, scenario, layerwise=chosen.layerwise, oracle=chosen.oracle)


class _Window:
    """Wraps a workload and counts the released requests that arrive before ``end`` and
    have not finished. At 0 none remains and none can come: every request still running
    arrived at or after ``end``, so the turns it releases arrive later still."""

    def __init__(self, inner: Workload, end: float) -> None:
        self.inner = inner
        self.end = end
        self.name = inner.name
        self.open = 0

    def initial_requests(self) -> list[Request]:
        requests = self.inner.initial_requests()
        self.open += sum(r.arrival_s < self.end for r in requests)
        return requests

    def on_complete(self, request: Request, finish_s: float) -> list[Request]:
        if request.arrival_s < self.end:
            self.open -= 1
        follow = self.inner.on_complete(request, finish_s)
        self.open += sum(r.arrival_s < self.end for r in follow)
        return follow


def _simulate(setup: ProbeSetup, aps: float, duration_s: float) -> tuple[Simulator, _Window]:
    """Run until every request arriving before ``duration_s`` has finished."""
    window = _Window(setup.workload(aps, duration_s), duration_s)
    options = SimOptions(layerwise=setup.layerwise, oracle=setup.oracle)
    sim = Simulator(setup.cluster, window, options)
    with policy_run(setup.cfg.policy, setup.cluster) as chosen:  # fresh per probe
        sim.on_finish = chosen.on_finish  # what Simulator.run tells a learning policy
        while window.open and (point := sim.next_decision()) is not None:
            sim.apply(chosen.policy.decide(*point))
    return sim, window


def _measure(sim: Simulator, slo: Slo, end: float) -> dict[str, Any]:
    """Request count and means over the requests arriving in ``[slo.warmup_s, end)``."""
    assert slo.ttft_s is not None and slo.tpot_s is not None and slo.warmup_s is not None
    rec = sim.recorder
    arrival = np.asarray(rec.arrival)
    keep = (arrival >= slo.warmup_s) & (arrival < end)
    n = int(keep.sum())
    if n == 0:  # nothing measured shows nothing: such a probe does not hold
        return {"requests": 0, "ttft_mean_s": None, "tpot_mean_s": None,
                "ttft_late_mean_s": None, "holds": False}
    first = np.asarray(rec.first_token)[keep]
    finish = np.asarray(rec.finish)[keep]
    gen = np.asarray(rec.gen)[keep]
    ttft, tpot, _ = latencies(arrival[keep], first, finish, gen)
    late = arrival[keep] >= (slo.warmup_s + end) / 2
    ttft_mean = float(ttft.mean())
    tpot_mean = float(tpot.mean()) if len(tpot) else 0.0
    return {"requests": n, "ttft_mean_s": ttft_mean, "tpot_mean_s": tpot_mean,
            "ttft_late_mean_s": float(ttft[late].mean()) if late.any() else None,
            "holds": ttft_mean <= slo.ttft_s and tpot_mean <= slo.tpot_s}


def run_probe(setup: ProbeSetup, aps: float, slo: Slo, duration_s: float) -> Probe:
    positive("aps", aps)
    wall = time.perf_counter()
    sim, window = _simulate(setup, aps, duration_s)
    return {"aps": aps, "agents": getattr(window.inner, "agents", None),
            **_measure(sim, slo, duration_s), "sim_end_s": sim.now,
            "wall_s": time.perf_counter() - wall}


def probe(cfg: RunConfig, aps: float, slo: Slo = Slo(),
          duration_s: float = DEFAULT_DURATION_S, *, scenario: Scenario | None = None) -> Probe:
    """One online simulation of ``cfg`` at ``aps`` agents per second over ``duration_s``.

    Returns ``aps``, ``agents`` (that arrived), ``requests`` (measured: those arriving
    in ``[warmup_s, duration_s)``, all of which finish), ``ttft_mean_s`` and
    ``tpot_mean_s`` over them (``None`` when none was measured), ``holds``,
    ``ttft_late_mean_s`` (over the second half of the measurement window: well above
    ``ttft_mean_s``, the load was still rising), ``sim_end_s`` (when the probe stopped)
    and ``wall_s``. ``cfg`` gives the cluster,
    policy, seed and workload shape; its ``online``, ``aps``, ``duration_s`` and
    ``agents`` are replaced. With ``scenario``, the cluster and workload shape come from
    the scenario instead (``cfg`` still gives the policy, seed and extra overrides).
    """
    setup = probe_setup(cfg, scenario)
    return run_probe(setup, aps, slo.resolved(setup.cluster, duration_s), duration_s)


