"""``dualpath decisions agree``: how often a policy would have decided as the service's
decision log says it did."""

from __future__ import annotations

from typing import Any

from agents.spec import resolve_policy
from policy_service.log_reader import agree, cluster_of
from runtime.preset import load_preset


def agree_with_log(db: str, policy: str, preset: str | None = None) -> dict[str, Any]:
    """Replay the log at ``db`` with ``policy`` on ``preset`` (default: the cluster the log
    names); ``agree``'s counts with the policy and preset added."""
    logged = cluster_of(db)
    preset = preset or (logged.partition(":")[0] if logged else None)
    if preset is None:
        raise ValueError(f"{db}: the log holds no decisions (and no --preset was given)")
    spec = load_preset(preset)
    payload = agree(db, resolve_policy(policy, spec).policy, spec)
    payload.update(policy=policy, preset=spec.name)
    return payload
