"""The fronts of one node: one HTTP listener per engine; see :mod:`runtime.live.front`."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runtime.cache.prefix import token_block_hashes
from runtime.cluster import ClusterSpec
from runtime.live.blocks import hashed_block_name
from runtime.live.clock import Clock
from runtime.live.front import bodies
from runtime.live.front.call import Rejected, ServedCall
from runtime.live.messages import NodeReport, Submit
from runtime.serving import headers as h
from runtime.serving.openai import CHAT, COMPLETIONS, BadRequest, Completion, parse_completion
from runtime.serving.served import agent_of, latency_class
from runtime.serving.tokenizer import Tokenizer
from runtime.view import Role

#: Request ids of requests a front takes without the picker's (bit 62, then the node).
LOCAL_IDS = 1 << 62
#: Picker headers remembered for /dualpath/received.
RECEIVED_KEPT = 100_000
#: Shortest wait between two looks at a streaming request's progress (wall seconds).
MIN_POLL_S = 0.002


class FrontHost(Protocol):
    """What a front uses of its node."""

    node_id: int
    spec: ClusterSpec
    clock: Clock

    def to_router(self, msg: NodeReport) -> None: ...

    async def write_back(self, tokens: int, names: list[str]) -> None: ...


class Front:
    """The node's fronts; the decode engines call :meth:`joined` and :meth:`finished`,
    the node :meth:`rejected` when the router refuses a request."""

    def __init__(self, node: FrontHost, host: str, ports: Mapping[int, int],
                 tokenizer: Tokenizer, model: str, limits: tuple[int, int] | None = None
                 ) -> None:
        """``limits``: the model engine's vocabulary and context (None: emulated engines,
        whose tokens are placeholders)."""
        self.node = node
        self.limits = limits
        self.host = host
        self.ports = dict(ports)  # every engine's port (its endpoint is host:port)
        self.engines = {f"{host}:{port}": e for e, port in self.ports.items()}
        self.tokenizer = tokenizer
        self.model = model
        self.calls: dict[int, ServedCall] = {}
        self.received: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECEIVED_KEPT)
        self._ids = itertools.count()
        self._runners: list[web.AppRunner] = []
        self._metrics()

    def _metrics(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.m_requests = Counter("dualpath_front_requests", "HTTP requests answered",
                                  ["engine", "code"], registry=reg)
        self.m_prompt = Counter("dualpath_front_prompt_tokens", "Prompt tokens served",
                                ["engine"], registry=reg)
        self.m_generated = Counter("dualpath_front_generated_tokens", "Tokens generated",
                                   ["engine"], registry=reg)
        self.m_running = Gauge("dualpath_front_running_requests", "Requests in flight",
                               ["engine"], registry=reg)
        self.m_ttft = Histogram("dualpath_front_ttft_seconds", "Time to first token (wall)",
                                ["engine"], registry=reg)

    # -- life ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on this node's engines' ports."""
        spec = self.node.spec
        for engine, port in self.ports.items():
            if spec.node_of(engine) != self.node.node_id:
                continue
            runner = web.AppRunner(self._app(engine), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, self.host, port, reuse_address=True).start()
            self._runners.append(runner)

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    def _app(self, engine: int) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        complete = (lambda r: self._complete(r, engine))  # noqa: E731 - bound per engine
        app.router.add_post(COMPLETIONS, complete)
        app.router.add_post(CHAT, complete)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", lambda r: self._health(engine))
        app.router.add_get("/metrics", self._metrics_text)
        app.router.add_get("/dualpath/received", self._received)
        return app

    # -- told by the engines and the router ---------------------------------------------
    def joined(self, rid: int, core: Any) -> None:
        if (call := self.calls.get(rid)) is not None:
            call.join(core)

    def token(self, rid: int, token: int) -> None:
        """The model engine generated ``token`` for request ``rid``."""
        if (call := self.calls.get(rid)) is not None:
            call.token(token)

    def finished(self, rid: int) -> None:
        if (call := self.calls.get(rid)) is not None:
            call.finish()
            if self.limits is None:  # the model engine's answers are not written back
                asyncio.ensure_future(self._write_answer(call))

    async def _write_answer(self, call: ServedCall) -> None:
        """Write back the KV blocks the answer completes (the prompt's full blocks were
        written by its prefill), named by the context's hashes: the session's next prompt,
        which holds the answer, loads them."""
        block = self.node.spec.block_tokens
        prompt = call.completion.tokens
        answer = self.tokenizer.encode(bodies.placeholder_text(call.rid, 0, call.gen))
        hashes = token_block_hashes([*prompt, *answer], block)[len(prompt) // block:]
        if hashes:
            await self.node.write_back(call.gen, [hashed_block_name(h) for h in hashes])

    def rejected(self, rid: int, status: int, message: str) -> None:
        if (call := self.calls.get(rid)) is not None:
            call.reject(status, message)

    # -- the API -------------------------------------------------------------------------
    async def _complete(self, request: web.Request, engine: int) -> web.StreamResponse:
        if self.node.spec.role_of(engine) is not Role.DECODE:
            return self._error(engine, 421, f"engine {engine} is a prefill engine; send "
                               f"completions to a decode engine's endpoint")
        try:
            completion = parse_completion(request.path, await request.read(), self.tokenizer)
            self._check_limits(completion)
            submit = self._submit(completion, request.headers, engine)
        except BadRequest as exc:
            return self._error(engine, 400, str(exc))
        call = ServedCall(submit, completion, asyncio.get_running_loop())
        self.calls[call.rid] = call
        self.m_running.labels(engine).inc()
        try:
            self.node.to_router(submit)
            await call.first_token()
            self.m_ttft.labels(engine).observe(time.monotonic() - call.started)
            if completion.stream:
                return await self._stream(request, call, engine)
            return await self._whole(call, engine)
        except Rejected as exc:
            return self._error(engine, exc.status, str(exc))
        finally:
            self.calls.pop(call.rid, None)
            self.m_running.labels(engine).dec()

    def _check_limits(self, completion: Completion) -> None:
        """What the model engine cannot compute: ids outside its vocabulary, a prompt and
        answer longer than its context."""
        if self.limits is None:
            return
        vocab, context = self.limits
        bad = next((t for t in completion.tokens if t >= vocab), None)
        if bad is not None:
            raise BadRequest(f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})")
        total = len(completion.tokens) + completion.max_tokens
        if total > context:
            raise BadRequest(f"prompt ({len(completion.tokens)} tokens) plus max_tokens "
                             f"({completion.max_tokens}) exceed the model's context of "
                             f"{context} tokens")

    def _submit(self, completion: Completion, headers: Mapping[str, str],
                engine: int) -> Submit:
        """The router's message for a request: with the picker's decision if its headers
        carry one (all checked), else without (the router's policy chooses)."""
        tokens = completion.tokens
        session = headers.get(h.SESSION) or completion.user or ""
        try:
            slo = latency_class(headers.get(h.LATENCY_CLASS))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        picked = self._picked(headers)
        if picked is None:
            rid, pe, share, hit = LOCAL_IDS | self.node.node_id << 40 | next(self._ids), -1, 0.0, -1
        else:
            rid, pe, share, hit = picked
        self.received.append({"request_id": rid, "decode_engine": engine,
                              "prefill_engine": pe if picked else None,
                              "decode_share": share if picked else None,
                              "hit_tokens": hit if picked else None, "picked": bool(picked)})
        return Submit(rid, agent_of(session) if session else 0, len(tokens), hit,
                      completion.max_tokens,
                      list(token_block_hashes(tokens, self.node.spec.block_tokens)), engine,
                      pe, share, slo, list(tokens) if self.limits is not None else [])

    def _picked(self, headers: Mapping[str, str]) -> tuple[int, int, float, int] | None:
        """The picker's request id, prefill engine, decode share and hit tokens."""
        rid_text = headers.get(h.REQUEST_ID)
        if rid_text is None:
            return None
        rid = _int(rid_text, h.REQUEST_ID, LOCAL_IDS)
        pe = self.engines.get(headers.get(h.PREFILLER, ""), -1)
        if pe < 0 or self.node.spec.role_of(pe) is not Role.PREFILL:
            raise BadRequest(f"{h.PREFILLER} {headers.get(h.PREFILLER)!r} is not a prefill "
                             f"engine's endpoint")
        share = _float(headers.get(h.DECODE_SHARE, "0"), h.DECODE_SHARE)
        return rid, pe, share, _int(headers.get(h.HIT_TOKENS, "0"), h.HIT_TOKENS, 1 << 40)

    def _extra(self, call: ServedCall) -> dict[str, Any]:
        s = call.submit
        return {"placeholder_tokens": self.limits is None, "request_id": call.rid,
                "decode_engine": s.de,
                "prefill_engine": s.pe if s.pe >= 0 else None,
                "decode_share": s.share if s.pe >= 0 else None}

    async def _stream(self, request: web.Request, call: ServedCall,
                      engine: int) -> web.StreamResponse:
        c, rid = call.completion, call.rid
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                          "Cache-Control": "no-cache"})
        await out.prepare(request)
        extra, sent, clock = self._extra(call), 0, self.node.clock
        while True:
            changed = call.changed()
            n = call.produced(clock.now())
            for i in range(sent, n):
                await out.write(bodies.sse(bodies.chunk(
                    c.chat, rid, c.model or self.model, call.created, self._text(call, i, i + 1),
                    None, extra, first=i == 0)))
            sent = n
            if sent >= call.gen and call.done.done():
                break
            wait = max(MIN_POLL_S, call.step_s() * clock.time_scale)
            await asyncio.wait([call.done, changed], timeout=wait)
        await out.write(bodies.sse(bodies.chunk(c.chat, rid, c.model or self.model,
                                                call.created, None, "length", extra)))
        if c.include_usage:
            await out.write(bodies.sse(bodies.usage_chunk(
                c.chat, rid, c.model or self.model, call.created, len(c.tokens), call.gen)))
        await out.write(bodies.sse("[DONE]"))
        await out.write_eof()
        self._served(engine, call)
        return out

    async def _whole(self, call: ServedCall, engine: int) -> web.Response:
        await call.done
        c = call.completion
        body = bodies.whole(c.chat, call.rid, c.model or self.model, call.created,
                            self._text(call, 0, call.gen), len(c.tokens),
                            call.gen, self._extra(call))
        self._served(engine, call)
        return web.json_response(body)

    def _text(self, call: ServedCall, first: int, end: int) -> str:
        """Tokens ``first..end-1`` of the answer: the model's, or placeholders."""
        if self.limits is not None:
            return bodies.token_text(call.tokens[first:end])
        return bodies.placeholder_text(call.rid, first, end)

    def _served(self, engine: int, call: ServedCall) -> None:
        self.m_requests.labels(engine, "200").inc()
        self.m_prompt.labels(engine).inc(len(call.completion.tokens))
        self.m_generated.labels(engine).inc(call.gen)

    def _error(self, engine: int, status: int, message: str) -> web.Response:
        self.m_requests.labels(engine, str(status)).inc()
        return web.json_response(bodies.error(status, message), status=status)

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "dualpath"}]})

    async def _health(self, engine: int) -> web.Response:
        role = self.node.spec.role_of(engine)
        return web.json_response({"status": "ok", "engine": engine, "role": role.value})

    async def _metrics_text(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _received(self, _request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(list(self.received)),
                            content_type="application/json")


def _int(text: str, name: str, limit: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} {text!r} is not an integer") from None
    if not 0 <= value < limit:
        raise BadRequest(f"{name} {value} is not in 0..{limit - 1}")
    return value


def _float(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise BadRequest(f"{name} {value} is not in [0, 1]")
    return value
