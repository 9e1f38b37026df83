"""``dualpath load``: real streaming load on an OpenAI-compatible HTTP server.

Two workloads, both as real ``POST /v1/completions`` requests with ``stream: true``
over one ``aiohttp`` session:

- agents (closed loop): the agents of :class:`~runtime.workload.agentic.AgenticWorkload`,
  the same turns the simulator and ``dualpath cluster`` run. A turn's prompt is the
  agent's whole context as text — its previous prompt, the text the server generated
  for it, then ``appended_tokens`` new bytes (:mod:`experiments.live.load_text`) — so
  with a byte tokenizer and a server that generates ``max_tokens`` one-byte tokens its
  length is the workload's hit + appended tokens, and the hit part is a real prefix.
  The next turn goes when the answer ends (plus the workload's think time, if any); an
  agent whose turn fails stops (its context would be wrong from then on).
- trace (open loop): each Mooncake line at its timestamp / speed, the prompt built
  block by block from the hash ids (equal ids, equal text).

Everything is measured at the client: TTFT from the request being sent to the first
chunk with text, TPOT between the first and last token, throughput as the prompt plus
generated tokens of the completed requests over the run's wall time.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from experiments.live.load_text import trace_prompt, turn_text
from runtime.request import Request
from runtime.serving.headers import SESSION
from runtime.serving.openai import COMPLETIONS
from runtime.workload.agentic import AgenticWorkload
from runtime.workload.mooncake import TraceLine, read_trace
from runtime.workload.trajectories import check_mal

#: How many error messages a result keeps (the count is always complete).
MAX_ERROR_MESSAGES = 5
#: The trace formats ``--trace`` reads, as ``FORMAT:PATH``.
TRACE_FORMATS = ("mooncake",)
#: The result's keys, in the order the text table shows them.
SUMMARY_KEYS = ("mode", "workload", "planned_requests", "sent", "requests", "errors",
                "agents_stopped", "ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "tpot_mean_s",
                "tpot_p99_s", "throughput_tok_s", "prompt_tokens", "generated_tokens", "wall_s")


@dataclass(frozen=True)
class LoadConfig:
    """One load run: exactly one of ``agents`` and ``trace``; validated on creation.

    ``url`` is the server's base (``http://host:port``; the path ``/v1/completions`` is
    appended). Agents: ``mal`` picks the trajectory set, ``rate`` (agents per second)
    makes them arrive online — the first ``agents`` arrivals of the workload's Poisson
    process — instead of all at once, ``think_time_s`` is the workload's mean think time.
    Trace: ``trace`` is ``mooncake:PATH``, replayed ``speed`` times faster than recorded,
    from its first timestamp; ``trace_block_tokens`` is the trace's block size.
    ``timeout_s`` bounds each request, from sending it to the end of its stream.
    """

    url: str
    agents: int | None = None
    mal: str = "64k"
    rate: float | None = None
    seed: int = 0
    trace: str | None = None
    speed: float = 1.0
    model: str = "dualpath"
    timeout_s: float = 300.0
    think_time_s: float = 0.0
    trace_block_tokens: int = 512

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url: expected http://HOST:PORT or https://HOST:PORT, "
                             f"got {self.url!r}")
        if (self.agents is None) == (self.trace is None):
            raise ValueError("give exactly one of agents and trace")
        if self.agents is not None:
            self._check_agents()
        else:
            self._check_trace()
        _check_int("seed", self.seed, 0)
        _check_number("timeout_s", self.timeout_s, positive=True)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model: must be a non-empty name, got {self.model!r}")

    def _check_agents(self) -> None:
        _check_int("agents", self.agents, 1)
        object.__setattr__(self, "mal", check_mal(self.mal))
        if self.rate is not None:
            _check_number("rate", self.rate, positive=True)
        _check_number("think_time_s", self.think_time_s, positive=False)
        if self.speed != 1.0:
            raise ValueError(f"speed: applies only to a trace, got {self.speed!r} with agents")

    def _check_trace(self) -> None:
        if self.rate is not None:
            raise ValueError(f"rate: applies only to agents, got {self.rate!r} with a trace")
        if self.think_time_s != 0.0:
            raise ValueError(f"think_time_s: applies only to agents, got {self.think_time_s!r}")
        _check_number("speed", self.speed, positive=True)
        _check_int("trace_block_tokens", self.trace_block_tokens, 1)
        fmt, sep, path = str(self.trace).partition(":")
        if not sep or fmt not in TRACE_FORMATS or not path:
            raise ValueError(f"trace: expected FORMAT:PATH with FORMAT one of "
                             f"{', '.join(TRACE_FORMATS)}, got {self.trace!r}")
        if not Path(path).is_file():
            raise ValueError(f"trace: no such file {path!r}")

    @property
    def trace_path(self) -> Path:
        """The trace file (trace runs only)."""
        if self.trace is None:
            raise ValueError("this load runs agents, not a trace")
        return Path(self.trace.partition(":")[2])


def _check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key}: must be an integer >= {low}, got {value!r}")


def _check_number(key: str, value: Any, *, positive: bool) -> None:
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        raise ValueError(f"{key}: must be a finite number {'>' if positive else '>='} 0, "
                         f"got {value!r}")


# --- one streamed request ------------------------------------------------------------


@dataclass
class Outcome:
    """One request as the client saw it. ``error`` is None for a complete stream."""

    error: str | None = None
    text: str = ""
    ttft_s: float | None = None
    tpot_s: float | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0


class StreamError(Exception):
    """The server's stream broke the protocol (bad JSON, an error event, no [DONE])."""


async def stream_completion(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                            timeout_s: float) -> Outcome:
    """POST one streaming completion and read its events; failures become ``error``.

    The prompt's token count falls back to its UTF-8 bytes and the generated count to
    the chunks with text when the server sends no ``usage``.
    """
    session = str(body["user"])
    sent = time.perf_counter()
    try:
        async with http.post(url, json=body, headers={SESSION: session},
                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if not 200 <= resp.status < 300:
                detail = (await resp.text(errors="replace"))[:200]
                return Outcome(error=f"HTTP {resp.status}: {detail}")
            outcome = await _read_events(resp, sent)
    except TimeoutError:
        return Outcome(error=f"timed out after {timeout_s:g} s")
    except (aiohttp.ClientError, StreamError, ValueError) as exc:
        # ValueError: aiohttp's line reader on an over-long line, or undecodable text.
        return Outcome(error=f"{type(exc).__name__}: {exc}")
    if not outcome.prompt_tokens:
        outcome.prompt_tokens = len(str(body["prompt"]).encode("utf-8"))
    return outcome


async def _read_events(resp: aiohttp.ClientResponse, sent: float) -> Outcome:
    """The SSE stream of one response, to ``data: [DONE]``."""
    pieces: list[str] = []
    first = last = 0.0
    usage: dict[str, Any] = {}
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, ``: comments``, ``event:``/``id:`` fields
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = _chunk(data)
        text = _chunk_text(chunk)
        if text:
            last = time.perf_counter()
            first = first or last
            pieces.append(text)
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
    else:
        raise StreamError(f"the stream ended before [DONE] after {len(pieces)} chunks")
    generated = int(usage.get("completion_tokens") or len(pieces))
    return Outcome(text="".join(pieces), ttft_s=first - sent if pieces else None,
                   tpot_s=(last - first) / (generated - 1) if pieces and generated > 1
                   else None,
                   prompt_tokens=int(usage.get("prompt_tokens") or 0),
                   generated_tokens=generated)


def _chunk(data: bytes) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise StreamError(f"a chunk is not JSON ({exc.msg}): {data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise StreamError(f"a chunk is not a JSON object: {data[:80]!r}")
    if "error" in chunk:  # servers report a failure mid-stream as an error event
        raise StreamError(f"error event: {str(chunk['error'])[:200]}")
    return chunk


def _chunk_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    text = choices[0].get("text")
    return text if isinstance(text, str) else ""


# --- the run -------------------------------------------------------------------------


@dataclass
class _Run:
    """What a run's tasks share: the session, the clock, the tallies."""

    cfg: LoadConfig
    http: aiohttp.ClientSession
    t0: float = field(default_factory=time.perf_counter)
    sent: int = 0
    stopped: int = 0
    errors: int = 0
    messages: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    generated_tokens: int = 0

    @property
    def url(self) -> str:
        return self.cfg.url.rstrip("/") + COMPLETIONS

    async def send(self, session: str, prompt: str, max_tokens: int) -> Outcome:
        """Send one request and count what came back."""
        body = {"model": self.cfg.model, "prompt": prompt, "max_tokens": max_tokens,
                "stream": True, "stream_options": {"include_usage": True}, "user": session}
        self.sent += 1
        outcome = await stream_completion(self.http, self.url, body, self.cfg.timeout_s)
        if outcome.error is not None:
            self.errors += 1
            if len(self.messages) < MAX_ERROR_MESSAGES:
                self.messages.append(f"{session}: {outcome.error}")
            return outcome
        self.prompt_tokens += outcome.prompt_tokens
        self.generated_tokens += outcome.generated_tokens
        if outcome.ttft_s is not None:
            self.ttft.append(outcome.ttft_s)
        if outcome.tpot_s is not None:
            self.tpot.append(outcome.tpot_s)
        return outcome

    def now(self) -> float:
        """Seconds since the run started: the workload's clock."""
        return time.perf_counter() - self.t0

    async def wait_until(self, at_s: float) -> None:
        delay = at_s - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


def agent_workload(cfg: LoadConfig) -> tuple[AgenticWorkload, list[Request]]:
    """The workload and the first turns of its first ``cfg.agents`` agents, by arrival.

    Online (``rate``): the workload draws a Poisson number of agents over a duration, so
    it is drawn over a duration long enough for at least ``agents`` arrivals (doubled
    until it is) and the first ``agents`` are kept: exactly that many agents, arriving
    as a Poisson process of the rate.
    """
    assert cfg.agents is not None
    if cfg.rate is None:
        workload = AgenticWorkload(cfg.agents, cfg.mal, seed=cfg.seed,
                                   think_time_s=cfg.think_time_s)
        return workload, workload.initial_requests()
    duration = (2 * cfg.agents + 10) / cfg.rate
    while True:
        workload = AgenticWorkload(None, cfg.mal, seed=cfg.seed, online=True, aps=cfg.rate,
                                   duration_s=duration, think_time_s=cfg.think_time_s)
        if workload.agents >= cfg.agents:
            return workload, workload.initial_requests()[:cfg.agents]
        duration *= 2


async def _run_agent(run: _Run, workload: AgenticWorkload, request: Request) -> None:
    """One agent's turns, closed loop, until its trajectory ends or a turn fails."""
    agent, prompt = request.agent_id, ""
    session = f"agent-{agent}"
    while True:
        await run.wait_until(request.arrival_s)
        prompt += turn_text(run.cfg.seed, agent, request.turn, request.appended_tokens)
        outcome = await run.send(session, prompt, request.gen_tokens)
        if outcome.error is not None:
            run.stopped += 1
            return
        prompt += outcome.text
        following = workload.on_complete(request, run.now())
        if not following:
            return
        request = following[0]


async def _run_trace(run: _Run, lines: list[TraceLine]) -> None:
    """Every line at its (first-line-relative) timestamp / speed, open loop."""
    start_ms = lines[0].timestamp_ms
    tasks: list[asyncio.Task[Outcome]] = []
    for index, line in enumerate(lines):
        await run.wait_until((line.timestamp_ms - start_ms) / 1000.0 / run.cfg.speed)
        prompt = trace_prompt(line.line_no, line.hash_ids, line.input_length,
                              run.cfg.trace_block_tokens)
        tasks.append(asyncio.create_task(
            run.send(f"trace-{index}", prompt, max(1, line.output_length))))
    await asyncio.gather(*tasks)


async def run_load_async(cfg: LoadConfig) -> dict[str, Any]:
    """Run the load ``cfg`` describes and return its summary (see :data:`SUMMARY_KEYS`,
    plus ``error_messages``: the first few errors, each naming its session)."""
    if cfg.agents is not None:
        workload, first = agent_workload(cfg)
        name = f"agentic-{cfg.mal}-{cfg.agents}agents" + (
            f"-{cfg.rate:g}aps" if cfg.rate is not None else "")
        planned = sum(workload.turns_of(r.agent_id) for r in first)
    else:
        lines = list(read_trace(cfg.trace_path))
        if not lines:
            raise ValueError(f"trace: {cfg.trace_path} has no requests")
        name, planned = f"mooncake-{cfg.trace_path.stem}", len(lines)
    # No connection limit: a client-side queue would delay requests the load means to
    # have in flight, and add its wait to their TTFT.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        run = _Run(cfg, http)
        if cfg.agents is not None:
            await asyncio.gather(*(_run_agent(run, workload, r) for r in first))
        else:
            await _run_trace(run, lines)
        wall = run.now()
    return _summary(run, "agents" if cfg.agents is not None else "trace", name, planned, wall)


def run_load(cfg: LoadConfig) -> dict[str, Any]:
    """:func:`run_load_async` on a new event loop."""
    return asyncio.run(run_load_async(cfg))


def _summary(run: _Run, mode: str, name: str, planned: int, wall: float) -> dict[str, Any]:
    completed = run.sent - run.errors
    return {
        "mode": mode, "workload": name, "planned_requests": planned, "sent": run.sent,
        "requests": completed, "errors": run.errors, "agents_stopped": run.stopped,
        "ttft_mean_s": _mean(run.ttft), "ttft_p50_s": _percentile(run.ttft, 50),
        "ttft_p99_s": _percentile(run.ttft, 99), "tpot_mean_s": _mean(run.tpot),
        "tpot_p99_s": _percentile(run.tpot, 99),
        "throughput_tok_s": (run.prompt_tokens + run.generated_tokens) / wall if wall > 0
        else 0.0,
        "prompt_tokens": run.prompt_tokens, "generated_tokens": run.generated_tokens,
        "wall_s": wall, "error_messages": list(run.messages),
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
