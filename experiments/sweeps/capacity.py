"""Online serving capacity: the highest agent arrival rate at which the SLO holds.

A *probe* simulates one online run: agents arrive as a Poisson process at ``aps``
agents per second over the arrival window ``[0, duration_s)``, each replaying its
whole trajectory. The SLO holds at that rate when, over the requests that arrive in
the measurement window ``[warmup_s, duration_s)``, mean TTFT <= ``ttft_s`` and mean
TPOT <= ``tpot_s`` (TTFT and TPOT as in :mod:`runtime.execution.metrics`; TPOT over the
requests that generate more than one token). :func:`find_capacity` brackets the
highest such rate by doubling or halving from ``start_aps``, then bisects until the
bracket is narrower than ``tolerance`` times its upper end; the answer is the highest
rate that held, with the means measured there. Every probe replays the same seed's
workload, so a search is deterministic.

Why the window ends at ``duration_s``: after it no agent arrives, and the agents
still running drain a cluster whose load falls; their requests are not served at
the probed rate. A probe therefore stops simulating as soon as every request that
arrived before ``duration_s`` has finished (what happens later cannot change those
requests), which skips most of the drain, the larger part of a full run.

Why the defaults (:data:`DEFAULT_DURATION_S`, :data:`DEFAULT_WARMUP_SHARE`): the
cluster starts empty and fills up over about one agent lifetime (a 32K-set agent on
ds27b-1p1d lives about 150 to 250 s), and above the sustainable rate the mean TTFT
grows with time, so the answer falls as the window lengthens. A 600 s window whose
first half is warm-up measures a filled cluster for 300 s, at about 10 s of wall time
per probe near the capacity of ds27b-1p1d (32K set). The answer is the capacity of a
cluster serving ``duration_s`` seconds of arrivals from empty: on ds27b-1p1d, dualpath
holds 7.0 agents/s over a 300 s window (100 s warm-up), 4.75 over the default and 4.06 over
1,200 s (400 s warm-up), while a run at 4 agents/s shows TTFT still growing after
1,000 s and one at 3 is steady. Lengthen ``duration_s`` (and the warm-up) to approach
the steady state, at a cost in proportion; a 64K-set agent lives about 20 minutes on
ds660b-2p4d, so there the default window is far from it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from experiments.evaluation.fanout import map_local
from experiments.evaluation.runner import RunConfig
from experiments.evaluation.scenario import Scenario
from experiments.sweeps.probe import (
    DEFAULT_DURATION_S,
    Probe,
    ProbeSetup,
    Slo,
    positive,
    probe_setup,
    run_probe,
)


@dataclass(frozen=True)
class CapacitySearch:
    """How to search. ``lo``/``hi`` (agents per second) seed the bracket; each is probed
    and the search walks down from a ``lo`` that fails or up from a ``hi`` that holds.
    Without them the walk starts at ``start_aps``. ``min_aps``/``max_aps`` end the walk:
    below ``min_aps`` the answer is 0, at ``max_aps`` the answer is the cap."""

    duration_s: float = DEFAULT_DURATION_S
    tolerance: float = 0.05
    lo: float | None = None
    hi: float | None = None
    start_aps: float = 1.0
    min_aps: float = 1 / 128
    max_aps: float = 1024.0
    max_probes: int = 24

    def __post_init__(self) -> None:
        for name in ("duration_s", "lo", "hi", "start_aps", "min_aps", "max_aps"):
            positive(name, getattr(self, name))
        if not (isinstance(self.tolerance, int | float) and 0 < self.tolerance < 1):
            raise ValueError(f"tolerance must lie in (0, 1) (a share of the answer), "
                             f"got {self.tolerance!r}")
        if self.lo is not None and self.hi is not None and self.lo >= self.hi:
            raise ValueError(f"lo {self.lo:g} must be below hi {self.hi:g}")
        if self.min_aps > self.max_aps:
            raise ValueError(f"min_aps {self.min_aps:g} must not exceed max_aps "
                             f"{self.max_aps:g}")
        for name in ("lo", "hi", "start_aps"):
            value = getattr(self, name)
            if value is not None and not self.min_aps <= value <= self.max_aps:
                raise ValueError(f"{name} {value:g} must lie in [min_aps, max_aps] = "
                                 f"[{self.min_aps:g}, {self.max_aps:g}]")
        if isinstance(self.max_probes, bool) or not isinstance(self.max_probes, int) \
                or self.max_probes < 2:
            raise ValueError(f"max_probes must be an integer >= 2, got {self.max_probes!r}")


# -- the search ----------------------------------------------------------------------


class _Prober:
    """Probes rates and keeps the record: every probe, the latest that held (``lo``) and
    the latest that failed (``hi``). The search probes in an order (walk up or down, then
    bisect) that makes them the highest rate that held and the lowest above it that failed."""

    def __init__(self, setup: ProbeSetup, slo: Slo, search: CapacitySearch,
                 report: Callable[[Probe], None] | None) -> None:
        self.setup, self.slo, self.search, self.report = setup, slo, search, report
        self.probes: list[Probe] = []
        self.lo: Probe | None = None
        self.hi: Probe | None = None

    def test(self, aps: float) -> Probe:
        p = run_probe(self.setup, aps, self.slo, self.search.duration_s)
        self.probes.append(p)
        if p["holds"]:
            self.lo = p
        else:
            self.hi = p
        if self.report is not None:
            self.report(p)
        return p

    @property
    def budget_left(self) -> bool:
        return len(self.probes) < self.search.max_probes

    @property
    def width(self) -> float:
        assert self.lo is not None and self.hi is not None
        return (self.hi["aps"] - self.lo["aps"]) / self.hi["aps"]


def _bracket(pr: _Prober) -> str | None:
    """Find a rate that holds below one that fails; otherwise the outcome's status."""
    s = pr.search
    if s.lo is not None:
        pr.test(s.lo)
    if s.hi is not None and (pr.lo is not None or s.lo is None):
        pr.test(s.hi)  # a lo that failed makes hi moot: the walk goes down from lo
    if not pr.probes:
        pr.test(s.start_aps)
    while pr.lo is None:
        assert pr.hi is not None
        if pr.hi["aps"] <= s.min_aps:
            return "none_holds"
        if not pr.budget_left:
            return "max_probes"
        pr.test(max(pr.hi["aps"] / 2, s.min_aps))
    while pr.hi is None:
        if pr.lo["aps"] >= s.max_aps:
            return "capped"
        if not pr.budget_left:
            return "max_probes"
        pr.test(min(pr.lo["aps"] * 2, s.max_aps))
    return None


def _bisect(pr: _Prober) -> str:
    assert pr.lo is not None and pr.hi is not None
    while pr.width > pr.search.tolerance:
        if not pr.budget_left:
            return "max_probes"
        pr.test((pr.lo["aps"] + pr.hi["aps"]) / 2)
    return "converged"


def find_capacity(cfg: RunConfig, slo: Slo = Slo(), search: CapacitySearch = CapacitySearch(),
                  *, scenario: Scenario | None = None,
                  progress: Callable[[Probe], None] | None = None) -> dict[str, Any]:
    """The highest arrival rate (agents/s) at which ``slo`` holds, within ``search.tolerance``.

    ``cfg`` and ``scenario`` as for :func:`probe`. ``progress`` is told each probe.
    The result holds ``max_aps`` with ``ttft_mean_s``, ``tpot_mean_s``,
    ``ttft_late_mean_s`` and ``requests`` measured there, ``status`` (``converged``;
    ``none_holds``: even ``min_aps`` fails, ``max_aps`` is 0 and the means are ``None``;
    ``capped``: the SLO still holds at the cap, which is reported; ``max_probes``: the
    budget ran out, the best rate so far is reported), a ``message`` saying so, the
    resolved SLO (``slo_ttft_s``, ``slo_tpot_s``, ``warmup_s``), ``duration_s``,
    ``tolerance``, the final ``bracket`` [highest rate that held, lowest that failed]
    (``None`` where there is none), every probe in order, and ``wall_s``.
    """
    wall = time.perf_counter()
    setup = probe_setup(cfg, scenario)
    resolved = slo.resolved(setup.cluster, search.duration_s)
    pr = _Prober(setup, resolved, search, progress)
    status = _bracket(pr) or _bisect(pr)
    best = pr.lo if status != "none_holds" else None
    return {
        "policy": cfg.policy, "preset": setup.cluster.name,
        "scenario": None if scenario is None else scenario.name, "mal": setup.mal,
        "seed": cfg.seed, "layerwise": setup.layerwise, "oracle": setup.oracle,
        "max_aps": best["aps"] if best else 0.0,
        "ttft_mean_s": best["ttft_mean_s"] if best else None,
        "tpot_mean_s": best["tpot_mean_s"] if best else None,
        "ttft_late_mean_s": best["ttft_late_mean_s"] if best else None,
        "requests": best["requests"] if best else 0,
        "status": status, "message": _message(status, pr, resolved),
        "slo_ttft_s": resolved.ttft_s, "slo_tpot_s": resolved.tpot_s,
        "warmup_s": resolved.warmup_s, "duration_s": search.duration_s,
        "tolerance": search.tolerance,
        "bracket": [pr.lo["aps"] if pr.lo else None, pr.hi["aps"] if pr.hi else None],
        "probes": pr.probes, "wall_s": time.perf_counter() - wall,
    }


def _message(status: str, pr: _Prober, slo: Slo) -> str:
    s = pr.search
    if status == "none_holds" and pr.probes[-1]["requests"] == 0:
        return (f"no request arrived in the measurement window at the lowest rate, "
                f"{s.min_aps:g} agents/s, and every higher rate probed failed: capacity 0 "
                "(lengthen duration_s or raise min_aps)")
    if status == "none_holds":
        return (f"the SLO fails even at the lowest rate, {s.min_aps:g} agents/s: capacity 0 "
                f"(mean TTFT <= {slo.ttft_s:g} s and mean TPOT <= {slo.tpot_s:g} s are out "
                "of reach on this cluster and workload)")
    if status == "capped":
        return (f"the SLO still holds at the cap, {s.max_aps:g} agents/s: capacity is at "
                "least that (raise max_aps)")
    if status == "max_probes":
        best = f"{pr.lo['aps']:g} agents/s" if pr.lo else "none"
        return (f"stopped after {s.max_probes} probes before the bracket narrowed to "
                f"{s.tolerance:.0%}; highest rate that held so far: {best}")
    assert pr.lo is not None and pr.hi is not None
    return (f"converged: the SLO holds at {pr.lo['aps']:.4g} agents/s and fails at "
            f"{pr.hi['aps']:.4g} (within {s.tolerance:.0%})")


def capacity_ratio(results: Mapping[str, dict[str, Any]]) -> dict[str, float]:
    """Each policy's ``max_aps`` over the first's (``nan`` where the first's is 0)."""
    if not results:
        return {}
    base = next(iter(results.values()))["max_aps"]
    return {k: (r["max_aps"] / base if base > 0 else math.nan) for k, r in results.items()}


def capacity_searches(configs: Sequence[RunConfig], slo: Slo, search: CapacitySearch,
                      scenario: Scenario | None, jobs: int,
                      progress: bool) -> tuple[dict[str, Any], str]:
    """Search each config's capacity (in ``jobs`` processes); the JSON payload and its text.

    With one config the payload is its search; with several, ``{"searches": [...],
    "capacity_ratio": {spec: ratio}}`` (ratios over the first)."""
    results = _search_all(configs, slo, search, scenario, jobs, progress)
    if len(results) == 1:
        return results[0], render_capacity(results[0])
    ratio = capacity_ratio({r["policy"]: r for r in results})
    payload = {"searches": results,  # JSON has no NaN: null where the first's capacity is 0
               "capacity_ratio": {k: None if math.isnan(v) else v for k, v in ratio.items()}}
    text = "\n\n".join(render_capacity(r) for r in results) + "\n\ncapacity ratio over " + \
        f"{configs[0].policy}: " + ", ".join(f"{k} {v:.3f}" for k, v in ratio.items())
    return payload, text


def _search_one(cfg: RunConfig, slo: Slo, search: CapacitySearch, scenario: Scenario | None,
                progress: bool) -> dict[str, Any]:
    report = _stderr_probe(cfg.policy) if progress else None
    return find_capacity(cfg, slo, search, scenario=scenario, progress=report)


def _search_all(configs: Sequence[RunConfig], slo: Slo, search: CapacitySearch,
                scenario: Scenario | None, jobs: int, progress: bool) -> list[dict[str, Any]]:
    search_one = partial(_search_one, slo=slo, search=search, scenario=scenario,
                         progress=progress)
    return map_local(search_one, configs, jobs)


def _stderr_probe(label: str) -> Callable[[Probe], None]:
    def report(p: Probe) -> None:
        print(f"[{label}] {p['aps']:.4g} agents/s: {_means(p)} -> "
              f"{'holds' if p['holds'] else 'fails'} ({p['wall_s']:.1f} s wall)",
              file=sys.stderr, flush=True)
    return report


def _means(p: Mapping[str, Any]) -> str:
    if p["ttft_mean_s"] is None:
        return "no request measured"
    late = p["ttft_late_mean_s"]
    late_text = "" if late is None else f" (second half {late:.3g} s)"
    return (f"TTFT {p['ttft_mean_s']:.3g} s{late_text}, "
            f"TPOT {1000 * p['tpot_mean_s']:.3g} ms over {p['requests']:,} requests")


def render_capacity(r: Mapping[str, Any]) -> str:
    """A search's result as text."""
    where = f"scenario {r['scenario']}" if r["scenario"] else f"{r['mal']} set"
    lo, hi = r["bracket"]
    lines = [
        f"capacity of {r['policy']} on {r['preset']} ({where}, seed {r['seed']}): "
        f"{r['max_aps']:.4g} agents/s",
        f"  SLO: mean TTFT <= {r['slo_ttft_s']:g} s and mean TPOT <= "
        f"{1000 * r['slo_tpot_s']:g} ms over requests arriving in "
        f"[{r['warmup_s']:g}, {r['duration_s']:g}) s of a {r['duration_s']:g} s arrival window",
        f"  at {r['max_aps']:.4g} agents/s: {_means(r)}" if r["max_aps"] else "",
        f"  {r['message']}; bracket [{_rate(lo)}, {_rate(hi)}], tolerance "
        f"{r['tolerance']:.0%}, {len(r['probes'])} probes, {r['wall_s']:.1f} s wall",
        "  probes: " + ", ".join(f"{p['aps']:.4g} {'ok' if p['holds'] else 'fail'}"
                                 for p in r["probes"]),
    ]
    return "\n".join(line for line in lines if line)


def _rate(aps: float | None) -> str:
    return "-" if aps is None else f"{aps:.4g}"
