"""``dualpath stress``: live clusters under faults while a CPU hog keeps every core busy.

Each run starts a small live cluster (2 prefill and 2 decode nodes of the
``tiny`` preset), injects one fault a little after the start and checks that
every admitted request completed exactly once (the router ends a run only when
all are finished; a run that cannot fails naming the requests and their
phases). Faults:

- ``kill-decode``, ``kill-prefill``: a node SIGKILLed; its requests are rescheduled.
- ``kill-storage``: the storage service SIGKILLed; the launcher restarts it on the
  same port and every acknowledged block is still there, checksum intact.
- ``kill-scheduler``: decisions come from a ``dualpath serve`` process over gRPC;
  it is SIGKILLed and restarted on the same port; meanwhile the router's
  ``RemotePolicy`` decides locally (its fallback).
- ``stop-2s`` / ``stop-10s``: a node SIGSTOPped, then resumed: under the liveness
  timeout nothing happens; over it the node is fenced and its work rescheduled.
- ``link-rate``: a prefill node's storage link cut to a quarter of its rate
  (``tc`` on a kernel-shaped link: needs root and network namespaces).
- ``corrupt-block``: stored blocks corrupted; checksums catch them, replicas repair.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("kill-decode", "kill-prefill", "kill-storage", "kill-scheduler", "stop-2s",
          "stop-10s", "link-rate", "corrupt-block")
CLUSTER = ("block_tokens=1024", "prefill_nodes=2", "decode_nodes=2")
STALL_S = 60.0  # a run whose requests stop progressing this long fails, naming them
#: What each fault's run must show to count as injected (a live counter and its minimum).
_EVIDENCE = {"kill-decode": "node_lost", "kill-prefill": "node_lost",
             "kill-storage": "storage_restarts", "kill-scheduler": "service_restarts",
             "stop-10s": "fenced", "corrupt-block": "checksum_failures"}


@dataclass(frozen=True)
class StressConfig:
    count: int = 1
    faults: tuple[str, ...] = FAULTS
    agents: int = 4
    time_scale: float = 0.25
    fault_at_s: float = 3.0  # model seconds after the start
    hog: bool = True
    overrides: tuple[str, ...] = ()  # on top of CLUSTER (caches on, for example)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"--count must be >= 1, got {self.count}")
        if self.agents < 1:
            raise ValueError(f"--agents must be >= 1, got {self.agents}")
        unknown = sorted(set(self.faults) - set(FAULTS))
        if unknown or not self.faults:
            raise ValueError(f"--faults: unknown {unknown or 'none given'}; "
                             f"expected some of {', '.join(FAULTS)}")


@dataclass
class _Injector:
    """Runs one fault's action at a wall time after the run starts; notes what it did."""

    counters: Counter[str] = field(default_factory=Counter)
    timers: list[threading.Timer] = field(default_factory=list)

    def at(self, delay_s: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(delay_s, action)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def cancel(self) -> None:
        for timer in self.timers:
            timer.cancel()


@contextmanager
def cpu_hog(enabled: bool = True) -> Iterator[int]:
    """One busy process per core for the duration (yields how many)."""
    import os

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range((os.cpu_count() or 1) if enabled else 0)]
    try:
        yield len(procs)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def skip_reason(fault: str) -> str | None:
    """Why ``fault`` cannot be injected on this machine, or ``None``."""
    if fault != "link-rate":
        return None
    from runtime.live.netns import netns_available

    reason = netns_available()
    return None if reason is None else f"needs network namespaces and tc: {reason}"


def stress(cfg: StressConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Every fault of ``cfg`` ``count`` times under the hog; totals and per-run results."""
    skipped = {f: r for f in cfg.faults if (r := skip_reason(f)) is not None}
    results: list[dict[str, Any]] = []
    with cpu_hog(cfg.hog) as hogs:
        progress(f"[stress] {hogs} CPU hog process(es) running")
        for i in range(cfg.count):
            for fault in cfg.faults:
                if fault in skipped:
                    continue
                result = run_fault(fault, cfg, seed=i)
                results.append(result)
                progress(f"[stress] {fault} #{i + 1}: "
                         f"{'ok' if result['ok'] else 'FAILED'} {result['completed']}/"
                         f"{result['admitted']} completed, lost {result['lost']}, "
                         f"duplicated {result['duplicated']} ({result['wall_s']:.0f} s)"
                         + (f": {result['error']}" if result["error"] else ""))
    return _summary(results, skipped)


def _summary(results: list[dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    total = {k: sum(r[k] for r in results) for k in ("admitted", "completed", "lost",
                                                     "duplicated")}
    failed = [r for r in results if not r["ok"]]
    return {"runs": len(results), "faults": dict(Counter(r["fault"] for r in results)),
            **total, "failed_runs": len(failed), "skipped": skipped, "results": results,
            "ok": not failed}


def run_fault(fault: str, cfg: StressConfig, seed: int = 0) -> dict[str, Any]:
    """One live run with ``fault`` injected; its outcome and the evidence of the fault."""
    from runtime.live.cluster import LiveCluster
    from runtime.live.config import LiveOptions
    from runtime.live.router import RunFailed
    from runtime.preset import load_preset
    from runtime.workload.agentic import AgenticWorkload

    spec = load_preset("tiny", CLUSTER + cfg.overrides)
    netns = fault == "link-rate"
    options = LiveOptions(time_scale=cfg.time_scale, netns=netns,
                          transport="tcp" if netns else "shm", stall_s=STALL_S)
    cluster = LiveCluster(spec, options)
    injector = _Injector()
    delay = cfg.fault_at_s * cfg.time_scale
    wall = time.perf_counter()
    error, metrics, outcome = None, {}, None
    with _decider(fault, spec, cfg.overrides, injector, delay) as decider:
        hook = _hook(fault, cluster, injector, delay)
        try:
            metrics = cluster.run(AgenticWorkload(cfg.agents, "32k", seed), decider,
                                  _router_faults(fault, delay / cfg.time_scale),
                                  router_hook=hook)
        except RunFailed as err:
            error, outcome = str(err), err.outcome
        except Exception as err:  # noqa: BLE001 - a stress run reports every failure
            error = f"{type(err).__name__}: {err}"
        finally:
            injector.cancel()
    return _result(fault, metrics, outcome, injector, error,
                   _expected(spec, cfg.agents, seed), time.perf_counter() - wall)


def _expected(spec: Any, agents: int, seed: int) -> int:
    """How many requests the workload makes (its simulation, run to the end)."""
    from agents import resolve_policy
    from runtime.sim import Simulator
    from runtime.workload.agentic import AgenticWorkload

    sim = Simulator(spec, AgenticWorkload(agents, "32k", seed))
    return int(sim.run(resolve_policy("dualpath", spec).policy).metrics["requests"])


def _result(fault: str, metrics: dict[str, Any], outcome: dict[str, int] | None,
            injector: _Injector, error: str | None, expected: int,
            wall_s: float) -> dict[str, Any]:
    live = Counter(metrics.get("live", {}))
    live.update(injector.counters)
    if outcome is None:
        outcome = {k: metrics.get(k, 0) for k in ("admitted", "completed", "lost", "duplicated")}
    lost = max(outcome["lost"], expected - outcome["completed"]) if error is None else \
        max(outcome["lost"], expected - outcome["completed"], 1)
    evidence = _EVIDENCE.get(fault)
    injected = bool(injector.counters["injected"]) and (
        evidence is None or live[evidence] > 0)
    if error is None and not injected:
        error = f"the fault did not take effect ({evidence or 'injection'} not seen)"
    return {"fault": fault, "ok": error is None and lost == 0 and outcome["duplicated"] == 0,
            "admitted": outcome["admitted"], "completed": outcome["completed"], "lost": lost,
            "duplicated": outcome["duplicated"], "expected": expected, "injected": injected,
            "error": error, "wall_s": wall_s,
            "live": {k: live[k] for k in ("rescheduled", "fenced", "node_lost",
                                          "storage_restarts", "service_restarts",
                                          "fallbacks", "checksum_failures", "blocks_reread",
                                          "stale_reports", "cache_stored_blocks",
                                          "cache_evicted_blocks", "peer_blocks_sent",
                                          "cache_fallback_blocks") if live[k]}}


def _router_faults(fault: str, at_s: float) -> Any:
    from runtime.live.router import Faults

    if fault == "kill-decode":
        return Faults(kill_node=2, kill_at_s=at_s)
    if fault == "kill-prefill":
        return Faults(kill_node=0, kill_at_s=at_s)
    if fault == "corrupt-block":
        return Faults(corrupt_blocks=2)
    return Faults()


def _hook(fault: str, cluster: Any, injector: _Injector, delay: float
          ) -> Callable[[Any], None]:
    """Called once the router has started: arms the fault's timer."""
    def stop(node: int, seconds: float) -> None:
        cluster.signal_node(node, signal.SIGSTOP)
        injector.at(seconds, lambda: cluster.signal_node(node, signal.SIGCONT))

    def slow_link() -> None:
        cluster.set_snic_rate(0, cluster.spec.snic_bytes_s_of(0) / 4)

    actions: dict[str, Callable[[], Any]] = {
        "kill-storage": cluster.kill_storage,
        "stop-2s": lambda: stop(1, 2.0),
        "stop-10s": lambda: stop(3, 10.0),
        "link-rate": slow_link,
    }

    def hook(router: Any) -> None:
        action = actions.get(fault)
        if action is None:  # the router injects kills and corruption; the decider its own
            if fault != "kill-scheduler":
                injector.counters["injected"] += 1
            return

        def fire() -> None:
            action()
            injector.counters["injected"] += 1
        injector.at(delay, fire)
    return hook


@contextmanager
def _decider(fault: str, spec: Any, overrides: tuple[str, ...], injector: _Injector,
             delay: float) -> Iterator[Any]:
    """The router's decider: local ``dualpath``, or for ``kill-scheduler`` a ``dualpath
    serve`` process over gRPC that is killed and restarted mid-run."""
    import policy_service  # noqa: F401 - teaches resolve_policy the grpc:// specs
    from agents import resolve_policy
    from agents.running import policy_run
    from experiments.live.service_process import ServiceProcess
    from runtime.live.cluster import local_decider

    if fault != "kill-scheduler":
        yield local_decider(resolve_policy("dualpath", spec).policy)
        return
    serve = ["--preset", "tiny", *(a for kv in CLUSTER + overrides for a in ("--set", kv)),
             "--db", "none"]
    service = [ServiceProcess(serve)]
    port = service[0].port
    spec_text = f"grpc://127.0.0.1:{port}?timeout_ms=2000"

    def kill_and_restart() -> None:
        service[0].stop(signal.SIGKILL)
        injector.counters["injected"] += 1
        time.sleep(1.0)
        service[0] = ServiceProcess([*serve, "--port", str(port)])
        injector.counters["service_restarts"] += 1

    injector.at(delay, kill_and_restart)
    try:
        with policy_run(spec_text, spec) as remote:
            try:
                yield local_decider(remote.policy)
            finally:
                injector.counters["fallbacks"] += remote.counts()["policy_fallbacks"]
    finally:
        service[0].stop()


def render_stress(payload: dict[str, Any]) -> str:
    lines = [f"{'fault':<16}{'ok':>5}{'admitted':>10}{'completed':>11}{'lost':>6}"
             f"{'dup':>5}{'wall s':>8}"]
    for r in payload["results"]:
        lines.append(f"{r['fault']:<16}{'yes' if r['ok'] else 'NO':>5}{r['admitted']:>10}"
                     f"{r['completed']:>11}{r['lost']:>6}{r['duplicated']:>5}"
                     f"{r['wall_s']:>8.0f}")
    for fault, reason in payload["skipped"].items():
        lines.append(f"{fault:<16} skipped: {reason}")
    lines.append(f"runs {payload['runs']}, failed {payload['failed_runs']}, lost "
                 f"{payload['lost']}, duplicated {payload['duplicated']}")
    return "\n".join(lines)


def parse_faults(text: str | None) -> tuple[str, ...]:
    return FAULTS if not text else tuple(f.strip() for f in text.split(",") if f.strip())
