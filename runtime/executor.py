"""The stepping interface of an execution: what the gymnasium env drives.

The simulator (:class:`runtime.sim.Simulator`) and the live session
(:class:`runtime.live.session.LiveSession`) both implement it, so the env and
any other stepper work over either without knowing which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from runtime.decision import Decision, Defer
from runtime.request import Request
from runtime.sim.job import Job
from runtime.view import ClusterView


class Result(Protocol):
    @property
    def metrics(self) -> dict[str, Any]: ...


class Executor(Protocol):
    """A cluster stepped one decision at a time.

    ``next_decision()`` runs the cluster until the request at the head of the
    waiting queue needs a decision and returns it with the view to decide on
    (``None`` once every admitted request has finished); ``apply()`` answers it
    (a :class:`Defer` or ``None`` leaves it waiting). ``time_in_system`` is the
    integral of unfinished requests over the execution's time, ``on_finish`` is
    called with each finished request's record, and ``result()`` gives the run's
    metrics once ``next_decision()`` returned ``None``.
    """

    on_finish: Callable[[Job], None] | None

    def next_decision(self) -> tuple[Request, ClusterView] | None: ...

    def apply(self, decision: Decision | Defer | None) -> None: ...

    def view(self) -> ClusterView: ...

    @property
    def now(self) -> float: ...

    @property
    def time_in_system(self) -> float: ...

    @property
    def finished(self) -> int: ...

    @property
    def in_system(self) -> int: ...

    def result(self, wall_s: float) -> Result: ...


if TYPE_CHECKING:  # both executions satisfy the protocol (checked by mypy, not at run time)
    from runtime.live.session import LiveSession
    from runtime.sim.simulator import Simulator

    def _conforms(sim: Simulator, live: LiveSession) -> tuple[Executor, Executor]:
        return sim, live
