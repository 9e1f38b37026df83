"""A live cluster driven one decision at a time, as the gymnasium env drives the simulator.

:class:`LiveSession` has the simulator's stepping interface (``next_decision``,
``apply``, ``view``, ``now``, ``time_in_system``, ``finished``, ``in_system``,
``on_finish``, ``result``). The cluster runs in a background thread; when the
router needs a decision it hands ``(request, view)`` over and waits (without
blocking its event loop: the nodes keep running meanwhile, as a real cluster
would while its scheduler thinks) until :meth:`apply` answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer
from runtime.execution.job import Job
from runtime.live.cluster import LiveCluster
from runtime.live.config import LiveOptions
from runtime.live.router import Router
from runtime.request import Request
from runtime.view import ClusterView
from runtime.workload.base import Workload

if TYPE_CHECKING:
    from runtime.execution.executor import Executor

Answer = Decision | Defer | None
_DONE = object()


@dataclass
class LiveResult:
    """What ``Simulator.result`` gives: the metrics (and no timeline)."""

    metrics: dict[str, Any]
    timeline: list[tuple[Any, ...]]


class LiveSession:
    def __init__(self, spec: ClusterSpec, workload: Workload, options: LiveOptions) -> None:
        self.spec = spec
        self._cluster = LiveCluster(spec, options)
        self._points: queue.Queue[Any] = queue.Queue()
        self._answer: concurrent.futures.Future[Answer] | None = None
        self._router: Router | None = None
        self._metrics: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self.on_finish: Callable[[Job], None] | None = None
        self._thread = threading.Thread(target=self._run, args=(workload,), daemon=True,
                                        name="live-cluster")
        self._thread.start()

    def _run(self, workload: Workload) -> None:
        try:
            self._metrics = self._cluster.run(workload, self._decide, router_hook=self._hooked)
        except BaseException as exc:  # handed to the stepping thread
            self._error = exc
        finally:
            self._points.put(_DONE)

    def _hooked(self, router: Router) -> None:
        self._router = router
        router.on_finish = self._finished

    def _finished(self, job: Job) -> None:
        if self.on_finish is not None:
            self.on_finish(job)

    async def _decide(self, request: Request, view: ClusterView) -> Answer:
        answer: concurrent.futures.Future[Answer] = concurrent.futures.Future()
        self._answer = answer
        self._points.put((request, view))
        return await asyncio.wrap_future(answer)

    # -- the simulator's stepping interface ---------------------------------------------
    def next_decision(self) -> tuple[Request, ClusterView] | None:
        point = self._points.get()
        if point is _DONE:
            if self._error is not None:
                raise self._error
            return None
        self._last = point
        return point

    def apply(self, decision: Answer) -> None:
        if self._answer is None or self._answer.done():
            raise RuntimeError("apply() without a pending decision: call next_decision() first")
        self._answer.set_result(decision)

    def view(self) -> ClusterView:
        return self._last[1]

    @property
    def now(self) -> float:
        return self._router.clock.now() if self._router is not None else 0.0

    @property
    def time_in_system(self) -> float:
        return self._router.time_in_system if self._router is not None else 0.0

    @property
    def finished(self) -> int:
        return self._router.finished if self._router is not None else 0

    @property
    def in_system(self) -> int:
        return self._router.in_system if self._router is not None else 0

    def result(self, wall_s: float) -> LiveResult:
        """The run's metrics; waits for the run to end (call after ``next_decision`` gave None)."""
        self._thread.join()
        if self._metrics is None:
            raise RuntimeError(f"the live run did not finish: {self._error!r}")
        return LiveResult(self._metrics, [])

    def close(self) -> None:
        """Stop the cluster early: the pending decision is answered with a deferral."""
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(RuntimeError("session closed"))
        self._thread.join(timeout=30)


if TYPE_CHECKING:  # the live session satisfies the stepping protocol (checked by mypy)
    def _conforms(live: LiveSession) -> Executor:
        return live
