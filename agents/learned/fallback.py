"""The heuristics a learned policy builds on: the family the tuning mode sets, and the
fallback that decides what the routing network does not."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agents.heuristics import HEURISTICS, DualPath, DualPathSplit
from agents.parse import parse_heuristic
from runtime.policy import Policy

TunableFactory = Callable[[Mapping[str, float]], Policy]


# -- the tuned heuristic's family -------------------------------------------------

def make_tunable(params: Mapping[str, float]) -> Policy:
    """The heuristic the tuning mode sets: ``DualPathSplit`` when ``params["split"]`` ≥ 0.5,
    else ``DualPath``, with ``alpha_s``, ``beta_s`` and ``z_slack`` where ``params`` has them."""
    kwargs: dict[str, Any] = {k: float(params[k]) for k in ("alpha_s", "beta_s", "z_slack")
                              if k in params}
    cls = DualPathSplit if params.get("split", 0.0) >= 0.5 else DualPath
    return cls(**kwargs)


def fallback_policy(spec: str) -> Policy:
    """The heuristic a fallback spec names (``NAME[:key=value,...]``, no run switches)."""
    resolved = parse_heuristic(spec) if isinstance(spec, str) else None
    if resolved is None:
        raise ValueError(f"fallback {spec!r} is not a heuristic spec; expected one of "
                         f"{', '.join(sorted(HEURISTICS))} with optional parameters")
    if resolved.layerwise is not None or resolved.oracle is not None:
        raise ValueError(f"fallback {spec!r} sets run switches (layerwise/oracle); a fallback "
                         "only decides")
    return resolved.policy
