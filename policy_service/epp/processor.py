"""Envoy's ``envoy.service.ext_proc.v3.ExternalProcessor``: one stream per HTTP request.

The gateway sends the request's headers, then its body: ``BUFFERED`` (whole; the
headers are answered at once and changed with the body's answer) or
``FULL_DUPLEX_STREAMED`` (in chunks, gathered here; the headers' answer waits for the
last chunk, then the body is sent back on). ``STREAMED`` cannot route: its headers
leave before the body is seen.
Headers without a body (``GET /v1/models``) are let through unrouted: the gateway's
own load balancing serves them. With the body the picker decides, and the answer
mutates the request's headers and sets the ``envoy.lb`` dynamic metadata, or is an
immediate response. Messages are parsed here, so a malformed one ends its stream
with INVALID_ARGUMENT; nothing a gateway sends stops the picker.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from policy_service.epp.picker import Picker, Refused, Routed
from runtime.serving import headers as h

log = logging.getLogger(__name__)

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_PHASES = ("request_headers", "response_headers", "request_body", "response_body",
           "request_trailers", "response_trailers")
_FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED


class ExtProc:
    """The ``ExternalProcessor`` service over a :class:`Picker`."""

    def __init__(self, picker: Picker) -> None:
        self.picker = picker

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self.process, request_deserializer=None, response_serializer=None)
        return grpc.method_handlers_generic_handler(SERVICE, {"Process": method})

    async def process(self, _requests: object, context: grpc.aio.ServicerContext) -> None:
        # read()/write() rather than an async iterator and generator: grpc.aio's
        # iterator wrappers cost more per message, and every request pays them twice.
        state = _Stream()
        while (raw := await context.read()) is not grpc.aio.EOF:
            try:
                msg = ep.ProcessingRequest.FromString(raw)
            except DecodeError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"not a ProcessingRequest: {exc}")
            for out in await self._step(state, msg):
                await context.write(out.SerializeToString())

    async def _step(self, state: _Stream, msg: ep.ProcessingRequest
                    ) -> list[ep.ProcessingResponse]:
        """The answers to one message of a stream (none while a body is still coming)."""
        which = msg.WhichOneof("request")
        if msg.HasField("protocol_config"):
            state.duplex = msg.protocol_config.request_body_mode == _FULL_DUPLEX
        if which == "request_headers":
            state.headers = _headers(msg.request_headers.headers)
            ends = msg.request_headers.end_of_stream
            return [_continue_headers()] if ends or not state.duplex else []
        if not state.takes(msg, which):
            return [_continue(which)]  # a phase we did not ask for
        if not state.ended:
            return []  # chunks (streamed modes): answered with the last, as one body
        answer = await self.picker.pick(state.path, state.headers, bytes(state.body))
        out = _answer(answer, state.duplex, bytes(state.body))
        if which == "request_trailers" and isinstance(answer, Routed):
            out.append(_continue(which))
        return out


class _Stream:
    """What one stream has brought so far."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.duplex = False  # FULL_DUPLEX_STREAMED: the headers' answer waits for the body
        self.ended = False

    @property
    def path(self) -> str:
        return self.headers.get(":path", "").split("?")[0]

    def takes(self, msg: ep.ProcessingRequest, which: str | None) -> bool:
        """Add a body chunk or a duplex request's trailers (which end its body); False for
        any other message."""
        if which == "request_body":
            self.body += msg.request_body.body
            self.ended = msg.request_body.end_of_stream
            return True
        if which == "request_trailers" and self.duplex:
            self.ended = True
            return True
        return False


def _headers(header_map: Any) -> dict[str, str]:
    out = {}
    for hv in header_map.headers:
        value = hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
        out[hv.key.lower()] = value
    return out


def _continue_headers() -> ep.ProcessingResponse:
    return ep.ProcessingResponse(request_headers=ep.HeadersResponse(
        response=ep.CommonResponse(status=ep.CommonResponse.CONTINUE)))


def _continue(which: str | None) -> ep.ProcessingResponse:
    """Let a phase we have nothing to do with go on unchanged."""
    common = ep.CommonResponse(status=ep.CommonResponse.CONTINUE)
    name = which if which in _PHASES else "request_headers"
    if name.endswith("trailers"):
        return ep.ProcessingResponse(**{name: ep.TrailersResponse()})
    cls = ep.HeadersResponse if name.endswith("headers") else ep.BodyResponse
    return ep.ProcessingResponse(**{name: cls(response=common)})


def _answer(answer: Routed | Refused, duplex: bool, body: bytes
            ) -> list[ep.ProcessingResponse]:
    """The responses to the request's body: routed (the headers set with the body's
    answer; in full-duplex mode with the headers' own answer, and the body sent back on,
    as that mode has the processor do), or refused."""
    if isinstance(answer, Refused):
        return [_immediate(answer)]
    mutation = ep.HeaderMutation(set_headers=[
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
                                   append_action=_OVERWRITE)
        for k, v in answer.headers().items()])
    metadata = struct_pb2.Struct()
    metadata.update({h.LB_NAMESPACE: {h.DESTINATION: ",".join(answer.decode)}})
    routed = ep.CommonResponse(status=ep.CommonResponse.CONTINUE, header_mutation=mutation)
    if not duplex:
        return [ep.ProcessingResponse(request_body=ep.BodyResponse(response=routed),
                                      dynamic_metadata=metadata)]
    return [ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=routed),
                                  dynamic_metadata=metadata),
            ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse(
                body_mutation=ep.BodyMutation(streamed_response=ep.StreamedBodyResponse(
                    body=body, end_of_stream=True)))))]


def _immediate(refused: Refused) -> ep.ProcessingResponse:
    body = json.dumps({"error": {"message": refused.message, "code": refused.status,
                                 "type": "invalid_request_error" if refused.status < 500
                                 else "server_error"}}).encode()
    return ep.ProcessingResponse(immediate_response=ep.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=refused.status), body=body,
        headers=ep.HeaderMutation(set_headers=[base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
            append_action=_OVERWRITE)]),
        details=f"dualpath_picker_{refused.status}"))
