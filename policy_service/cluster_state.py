"""The service's own view of a cluster whose engines report to it (``ReportEngineState``).

Reports are absolute (what the engine holds now). A decision made on this view
reserves its tokens on the chosen engines and its reads on the chosen nodes at
once, so the next decision sees them; a reservation lasts until the engine (for
the node's read queue: any engine of that node) reports again after the
decision, whose report then includes the request, or until ``Complete``.
Engines that have not reported within ``max_age_s`` are shown full (no HBM, no
batch slot, ``tok`` beyond any threshold) so policies pass them over, and a
decision that still names one is turned into a defer. Nothing here survives a
restart: the view is rebuilt from the next reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from policy_service.codec import InvalidMessage, check_engine_identity
from policy_service.proto import scheduler_pb2 as pb
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.placement import Holds, unavailable
from runtime.request import Request
from runtime.view import ClusterView, EngineView, NodeView, QueueView

UNAVAILABLE_TOK = 1 << 40  # a stale engine's tok: beyond any threshold
#: Seconds after which a reservation that no counting report named is dropped anyway (its
#: request never reached the engines: the client went away, say).
HOLD_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class _Report:
    msg: pb.EngineReport
    received: float  # the service's monotonic clock


class ClusterState:
    """Engine reports plus reservations → the :class:`ClusterView` policies decide on."""

    def __init__(self, spec: ClusterSpec, max_age_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.spec = spec
        self.max_age_s = max_age_s
        self._clock = clock
        self._reports: list[_Report | None] = [None] * spec.engines
        self._holds = Holds()

    # -- reports ----------------------------------------------------------------
    def report(self, reports: Iterable[pb.EngineReport],
               counted: Iterable[int] | None = None) -> int:
        """Record a batch of reports (all checked before any is applied); returns how many.
        ``counted``: the requests these reports include for the first time (None: the
        reporter does not say, so a report after a decision is taken to include it)."""
        batch = list(reports)
        for i, msg in enumerate(batch):
            self._check(msg, f"engines[{i}]")
        now = self._clock()
        for msg in batch:
            self._reports[msg.engine_id] = _Report(msg, now)
        if counted is None:
            self._holds.absorb(self._reported_at)
        else:
            ids = set(counted)
            self._holds.release_where(lambda key: isinstance(key, tuple) and key[1] in ids)
            self._holds.expire(now - HOLD_MAX_S)
        return len(batch)

    def _check(self, msg: pb.EngineReport, where: str) -> None:
        spec = self.spec
        e = msg.engine_id
        if not 0 <= e < spec.engines:
            raise InvalidMessage(f"{where}.engine_id {e} is not an engine of cluster "
                                 f"{spec.name!r} (0..{spec.engines - 1})")
        check_engine_identity(msg, e, spec, where)
        if msg.seq < 0 or msg.tok < 0:
            raise InvalidMessage(f"{where}: seq and tok must be >= 0, got {msg.seq}, {msg.tok}")
        for name in ("free_hbm_bytes", "cnic_backlog_bytes", "read_q_tokens",
                     "free_buffer_bytes", "reporter_time_s"):
            value = getattr(msg, name)
            if not math.isfinite(value) or (value < 0 and name != "free_hbm_bytes"):
                raise InvalidMessage(f"{where}.{name} must be a finite number >= 0, got {value}")

    # -- reservations -------------------------------------------------------------
    def hold(self, client_id: str, request: Request, decision: Decision) -> None:
        self._holds.hold((client_id, request.request_id), request, decision, self._clock())

    def release(self, client_id: str, request_id: int) -> bool:
        """Drop a request's reservation; False if it had none (already released)."""
        return self._holds.release((client_id, request_id))

    def _reported_at(self, engine_id: int) -> float | None:
        report = self._reports[engine_id]
        return None if report is None else report.received

    # -- the view -------------------------------------------------------------------
    def live(self, engine_id: int) -> bool:
        report = self._reports[engine_id]
        return report is not None and self._clock() - report.received <= self.max_age_s

    def view(self) -> ClusterView:
        """Reports (stale engines shown full), then the reservations not yet reported."""
        spec = self.spec
        now = self._clock()
        time_s = self._time(now)
        engines = tuple(self._engine(e, now, time_s) for e in range(spec.engines))
        nodes = tuple(self._node(n) for n in range(spec.nodes))
        return self._holds.apply(ClusterView(time_s, spec, engines, nodes, QueueView(0, 0)))

    def _time(self, now: float) -> float:
        """The reporters' clock, advanced by the time since the latest report."""
        latest = max((r for r in self._reports if r is not None),
                     key=lambda r: r.received, default=None)
        return 0.0 if latest is None else latest.msg.reporter_time_s + (now - latest.received)

    def _engine(self, e: int, now: float, time_s: float) -> EngineView:
        spec = self.spec
        report = self._reports[e]
        role, node, group = spec.role_of(e), spec.node_of(e), spec.group_of(e)
        if report is None or now - report.received > self.max_age_s:
            return EngineView(e, role, node, group, spec.decode_max_batch, UNAVAILABLE_TOK, 0.0)
        m = report.msg
        busy = time_s + m.cnic_backlog_bytes / spec.node.cnic_kv_bytes_s
        return EngineView(e, role, node, group, m.seq, m.tok, m.free_hbm_bytes, busy)

    def _node(self, n: int) -> NodeView:
        spec = self.spec
        gpus = spec.node.gpus
        fresh = [r for r in self._reports[n * gpus:(n + 1) * gpus] if r is not None]
        latest = max(fresh, key=lambda r: r.received, default=None)
        read_q = latest.msg.read_q_tokens if latest else 0.0
        buffer = latest.msg.free_buffer_bytes if latest else spec.node.host_buffer_bytes
        return NodeView(n, spec.role_of_node(n), read_q, spec.snic_bytes_s_of(n), buffer)

    def vet(self, answer: Decision | Defer | None) -> Decision | Defer | None:
        """``answer`` unless it names an engine that is not live; then a defer saying so."""
        if not isinstance(answer, Decision):
            return answer
        why = unavailable(answer, self._down)
        return answer if why is None else Defer(why, WaitFor.ANY)

    def _down(self, engine_id: int) -> str | None:
        return None if self.live(engine_id) else \
            f"has not reported within {self.max_age_s:g} s"

    def endpoint(self, engine_id: int) -> str:
        """Where the engine serves HTTP, as it last reported ('' if never, or stale)."""
        report = self._reports[engine_id]
        return report.msg.endpoint if report is not None and self.live(engine_id) else ""

    def time_s(self) -> float:
        """The reporters' clock now (what a view made now would say)."""
        return self._time(self._clock())
