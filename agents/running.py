"""One run of a policy: the run switches in effect, its completion hook, what it counted,
and its ``close`` at the end, the same for every execution that runs a policy spec."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agents.spec import ResolvedPolicy, resolve_policy
from runtime.cluster import ClusterSpec
from runtime.execution.job import Job, completion_hook
from runtime.policy import FallsBack, Policy, close_policy


def run_switches(resolved: ResolvedPolicy, layerwise: bool, oracle: bool) -> tuple[bool, bool]:
    """(layer-wise, oracle) in effect: a switch is off if the caller or the spec turns it off,
    and the oracle on if either turns it on, so a spec can name a baseline system."""
    return layerwise and resolved.layerwise is not False, oracle or bool(resolved.oracle)


@dataclass(frozen=True)
class PolicyRun:
    """A policy resolved for one run, with the run switches in effect."""

    resolved: ResolvedPolicy
    layerwise: bool
    oracle: bool

    @property
    def policy(self) -> Policy:
        return self.resolved.policy

    @property
    def on_finish(self) -> Callable[[Job], None] | None:
        """What the execution calls as each job finishes (a learning policy's ``complete``)."""
        return completion_hook(self.policy)

    def counts(self) -> dict[str, Any]:
        """``policy_fallbacks`` and ``policy_served``: the decisions a policy that asks the
        service made locally and those the service answered (0 and None for the others)."""
        if isinstance(self.policy, FallsBack):
            return {"policy_fallbacks": self.policy.fallbacks,
                    "policy_served": self.policy.served}
        return {"policy_fallbacks": 0, "policy_served": None}


@contextmanager
def policy_run(spec: str, cluster: ClusterSpec | None, *, layerwise: bool = True,
               oracle: bool = False) -> Iterator[PolicyRun]:
    """Resolve ``spec`` for ``cluster`` (``None``: for no cluster in particular); the policy is
    closed when the block ends."""
    resolved = resolve_policy(spec, cluster)
    try:
        yield PolicyRun(resolved, *run_switches(resolved, layerwise, oracle))
    finally:
        close_policy(resolved.policy)
