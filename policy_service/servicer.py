"""gRPC handlers: each parses its message, calls the core once and builds the answer.

Handlers take raw bytes and parse them here, so that a message that does not
parse gets INVALID_ARGUMENT like any other malformed input (gRPC's own
deserializer would fail the call with INTERNAL). Every exception is turned into
a status with a message; nothing a client sends can stop the server.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from policy_service.canary import ArmReport, CanaryReport, check_request
from policy_service.codec import InvalidMessage, decision_to_pb, prefix_from_pb, request_from_pb
from policy_service.hot_swap import LoadedPolicy, PolicyRefused
from policy_service.proto import scheduler_pb2 as pb
from policy_service.scheduler import NoPolicy, PolicyFailed, SchedulerCore

log = logging.getLogger(__name__)

SCHEDULER = "dualpath.v1.Scheduler"
ADMIN = "dualpath.v1.SchedulerAdmin"

_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (NoPolicy, grpc.StatusCode.UNAVAILABLE),
    (PolicyRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (PolicyFailed, grpc.StatusCode.INTERNAL),
    (PermissionError, grpc.StatusCode.UNAUTHENTICATED),
)

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]


class Unauthenticated(PermissionError):
    pass


class Servicer:
    """Both services' handlers over one :class:`SchedulerCore`.

    ``admin`` performs policy changes off the event loop (loading a learned policy
    takes a while) and is given by the server; ``admin_token`` guards it (None:
    admin calls are refused, there being no token to present).
    """

    def __init__(self, core: SchedulerCore, admin: Any, admin_token: str | None) -> None:
        self.core = core
        self.admin = admin
        self._token = admin_token

    # -- Scheduler ------------------------------------------------------------------
    async def schedule(self, msg: pb.ScheduleRequest, _ctx: Any) -> pb.Decision:
        if not msg.HasField("request"):
            raise InvalidMessage("request is missing")
        request = request_from_pb(msg.request)
        done = self.core.schedule(
            (request,), msg.view if msg.HasField("view") else None, msg.client_id,
            [prefix_from_pb(msg.request, self.core.cluster)], sessions=[msg.request.session_id])
        return decision_to_pb(done.answers[0], request.request_id, done.versions[0],
                              done.prefixes[0])

    async def schedule_batch(self, msg: pb.ScheduleBatchRequest,
                             _ctx: Any) -> pb.ScheduleBatchResponse:
        requests = [request_from_pb(r, f"requests[{i}]") for i, r in enumerate(msg.requests)]
        prefixes = [prefix_from_pb(r, self.core.cluster, f"requests[{i}]")
                    for i, r in enumerate(msg.requests)]
        done = self.core.schedule(
            requests, msg.view if msg.HasField("view") else None, msg.client_id, prefixes,
            ordered=msg.ordered, sessions=[r.session_id for r in msg.requests])
        return pb.ScheduleBatchResponse(decisions=[
            decision_to_pb(a, r.request_id, v, p) for a, r, v, p in zip(
                done.answers, done.requests, done.versions, done.prefixes, strict=True)])

    async def report_cache_events(self, msg: pb.CacheEventBatch, _ctx: Any) -> pb.ReportAck:
        return pb.ReportAck(accepted=self.core.cache.report(msg))

    async def report(self, msg: pb.EngineStateReport, _ctx: Any) -> pb.ReportAck:
        counted = msg.counted_request_ids if msg.counts_requests else None
        return pb.ReportAck(accepted=self.core.report(msg.engines, counted))

    async def complete(self, msg: pb.CompleteRequest, _ctx: Any) -> pb.CompleteResponse:
        for key, value in msg.outcome.items():
            if value != value:  # NaN
                raise InvalidMessage(f"outcome[{key!r}] is NaN")
        return pb.CompleteResponse(released=self.core.complete(
            msg.client_id, msg.request_id, dict(msg.outcome)))

    async def get_policy(self, _msg: pb.GetPolicyRequest, _ctx: Any) -> pb.PolicyInfo:
        return self.policy_info()

    async def ping(self, _msg: pb.PingRequest, _ctx: Any) -> pb.PingResponse:
        return pb.PingResponse()

    async def get_canary(self, msg: pb.GetCanaryRequest, _ctx: Any) -> pb.CanaryStatus:
        return canary_to_pb(self.core.registry.canary_report(msg.samples))

    # -- SchedulerAdmin --------------------------------------------------------------------
    async def swap_policy(self, msg: pb.SwapPolicyRequest, ctx: Any) -> pb.PolicyInfo:
        self._authorize(ctx)
        if not msg.spec.strip():
            raise InvalidMessage("spec is empty; name the policy to serve")
        await self.admin.swap(msg.spec, kind="swap")
        return self.policy_info()

    async def rollback(self, _msg: pb.RollbackRequest, ctx: Any) -> pb.PolicyInfo:
        self._authorize(ctx)
        await self.admin.rollback()
        return self.policy_info()

    async def set_shadow(self, msg: pb.SetShadowRequest, ctx: Any) -> pb.PolicyInfo:
        self._authorize(ctx)
        await self.admin.set_shadow(msg.spec)
        return self.policy_info()

    async def set_canary(self, msg: pb.SetCanaryRequest, ctx: Any) -> pb.CanaryStatus:
        self._authorize(ctx)
        try:
            check_request(msg.spec, msg.share)
        except ValueError as err:
            raise InvalidMessage(str(err)) from None
        await self.admin.set_canary(msg.spec, msg.share)
        return canary_to_pb(self.core.registry.canary_report())

    async def promote_canary(self, _msg: pb.PromoteCanaryRequest, ctx: Any) -> pb.CanaryStatus:
        self._authorize(ctx)
        await self.admin.promote_canary()
        return canary_to_pb(self.core.registry.canary_report())

    def _authorize(self, ctx: Any) -> None:
        if self._token is None:
            raise Unauthenticated("admin calls are disabled: the server was started without "
                                  "--admin-token-file")
        given = dict(ctx.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            raise Unauthenticated("admin call without the right token (metadata "
                                  "'authorization: Bearer TOKEN')")

    def policy_info(self) -> pb.PolicyInfo:
        reg = self.core.registry

        def spec(loaded: LoadedPolicy | None) -> str:
            return loaded.spec if loaded is not None else ""

        current = reg.current
        return pb.PolicyInfo(spec=spec(current), version=current.version if current else "",
                             name=current.name if current else "", shadow_spec=spec(reg.shadow),
                             previous_spec=spec(reg.previous), swaps=reg.swaps)

    # -- wiring -------------------------------------------------------------------------------
    def handlers(self) -> list[grpc.GenericRpcHandler]:
        scheduler = {
            "Schedule": (self.schedule, pb.ScheduleRequest),
            "ScheduleBatch": (self.schedule_batch, pb.ScheduleBatchRequest),
            "ReportEngineState": (self.report, pb.EngineStateReport),
            "ReportCacheEvents": (self.report_cache_events, pb.CacheEventBatch),
            "Complete": (self.complete, pb.CompleteRequest),
            "GetPolicy": (self.get_policy, pb.GetPolicyRequest),
            "GetCanary": (self.get_canary, pb.GetCanaryRequest),
            "Ping": (self.ping, pb.PingRequest),
        }
        admin = {
            "SwapPolicy": (self.swap_policy, pb.SwapPolicyRequest),
            "Rollback": (self.rollback, pb.RollbackRequest),
            "SetShadow": (self.set_shadow, pb.SetShadowRequest),
            "SetCanary": (self.set_canary, pb.SetCanaryRequest),
            "PromoteCanary": (self.promote_canary, pb.PromoteCanaryRequest),
        }
        return [self._generic(SCHEDULER, scheduler), self._generic(ADMIN, admin)]

    def _generic(self, service: str,
                 methods: Mapping[str, tuple[Handler, type[Message]]]) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(service, {
            name: grpc.unary_unary_rpc_method_handler(
                self._guarded(name, fn, kind),
                response_serializer=lambda m: m.SerializeToString())
            for name, (fn, kind) in methods.items()})

    def _guarded(self, name: str, fn: Handler,
                 kind: type[Message]) -> Callable[[bytes, Any], Awaitable[Message]]:
        metrics = self.core.metrics
        latency = metrics.latency.labels(name)

        async def handle(raw: bytes, ctx: grpc.aio.ServicerContext) -> Message:
            start = time.perf_counter()
            failure: tuple[grpc.StatusCode, str] | None = None
            msg: Message | None = None
            try:
                try:
                    msg = kind.FromString(raw)
                except DecodeError as err:
                    raise InvalidMessage(f"not a valid {kind.DESCRIPTOR.full_name}: "
                                         f"{err}") from None
                answer = await fn(msg, ctx)
            except Exception as err:  # noqa: BLE001 - every failure becomes a status
                code = _code_of(err)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", name)
                metrics.errors.labels(name, code.name).inc()
                failure = (code, str(err) or type(err).__name__)
            if failure is not None:
                # The abort's exception keeps this frame alive in a reference cycle that
                # only the cyclic collector frees (rarely, in the tuned server): the frame
                # must not hold the message then, or a flood of large refused messages
                # holds hundreds of MiB until it runs. Hence also no abort in the except.
                del msg, raw
                await ctx.abort(*failure)
            latency.observe(time.perf_counter() - start)
            return answer

        return handle


def canary_to_pb(report: CanaryReport) -> pb.CanaryStatus:
    def arm(a: ArmReport) -> pb.CanaryArm:
        return pb.CanaryArm(spec=a.spec, version=a.version, completions=a.completions,
                            ttft_mean_s=a.ttft_mean_s, latency_mean_s=a.latency_mean_s,
                            ttft_s=a.ttft_s, latency_s=a.latency_s)

    return pb.CanaryStatus(state=report.state.value, share=report.share, reason=report.reason,
                           champion=arm(report.champion), challenger=arm(report.challenger),
                           max_regression=report.config.max_regression,
                           min_completions=report.config.min_completions)


def _code_of(err: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(err, kind):
            return code
    return grpc.StatusCode.INTERNAL
