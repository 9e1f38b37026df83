"""``dualpath promote``: move the ``champion`` alias to the challenger only if it beats the
best heuristic on the scenario's evaluation seeds (the rule in ``stats.promote_decision``)."""

from __future__ import annotations

from typing import Any

from experiments.evaluation.evaluate import run_all, summarize_seeds
from experiments.evaluation.scenario import Scenario
from experiments.evaluation.stats import Interval, mean_ci95, promote_decision
from experiments.tracking import mlflow_runs as tracking


def promote(scenario: Scenario, challenger: str, *, jobs: int = 1, seeds: int | None = None,
            tracking_uri: str | None = None, interval: Interval = mean_ci95) -> dict[str, Any]:
    """Evaluate, decide, and move the alias when the rule passes; returns what happened.
    ``interval``: :func:`~experiments.evaluation.stats.bootstrap_ci95` where the
    scenario's seeds are bootstrap resamples (a replayed log's)."""
    tracking.setup(tracking_uri)
    version = None
    if challenger.startswith("models:/"):
        version = tracking.model_version(challenger)
        challenger = f"models:/{tracking.MODEL_NAME}/{version}"  # pin what is evaluated
    chosen = list(scenario.eval_seeds[:seeds] if seeds else scenario.eval_seeds)
    heuristics = [h for h in scenario.heuristics if h != challenger]  # a heuristic challenger
    # is measured against the others
    specs = [challenger, *heuristics]
    rows = {r["policy"]: r for r in summarize_seeds(run_all(scenario, specs, chosen, jobs=jobs),
                                               specs)}
    best = min(heuristics, key=lambda h: rows[h]["jct_mean_s"])
    ok, reason = promote_decision(
        rows[challenger]["per_seed_jct_mean_s"], rows[best]["per_seed_jct_mean_s"],
        rows[challenger]["per_seed_ttft_p99_s"], rows[best]["per_seed_ttft_p99_s"],
        interval=interval)
    reason = f"{reason} (challenger {challenger} vs best heuristic {best})"
    promoted = ok and version is not None
    if ok and version is None:
        reason += "; not moved: only a registered model (models:/...) can become champion"
    config = {"scenario": scenario.to_json(), "challenger": challenger, "seeds": chosen}
    with tracking.run(f"promote-{scenario.name}", config, tags={"kind": "promote"}):
        tracking.log_metrics({"promoted": promoted})
        tracking.log_table(list(rows.values()), "promote")
        if promoted:
            tracking.set_alias("champion", version)  # type: ignore[arg-type]
    return {"promoted": promoted, "reason": reason, "challenger": challenger,
            "version": version, "best_heuristic": best, "seeds": chosen,
            "jct_mean_s": {k: v["jct_mean_s"] for k, v in rows.items()}}


def promote_canary(target: str, token_file: str) -> dict[str, Any]:
    """Apply the promotion rule (``stats.canary_promote_decision``) to the window of the
    canary running at ``target`` and, when it passes, promote the challenger there
    (PromoteCanary); returns what happened and why. ValueError when no canary runs or an
    arm has no completions yet."""
    from experiments.evaluation.stats import canary_promote_decision
    from experiments.training.canary import canary_status, status_dict
    from policy_service.client import read_token, service_call
    from policy_service.proto import scheduler_pb2 as pb

    token = read_token(token_file)  # before anything is evaluated: a bad file fails now
    status = canary_status(target, samples=True)
    if status["state"] != "running":
        raise ValueError(f"no canary is running at {target} (state {status['state']}"
                         + (f": {status['reason']}" if status["reason"] else "") + ")")
    c, h = status["challenger"], status["champion"]
    for label, arm in (("challenger", c), ("champion", h)):
        if not arm.get("latency_s") or not arm.get("ttft_s"):
            raise ValueError(f"the canary's {label} has no completions with a TTFT and a "
                             f"JCT yet: nothing to decide on")
    ok, reason = canary_promote_decision(c["latency_s"], h["latency_s"], c["ttft_s"],
                                         h["ttft_s"])
    reason = f"{reason} (challenger {c['version']} vs champion {h['version']})"
    payload = {"promoted": ok, "reason": reason, "target": target,
               "challenger": c["version"], "champion": h["version"],
               "completions": {"challenger": c["completions"], "champion": h["completions"]}}
    if ok:
        after = status_dict(service_call(target, "PromoteCanary", pb.PromoteCanaryRequest(),
                                         pb.CanaryStatus, token=token))
        payload["state"] = after["state"]
        if after["challenger"]["version"] != c["version"]:  # replaced between the two calls
            payload["reason"] += (f"; the service promoted {after['challenger']['version']}, "
                                  "set after this decision")
    return payload
