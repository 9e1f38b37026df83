"""A running service's canary, from the command line: set, clear, read (``dualpath canary``).

The service does the work (see :mod:`policy_service.canary`); these functions make one
call each and turn its ``CanaryStatus`` into a plain dict.
"""

from __future__ import annotations

import math
from typing import Any

from policy_service.client import read_token, service_call
from policy_service.proto import scheduler_pb2 as pb


def _mean(x: float) -> float | None:
    return x if math.isfinite(x) else None  # NaN: the arm has no completions yet


def _arm(arm: pb.CanaryArm) -> dict[str, Any]:
    out: dict[str, Any] = {"spec": arm.spec, "version": arm.version,
                           "completions": arm.completions,
                           "ttft_mean_s": _mean(arm.ttft_mean_s),
                           "latency_mean_s": _mean(arm.latency_mean_s)}
    if arm.ttft_s or arm.latency_s:
        out["ttft_s"], out["latency_s"] = list(arm.ttft_s), list(arm.latency_s)
    return out


def status_dict(status: pb.CanaryStatus) -> dict[str, Any]:
    return {"state": status.state, "share": status.share, "reason": status.reason,
            "champion": _arm(status.champion), "challenger": _arm(status.challenger),
            "max_regression": status.max_regression,
            "min_completions": status.min_completions}


def canary_status(target: str, samples: bool = False) -> dict[str, Any]:
    """GetCanary at ``target`` (``samples``: with each arm's window of outcomes)."""
    return status_dict(service_call(target, "GetCanary", pb.GetCanaryRequest(samples=samples),
                                    pb.CanaryStatus))


def set_canary(target: str, token_file: str, spec: str, share: float) -> dict[str, Any]:
    """Send ``share`` of the sessions at ``target`` to ``spec``."""
    return status_dict(service_call(target, "SetCanary",
                                    pb.SetCanaryRequest(spec=spec, share=share),
                                    pb.CanaryStatus, token=read_token(token_file)))


def clear_canary(target: str, token_file: str) -> dict[str, Any]:
    """End the canary at ``target``: the champion decides every session again."""
    return status_dict(service_call(target, "SetCanary", pb.SetCanaryRequest(),
                                    pb.CanaryStatus, token=read_token(token_file)))


def _arm_line(label: str, arm: dict[str, Any]) -> str:
    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g} s"

    return (f"  {label:<10} {arm['spec'] or '-'} ({arm['version'] or '-'}): "
            f"{arm['completions']} completions, TTFT mean {s(arm['ttft_mean_s'])}, "
            f"JCT mean {s(arm['latency_mean_s'])}")


def render_status(status: dict[str, Any]) -> str:
    """A few lines: the state and share, each arm's window, the bound, the reason."""
    if status["state"] == "none":
        return "no canary has been set on this service"
    lines = [f"canary {status['state']}: {status['share']:.1%} of the sessions",
             _arm_line("champion", status["champion"]),
             _arm_line("challenger", status["challenger"]),
             f"  rolls back past a {status['max_regression']:+.0%} regression (one-sided "
             f"95% lower bound), tested from {status['min_completions']} completions per arm"]
    if status["reason"]:
        lines.append(f"  reason: {status['reason']}")
    return "\n".join(lines)
