"""Picking the engines of one HTTP request; no gRPC or Envoy in sight.

A request is decided as soon as it comes, unless others wait: then it waits behind
them, and the waiting ones are asked about in the placement core's queue order
(:class:`runtime.placement.WaitingQueue` under the policy's order) whenever the
view may have changed (every :data:`RETRY_S`). One that waited ``max_wait_s`` is
answered 429. Hit tokens are the prompt's leading blocks storage holds, as the
picker heard of them: the blocks of prompts whose requests completed
(:class:`runtime.cache.stored.StoredBlocks`).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from policy_service.scheduler import NoPolicy, PolicyFailed, SchedulerCore
from runtime.cache.prefix import token_block_hashes
from runtime.cache.stored import StoredBlocks
from runtime.decision import Decision
from runtime.placement import WaitingQueue
from runtime.placement.order import order_of
from runtime.request import Request
from runtime.serving import headers as h
from runtime.serving.openai import BadRequest, Completion, parse_completion
from runtime.serving.served import agent_of, latency_class, served_request
from runtime.serving.tokenizer import Tokenizer

#: The client id the picker's decisions carry in the log and in ``Complete``.
EPP_CLIENT = "epp"
#: Seconds between two looks at the waiting requests.
RETRY_S = 0.01
#: Sessions whose turn count is kept, and routed requests whose blocks are kept until
#: they complete (the oldest forgotten first).
SESSIONS_KEPT = 100_000
ROUTED_KEPT = 1_000_000


@dataclass(frozen=True)
class Routed:
    """Where a request goes: decode endpoints (the choice, then fallbacks) and the rest
    of the headers the fronts read."""

    request: Request
    decision: Decision
    decode: tuple[str, ...]
    prefill: str

    def headers(self) -> dict[str, str]:
        return {h.DESTINATION: ",".join(self.decode), h.PREFILLER: self.prefill,
                h.REQUEST_ID: str(self.request.request_id),
                h.DECODE_SHARE: repr(self.decision.decode_share),
                h.HIT_TOKENS: str(self.request.hit_tokens)}


@dataclass(frozen=True)
class Refused:
    """An immediate answer instead of routing: an HTTP status and why."""

    status: int
    message: str


@dataclass
class _Waiting:
    request: Request
    done: asyncio.Future[Routed | Refused] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Picker:
    def __init__(self, core: SchedulerCore, tokenizer: Tokenizer, max_wait_s: float = 30.0,
                 stored: StoredBlocks | None = None) -> None:
        if not max_wait_s > 0:
            raise ValueError(f"max_wait_s must be > 0, got {max_wait_s}")
        self.core = core
        self.cluster = core.cluster
        self.tokenizer = tokenizer
        self.max_wait_s = max_wait_s
        self.stored = stored if stored is not None else StoredBlocks()
        # Ids unique across restarts of the picker (the fronts refuse one in use).
        self._ids = itertools.count(secrets.randbits(60))
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        # Routed and not completed, with its session (bounded: a request never completed
        # is forgotten eventually).
        self._routed: OrderedDict[int, tuple[str, Request]] = OrderedDict()
        self._queue: WaitingQueue[_Waiting] = WaitingQueue()
        self._drainer: asyncio.Task[None] | None = None
        core.completed.append(self._completed)

    def ready(self) -> bool:
        """A policy is loaded and some decode engine is live with an endpoint."""
        state = self.core.state
        return self.core.registry.current is not None and any(
            state.endpoint(e) for e in range(self.cluster.prefill_engines, self.cluster.engines))

    async def pick(self, path: str, headers: Mapping[str, str], body: bytes
                   ) -> Routed | Refused:
        """Decide the request posted to ``path``; never raises (a failing policy: 500)."""
        start = time.perf_counter()
        answer = await self._pick(path, headers, body)
        metrics = self.core.metrics
        metrics.epp_pick.observe(time.perf_counter() - start)
        metrics.epp_answers.labels(
            "routed" if isinstance(answer, Routed) else str(answer.status)).inc()
        return answer

    async def _pick(self, path: str, headers: Mapping[str, str], body: bytes
                    ) -> Routed | Refused:
        try:
            request = self._request(parse_completion(path, body, self.tokenizer), headers)
        except BadRequest as exc:
            return Refused(400, str(exc))
        answer = await self._decide(request)
        if isinstance(answer, Refused):
            self._routed.pop(request.request_id, None)  # it will not complete
        return answer

    async def _decide(self, request: Request) -> Routed | Refused:
        if not any(self.core.state.live(e) for e in
                   range(self.cluster.prefill_engines, self.cluster.engines)):
            return Refused(503, "no decode engine is serving (none reported within "
                                f"{self.core.state.max_age_s:g} s)")
        answer = self._ask(request) if not self._queue.items else None
        return answer if answer is not None else await self._enqueue(request)

    # -- the request -------------------------------------------------------------------
    def _request(self, completion: Completion, headers: Mapping[str, str]) -> Request:
        spec = self.cluster
        tokens = completion.tokens
        most = spec.node.de_hbm_kv_bytes // spec.model.kv_bytes_per_token
        if len(tokens) + completion.max_tokens > most:
            raise BadRequest(f"prompt ({len(tokens)} tokens) plus max_tokens "
                             f"({completion.max_tokens}) exceed what a decode engine holds "
                             f"({most} tokens)")
        try:
            slo = latency_class(headers.get(h.LATENCY_CLASS))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        name = headers.get(h.SESSION) or completion.user or ""
        session = self._session(name)
        session.turn += 1
        hashes = token_block_hashes(tokens, spec.block_tokens)
        hit = max(self.stored.leading(hashes), session.continued(hashes))
        request = served_request(next(self._ids), agent_of(name) if name else 0,
                                 len(tokens), hashes, hit * spec.block_tokens,
                                 completion.max_tokens, self.core.state.time_s(),
                                 spec.block_tokens, slo, session.turn)
        self._routed[request.request_id] = (name, request)
        if len(self._routed) > ROUTED_KEPT:
            self._routed.popitem(last=False)
        return request

    def _session(self, name: str) -> _Session:
        sessions = self._sessions
        session = sessions.pop(name, None) or _Session()
        sessions[name] = session
        if len(sessions) > SESSIONS_KEPT:
            sessions.popitem(last=False)
        return session

    # -- deciding ----------------------------------------------------------------------
    def _ask(self, request: Request) -> Routed | Refused | None:
        """The policy's answer on the service's view now (None: it deferred)."""
        try:
            session = self._routed.get(request.request_id, ("", request))[0]
            answer = self.core.schedule([request], None, EPP_CLIENT,
                                        sessions=[session]).answers[0]
        except (PolicyFailed, NoPolicy) as exc:
            return Refused(500 if isinstance(exc, PolicyFailed) else 503, str(exc))
        if not isinstance(answer, Decision):
            return None
        state = self.core.state
        prefill = state.endpoint(answer.prefill_engine)
        decode = state.endpoint(answer.decode_engine)
        if not prefill or not decode:
            self.core.complete(EPP_CLIENT, request.request_id, {})  # drop its reservation
            missing = answer.prefill_engine if not prefill else answer.decode_engine
            return Refused(503, f"engine {missing} has not reported an endpoint")
        return Routed(request, answer, (decode, *self._fallbacks(answer.decode_engine)),
                      prefill)

    def _fallbacks(self, chosen: int) -> list[str]:
        """The other live decode engines' endpoints, in engine order after the chosen one
        (so fallbacks spread over the engines rather than all naming the first)."""
        first, end = self.cluster.prefill_engines, self.cluster.engines
        n = end - first
        endpoint = self.core.state.endpoint
        return [ep for k in range(1, n)
                if (ep := endpoint(first + (chosen - first + k) % n))]

    async def _enqueue(self, request: Request) -> Routed | Refused:
        waiting = _Waiting(request)
        queue = self._queue
        if not queue.items:
            queue.set_order(order_of(self.core.registry.current.policy
                                     if self.core.registry.current else None), self.cluster)
        queue.arrive(waiting)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        try:
            return await asyncio.wait_for(asyncio.shield(waiting.done), self.max_wait_s)
        except TimeoutError:
            if waiting in queue.items:
                queue.take(queue.items.index(waiting))
            return Refused(429, f"no engine could take the request within "
                                f"{self.max_wait_s:g} s")

    async def _drain(self) -> None:
        """Ask about the waiting requests, in queue order, until none waits."""
        queue = self._queue
        while queue.items:
            index = queue.pick(self.core.state.time_s())
            waiting = queue.items[index]
            answer = self._ask(waiting.request)
            if answer is None:
                await asyncio.sleep(RETRY_S)
                continue
            queue.take(index)
            if not waiting.done.done():
                waiting.done.set_result(answer)
            await asyncio.sleep(0)

    def _completed(self, client_id: str, request_id: int) -> None:
        """A routed request completed: its prompt's blocks are in storage now, and its
        session's next prompt, which holds the answer too, finds all its context's."""
        if client_id != EPP_CLIENT or (routed := self._routed.pop(request_id, None)) is None:
            return
        name, request = routed
        hashes = request.block_hashes or ()
        self.stored.add(hashes)
        if (session := self._sessions.get(name)) is not None and hashes:
            session.done(hashes, request.total_tokens // self.cluster.block_tokens)


@dataclass
class _Session:
    """A session's turns, and what its last completed turn left in storage: the blocks of
    its whole context (prompt and answer; the engines write back both), of which the
    prompt's hashes are known (the answer's are the next prompt's)."""

    turn: int = -1
    prompt_blocks: int = 0
    last_hash: int = 0
    context_blocks: int = 0

    def done(self, hashes: tuple[int, ...], context_blocks: int) -> None:
        self.prompt_blocks, self.last_hash = len(hashes), hashes[-1]
        self.context_blocks = context_blocks

    def continued(self, hashes: tuple[int, ...]) -> int:
        """Leading blocks of ``hashes`` stored by the last turn, if they continue it."""
        k = self.prompt_blocks
        if k and len(hashes) >= k and hashes[k - 1] == self.last_hash:
            return min(len(hashes), self.context_blocks)
        return 0

