"""What a cluster tells a service that decides on its own view (the endpoint picker's):
engine state with each engine's HTTP endpoint, cache events, completions.

:class:`ServiceFeed` follows a live router: every ``period_s`` it reports every
engine as the router sees it (``ReportEngineState``, with ``endpoint`` and the requests
the engines' loads took since the last report, whose reservations the service then
releases), forwards the
nodes' cache events in order (resyncing the whole index after a failed call, as
:class:`~policy_service.client.RemotePolicy` does) and completes each finished
request under the picker's client id, which releases its reservation and feeds the
decision log. Calls are asynchronous: a service that is down or restarting costs the
router nothing, and the next report brings it up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import grpc

from policy_service.client import RemotePolicy, RemoteSpec
from policy_service.codec import ROLE_TO_PB
from policy_service.epp.picker import EPP_CLIENT
from policy_service.proto import scheduler_pb2 as pb
from runtime.view import ClusterView

log = logging.getLogger(__name__)

#: Seconds between two state reports (the service shows an engine unheard of for its
#: ``--engine-max-age``, 2 s by default, as unavailable).
REPORT_PERIOD_S = 0.05


def engine_reports(view: ClusterView, endpoints: Mapping[int, str]) -> list[pb.EngineReport]:
    """Every engine of ``view`` as a report, with its endpoint."""
    return [pb.EngineReport(
        engine_id=e.engine_id, role=ROLE_TO_PB[e.role], node_id=e.node_id, seq=e.seq,
        tok=e.tok, free_hbm_bytes=e.free_hbm_bytes,
        cnic_backlog_bytes=view.cnic_backlog_bytes(e.engine_id),
        read_q_tokens=view.nodes[e.node_id].read_q_tokens,
        free_buffer_bytes=max(0.0, view.nodes[e.node_id].free_buffer_bytes),
        reporter_time_s=max(0.0, view.time_s), endpoint=endpoints.get(e.engine_id, ""))
        for e in view.engines]


class ServiceFeed:
    def __init__(self, target: str, endpoints: Mapping[int, str],
                 period_s: float = REPORT_PERIOD_S) -> None:
        self.endpoints = dict(endpoints)
        self.period_s = period_s
        self.remote = RemotePolicy(RemoteSpec(target, prefix="service"))
        self.remote.client_id = EPP_CLIENT  # completes what the picker decided
        self._report = self.remote.unary("ReportEngineState", pb.ReportAck)
        self.reports_failed = 0

    async def run(self, view: Callable[[], ClusterView], placed: list[int]) -> None:
        """Report ``view()`` every ``period_s`` until cancelled, with the requests
        ``placed`` since the last report (drained here): what the view newly counts."""
        while True:
            try:
                self._report_once(view, placed)
            except Exception:  # noqa: BLE001 - the next period tries again
                log.exception("feed: a state report failed")
                self.reports_failed += 1
            await asyncio.sleep(self.period_s)

    def _report_once(self, view: Callable[[], ClusterView], placed: list[int]) -> None:
        counted, placed[:] = list(placed), []
        msg = pb.EngineStateReport(engines=engine_reports(view(), self.endpoints),
                                   counts_requests=True, counted_request_ids=counted)
        future = self._report.future(msg, timeout=max(1.0, 10 * self.period_s))
        future.add_done_callback(self._reported)
        self.remote.resync_if_due()

    def _reported(self, future: grpc.Future) -> None:
        with contextlib.suppress(grpc.FutureCancelledError):
            if future.exception() is not None:
                self.reports_failed += 1

    def complete(self, request_id: int, outcome: Mapping[str, float]) -> None:
        self.remote.complete(request_id, outcome)

    def close(self) -> None:
        self.remote.close()


__all__ = ["ServiceFeed", "engine_reports"]
