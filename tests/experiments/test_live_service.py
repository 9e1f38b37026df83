"""A live cluster driven by the gRPC scheduler service: the service dies and returns, and the
policy is swapped twice mid-run; every request completes either way."""

from __future__ import annotations

import signal
import threading
import time

from experiments.evaluation.runner import run as simulate
from experiments.live.runs import LiveRunConfig, run_cluster
from experiments.live.service_process import ServiceProcess
from policy_service.proto import scheduler_pb2 as pb
from tests.policy_service.conftest import TOKEN, Client

# Four agents at half of model time: about 10 s of wall time per run.
CFG = dict(preset="tiny-live", agents=4, time_scale=0.5)


def _expected_requests() -> int:
    return simulate(LiveRunConfig(**CFG).resolved()[3])["requests"]


def _after(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def test_service_killed_mid_run_falls_back_then_reconnects():
    service = ServiceProcess(["--preset", "tiny-live", "--db", "none"])
    port = service.port
    state: dict = {}

    def bounce() -> None:
        state["served_at_kill"] = state["policy"].served
        service.stop(signal.SIGKILL)
        time.sleep(1.0)
        state["again"] = ServiceProcess(["--preset", "tiny-live", "--db", "none",
                                         "--port", str(port)])

    def on_start(router, policy) -> None:
        state["policy"] = policy  # the RemotePolicy
        state["bouncer"] = _after(2.0, bounce)

    spec = f"grpc://127.0.0.1:{port}?timeout_ms=200&fallback=dualpath"
    try:
        result = run_cluster(LiveRunConfig(policy=spec, **CFG), on_start=on_start)
    finally:
        state["bouncer"].join()
        service.stop()
        if "again" in state:
            state["again"].stop()
    assert result["requests"] == _expected_requests()
    assert result["policy_fallbacks"] > 0  # decided locally while the service was gone
    assert result["policy_served"] > state["served_at_kill"] > 0  # and remotely again after


def test_policy_swapped_twice_mid_run(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    service = ServiceProcess(["--preset", "tiny-live", "--db", "none",
                              "--admin-token-file", str(token_file)])
    admin = Client(service.target)
    answers: list[str] = []

    def swap(spec: str | None) -> None:
        if spec is None:
            answers.append(admin.admin("Rollback", pb.RollbackRequest()).spec)
        else:
            answers.append(admin.admin("SwapPolicy", pb.SwapPolicyRequest(spec=spec)).spec)

    def on_start(router, policy) -> None:
        _after(1.5, lambda: swap("pretrained:paper-offline"))
        _after(4.0, lambda: swap(None))

    try:
        result = run_cluster(LiveRunConfig(policy=f"grpc://{service.target}?timeout_ms=2000",
                                           **CFG), on_start=on_start)
        info = admin.GetPolicy(pb.GetPolicyRequest(), timeout=5)
    finally:
        admin.close()
        service.stop()
    assert answers == ["pretrained:paper-offline", "dualpath"]
    assert info.spec == "dualpath" and info.swaps >= 3
    assert result["requests"] == _expected_requests()
    assert result["policy_fallbacks"] == 0  # every decision came from the service
