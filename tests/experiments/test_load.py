"""``dualpath load`` against a real streaming OpenAI-compatible server started here.

The server (aiohttp, on its own thread and loop) answers ``/v1/completions`` with one
``x`` per token, a usage chunk and ``[DONE]``, records every request, and fails on
purpose when a prompt contains a marker. Markers are capital letters, which the load's
filler text (lowercase and spaces) never contains; they reach a prompt because the
server plants one in an agent's answer, which the agent's next prompt must repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
from collections import defaultdict
from typing import Any

import pytest
from aiohttp import web

from experiments.cli.load import add_parsers
from experiments.live.load import LoadConfig, agent_workload, run_load
from experiments.live.load_text import ALPHABET, filler
from runtime.workload.agentic import AgenticWorkload

FAIL, STALL, CUT, NO_DONE, HARMLESS = "F", "S", "C", "E", "Z"


class FakeServer:
    """Records ``(x-session-id, body, answer)`` per request; ``plant[session] = (i,
    marker)`` puts ``marker`` at the start of that session's ``i``-th answer."""

    def __init__(self) -> None:
        self.records: list[tuple[str | None, dict[str, Any], str]] = []
        self.plant: dict[str, tuple[int, str]] = {}
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self.release: asyncio.Event | None = None

    def answer(self, session: str, n: int) -> str:
        index = sum(1 for _, body, _ in self.records if body["user"] == session)
        planted = self.plant.get(session)
        if planted is not None and planted[0] == index:
            return (planted[1] + "x" * n)[:n]
        return "x" * n

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt, n = body["prompt"], body["max_tokens"]
        text = self.answer(body["user"], n)
        self.records.append((request.headers.get("x-session-id"), body, text))
        if FAIL in prompt:
            return web.Response(status=500, text="planted failure")
        if STALL in prompt:
            assert self.release is not None
            await self.release.wait()  # until teardown: the client's timeout must end it
            return web.Response(status=500)
        events = [f"data: {json.dumps({'choices': [{'index': 0, 'text': c}]})}\n\n"
                  for c in text]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if CUT in prompt:
            await resp.write("".join(events[:2]).encode())
            assert request.transport is not None
            request.transport.close()
            return resp
        usage = {"prompt_tokens": len(prompt.encode()), "completion_tokens": n,
                 "total_tokens": len(prompt.encode()) + n}
        events.append(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n")
        if NO_DONE not in prompt:
            events.append("data: [DONE]\n\n")
        # Many events per write keeps the server cheap; the client still parses one
        # chunk per token.
        for i in range(0, len(events), 64):
            await resp.write("".join(events[i:i + 64]).encode())
        await resp.write_eof()
        return resp

    def serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.release = asyncio.Event()
        app = web.Application(client_max_size=1 << 26)
        app.router.add_post("/v1/completions", self.handle)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def stop(self) -> None:
        assert self.release is not None
        self.loop.call_soon_threadsafe(self.release.set)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def by_session(self) -> dict[str, list[tuple[dict[str, Any], str]]]:
        sessions: dict[str, list[tuple[dict[str, Any], str]]] = defaultdict(list)
        for header, body, text in self.records:
            assert header == body["user"]
            sessions[body["user"]].append((body, text))
        return sessions


@pytest.fixture(scope="module")
def module_server():
    server = FakeServer()
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, args=(ready,), daemon=True)
    thread.start()
    assert ready.wait(10), "the test server did not start"
    yield server
    server.stop()
    thread.join(10)


@pytest.fixture
def server(module_server):
    module_server.records.clear()
    module_server.plant.clear()
    return module_server


def expected_turns(workload: AgenticWorkload, agent: int) -> list[tuple[int, int]]:
    """(prompt tokens, gen tokens) of each turn of ``agent``, from the workload."""
    request = workload.initial_requests()[agent]
    turns = []
    while True:
        turns.append((request.hit_tokens + request.appended_tokens, request.gen_tokens))
        following = workload.on_complete(request, 0.0)
        if not following:
            return turns
        request = following[0]


def test_agents_send_every_turn_with_the_whole_context(server):
    server.plant["agent-0"] = (1, HARMLESS * 3)  # the answer's own text must come back
    out = run_load(LoadConfig(url=server.url, agents=2, mal="32k", seed=3))
    sessions = server.by_session()
    assert sorted(sessions) == ["agent-0", "agent-1"]
    workload = AgenticWorkload(2, "32k", seed=3)
    total = prompt_total = gen_total = 0
    for agent in (0, 1):
        turns = expected_turns(workload, agent)
        sent = sessions[f"agent-{agent}"]
        assert [(len(b["prompt"].encode()), b["max_tokens"]) for b, _ in sent] == turns
        for (body, answer), (following, _) in zip(sent, sent[1:], strict=False):
            assert following["prompt"].startswith(body["prompt"] + answer)
        assert all(b["stream"] and b["stream_options"] == {"include_usage": True}
                   and b["model"] == "dualpath" for b, _ in sent)
        total += len(turns)
        prompt_total += sum(p for p, _ in turns)
        gen_total += sum(g for _, g in turns)
    assert HARMLESS * 3 in sessions["agent-0"][2][0]["prompt"]
    assert sessions["agent-0"][0][0]["prompt"][:64] != sessions["agent-1"][0][0]["prompt"][:64]
    assert (out["requests"], out["sent"], out["planned_requests"]) == (total, total, total)
    assert (out["errors"], out["agents_stopped"], out["error_messages"]) == (0, 0, [])
    assert (out["prompt_tokens"], out["generated_tokens"]) == (prompt_total, gen_total)
    assert out["ttft_mean_s"] > 0 and out["ttft_p99_s"] >= out["ttft_p50_s"] > 0
    assert out["tpot_mean_s"] >= 0
    assert out["throughput_tok_s"] == pytest.approx((prompt_total + gen_total) / out["wall_s"])
    json.dumps(out)  # the --json payload as it is


def test_a_failed_turn_stops_its_agent_and_is_counted(server):
    server.plant["agent-1"] = (1, FAIL)  # agent-1's third prompt gets a 500
    cfg = LoadConfig(url=server.url, agents=2, mal="32k", rate=1000.0)
    out = run_load(cfg)
    workload, first = agent_workload(cfg)
    turns0 = workload.turns_of(first[0].agent_id)
    sessions = server.by_session()
    assert sorted(sessions) == ["agent-0", "agent-1"]
    assert len(sessions["agent-0"]) == turns0 and len(sessions["agent-1"]) == 3
    assert (out["sent"], out["requests"]) == (turns0 + 3, turns0 + 2)
    assert (out["errors"], out["agents_stopped"]) == (1, 1)
    assert out["error_messages"] == ["agent-1: HTTP 500: planted failure"]
    assert out["planned_requests"] == turns0 + workload.turns_of(first[1].agent_id)


def test_timeouts_broken_and_unfinished_streams_are_errors(server):
    for agent, marker in enumerate((STALL, CUT, NO_DONE)):
        server.plant[f"agent-{agent}"] = (0, marker)  # each agent's second turn goes wrong
    out = run_load(LoadConfig(url=server.url, agents=3, mal="32k", timeout_s=1.0))
    assert (out["sent"], out["requests"], out["errors"], out["agents_stopped"]) == (6, 3, 3, 3)
    messages = sorted(out["error_messages"])
    assert messages[0].startswith("agent-0: timed out after 1 s")
    assert messages[1].startswith("agent-1: ClientPayloadError")
    assert messages[2] == "agent-2: StreamError: the stream ended before [DONE] after " \
                          f"{server.by_session()['agent-2'][1][0]['max_tokens']} chunks"


def test_a_server_that_is_not_there_counts_errors():
    with socket.socket() as sock:  # a port nothing listens on (once closed)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = run_load(LoadConfig(url=f"http://127.0.0.1:{port}", agents=2, mal="32k"))
    assert (out["sent"], out["requests"], out["errors"], out["agents_stopped"]) == (2, 0, 2, 2)
    assert out["ttft_mean_s"] is None and out["throughput_tok_s"] == 0.0
    assert all("ClientConnectorError" in m for m in out["error_messages"])


LINES = [(0, 1200, 3, [1, 2, 3]), (100, 1400, 0, [1, 2, 4]), (200, 700, 5, [9]),
         (300, 1000, 2, [1, 2])]


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"timestamp": t, "input_length": n, "output_length": g,
                                        "hash_ids": h}) + "\n" for t, n, g, h in LINES))
    return f"mooncake:{path}"


def test_trace_sends_equal_text_for_equal_hash_ids(server, trace):
    out = run_load(LoadConfig(url=server.url, trace=trace, speed=2.0))
    bodies = [body for _, body, _ in server.records]
    first_run = {b["user"]: b["prompt"] for b in bodies}
    assert sorted(first_run) == [f"trace-{i}" for i in range(4)]
    p0, p1, p2, p3 = (first_run[f"trace-{i}"] for i in range(4))
    assert [len(p) for p in (p0, p1, p2, p3)] == [n for _, n, _, _ in LINES]
    assert sorted(b["max_tokens"] for b in bodies) == [1, 2, 3, 5]  # output 0 asks for 1
    assert p1[:1024] == p0[:1024] and p1[1024:1200] != p0[1024:]  # blocks 1, 2 shared
    assert p3 == p0[:1000]
    assert p2[:512] != p0[:512] and set(p0 + p2) <= set(ALPHABET.decode())
    assert (out["requests"], out["errors"], out["mode"]) == (4, 0, "trace")
    assert out["wall_s"] >= 0.15  # the last line at 300 ms / speed 2: open loop, not at once
    server.records.clear()
    run_load(LoadConfig(url=server.url, trace=trace, speed=100.0))
    assert {b["user"]: b["prompt"] for _, b, _ in server.records} == first_run


def test_filler_is_deterministic_lowercase_text():
    assert filler("k", 1000) == filler("k", 1000) != filler("j", 1000)
    assert filler("k", 10) == filler("k", 1000)[:10] and filler("k", 0) == ""
    assert set(filler("k", 1000)) <= set(ALPHABET.decode())


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"agents": 0}, "agents: must be an integer >= 1, got 0"),
    ({"agents": True}, "agents: must be an integer >= 1, got True"),
    ({"agents": 1, "rate": 0.0}, "rate: must be a finite number > 0, got 0.0"),
    ({"agents": 1, "rate": -2.0}, "got -2.0"),
    ({"agents": 1, "mal": "16k"}, "'16k'"),
    ({"agents": 1, "url": "localhost:8000"}, "url: expected http://HOST:PORT"),
    ({"agents": 1, "url": "ftp://host"}, "'ftp://host'"),
    ({"agents": 1, "timeout_s": 0}, "timeout_s: must be a finite number > 0, got 0"),
    ({"agents": 1, "speed": 3.0}, "speed: applies only to a trace, got 3.0"),
    ({"trace": "mooncake:/no/such.jsonl"}, "no such file '/no/such.jsonl'"),
    ({"trace": "csv:/tmp/x"}, "'csv:/tmp/x'"),
    ({}, "exactly one of agents and trace"),
])
def test_bad_configs_name_the_bad_value(kwargs, named):
    with pytest.raises(ValueError) as caught:
        LoadConfig(**{"url": "http://127.0.0.1:1", **kwargs})
    assert named in str(caught.value)


def test_trace_only_options_are_refused_with_agents_and_back(trace):
    with pytest.raises(ValueError, match="speed: must be a finite number > 0, got 0"):
        LoadConfig(url="http://h:1", trace=trace, speed=0)
    with pytest.raises(ValueError, match="rate: applies only to agents, got 1.0"):
        LoadConfig(url="http://h:1", trace=trace, rate=1.0)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_prints_json_and_a_table(server, trace, capsys):
    args = _cli(["load", "--url", server.url, "--trace", trace, "--speed", "100", "--json"])
    args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert {"requests", "errors", "ttft_mean_s", "ttft_p99_s", "tpot_mean_s",
            "throughput_tok_s", "wall_s", "prompt_tokens", "generated_tokens",
            "error_messages"} <= set(out)
    assert out["requests"] == 4 and out["prompt_tokens"] == sum(n for _, n, _, _ in LINES)
    args = _cli(["load", "--url", server.url, "--trace", trace, "--speed", "100"])
    args.func(args)
    lines = capsys.readouterr().out.splitlines()
    assert "            requests  4" in lines and "              errors  0" in lines


def test_cli_fails_when_nothing_completes(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = _cli(["load", "--url", f"http://127.0.0.1:{port}", "--agents", "1"])
    with pytest.raises(SystemExit) as caught:
        args.func(args)
    assert caught.value.code == 1
    assert "ClientConnectorError" in capsys.readouterr().out
