"""The golden cases: small runs of every execution whose outputs must not change.

Each case returns plain JSON-able data. ``compute()`` runs them all; the test
compares the result with ``golden.json`` exactly (floats included: the runs are
deterministic), and ``python -m tests.golden.cases --write`` regenerates the
file, which is done only on purpose, when a change is meant to alter results.
Wall-clock figures (``wall_s``, ``sim_requests_per_s``) are left out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).with_name("golden.json")
UNSTABLE = {"wall_s", "sim_requests_per_s"}

PRESETS = ("ds660b-2p4d", "ds27b-1p1d", "ds27b-2p1d", "ds27b-1p2d", "qwen32b-1p2d", "tiny")
LIVE_PRESETS = ("tiny-live", "io-bound-live", "compute-bound-live")
POLICIES = ("pe_only", "round_robin", "least_tokens", "dualpath", "dualpath_split",
            "pretrained:paper-offline")
# A small Mooncake-style trace: shared prefixes, a repeated conversation, a late arrival.
TRACE = [
    {"timestamp": 0, "input_length": 1500, "output_length": 5, "hash_ids": [1, 2, 3]},
    {"timestamp": 200, "input_length": 2600, "output_length": 9, "hash_ids": [1, 2, 3, 4, 5, 6]},
    {"timestamp": 450, "input_length": 900, "output_length": 3, "hash_ids": [7, 8]},
    {"timestamp": 500, "input_length": 2000, "output_length": 7, "hash_ids": [1, 2, 3, 4]},
    {"timestamp": 900, "input_length": 3100, "output_length": 12,
     "hash_ids": [1, 2, 3, 4, 5, 6, 9]},
    {"timestamp": 4000, "input_length": 1200, "output_length": 4, "hash_ids": [7, 8, 10]},
]


def _stable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(metrics.items()) if k not in UNSTABLE}


def _simulate(**kw: Any) -> dict[str, Any]:
    from experiments.evaluation.runner import RunConfig, run

    return _stable(run(RunConfig(**kw)))


def presets() -> dict[str, Any]:
    return {p: _simulate(preset=p, agents=8, mal="32k") for p in PRESETS}


def live_presets() -> dict[str, Any]:
    from agents.spec import resolve_policy
    from runtime.live.config import load_live_preset
    from runtime.sim import Simulator
    from runtime.workload.agentic import AgenticWorkload

    out = {}
    for name in LIVE_PRESETS:
        spec = load_live_preset(name).spec()
        sim = Simulator(spec, AgenticWorkload(6, "32k", 0))
        out[name] = _stable(sim.run(resolve_policy("dualpath", spec).policy).metrics)
    return out


def switches() -> dict[str, Any]:
    return {spec: _simulate(policy=spec, preset="ds27b-1p2d", agents=12, mal="32k")
            for spec in ("pe_only:layerwise=false", "dualpath:oracle=true")}


def policies() -> dict[str, Any]:
    return {p: _simulate(policy=p, preset="ds27b-1p2d", agents=16, mal="48k", seed=3)
            for p in POLICIES}


def workloads() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.jsonl"
        trace.write_text("".join(json.dumps(line) + "\n" for line in TRACE))
        return {
            "trace": _simulate(preset="tiny", trace=f"mooncake:{trace}"),
            "trace-lru": _simulate(preset="tiny", trace=f"mooncake:{trace}",
                                   storage_capacity_blocks=4, policy="dualpath_split"),
            "online": _simulate(preset="ds27b-1p2d", online=True, aps=0.5, duration_s=40.0,
                                mal="32k"),
            "tool-latency": _simulate(preset="ds27b-2p1d", agents=8, mal="32k",
                                      tool_latency_s=1.5, think_time_s=0.5, seed=7),
        }


def grpc_run() -> dict[str, Any]:
    """A simulation whose every decision is made by a real server over gRPC."""
    from policy_service.server import ServeConfig
    from tests.policy_service.conftest import RunningServer

    server = RunningServer(ServeConfig(port=0, db=None, preset="ds27b-1p2d"))
    try:
        metrics = _simulate(policy=f"grpc://{server.target}?timeout_ms=60000",
                            preset="ds27b-1p2d", agents=6, mal="32k")
    finally:
        server.stop()
    metrics["policy"] = "grpc://HOST:PORT"  # the port is the one thing that varies
    return metrics


def service_own_view() -> list[Any]:
    """A scripted sequence of the service deciding on its own view (reports, batches,
    completions, an engine going stale), on a clock the script moves."""
    from policy_service.cluster_state import ClusterState
    from policy_service.codec import view_to_pb
    from policy_service.hot_swap import PolicyRegistry
    from policy_service.metrics import Metrics
    from policy_service.proto import scheduler_pb2 as pb
    from policy_service.scheduler import SchedulerCore
    from runtime.preset import load_preset
    from tests.policy_service.conftest import sim_points

    spec = load_preset("ds27b-1p2d")
    clock = [100.0]
    state = ClusterState(spec, max_age_s=2.0, clock=lambda: clock[0])
    registry = PolicyRegistry(spec)
    registry.swap("dualpath")
    core = SchedulerCore(registry, state, Metrics(), None)
    requests = [r for r, _ in sim_points(24, preset="ds27b-1p2d")]

    def report(engines: range, seq: int, tok: int, read_q: float) -> None:
        core.report([pb.EngineReport(
            engine_id=e, role=pb.PREFILL if e < spec.prefill_engines else pb.DECODE,
            node_id=spec.node_of(e), seq=seq, tok=tok + 37 * e,
            free_hbm_bytes=spec.node.de_hbm_kv_bytes / (1 + e), cnic_backlog_bytes=1e6 * e,
            read_q_tokens=read_q * (1 + e % 3), free_buffer_bytes=1e9,
            reporter_time_s=clock[0] - 90.0) for e in engines])

    out: list[Any] = []

    def schedule(batch: list[Any], client: str = "c") -> None:
        done = core.schedule(batch, None, client)
        out.append([done.version, [_answer(a) for a in done.answers]])

    report(range(spec.engines), 1, 1000, 5000.0)
    schedule(requests[0:4])
    schedule(requests[4:5], "other")
    clock[0] += 0.5
    out.append(core.complete("c", requests[1].request_id, {"latency_s": 1.0}))
    out.append(core.complete("c", requests[1].request_id, {"latency_s": 1.0}))
    schedule(requests[5:9])
    clock[0] += 1.0
    report(range(spec.prefill_engines), 2, 4000, 20000.0)  # decode engines go quiet
    schedule(requests[9:12])
    clock[0] += 1.5  # the decode engines' last reports are now 2.5 s old
    schedule(requests[12:14])
    report(range(spec.prefill_engines, spec.engines), 0, 0, 0.0)
    schedule(requests[14:24])
    out.append(_view(state.view()))
    # A batch on a caller's snapshot: each decision sees the ones before it reserved.
    points = sim_points(40, preset="ds27b-1p2d", seed=2)
    done = core.schedule([r for r, _ in points[20:36]], view_to_pb(points[20][1]), "snap")
    out.append([_answer(a) for a in done.answers])
    core.close()
    return out


def _answer(a: Any) -> Any:
    from runtime.decision import Decision

    if isinstance(a, Decision):
        return [a.prefill_engine, a.decode_engine, a.decode_share]
    return None if a is None else ["defer", a.reason, a.wait_for.name]


def _view(view: Any) -> Any:
    return [[e.seq, e.tok, e.free_hbm_bytes] for e in view.engines] + \
        [[n.read_q_tokens, n.free_buffer_bytes] for n in view.nodes]


def env_rollout(**kwargs: Any) -> dict[str, Any]:
    """A hash of observations, rewards and masks of a seeded rollout of ``DualPath-v0``
    with encoding version 1 (the shipped learned policy's, still served)."""
    from env.encoding import Encoding

    return _rollout(encoding=Encoding(version=1), **kwargs)


def env_rollout_v2() -> dict[str, Any]:
    """The same with encoding version 2 choosing among waiting requests, on caches."""
    from env.encoding import PARTS, Encoding
    from runtime.preset import load_preset

    spec = load_preset("ds27b-1p1d", ["node.dram_cache_gb=8", "node.hbm_cache_gb=1"])
    return _rollout(preset=spec, encoding=Encoding(control=PARTS))


def _rollout(**kwargs: Any) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np

    import env  # noqa: F401 - registers DualPath-v0

    e = gym.make("DualPath-v0", **kwargs)
    digest = hashlib.sha256()
    obs, _ = e.reset(seed=5)
    e.action_space.seed(13)
    rng = np.random.default_rng(11)
    steps, total = 0, 0.0
    done = False
    while not done and steps < 400:
        masks = e.unwrapped.action_masks()
        digest.update(np.asarray(obs, dtype=np.float32).tobytes())
        digest.update(np.asarray(masks).tobytes())
        action = e.action_space.sample() if steps % 7 == 0 else _masked(rng, masks, e)
        obs, reward, terminated, truncated, _ = e.step(action)
        digest.update(np.float64(reward).tobytes())
        total += float(reward)
        steps += 1
        done = terminated or truncated
    e.close()
    return {"steps": steps, "return": total, "sha256": digest.hexdigest()}


def _masked(rng: Any, masks: Any, e: Any) -> Any:
    import numpy as np

    sizes = e.action_space.nvec
    action, start = [], 0
    for n in sizes:
        valid = np.flatnonzero(np.asarray(masks[start:start + n]))
        action.append(int(rng.choice(valid)) if len(valid) else 0)
        start += n
    return np.array(action)


CASES: dict[str, Callable[[], Any]] = {
    "presets": presets, "live_presets": live_presets, "switches": switches,
    "policies": policies, "workloads": workloads, "grpc": grpc_run,
    "service_own_view": service_own_view, "env_rollout": env_rollout,
    "env_rollout_v2": env_rollout_v2,
}


def compute() -> dict[str, Any]:
    # Through JSON, so what is compared is exactly what the file can hold.
    return json.loads(json.dumps({name: case() for name, case in CASES.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help=f"regenerate {GOLDEN.name} (only when results are meant to change)")
    args = parser.parse_args()
    results = compute()
    if args.write:
        GOLDEN.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")
    else:
        same = GOLDEN.exists() and json.loads(GOLDEN.read_text()) == results
        print("golden results unchanged" if same else "golden results DIFFER (not written)")


if __name__ == "__main__":
    main()
