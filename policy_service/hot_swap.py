"""The serving policy, its predecessor, its shadow and its canary: built aside, checked,
then swapped.

A swap replaces one reference. A call reads :attr:`PolicyRegistry.serving` (the
champion and the canary) once at its start and decides with what it read, so calls
in flight during a change finish on the old policies and no call sees a half-built
one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from agents import resolve_policy
from policy_service.canary import (
    Arm,
    CanaryConfig,
    CanaryEvent,
    CanaryMonitor,
    CanaryReport,
    CanaryState,
    Regression,
    check_request,
)
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


@dataclass(frozen=True)
class CanarySlot:
    """The canary's challenger and the share of the sessions it decides."""

    loaded: LoadedPolicy
    share: float


@dataclass(frozen=True)
class Serving:
    """What a call decides with, read as one reference: the champion and the canary."""

    current: LoadedPolicy | None = None
    canary: CanarySlot | None = None


CanaryListener = Callable[[CanaryEvent], None]


class PolicyRegistry:
    """Holds the current, previous and shadow policies of one cluster, and its canary.

    Every change (swap, rollback, shadow, canary) goes through one lock so two admins
    cannot interleave; reads take no lock (one attribute read is atomic). The champion
    and the canary are one :class:`Serving` reference, so a call reads both at once.
    """

    def __init__(self, cluster: ClusterSpec,
                 build: Callable[[str, ClusterSpec], Policy] = build_policy,
                 canary: CanaryConfig | None = None) -> None:
        self.cluster = cluster
        self._build = build
        self._lock = threading.Lock()
        self._loaded = 0
        self.serving = Serving()
        self.previous: LoadedPolicy | None = None
        self.shadow: LoadedPolicy | None = None
        self.swaps = 0
        self.monitor = CanaryMonitor(canary or CanaryConfig())
        #: Called with each change of the canary, under the registry's lock (in the order
        #: the changes happen): must not block, nor call the registry.
        self.canary_listeners: list[CanaryListener] = []

    @property
    def current(self) -> LoadedPolicy | None:
        return self.serving.current

    @property
    def canary(self) -> CanarySlot | None:
        return self.serving.canary

    def load(self, spec_text: str) -> LoadedPolicy:
        """Build and check ``spec_text`` aside (slow: call it off the event loop)."""
        policy = self._build(spec_text, self.cluster)
        with self._lock:
            self._loaded += 1
            return LoadedPolicy(policy, spec_text, f"v{self._loaded}:{spec_text}")

    def swap(self, spec_text: str) -> LoadedPolicy:
        """Serve ``spec_text``; a running canary's windows start again, since its
        challenger is now compared with another champion."""
        loaded = self.load(spec_text)
        with self._lock:
            self._new_champion(loaded)
        return loaded

    def rollback(self) -> LoadedPolicy:
        """Serve the previous policy again (a running canary's windows start again)."""
        with self._lock:
            if self.previous is None:
                raise PolicyRefused("nothing to roll back to: no policy was swapped out yet")
            back = self.previous
            self._new_champion(back)
            return back

    def _new_champion(self, loaded: LoadedPolicy) -> None:
        self.previous = self.serving.current
        self.serving = replace(self.serving, current=loaded)
        self.swaps += 1
        if self.serving.canary is not None:
            self.monitor.new_champion((loaded.spec, loaded.version))

    def set_shadow(self, spec_text: str) -> LoadedPolicy | None:
        loaded = self.load(spec_text) if spec_text.strip() else None
        with self._lock:
            self.shadow = loaded
        return loaded

    # -- the canary ------------------------------------------------------------------
    def set_canary(self, spec_text: str, share: float) -> CanarySlot | None:
        """Send ``share`` of the sessions to ``spec_text`` (built and checked like a swap),
        replacing any canary; with an empty spec (and a share of 0), end the canary.
        ValueError for a share outside (0, 1) or a share without a spec."""
        check_request(spec_text, share)
        if not spec_text.strip():
            with self._lock:
                self._end_canary(CanaryState.ENDED, "ended by SetCanary")
            return None
        loaded = self.load(spec_text)
        with self._lock:
            champion = self.serving.current
            if champion is None:
                raise PolicyRefused("no champion is served yet: a canary needs one to "
                                    "compare with")
            self._end_canary(CanaryState.ENDED, f"replaced by {spec_text}")
            slot = CanarySlot(loaded, share)
            self.serving = replace(self.serving, canary=slot)
            self.monitor.start(share, (champion.spec, champion.version),
                               (loaded.spec, loaded.version))
            self._emit("set", slot, f"{share:.1%} of the sessions on {loaded.version}")
            return slot

    def promote_canary(self) -> LoadedPolicy:
        """Make the canary's challenger the champion (the old one is kept for Rollback)."""
        with self._lock:
            slot = self.serving.canary
            if slot is None:
                raise PolicyRefused(f"no canary is running (its state: "
                                    f"{self.monitor.state.value}): nothing to promote")
            self.previous = self.serving.current
            self.serving = Serving(slot.loaded, None)
            self.swaps += 1
            reason = f"promoted {slot.loaded.version} to champion"
            self.monitor.finish(CanaryState.PROMOTED, reason)
            self._emit("promoted", slot, reason)
            return slot.loaded

    def canary_outcome(self, arm: Arm, decided: LoadedPolicy,
                       outcome: Mapping[str, float]) -> Regression | None:
        """Feed the outcome of a request ``decided`` on ``arm`` to the running canary and
        test; when the test finds the challenger worse, the canary is rolled back (every
        session on the champion at once) and the regression returned. Outcomes of
        policies that are no longer the arm's (swapped meanwhile) are not counted."""
        with self._lock:
            slot, champion = self.serving.canary, self.serving.current
            if slot is None or decided is not (slot.loaded if arm is Arm.CANARY else champion):
                return None
            found = self.monitor.record(arm, outcome)
            if found is not None:
                self._end_canary(CanaryState.ROLLED_BACK, found.reason(self.monitor.config))
            return found

    def canary_report(self, samples: bool = False) -> CanaryReport:
        with self._lock:  # a consistent copy of the windows
            return self.monitor.report(samples)

    def _end_canary(self, state: CanaryState, reason: str) -> None:
        slot = self.serving.canary
        if slot is None:
            return
        self.serving = replace(self.serving, canary=None)
        self.monitor.finish(state, reason)
        self._emit(state.value, slot, reason)

    def _emit(self, event: str, slot: CanarySlot, reason: str) -> None:
        change = CanaryEvent(event, slot.loaded.spec, slot.loaded.version, slot.share, reason)
        for listener in self.canary_listeners:
            listener(change)
