"""Prometheus metrics of one scheduler service (its own registry, so several servers
can run in one process, as the tests do)."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Decisions cost tens of microseconds; calls with a batch, milliseconds.
_LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.25)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._shadow_seen = self._shadow_agreed = 0
        r = self.registry
        self.decisions = Counter("dualpath_decisions", "Decisions served, by policy and path "
                                 "(pe, de, split, defer)", ["policy", "path"], registry=r)
        self.latency = Histogram("dualpath_call_latency_seconds", "Time to serve a call, "
                                 "by method", ["method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.swaps = Counter("dualpath_policy_swaps", "Policy changes, by kind (swap, rollback, "
                             "watch, shadow, canary, promote)", ["kind"], registry=r)
        self.canary_rollbacks = Counter("dualpath_canary_rollbacks", "Canaries rolled back by "
                                        "the service, by the measure that regressed (ttft, "
                                        "jct)", ["reason"], registry=r)
        self.canary_share = Gauge("dualpath_canary_share", "Share of the sessions the canary's "
                                  "challenger decides (0: no canary)", registry=r)
        self.refused = Counter("dualpath_policy_refusals", "Policies refused at load or check",
                               registry=r)
        self.errors = Counter("dualpath_errors", "Calls answered with an error, by method and "
                              "status code", ["method", "code"], registry=r)
        self.shadow_decisions = Counter("dualpath_shadow_decisions", "Decisions the shadow "
                                        "policy made", registry=r)
        self.shadow_agreements = Counter("dualpath_shadow_agreements", "Shadow decisions equal "
                                         "to the served ones", registry=r)
        self.shadow_agreement_rate = Gauge("dualpath_shadow_agreement_rate", "Share of shadow "
                                           "decisions equal to the served ones", registry=r)
        self.shadow_dropped = Counter("dualpath_shadow_dropped", "Calls the shadow skipped "
                                      "because its queue was full", registry=r)
        self.epp_answers = Counter("dualpath_epp_answers", "Endpoint picker answers, by "
                                   "outcome (routed, or the HTTP status it answered)",
                                   ["outcome"], registry=r)
        self.epp_pick = Histogram("dualpath_epp_pick_seconds", "Time from a request's body "
                                  "to the picker's answer (queueing included)",
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.log_pending = Gauge("dualpath_decision_log_pending", "Decision-log rows not yet "
                                 "committed", registry=r)

    def serve(self, port: int, host: str = "127.0.0.1") -> WSGIServer:
        """Expose ``/metrics`` over HTTP on ``port`` (0: any free port); returns the server,
        whose ``server_port`` is the port bound."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    def record_shadow(self, agreed: int, total: int) -> None:
        self.shadow_decisions.inc(total)
        self.shadow_agreements.inc(agreed)
        self._shadow_seen += total
        self._shadow_agreed += agreed
        if self._shadow_seen:
            self.shadow_agreement_rate.set(self._shadow_agreed / self._shadow_seen)
