"""``RemotePolicy``: the service as a :class:`runtime.Policy`.

Each ``decide`` sends the request with a snapshot of the caller's view (the
service keeps no state for it) under a deadline. When the service does not
answer in time or cannot be reached, a local heuristic decides instead and the
fallback is counted; an answer that says the call itself was wrong (for example
INVALID_ARGUMENT) is raised, since deciding locally would hide the bug.

Spec syntax: ``grpc://HOST:PORT[?timeout_ms=N&fallback=NAME&ca=FILE&prefix=WHO]``;
``ca`` switches to TLS with that root certificate. ``prefix=caller`` (the default)
sends where the caller's view says each request's prefix sits; ``prefix=service``
sends none, so the service's block index answers, fed by the cache events the
caller forwards (:meth:`RemotePolicy.cache_events`): sent in order, by a thread and,
before each decision, by the deciding call itself, so a decision never overtakes
an event the caller had heard of. When a call of events failed (the service was down
or restarting), the next decision first sends the caller's whole index instead
(``resync``, a callable giving it as events, if the caller set one).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qsl, urlsplit

import grpc
from google.protobuf.message import Message

from agents.spec import resolve_policy
from policy_service.cache_index import MAX_EVENTS_PER_CALL
from policy_service.codec import decision_from_pb, request_to_pb, view_to_pb
from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import ADMIN, SCHEDULER
from runtime.cache.index import CacheEvent, EventKind
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer
from runtime.policy import Policy, as_learner
from runtime.request import Request
from runtime.view import ClusterView, PrefixView

if TYPE_CHECKING:  # the live runtime is imported only by its callers
    from runtime.live.router.caches import RouterCaches

# A restarted service is found again within a second (gRPC's default backoff grows to
# two minutes, in which every call would fail and decide locally).
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000)]
# Failures that mean "the service did not answer": decide locally.
_TRANSIENT = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass(frozen=True)
class RemoteSpec:
    target: str
    timeout_s: float = 1.0
    fallback: str = "dualpath"
    ca: str | None = None
    prefix: str = "caller"

    @classmethod
    def parse(cls, text: str) -> RemoteSpec:
        url = urlsplit(text.strip())
        if url.scheme != "grpc" or not url.hostname or url.port is None:
            raise ValueError(f"policy spec {text!r}: expected grpc://HOST:PORT[?options]")
        options = dict(parse_qsl(url.query, strict_parsing=False))
        known = {"timeout_ms", "fallback", "ca", "prefix"}
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
        prefix = options.get("prefix", "caller")
        if prefix not in ("caller", "service"):
            raise ValueError(f"policy spec {text!r}: prefix must be 'caller' or 'service', "
                             f"got {prefix!r}")
        return cls(f"{url.hostname}:{url.port}", timeout_s, options.get("fallback", "dualpath"),
                   ca, prefix)


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
            self._channel = grpc.secure_channel(spec.target, creds, _CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(spec.target, _CHANNEL_OPTIONS)
        self._schedule = self.unary("Schedule", pb.Decision)
        self._complete = self.unary("Complete", pb.CompleteResponse)
        self._events = self.unary("ReportCacheEvents", pb.ReportAck)
        self._pending: list[grpc.Future] = []
        #: Where the service said each request's prefix sits (prefix=service), by id.
        self.service_prefixes: OrderedDict[int, PrefixView] = OrderedDict()
        self._outbox: list[tuple[int, Sequence[CacheEvent]]] = []
        self._queued = threading.Condition()  # guards the outbox and _closed
        self._closed = False
        self._sender: threading.Thread | None = None
        self._sending = threading.Lock()  # one batch at a time, in order
        self.events_failed = 0
        #: The caller's whole index as events (see the module docstring); called on the
        #: deciding thread, which is the one that changes that index.
        self.resync: Callable[[], Sequence[CacheEvent]] | None = None
        self.resyncs = 0
        self._resync_due = False

    def unary(self, method: str, reply: type[Message]) -> grpc.UnaryUnaryMultiCallable:
        """A callable of the scheduler's ``method`` on this client's channel."""
        return self._channel.unary_unary(f"/{SCHEDULER}/{method}",
                                         request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=reply.FromString)

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer | None:
        own = self.spec.prefix == "caller"
        if not own:
            self._flush(deciding=True)
        msg = pb.ScheduleRequest(request=request_to_pb(request, view.prefix if own else None),
                                 view=view_to_pb(view), client_id=self.client_id)
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
        if not own and reply.HasField("prefix"):
            self._remember(request.request_id, reply)
        return decision_from_pb(reply)

    def _remember(self, request_id: int, reply: pb.Decision) -> None:
        p = reply.prefix
        self.service_prefixes[request_id] = PrefixView(request_id, p.block_tokens,
                                                       tuple(p.dram_blocks), tuple(p.hbm_blocks))
        if len(self.service_prefixes) > _PREFIXES_REMEMBERED:
            self.service_prefixes.popitem(last=False)

    # -- cache events --------------------------------------------------------------
    def watch_caches(self, caches: RouterCaches, now: Callable[[], float]) -> None:
        """Follow a live router's caches (``now``: its clock): their events are forwarded,
        what the service answered is audited against them, and a resync sends their
        whole index."""
        caches.listeners.append(self.cache_events)
        caches.witness = self.service_prefixes.get
        self.resync = lambda: caches.index.snapshot(now())

    def resync_if_due(self) -> None:
        """Send the caller's whole index now if a call of events failed (a caller that
        never decides through this client calls it; a decision does it anyway)."""
        if self._resync_due:
            self._flush(deciding=True)

    def cache_events(self, node: int, events: Sequence[CacheEvent]) -> None:
        """Forward node ``node``'s cache events (none: it is alive) to the service, in
        order, without waiting; only with ``prefix=service``."""
        if self.spec.prefix != "service":
            return
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_events, name="cache-events",
                                            daemon=True)
            self._sender.start()
        with self._queued:
            self._outbox.append((node, events))
            self._queued.notify()

    def _send_events(self) -> None:
        while True:
            with self._queued:
                self._queued.wait_for(lambda: self._outbox or self._closed)
                if not self._outbox:
                    return
            self._flush()

    def _flush(self, deciding: bool = False) -> None:
        """Send what the outbox holds, after any batch being sent; when deciding and a
        resync is due, the caller's whole index instead (it holds what is queued)."""
        with self._sending:
            with self._queued:
                batch, self._outbox = self._outbox, []
            if deciding and self._resync_due and self.resync is not None:
                self._resync_due = False
                self.resyncs += 1
                batch = [(-1, self.resync())]
            if batch:
                self._send(batch)

    def _send(self, batch: list[tuple[int, Sequence[CacheEvent]]]) -> None:
        events = [pb.CacheEvent(kind=_KIND_TO_PB[e.kind], node_id=e.node, engine_id=e.engine,
                                hashes=e.hashes, at_s=e.at) for _, some in batch for e in some]
        alive = sorted({node for node, _ in batch if node >= 0})
        for at in range(0, max(len(events), 1), MAX_EVENTS_PER_CALL):
            msg = pb.CacheEventBatch(events=events[at:at + MAX_EVENTS_PER_CALL],
                                     alive_nodes=alive)
            try:
                self._events(msg, timeout=self.spec.timeout_s * 5)
            except grpc.RpcError:
                # The service's index misses these: the next decision resyncs it.
                self.events_failed += 1
                self._resync_due = True

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
        if self._sender is not None:
            with self._queued:
                self._closed = True
                self._queued.notify()
            self._sender.join(30)
        for future in self._pending:
            with contextlib.suppress(grpc.RpcError):
                future.result()
        self._pending.clear()
        self._channel.close()


_PREFIXES_REMEMBERED = 1_000_000
_KIND_TO_PB = {EventKind.STORE: pb.CACHE_STORED, EventKind.EVICT: pb.CACHE_EVICTED,
               EventKind.CLEAR: pb.CACHE_CLEARED}


def remote_policy(text: str, cluster: ClusterSpec | None = None) -> RemotePolicy:
    """The resolver's hook for ``grpc://`` specs."""
    return RemotePolicy(RemoteSpec.parse(text), cluster)


class CallFailed(ValueError):
    """A call the service answered with an error (its code and message); a ValueError, so
    that a command line reports it as an error of what it was given (target, token)."""


M = TypeVar("M", bound=Message)
_ADMIN_METHODS = set(pb.DESCRIPTOR.services_by_name["SchedulerAdmin"].methods_by_name)


def read_token(path: str) -> str:
    """The admin token in the file at ``path`` (ValueError if it is empty)."""
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"admin token file {path} is empty")
    return token


def service_call(target: str, method: str, msg: Message, reply: type[M], *,
                 token: str | None = None, timeout_s: float = 120.0) -> M:
    """One call of ``method`` at ``target`` over a plain channel: a SchedulerAdmin method
    is authorized with ``token``. CallFailed with the service's answer if it fails."""
    admin = method in _ADMIN_METHODS
    if admin and token is None:
        raise ValueError(f"{method} is an admin call: it needs the admin token")
    metadata = [("authorization", f"Bearer {token}")] if admin else None
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(f"/{ADMIN if admin else SCHEDULER}/{method}",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=reply.FromString)
        try:
            answer: M = call(msg, timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as err:
            raise CallFailed(f"{method} at {target}: {err.code().name}: "
                             f"{err.details()}") from None
    return answer
