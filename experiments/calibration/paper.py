"""``dualpath calibrate paper``: fit the free values to the paper's offline JCTs.

One evaluation runs every target of :data:`~.targets.PAPER_TARGETS` with the candidate
values set as preset overrides (all runs of a batch of points fanned out together);
:func:`~.fit.fit` searches; the best point's runs and the check runs then give the
relative results, the decode TPOT and the SNIC balance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from experiments.calibration import targets as paper
from experiments.calibration.fit import FitResult, Parameter, errors_pct, fit
from experiments.calibration.preset_file import write_values
from experiments.evaluation.runner import RunConfig, run_many
from experiments.evaluation.table import format_table
from runtime.preset import PRESET_DIR, load_preset

#: The free values, each a preset value with a physical meaning and a plausible range.
#: The search starts from the values the presets had before any fit (line rate, the
#: hand-fitted efficiency, the paper's low copy cost, the hand-set decode step), not from
#: the presets' current values: the same command gives the same values on any checkout.
PAPER_PARAMETERS = (
    Parameter("node.storage_efficiency", 0.3, 1.0, "share of the SNIC's line rate", start=1.0,
              meaning="what the storage service delivers through one node's 400 Gbps SNIC: "
              "3FS reads Full Blocks through its kernel-bypass client and reaches line rate "
              "only with enough reads in flight on every storage target; 3FS's published "
              "read test (6.6 TiB/s to 500+ clients of one 200 Gbps NIC each, with training "
              "traffic beside it) averages about 0.58 of a client's line rate"),
    Parameter("model.prefill_efficiency", 0.12, 0.5, "share of FP8 peak at large batches",
              start=0.36,
              meaning="prefill's achieved share of Hopper's FP8 peak in large batches (the "
              "table's top; its shape, the paper's relative 1.0 / 2.6 / 2.9 / 3.0 by batch, "
              "is kept): MoE prefill with expert parallelism over two nodes spends much of a "
              "layer in all-to-all and attention, so well under half of peak"),
    Parameter("node.h2d_copy_us", 5.0, 7.0, "us per copy", start=5.0,
              meaning="the submission cost of one host-to-GPU copy (one per block and "
              "layer): the paper's 5-7 us per cudaMemcpyAsync; it weighs most where loading "
              "and compute do not overlap (no layer-wise prefill)"),
    Parameter("model.decode_base_s", 0.02, 0.045, "s per decode step", start=0.033,
              meaning="the fixed part of one decode step (MoE weight reads and the EP "
              "all-to-all over four nodes), fitted with the paper's TPOT of 36-39 ms at its "
              "batch sizes"),
)

#: Presets on the paper's hardware: they take the fitted node values (their model
#: values are their own).
SAME_HARDWARE = ("ds660b-2p4d", "ds27b-1p1d", "ds27b-1p2d", "ds27b-2p1d", "qwen32b-1p2d")

Progress = Callable[[str], None]


def run_points(preset: str, targets: Sequence[paper.Target], params: Sequence[Parameter],
               points: Sequence[tuple[float, ...]], jobs: int, mal: str = paper.MAL,
               done: dict[RunConfig, dict[str, Any]] | None = None
               ) -> list[list[dict[str, Any]]]:
    """Every target's run at every point (one fan-out, largest runs first, each distinct
    run once, none already in ``done``, which gains the new ones); per point, the runs in
    target order."""
    spec = load_preset(preset)
    configs = [RunConfig(policy=t.policy, preset=preset, agents=t.agents, mal=mal,
                         overrides=tuple(p.override(v, spec) for p, v in zip(params, point,
                                                                             strict=True)))
               for point in points for t in targets]
    rows = {} if done is None else done
    todo = sorted(set(configs) - rows.keys(), key=lambda c: (-c.agents, configs.index(c)))
    rows.update(zip(todo, run_many(todo, jobs), strict=True))
    n = len(targets)
    return [[rows[configs[k * n + i]] for i in range(n)] for k in range(len(points))]


def calibrate(preset: str, targets: Sequence[paper.Target], params: Sequence[Parameter], *,
              jobs: int, steps: int, mal: str = paper.MAL,
              ratios: Sequence[tuple[str, str]] = (),
              progress: Progress | None = None,
              done: dict[RunConfig, dict[str, Any]] | None = None) -> FitResult:
    """Fit ``params`` so that ``targets``' values on ``preset`` (agent set ``mal``) come
    closest to theirs, and each ratio of two targets (``ratios``: pairs of target names)
    to the same ratio of theirs: a relative result the fit is to keep weighs once more.
    ``done`` keeps every run (see :func:`run_points`)."""
    spec = load_preset(preset)
    start = [p.value_in(spec) if p.start is None else p.start for p in params]
    index = {t.name: i for i, t in enumerate(targets)}
    pairs = [(index[a], index[b]) for a, b in ratios]

    def with_ratios(values: list[float]) -> list[float]:
        return values + [values[i] / values[j] for i, j in pairs]

    def evaluate(points: Sequence[tuple[float, ...]]) -> list[list[float]]:
        runs = run_points(preset, targets, params, points, jobs, mal, done)
        if progress is not None:
            for point, rows in zip(points, runs, strict=True):
                worst = max(abs(e) for e in errors_pct(_measured(targets, rows),
                                                       [t.paper_s for t in targets]))
                values = ", ".join(f"{p.key.split('.')[1]}={v:.4g}"
                                   for p, v in zip(params, point, strict=True))
                progress(f"{values}: max error {worst:.1f}%")
        return [with_ratios(_measured(targets, rows)) for rows in runs]

    return fit(evaluate, params, start, with_ratios([t.paper_s for t in targets]),
               steps=steps)


def _measured(targets: Sequence[paper.Target], rows: Sequence[dict[str, Any]]) -> list[float]:
    return [float(row[t.metric]) for t, row in zip(targets, rows, strict=True)]


def calibrate_paper(*, jobs: int, steps: int = 6, write: bool = True,
                    progress: Progress | None = None) -> dict[str, Any]:
    """The whole calibration: fit, check, and (``write``) the values into the presets."""
    began = time.perf_counter()
    done: dict[RunConfig, dict[str, Any]] = {}  # the best point's runs are not run again
    result = calibrate(paper.PRESET, paper.PAPER_TARGETS, PAPER_PARAMETERS, jobs=jobs,
                       steps=steps, ratios=paper.FITTED_RATIOS, progress=progress, done=done)
    runs = run_points(paper.PRESET, paper.PAPER_TARGETS + paper.CHECK_RUNS, PAPER_PARAMETERS,
                      [result.values], jobs, done=done)[0]
    payload = summarize(result, runs)
    payload["written"] = write_fitted(result.values) if write else []
    payload["wall_s"] = time.perf_counter() - began
    return payload


def summarize(result: FitResult, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fit's table, parameters and checks from the runs of its best point (the
    paper's targets, then the check runs, in order)."""
    targets = paper.PAPER_TARGETS
    measured = _measured(targets, runs[:len(targets)])
    errors = errors_pct(measured, [t.paper_s for t in targets])
    rows = [{"name": t.name, "policy": t.policy, "agents": t.agents, "metric": t.metric,
             "paper_s": t.paper_s, "ours_s": ours, "error_pct": err}
            for t, ours, err in zip(targets, measured, errors, strict=True)]
    spec = load_preset(paper.PRESET)
    parameters = [{"key": p.key, "value": v, "start": p.start, "low": p.low, "high": p.high,
                   "unit": p.unit, "meaning": p.meaning}
                  for p, v in zip(PAPER_PARAMETERS, result.values, strict=True)]
    names = [t.name for t in targets + paper.CHECK_RUNS]
    by_name = dict(zip(names, runs, strict=True))
    kept = ("policy", "agents", "jct_s", "tpot_mean_s", "snic_max_over_avg",
            "snic_max_over_avg_steady")
    return {"preset": spec.name, "rows": rows, "max_error_pct": max(abs(e) for e in errors),
            "parameters": parameters, "checks": paper_checks(by_name),
            "runs": [{"name": name, **{k: row[k] for k in kept if k in row}}
                     for name, row in by_name.items()],
            "evaluations": result.evaluations, "history": result.history}


def write_fitted(values: Sequence[float]) -> list[str]:
    """The fitted values into the presets: node values into every preset on the same
    hardware, model values into the calibrated preset only. Returns the files written."""
    spec = load_preset(paper.PRESET)
    written = []
    for name in SAME_HARDWARE:
        updates = [(p.key, p.preset_value(v, spec), _reason(p))
                   for p, v in zip(PAPER_PARAMETERS, values, strict=True)
                   if p.key.startswith("node.") or name == paper.PRESET]
        path = PRESET_DIR / f"{name}.toml"
        write_values(path, updates)
        written.append(str(path))
    return written


def _reason(p: Parameter) -> str:
    return (f"fitted ({p.unit}, plausible {p.low:g}-{p.high:g}) by `dualpath calibrate "
            f"paper` to the paper's offline JCTs: {p.meaning}")


def paper_checks(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's relative results, the decode TPOT and the SNIC balance on ``runs``
    (by target name), each with whether it holds."""
    jct = {name: row["jct_s"] for name, row in runs.items()}
    gains = {n: jct[f"baseline, {n:,} agents"] / jct[f"dualpath, {n:,} agents"]
             for n in (512, 2048, 4096)}
    gains[1024] = (jct["ablation baseline, 1,024 agents"]
                   / jct["ablation +scheduler, 1,024 agents"])
    checks = [_check("speed-up at 2,048 agents", gains[2048],
                     paper.HEADLINE_RANGE, "1.70-2.05")]
    base = jct["ablation baseline, 1,024 agents"]
    for step, want in zip(("+layer-wise", "+dual-path", "+scheduler"), paper.ABLATION_PCT,
                          strict=True):
        got = 100 * (1 - jct[f"ablation {step}, 1,024 agents"] / base)
        tol = paper.ABLATION_TOLERANCE_PTS
        checks.append(_check(f"ablation {step} reduction %", got, (want - tol, want + tol),
                             f"{want} +/- {tol:g}"))
    ratio = jct["dualpath, 4,096 agents"] / jct["oracle, 4,096 agents"]
    checks.append(_check("dualpath / oracle at 4,096 agents", ratio,
                         (0.0, paper.ORACLE_RATIO_MAX), f"<= {paper.ORACLE_RATIO_MAX}"))
    ordered = [gains[n] for n in sorted(gains)]
    drop = max(1 - g / max(ordered[:i + 1]) for i, g in enumerate(ordered))
    checks.append(_check("largest fall of the gain, 512 -> 4,096 agents", drop,
                         (-1.0, paper.GAIN_DROP_MAX), f"<= {paper.GAIN_DROP_MAX:.0%}"))
    tpots = [row["tpot_mean_s"] for name, row in runs.items() if row["policy"] == "dualpath"]
    checks.append(_check("dualpath mean TPOT, s (worst run)", max(tpots, key=lambda t: abs(
        t - sum(paper.TPOT_RANGE_S) / 2)), paper.TPOT_RANGE_S, "0.036-0.039"))
    return checks + _snic_checks(runs)


def _snic_checks(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """SNIC max/avg in the steady middle of the 1,024-agent runs: the paper's
    round-robin (reads alternate sides), ours (the shorter queue), the scheduler."""
    key = "snic_max_over_avg_steady"
    rr_paper, sched_paper = paper.SNIC_BALANCE
    alternate = runs["round-robin reads alternating, 1,024 agents"][key]
    shorter = runs["ablation +dual-path, 1,024 agents"][key]
    sched = runs["ablation +scheduler, 1,024 agents"][key]
    return [
        _check("SNIC max/avg, round-robin reading alternate sides", alternate,
               (rr_paper - 0.15, rr_paper + 0.15), f"{rr_paper} +/- 0.15"),
        _check("SNIC max/avg, round-robin reading the shorter queue", shorter, None, "-"),
        _check("SNIC max/avg, the scheduler (dualpath)", sched,
               (sched_paper - 0.15, sched_paper + 0.15), f"{sched_paper} +/- 0.15"),
    ]


def _check(name: str, value: float, bounds: tuple[float, float] | None,
           want: str) -> dict[str, Any]:
    ok = None if bounds is None else bounds[0] <= value <= bounds[1]
    return {"name": name, "value": value, "want": want, "holds": ok}


def render(payload: dict[str, Any]) -> str:
    """The fit's table, its parameters and the checks, for the terminal."""
    out = [f"calibration of {payload['preset']} to the paper's offline JCTs "
           f"({payload['evaluations']} evaluations, {payload['wall_s']:.0f} s)",
           format_table(payload["rows"], ["name", "paper_s", "ours_s", "error_pct"]),
           f"max |error| {payload['max_error_pct']:.1f}%", "",
           format_table(payload["parameters"], ["key", "start", "value", "low", "high",
                                                "unit"]), "",
           format_table([{**c, "holds": {True: "yes", False: "NO", None: "-"}[c["holds"]]}
                         for c in payload["checks"]], ["name", "value", "want", "holds"])]
    if payload["written"]:
        out += ["", "wrote " + ", ".join(payload["written"])]
    return "\n".join(out)
