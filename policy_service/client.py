"""``RemotePolicy``: the service as a :class:`runtime.Policy`.

Each ``decide`` sends the request with a snapshot of the caller's view (the
service keeps no state for it) under a deadline. When the service does not
answer in time or cannot be reached, a local heuristic decides instead and the
fallback is counted; an answer that says the call itself was wrong (for example
INVALID_ARGUMENT) is raised, since deciding locally would hide the bug.

Spec syntax: ``grpc://HOST:PORT[?timeout_ms=N&fallback=NAME&ca=FILE&token=...]``;
``ca`` switches to TLS with that root certificate.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import grpc
from google.protobuf.message import Message

from agents.spec import resolve_policy
from policy_service.codec import decision_from_pb, request_to_pb, view_to_pb
from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import SCHEDULER
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer
from runtime.policy import Policy, as_learner
from runtime.request import Request
from runtime.view import ClusterView

# Failures that mean "the service did not answer": decide locally.
_TRANSIENT = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass(frozen=True)
class RemoteSpec:
    target: str
    timeout_s: float = 1.0
    fallback: str = "dualpath"
    ca: str | None = None

    @classmethod
    def parse(cls, text: str) -> RemoteSpec:
        url = urlsplit(text.strip())
        if url.scheme != "grpc" or not url.hostname or url.port is None:
            raise ValueError(f"policy spec {text!r}: expected grpc://HOST:PORT[?options]")
        options = dict(parse_qsl(url.query, strict_parsing=False))
        known = {"timeout_ms", "fallback", "ca"}
        if unknown := set(options) - known:
            raise ValueError(f"policy spec {text!r}: unknown option(s) {sorted(unknown)}; "
                             f"known: {sorted(known)}")
        try:
            timeout_s = float(options.get("timeout_ms", 1000)) / 1000
        except ValueError:
            raise ValueError(f"policy spec {text!r}: timeout_ms must be a number") from None
        if not timeout_s > 0:
            raise ValueError(f"policy spec {text!r}: timeout_ms must be > 0")
        ca = options.get("ca")
        if ca is not None and not Path(ca).is_file():
            raise ValueError(f"policy spec {text!r}: ca {ca}: no such file")
        return cls(f"{url.hostname}:{url.port}", timeout_s, options.get("fallback", "dualpath"),
                   ca)


class RemotePolicy:
    """Decides through the scheduler service at ``spec.target``; see the module docstring.

    ``fallbacks`` counts the decisions made locally, ``served`` those the service
    made. Call :meth:`close` when done
    (it waits for the ``Complete`` calls still in flight).
    """

    def __init__(self, spec: RemoteSpec, cluster: ClusterSpec | None = None) -> None:
        self.spec = spec
        self.name = f"remote:{spec.target}"
        self.fallback: Policy = resolve_policy(spec.fallback).policy
        self.fallbacks = 0
        self.served = 0  # decisions the service answered
        self.client_id = uuid.uuid4().hex[:12]
        self.last_version = ""
        if spec.ca is not None:
            creds = grpc.ssl_channel_credentials(Path(spec.ca).read_bytes())
            self._channel = grpc.secure_channel(spec.target, creds)
        else:
            self._channel = grpc.insecure_channel(spec.target)
        self._schedule = self._unary("Schedule", pb.Decision)
        self._complete = self._unary("Complete", pb.CompleteResponse)
        self._pending: list[grpc.Future] = []

    def _unary(self, method: str, reply: type[Message]) -> grpc.UnaryUnaryMultiCallable:
        return self._channel.unary_unary(f"/{SCHEDULER}/{method}",
                                         request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=reply.FromString)

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer | None:
        msg = pb.ScheduleRequest(request=request_to_pb(request), view=view_to_pb(view),
                                 client_id=self.client_id)
        try:
            reply = self._schedule(msg, timeout=self.spec.timeout_s)
        except grpc.RpcError as err:
            if err.code() not in _TRANSIENT:
                raise ValueError(f"{self.name} refused request {request.request_id}: "
                                 f"{err.code().name}: {err.details()}") from None
            self.fallbacks += 1
            return self.fallback.decide(request, view)
        self.last_version = reply.policy_version
        self.served += 1
        return decision_from_pb(reply)

    def complete(self, request_id: int, outcome: Mapping[str, float]) -> None:
        """Tell the service ``request_id`` finished (asynchronously; failures are ignored:
        the outcome only feeds the log and the reservations expire with the next report)."""
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._complete.future(
            pb.CompleteRequest(request_id=request_id, client_id=self.client_id,
                               outcome=dict(outcome)), timeout=self.spec.timeout_s * 5))
        if (learner := as_learner(self.fallback)) is not None:
            learner.complete(request_id, outcome)

    def close(self) -> None:
        for future in self._pending:
            with contextlib.suppress(grpc.RpcError):
                future.result()
        self._pending.clear()
        self._channel.close()


def remote_policy(text: str, cluster: ClusterSpec | None = None) -> RemotePolicy:
    """The resolver's hook for ``grpc://`` specs."""
    return RemotePolicy(RemoteSpec.parse(text), cluster)
