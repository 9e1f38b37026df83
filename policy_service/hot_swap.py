"""The serving policy, its predecessor and its shadow: built aside, checked, then swapped.

A swap replaces one reference. A call reads :attr:`PolicyRegistry.current` once
at its start and decides with what it read, so calls in flight during a swap
finish on the old policy and no call sees a half-built one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agents import resolve_policy
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer
from runtime.policy import Policy
from runtime.sim.simulator import Simulator
from runtime.workload.agentic import AgenticWorkload

CHECK_DECISIONS = 64        # canned decisions a policy must get right before it serves
CHECK_DECIDE_LIMIT_S = 0.05  # the slowest canned decision allowed


class PolicyRefused(ValueError):
    """A policy that failed to load or to pass the canned checks; nothing was swapped."""


@dataclass(frozen=True)
class LoadedPolicy:
    """A checked policy and the names it serves under."""

    policy: Policy
    spec: str
    version: str  # "v<N>:<spec>": N counts the policies this service has loaded

    @property
    def name(self) -> str:
        return self.policy.name


def check_policy(policy: Policy, spec: ClusterSpec, label: str) -> None:
    """Drive a short simulation of ``spec`` with ``policy``; PolicyRefused unless every
    answer is a valid decision or a defer, it places at least one request and no
    decision takes longer than :data:`CHECK_DECIDE_LIMIT_S`."""
    sim = Simulator(spec, AgenticWorkload(8, "32k", seed=12345))
    placed, slowest = 0, 0.0
    for _ in range(CHECK_DECISIONS):
        point = sim.next_decision()
        if point is None:
            break
        start = time.perf_counter()
        try:
            answer = policy.decide(*point)
        except Exception as err:  # noqa: BLE001 - any failure of a candidate refuses it
            raise PolicyRefused(f"{label}: decide() raised {type(err).__name__}: {err}") from err
        slowest = max(slowest, time.perf_counter() - start)
        if answer is not None and not isinstance(answer, Decision | Defer):
            raise PolicyRefused(f"{label}: decide() returned {type(answer).__name__}, not a "
                                "Decision, a Defer or None")
        try:
            sim.apply(answer)
        except ValueError as err:
            raise PolicyRefused(f"{label}: invalid decision on a canned input: {err}") from err
        placed += isinstance(answer, Decision)
    if not placed:
        raise PolicyRefused(f"{label}: deferred every canned request on an idle cluster")
    if slowest > CHECK_DECIDE_LIMIT_S:
        raise PolicyRefused(f"{label}: a canned decision took {slowest * 1e3:.1f} ms "
                            f"(limit {CHECK_DECIDE_LIMIT_S * 1e3:.0f} ms)")


def build_policy(spec_text: str, cluster: ClusterSpec) -> Policy:
    """Resolve ``spec_text`` for ``cluster``; PolicyRefused with the reason if it cannot be.

    The check runs on a second instance, so that the serving one starts fresh
    (a round-robin cursor or a tuner's window is state the check would change).
    """
    label = f"policy {spec_text!r}"
    if spec_text.strip().startswith("grpc://"):
        raise PolicyRefused(f"{label}: the service cannot serve a remote policy (grpc://)")
    try:
        resolved, probe = (resolve_policy(spec_text, cluster) for _ in range(2))
    except (ValueError, OSError, NotImplementedError) as err:
        raise PolicyRefused(f"cannot load {label}: {err}") from err
    if resolved.layerwise is not None or resolved.oracle is not None:
        raise PolicyRefused(f"{label} sets run switches (layerwise/oracle), which belong to a "
                            "cluster, not to a scheduler")
    check_policy(probe.policy, cluster, label)
    return resolved.policy


class PolicyRegistry:
    """Holds the current, previous and shadow policies of one cluster.

    Every change (swap, rollback, shadow) goes through one lock so two admins
    cannot interleave; reads take no lock (one attribute read is atomic).
    """

    def __init__(self, cluster: ClusterSpec,
                 build: Callable[[str, ClusterSpec], Policy] = build_policy) -> None:
        self.cluster = cluster
        self._build = build
        self._lock = threading.Lock()
        self._loaded = 0
        self.current: LoadedPolicy | None = None
        self.previous: LoadedPolicy | None = None
        self.shadow: LoadedPolicy | None = None
        self.swaps = 0

    def load(self, spec_text: str) -> LoadedPolicy:
        """Build and check ``spec_text`` aside (slow: call it off the event loop)."""
        policy = self._build(spec_text, self.cluster)
        with self._lock:
            self._loaded += 1
            return LoadedPolicy(policy, spec_text, f"v{self._loaded}:{spec_text}")

    def swap(self, spec_text: str) -> LoadedPolicy:
        loaded = self.load(spec_text)
        with self._lock:
            self.previous, self.current = self.current, loaded
            self.swaps += 1
        return loaded

    def rollback(self) -> LoadedPolicy:
        with self._lock:
            if self.previous is None:
                raise PolicyRefused("nothing to roll back to: no policy was swapped out yet")
            back = self.previous
            self.previous, self.current = self.current, back
            self.swaps += 1
            return back

    def set_shadow(self, spec_text: str) -> LoadedPolicy | None:
        loaded = self.load(spec_text) if spec_text.strip() else None
        with self._lock:
            self.shadow = loaded
        return loaded
