"""The stepping interface of an execution: what the gymnasium env drives.

The simulator (:class:`runtime.sim.Simulator`) and the live session
(:class:`runtime.live.session.LiveSession`) both implement it, so the env and
any other stepper work over either without knowing which. Each of them checks
its conformance where it is defined (a ``TYPE_CHECKING`` function mypy reads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from runtime.decision import Decision, Defer
from runtime.execution.job import Job
from runtime.request import Request
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

