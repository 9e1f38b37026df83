"""What the service does, with no gRPC in sight: decide, reserve, shadow, canary, log.

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
from typing import Any, NamedTuple

from policy_service.cache_index import CacheIndex
from policy_service.canary import Arm, CanaryEvent, in_canary
from policy_service.cluster_state import ClusterState
from policy_service.codec import InvalidMessage, cluster_digest, path_of, view_from_pb, view_to_pb
from policy_service.decision_log import DecisionLog, LogEntry, LoggedDecision
from policy_service.hot_swap import LoadedPolicy, PolicyRegistry, Serving
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
    arms: Sequence[Decider]  # the arm and policy that decided each request
    decided_at: float


class Decider(NamedTuple):
    """The arm that decided a request and its policy."""

    arm: Arm
    loaded: LoadedPolicy


@dataclass(frozen=True)
class Scheduled:
    """A call's answers in the order they were made (the policy's queue order for an
    ordered batch), with their requests, the prefix locations each was decided on and
    the version of the policy that decided each (a canary's for its sessions)."""

    requests: list[Request]
    answers: list[Answer]
    prefixes: list[PrefixView | None]
    version: str  # the champion's
    versions: list[str]


class _Decided:
    """A call's decisions so far, in the order they were made."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answers: list[Answer] = []
        self.prefixes: list[PrefixView | None] = []
        self.arms: list[Decider] = []
        self.latencies: list[float] = []
        self.scores: list[tuple[float, ...] | None] = []
        self.probs: list[float | None] = []
        self.sessions: list[str] = []
        self.paths: dict[tuple[str, str], int] = {}  # (policy name, path): decisions

    def add(self, request: Request, answer: Answer, prefix: PrefixView | None,
            decider: Decider, latency_us: float, session: str) -> None:
        policy = decider.loaded.policy
        self.requests.append(request)
        self.answers.append(answer)
        self.prefixes.append(prefix)
        self.arms.append(decider)
        self.latencies.append(latency_us)
        self.scores.append(last_scores(policy))
        self.probs.append(last_action_prob(policy))
        self.sessions.append(session)
        key = (decider.loaded.name, path_of(answer))
        self.paths[key] = self.paths.get(key, 0) + 1


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
        # Who decided each placed request, until its outcome: it goes to that arm.
        self._deciders: OrderedDict[tuple[str, int], Decider] = OrderedDict()
        registry.canary_listeners.append(self._canary_changed)
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
        ``ordered``: in the champion's queue order rather than as listed; ``sessions``:
        the session each request is a turn of (None or "": its agent id names it), which
        chooses its arm while a canary runs (a batch may mix arms)."""
        if not requests:
            raise InvalidMessage("no requests: a batch needs at least one")
        if len(requests) > self.max_batch:
            raise InvalidMessage(f"{len(requests)} requests in one batch; at most "
                                 f"{self.max_batch}")
        serving = self.registry.serving  # read once: a change now does not touch this call
        if serving.current is None:
            raise NoPolicy("no policy is loaded yet")
        champion = Decider(Arm.CHAMPION, serving.current)
        own = snapshot is None
        view = self.state.view() if snapshot is None else view_from_pb(snapshot, self.cluster)
        start_view = view
        turn = (self._queue_order(requests, champion.loaded.policy, view.time_s) if ordered
                else range(len(requests)))
        done = _Decided()
        last = len(requests) - 1
        for k, i in enumerate(turn):
            request = requests[i]
            t0 = time.perf_counter()
            session = sessions[i] if sessions is not None else ""
            decider = self._decider(serving, champion, request, session)
            given = prefixes[i] if prefixes is not None else None
            prefix = given if given is not None else self.cache.locate(request)
            answer = self._decide(decider, request,
                                  view if prefix is None else replace(view, prefix=prefix),
                                  client_id, own, serving.canary is not None)
            if isinstance(answer, Decision) and k < last:  # only this call's next looks
                view = reserve_view(view, request, answer)
            done.add(request, answer, prefix, decider, (time.perf_counter() - t0) * 1e6,
                     session)
        self._count(done.paths)
        self._after(_Call(client_id, start_view, snapshot, done.requests, done.answers,
                          done.latencies, done.scores, done.probs, done.sessions, done.arms,
                          time.time()))
        return Scheduled(done.requests, done.answers, done.prefixes, champion.loaded.version,
                         [d.loaded.version for d in done.arms])

    @staticmethod
    def _decider(serving: Serving, champion: Decider, request: Request,
                 session: str) -> Decider:
        """The canary's policy for the canary's sessions, else the champion."""
        slot = serving.canary
        if slot is not None and in_canary(session or str(request.agent_id), slot.share):
            return Decider(Arm.CANARY, slot.loaded)
        return champion

    def _decide(self, decider: Decider, request: Request, view: ClusterView, client_id: str,
                own: bool, canary: bool) -> Answer:
        """``decider``'s checked answer; on the service's own view, vetted and held. While
        a ``canary`` runs, a placed request's decider is remembered for its outcome (else
        the outcome goes to the champion: no bookkeeping on the hot path)."""
        answer = self._checked(decider.loaded, decider.loaded.policy.decide, request, view)
        if own:
            answer = self.state.vet(answer)
        if isinstance(answer, Decision):
            if own:
                self.state.hold(client_id, request, answer)
                self.cache.placed(request, answer)
            if canary:
                self._deciders[(client_id, request.request_id)] = decider
                if len(self._deciders) > _COMPLETED_REMEMBERED:
                    self._deciders.popitem(last=False)
        return answer

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

    def _count(self, paths: Mapping[tuple[str, str], int]) -> None:
        """Count a call's decisions, ``paths`` of each (policy name, path): once per pair,
        not per decision (an increment takes a lock)."""
        for key, n in paths.items():
            counter = self._counters.get(key)
            if counter is None:  # labels() costs microseconds: looked up once per pair
                counter = self._counters[key] = self.metrics.decisions.labels(*key)
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
            request=request, answer=answer, policy_spec=decider.loaded.spec,
            policy_version=decider.loaded.version, latency_us=latency,
            decided_at=call.decided_at, client_id=call.client_id,
            shadow=shadow_answers[i] if shadow is not None else None,
            shadow_spec=shadow.spec if shadow is not None else None,
            shadow_version=shadow.version if shadow is not None else None, scores=scores,
            session_id=session, action_prob=prob, arm=decider.arm.value)
            for i, (request, answer, latency, scores, prob, session, decider) in enumerate(
                zip(call.requests, call.answers, call.latencies_us, call.scores,
                    call.action_probs, call.sessions, call.arms, strict=True))]
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
        decider = self._deciders.pop(key, None)
        # The policy that decided it learns from it (the champion where no canary ran).
        served = decider.loaded if decider is not None else self.registry.current
        learner = as_learner(served.policy) if served is not None else None
        if learner is not None:
            learner.complete(request_id, dict(outcome))
        if decider is not None and self.registry.canary is not None:
            self._canary_outcome(decider, outcome)
        return released

    # -- the canary --------------------------------------------------------------------
    def _canary_outcome(self, decider: Decider, outcome: Mapping[str, float]) -> None:
        found = self.registry.canary_outcome(decider.arm, decider.loaded, outcome)
        if found is not None:
            self.metrics.canary_rollbacks.labels(found.measure).inc()
            log.warning("canary rolled back: %s", found.reason(self.registry.monitor.config))

    def _canary_changed(self, event: CanaryEvent) -> None:
        """Each change of the canary (under the registry's lock: keep it short)."""
        self.metrics.canary_share.set(event.share if event.event == "set" else 0.0)
        if self.log is not None:
            self.log.record_event(event.event, event.spec, event.version, event.share,
                                  event.reason)

    def close(self) -> None:
        """Let the shadow finish, then flush and close the log."""
        self._shadow_q.put(None)
        self._shadow_thread.join()
        if self.log is not None:
            self.log.close()

