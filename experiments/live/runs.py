"""Live runs from a plain config, and the simulator-vs-live fidelity table.

``run_cluster`` is what ``dualpath cluster`` does: resolve the preset (a live
preset, or any cluster preset with default scales), the policy spec and the
workload exactly as ``dualpath simulate`` does, run them on a live cluster and
return the same metrics. ``fidelity`` runs a few configs both ways.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import policy_service  # noqa: F401 - teaches resolve_policy the grpc:// specs
from agents.running import policy_run
from experiments.evaluation.runner import RunConfig, build_workload
from experiments.evaluation.runner import run as simulate
from experiments.evaluation.table import format_table
from runtime.live.cluster import LiveCluster, local_decider
from runtime.live.config import LiveOptions, is_live_preset, load_live_preset
from runtime.live.model_run import model_overrides
from runtime.live.router import Faults, Router
from runtime.placement.order import order_of
from runtime.preset import load_preset


@dataclass(frozen=True)
class LiveRunConfig:
    """One live run. ``None`` means: the live preset's default (or the built-in one)."""

    preset: str = "tiny-live"
    policy: str = "dualpath"
    overrides: tuple[str, ...] = ()
    agents: int | None = None
    mal: str | None = None
    seed: int = 0
    trace: str | None = None
    transport: str = "shm"
    netns: bool = False
    time_scale: float | None = None
    bytes_scale: int | None = None
    layerwise: bool = True
    device: str = "cpu"
    faults: Faults = Faults()
    engine: str = "emulated"  # "model": a real transformer computes (bytes at scale 1)
    model_size: str | None = None  # default: the live preset's [model] engine_size
    model_dtype: str = "float32"
    token_check: bool = True  # the model's tokens against float64 after the run
    append_scale: float = 1.0  # every turn's appended / generated tokens times these
    gen_scale: float = 1.0

    def resolved(self) -> tuple[str, tuple[str, ...], LiveOptions, RunConfig]:
        """(cluster preset, overrides, live options, the equivalent simulator config)."""
        size = "tiny"
        if is_live_preset(self.preset):
            live = load_live_preset(self.preset)
            cluster, overrides = live.cluster, live.overrides + self.overrides
            defaults = (live.time_scale, live.bytes_scale, live.agents, live.mal)
            size = live.engine_size
        else:
            cluster, overrides = self.preset, self.overrides
            defaults = (1.0, 32, 8, "32k")
        time_scale = self.time_scale if self.time_scale is not None else defaults[0]
        bytes_scale = self.bytes_scale if self.bytes_scale is not None else defaults[1]
        with policy_run(self.policy, None, layerwise=self.layerwise) as chosen:
            layerwise, oracle = chosen.layerwise, chosen.oracle
        model = self.engine == "model"
        options = LiveOptions(time_scale=time_scale, bytes_scale=1 if model else bytes_scale,
                              transport=self.transport, netns=self.netns, device=self.device,
                              layerwise=layerwise, oracle=oracle, engine=self.engine,
                              model_size=self.model_size or size,
                              model_dtype=self.model_dtype, token_check=self.token_check)
        overrides += model_overrides(options)  # the simulator sees the real model's shape
        sim = RunConfig(policy=self.policy, preset=cluster, overrides=overrides,
                        agents=self.agents if self.agents is not None else defaults[2],
                        mal=self.mal if self.mal is not None else str(defaults[3]),
                        seed=self.seed, layerwise=options.layerwise, oracle=options.oracle,
                        trace=self.trace, append_scale=self.append_scale,
                        gen_scale=self.gen_scale)
        return cluster, overrides, options, sim


def run_cluster(cfg: LiveRunConfig,
                on_start: Callable[[Router, Any], None] | None = None) -> dict[str, Any]:
    """Run ``cfg`` on a live cluster; the simulator's metrics plus the live counters.

    ``on_start`` is called with the router and the policy once the cluster is up (tests
    use it to time faults against the run)."""
    cluster, overrides, options, sim = cfg.resolved()
    live = LiveCluster(load_preset(cluster, overrides), options)
    routers: list[Router] = []
    with policy_run(cfg.policy, live.spec) as chosen:
        watch = getattr(chosen.policy, "watch_caches", None)  # a service's own index

        def hook(router: Router) -> None:
            routers.append(router)
            router.on_finish = chosen.on_finish
            if router.caches is not None and watch is not None:
                watch(router.caches, router.clock.now)
            if on_start is not None:
                on_start(router, chosen.policy)
        metrics = live.run(build_workload(sim, live.spec), local_decider(chosen.policy),
                           cfg.faults, router_hook=hook, order=order_of(chosen.policy))
        counts = chosen.counts()
        if routers and routers[0].caches is not None and routers[0].caches.witnessed:
            metrics["service_index"] = routers[0].caches.audit(witnessed=True)
    return {"policy": cfg.policy, "mal": sim.mal, "agents": sim.agents, "seed": cfg.seed,
            **metrics, **counts}


#: The fidelity configs: (label, live config). One is compute-bound; one has DRAM caches
#: that evict and serve a fifth of the hit bytes from other nodes' DRAM.
FIDELITY_CONFIGS: tuple[tuple[str, LiveRunConfig], ...] = (
    ("tiny-live dualpath", LiveRunConfig(preset="tiny-live", policy="dualpath")),
    ("io-bound-live pe_only", LiveRunConfig(preset="io-bound-live", policy="pe_only",
                                            agents=8)),
    ("io-bound-live dualpath", LiveRunConfig(preset="io-bound-live", policy="dualpath",
                                             agents=8)),
    ("compute-bound-live dualpath", LiveRunConfig(preset="compute-bound-live",
                                                  policy="dualpath")),
    ("cache-live pe_only", LiveRunConfig(preset="cache-live", policy="pe_only")),
)
#: The policies of the model-engine fidelity configs: both paths, and the prefill side's.
MODEL_POLICIES = ("dualpath", "pe_only")


def model_configs(preset: str, model: LiveRunConfig) -> tuple[tuple[str, LiveRunConfig], ...]:
    """Fidelity configs whose engines run the model: one per policy of
    :data:`MODEL_POLICIES` on ``preset``, as ``model`` says otherwise (a preset calibrated
    to the engine's measured timings, by ``dualpath calibrate engine``, is what makes the
    simulator comparable)."""
    return tuple((f"{preset} {policy} (model, {model.device})",
                  dataclasses.replace(model, preset=preset, policy=policy, engine="model"))
                 for policy in MODEL_POLICIES)


#: A source counts in the per-source check when it carries this share of the hit bytes
#: (a relative error on a source of almost nothing says nothing).
SOURCE_MIN_SHARE = 0.01


def fidelity(configs: Sequence[tuple[str, LiveRunConfig]] = FIDELITY_CONFIGS,
             runs: int = 3, progress: bool = True) -> dict[str, Any]:
    """Simulator vs live (median of ``runs``) throughput and mean JCT per config."""
    rows = []
    for label, cfg in configs:
        sim = simulate(cfg.resolved()[3])
        lives = []
        for k in range(runs):
            lives.append(run_cluster(cfg))
            if progress:
                print(f"[fidelity] {label}: live run {k + 1}/{runs}: "
                      f"{lives[-1]['throughput_tok_s']:,.0f} tok/s, "
                      f"JCT mean {lives[-1]['jct_mean_s']:.2f} s "
                      f"(wall {lives[-1]['wall_s']:.0f} s)", file=sys.stderr, flush=True)
        live_tput = statistics.median(r["throughput_tok_s"] for r in lives)
        live_jct = statistics.median(r["jct_mean_s"] for r in lives)
        rows.append({**_source_errors(sim, lives),
            "config": label, "sim_throughput_tok_s": sim["throughput_tok_s"],
            "live_throughput_tok_s": live_tput, "sim_jct_mean_s": sim["jct_mean_s"],
            "live_jct_mean_s": live_jct,
            "throughput_error_pct": _error(sim["throughput_tok_s"], live_tput),
            "jct_error_pct": _error(sim["jct_mean_s"], live_jct),
            "blocks_verified": sum(r["live"].get("blocks_verified", 0) for r in lives),
            "checksum_failures": sum(r["live"].get("checksum_failures", 0) for r in lives),
            **_token_totals(lives),
            "tokens_digests": sorted({r["tokens_digest"] for r in lives if "tokens_digest" in r})})
    worst = max(max(r["throughput_error_pct"], r["jct_error_pct"],
                    *r.get("source_error_pct", {}).values()) for r in rows)
    return {"rows": rows, "max_error_pct": worst, "runs": runs}


def _token_totals(lives: list[dict[str, Any]]) -> dict[str, int]:
    """With the model engine: its tokens checked against float64, over the runs."""
    keys = ("tokens_checked", "token_mismatches", "token_near_ties", "tokens_generated")
    if not all(k in r["live"] for r in lives for k in keys):
        return {}
    return {k: sum(r["live"][k] for r in lives) for k in keys}


def fidelity_failures(payload: dict[str, Any], max_error_pct: float) -> list[str]:
    """Each configuration whose throughput or mean JCT error exceeds ``max_error_pct``."""
    failures = [f"{row['config']}: {what} error {row[key]:.1f}% > {max_error_pct:g}%"
                for row in payload["rows"]
                for what, key in (("throughput", "throughput_error_pct"),
                                  ("mean JCT", "jct_error_pct"))
                if row[key] > max_error_pct]
    return failures + [f"{row['config']}: hit bytes from {source} error {error:.1f}% > "
                       f"{max_error_pct:g}%" for row in payload["rows"]
                       for source, error in row.get("source_error_pct", {}).items()
                       if error > max_error_pct]


def render_fidelity(payload: dict[str, Any]) -> str:
    cols = ["config", "sim_throughput_tok_s", "live_throughput_tok_s", "throughput_error_pct",
            "sim_jct_mean_s", "live_jct_mean_s", "jct_error_pct", "blocks_verified"]
    lines = [f"{row['config']}: hit bytes by source, error % (sources of >= "
             f"{SOURCE_MIN_SHARE:.0%} of the hit bytes): "
             + ", ".join(f"{s} {e:.1f}" for s, e in row["source_error_pct"].items())
             + f"; index exact {row['index_exact_share']:.2%}"
             for row in payload["rows"] if "source_error_pct" in row]
    return "\n".join([format_table(payload["rows"], cols), *lines,
                      f"live = median of {payload['runs']} runs; largest error "
                      f"{payload['max_error_pct']:.1f}%"])


def _source_errors(sim: dict[str, Any], lives: list[dict[str, Any]]) -> dict[str, Any]:
    """With caches: the error of each source's hit bytes (live median against the
    simulator), for the sources carrying at least SOURCE_MIN_SHARE of them."""
    by_source = sim["hit_bytes_by_source"]
    if not any(by_source[s] for s in ("hbm", "dram_local", "dram_peer")):
        return {}
    total = sum(by_source.values())
    live = {s: statistics.median(r["hit_bytes_by_source"][s] for r in lives) for s in by_source}
    return {"hit_bytes_by_source_sim": by_source, "hit_bytes_by_source_live": live,
            "source_error_pct": {s: _error(v, live[s]) for s, v in by_source.items()
                                 if v >= SOURCE_MIN_SHARE * total},
            "index_exact_share": min(r["index"]["exact_share"] for r in lives)}


def _error(sim: float, live: float) -> float:
    return abs(live - sim) / sim * 100.0 if sim else 0.0
