"""What the service does, with no gRPC in sight: decide, reserve, shadow, log.

The servicer translates messages and calls one method here per RPC. Decisions
run on the caller's thread (the server's event loop: one at a time, so a
policy never serves two calls at once); the shadow policy and the decision log
work on their own threads, off the response path.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from policy_service.cache_index import CacheIndex
from policy_service.cluster_state import ClusterState
from policy_service.codec import InvalidMessage, cluster_digest, path_of, view_from_pb, view_to_pb
from policy_service.decision_log import DecisionLog, LogEntry, LoggedDecision
from policy_service.hot_swap import LoadedPolicy, PolicyRegistry
from policy_service.metrics import Metrics
from policy_service.proto import scheduler_pb2 as pb
from policy_service.replay import replay_call, same_answer
from runtime.decision import Decision, Defer
from runtime.placement import PlacementError, WaitingQueue, check_engines, reserve_view
from runtime.placement.order import order_of
from runtime.policy import as_learner, last_action_prob, last_scores
from runtime.request import Request
from runtime.view import ClusterView, PrefixView

log = logging.getLogger(__name__)

Answer = Decision | Defer | None
SHADOW_QUEUE_CALLS = 10_000  # calls waiting for the shadow; beyond, the shadow skips
_COMPLETED_REMEMBERED = 100_000  # (client, request) pairs kept to make Complete idempotent


class NoPolicy(RuntimeError):
    """No policy is loaded yet (the health service says NOT_SERVING)."""


class PolicyFailed(RuntimeError):
    """The serving policy raised or answered nonsense; the call fails, the server goes on."""


@dataclass(frozen=True)
class _Call:
    """One Schedule/ScheduleBatch call, as the shadow and the log see it."""

    client_id: str
    view: ClusterView  # before the call's first decision
    # The snapshot as received (None: the service's own view, ``view``). Serialized by
    # the log's shipping thread, not on the request path; nothing writes to it later.
    snapshot: pb.ClusterSnapshot | None
    requests: Sequence[Request]
    answers: Sequence[Answer]
    latencies_us: Sequence[float]
    scores: Sequence[tuple[float, ...] | None]
    action_probs: Sequence[float | None]
    sessions: Sequence[str]  # "" where the agent id names the session
    served: LoadedPolicy
    decided_at: float


@dataclass(frozen=True)
class Scheduled:
    """A call's answers in the order they were made (the policy's queue order for an
    ordered batch), with their requests and the prefix locations each was decided on."""

    requests: list[Request]
    answers: list[Answer]
    prefixes: list[PrefixView | None]
    version: str


@dataclass(frozen=True)
class _Queued:
    request: Request
    index: int


class SchedulerCore:
    def __init__(self, registry: PolicyRegistry, state: ClusterState, metrics: Metrics,
                 decision_log: DecisionLog | None = None, max_batch: int = 1024,
                 cache: CacheIndex | None = None) -> None:
        self.registry = registry
        self.state = state
        self.cache = cache if cache is not None else CacheIndex(registry.cluster)
        self.metrics = metrics
        self.log = decision_log
        self.max_batch = max_batch
        self.cluster = registry.cluster
        self._digest = cluster_digest(registry.cluster)
        self._counters: dict[tuple[str, str], Any] = {}
        self._completed: OrderedDict[tuple[str, int], None] = OrderedDict()
        #: Called with (client id, request id) of each request completed (once each).
        self.completed: list[Callable[[str, int], None]] = []
        self._shadow_q: queue.Queue[_Call | None] = queue.Queue(SHADOW_QUEUE_CALLS)
        self._shadow_thread = threading.Thread(target=self._shadow_loop, name="shadow",
                                               daemon=True)
        self._shadow_thread.start()

    # -- scheduling -----------------------------------------------------------------
    def schedule(self, requests: Sequence[Request], snapshot: pb.ClusterSnapshot | None,
                 client_id: str, prefixes: Sequence[PrefixView | None] | None = None,
                 ordered: bool = False, sessions: Sequence[str] | None = None) -> Scheduled:
        """Decide ``requests`` in order (each after the reservations of those before it)
        on ``snapshot`` or, if None, on the service's own view. ``prefixes``: where each
        request's prefix sits as its caller said (None: as the block index says);
        ``ordered``: in the policy's queue order rather than as listed; ``sessions``: the
        session each request is a turn of (None or "": its agent id names it)."""
        if not requests:
            raise InvalidMessage("no requests: a batch needs at least one")
        if len(requests) > self.max_batch:
            raise InvalidMessage(f"{len(requests)} requests in one batch; at most "
                                 f"{self.max_batch}")
        served = self.registry.current  # read once: a swap now does not touch this call
        if served is None:
            raise NoPolicy("no policy is loaded yet")
        own = snapshot is None
        view = self.state.view() if snapshot is None else view_from_pb(snapshot, self.cluster)
        start_view = view
        policy = served.policy
        turn = (self._queue_order(requests, policy, view.time_s) if ordered
                else range(len(requests)))
        done = Scheduled([], [], [], served.version)
        latencies: list[float] = []
        scores: list[tuple[float, ...] | None] = []
        probs: list[float | None] = []
        named: list[str] = []
        paths: dict[str, int] = {}
        decide = policy.decide
        last = len(requests) - 1
        for k, i in enumerate(turn):
            request = requests[i]
            t0 = time.perf_counter()
            given = prefixes[i] if prefixes is not None else None
            prefix = given if given is not None else self.cache.locate(request)
            answer = self._checked(served, decide, request,
                                   view if prefix is None else replace(view, prefix=prefix))
            if own:
                answer = self.state.vet(answer)
            if isinstance(answer, Decision):
                if own:
                    self.state.hold(client_id, request, answer)
                    self.cache.placed(request, answer)
                if k < last:  # only the next decision of this call looks at it
                    view = reserve_view(view, request, answer)
            latencies.append((time.perf_counter() - t0) * 1e6)
            done.requests.append(request)
            done.answers.append(answer)
            done.prefixes.append(prefix)
            scores.append(last_scores(policy))
            probs.append(last_action_prob(policy))
            named.append(sessions[i] if sessions is not None else "")
            path = path_of(answer)
            paths[path] = paths.get(path, 0) + 1
        self._count(served.name, paths)
        self._after(_Call(client_id, start_view, snapshot, done.requests, done.answers,
                          latencies, scores, probs, named, served, time.time()))
        return done

    def _queue_order(self, requests: Sequence[Request], policy: object,
                     now: float) -> list[int]:
        """Indexes of ``requests`` in the order the placement core's waiting queue would
        ask about them under the policy's queue order (and its ``max_wait_s``) at
        ``now``: the ones waiting longest first when overdue, else the order's."""
        queue: WaitingQueue[_Queued] = WaitingQueue()
        queue.set_order(order_of(policy), self.cluster)
        for i in sorted(range(len(requests)), key=lambda i: requests[i].arrival_s):
            queue.arrive(_Queued(requests[i], i))
        return [queue.take(queue.pick(now)).index for _ in range(len(requests))]

    def _count(self, policy: str, paths: Mapping[str, int]) -> None:
        """Count a call's decisions, ``paths`` of each path: once per path, not per
        decision (an increment takes a lock)."""
        for path, n in paths.items():
            counter = self._counters.get((policy, path))
            if counter is None:  # labels() costs microseconds: looked up once per pair
                counter = self._counters[(policy, path)] = self.metrics.decisions.labels(
                    policy, path)
            counter.inc(n)

    def _checked(self, served: LoadedPolicy, decide: Callable[[Request, ClusterView], Answer],
                 request: Request, view: ClusterView) -> Answer:
        try:
            answer = decide(request, view)
        except Exception as err:
            raise PolicyFailed(f"policy {served.version} raised on request "
                               f"{request.request_id}: {type(err).__name__}: {err}") from err
        if isinstance(answer, Decision):
            try:
                check_engines(self.cluster, request, answer)
            except PlacementError as err:
                raise PolicyFailed(f"policy {served.version} chose engines "
                                   f"{answer.prefill_engine}/{answer.decode_engine}, not a "
                                   f"prefill and a decode engine of {self.cluster.name!r}: "
                                   f"{err}") from None
        elif answer is not None and not isinstance(answer, Defer):
            raise PolicyFailed(f"policy {served.version} answered {type(answer).__name__}")
        return answer

    def _after(self, call: _Call) -> None:
        if self.registry.shadow is None:
            self._log(call, None, [])
            return
        try:
            self._shadow_q.put_nowait(call)
        except queue.Full:
            self.metrics.shadow_dropped.inc()
            self._log(call, None, [])

    # -- the shadow ------------------------------------------------------------------
    def _shadow_loop(self) -> None:
        while (call := self._shadow_q.get()) is not None:
            shadow = self.registry.shadow
            answers: list[Answer] = []
            if shadow is not None:
                answers = self._shadow_answers(shadow, call)
            self._log(call, shadow, answers)
            self._shadow_q.task_done()
        self._shadow_q.task_done()

    def _shadow_answers(self, shadow: LoadedPolicy, call: _Call) -> list[Answer]:
        answers = list(replay_call(call.view, zip(call.requests, call.answers, strict=True),
                                   self._safe(shadow)))
        agreed = sum(same_answer(m, s) for m, s in zip(answers, call.answers, strict=True))
        self.metrics.record_shadow(agreed, len(answers))
        return answers

    @staticmethod
    def _safe(shadow: LoadedPolicy) -> Callable[[Request, ClusterView], Answer]:
        """The shadow's decide, its failures turned into defers: a broken shadow must not
        stop the log."""
        def decide(request: Request, view: ClusterView) -> Answer:
            try:
                return shadow.policy.decide(request, view)
            except Exception as err:  # noqa: BLE001
                log.warning("shadow %s raised: %s", shadow.version, err)
                return Defer(f"shadow raised {type(err).__name__}")
        return decide

    def drain_shadow(self) -> None:
        """Wait until the shadow has handled every call made so far."""
        self._shadow_q.join()

    # -- the log -----------------------------------------------------------------------
    def _log(self, call: _Call, shadow: LoadedPolicy | None, shadow_answers: list[Answer]) -> None:
        if self.log is None:
            return
        # Queued as it is: the log's shipping thread serializes the snapshot and builds
        # the rows, after the answer has gone (everything the call holds is immutable).
        self.log.record_later(len(call.requests),
                              partial(self._log_entry, call, shadow, shadow_answers))
        self.metrics.log_pending.set(self.log.pending)

    def _log_entry(self, call: _Call, shadow: LoadedPolicy | None,
                   shadow_answers: list[Answer]) -> LogEntry:
        """What the log records of ``call``: its view, serialized, and its decisions."""
        snapshot = call.snapshot if call.snapshot is not None else view_to_pb(call.view)
        rows = [LoggedDecision(
            request=request, answer=answer, policy_spec=call.served.spec,
            policy_version=call.served.version, latency_us=latency, decided_at=call.decided_at,
            client_id=call.client_id,
            shadow=shadow_answers[i] if shadow is not None else None,
            shadow_spec=shadow.spec if shadow is not None else None,
            shadow_version=shadow.version if shadow is not None else None, scores=scores,
            session_id=session, action_prob=prob)
            for i, (request, answer, latency, scores, prob, session) in enumerate(
                zip(call.requests, call.answers, call.latencies_us, call.scores,
                    call.action_probs, call.sessions, strict=True))]
        return snapshot.SerializeToString(), self._digest, call.view.time_s, rows

    # -- the rest --------------------------------------------------------------------------
    def report(self, reports: Sequence[pb.EngineReport],
               counted: Sequence[int] | None = None) -> int:
        return self.state.report(reports, counted)

    def complete(self, client_id: str, request_id: int, outcome: Mapping[str, float]) -> bool:
        """Release the request's reservation and record its outcome; a repeat does nothing.
        Returns whether anything was released."""
        key = (client_id, request_id)
        released = self.state.release(client_id, request_id)
        if key in self._completed:
            return released
        self._completed[key] = None
        if len(self._completed) > _COMPLETED_REMEMBERED:
            self._completed.popitem(last=False)
        if self.log is not None:
            self.log.record_outcome(client_id, request_id, dict(outcome))
        for listener in self.completed:
            listener(client_id, request_id)
        served = self.registry.current
        learner = as_learner(served.policy) if served is not None else None
        if learner is not None:
            learner.complete(request_id, dict(outcome))
        return released

    def close(self) -> None:
        """Let the shadow finish, then flush and close the log."""
        self._shadow_q.put(None)
        self._shadow_thread.join()
        if self.log is not None:
            self.log.close()

