"""The one protocol every scheduler implements, and the optional capabilities.

A policy is anything with a ``name`` and ``decide``. Some policies can do more;
each extra capability is a protocol of its own, checked with ``isinstance``
(never by probing attribute names), so every execution treats them alike:

- :class:`LearnsOnline`: told each request's outcome when it finishes;
- :class:`HoldsResources`: holds a channel, a thread or a file, released by ``close``;
- :class:`FallsBack`: answers through someone else (the service) and decides
  locally when that fails, counting both;
- :class:`ReportsScores`: keeps the scores behind its last decision, for the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, cast, runtime_checkable

from runtime.decision import Decision, Defer
from runtime.request import Request
from runtime.view import ClusterView

#: What a learning policy is told about a finished request: ``ttft_s`` and
#: ``latency_s`` (arrival to last token), in seconds.
Outcome = Mapping[str, float]


@runtime_checkable
class Policy(Protocol):
    """Chooses the prefill engine, decode engine and path for a request.

    ``decide`` does no I/O and does not mutate ``view``; it returns a
    :class:`Defer` (or ``None``) when no engine can take the request now; the
    request then waits at the head of the FIFO queue.
    The executor applies the decision (reserving capacity) before asking about
    the next request.
    """

    name: str

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer | None: ...


@runtime_checkable
class LearnsOnline(Protocol):
    """A policy that learns from outcomes: every execution calls ``complete`` once per
    finished request it decided."""

    def complete(self, request_id: int, outcome: Outcome) -> None: ...


@runtime_checkable
class HoldsResources(Protocol):
    """A policy whose ``close`` must run when the run that used it ends."""

    def close(self) -> None: ...


@runtime_checkable
class FallsBack(Protocol):
    """A policy that asks another decider first: ``served`` counts the answers it got,
    ``fallbacks`` the decisions its local ``fallback`` made instead."""

    fallback: Policy
    fallbacks: int
    served: int


@runtime_checkable
class ReportsScores(Protocol):
    """A policy that keeps the scores behind its last decision (``None`` where it had none)."""

    last_scores: tuple[float, ...] | None


# Both are called for every decision a service makes: a look-up of the attribute is what
# isinstance of a runtime-checkable protocol checks too, at a fraction of its cost
# (tens of microseconds each, measured).
def as_learner(policy: object) -> LearnsOnline | None:
    """``policy`` as a learner, or ``None`` where it does not learn online."""
    return cast(LearnsOnline, policy) if callable(getattr(policy, "complete", None)) else None


def last_scores(policy: object) -> tuple[float, ...] | None:
    """The scores behind ``policy``'s last decision, where it keeps them."""
    return getattr(policy, "last_scores", None)


def last_action_prob(policy: object) -> float | None:
    """The probability ``policy`` gave its last decision, where it says (learned ones)."""
    return getattr(policy, "last_action_prob", None)


def close_policy(policy: object) -> None:
    """Release what ``policy`` holds, where it holds anything."""
    if isinstance(policy, HoldsResources):
        policy.close()
