"""A live cluster serving HTTP through its fronts, without a gateway: requests with and
without the picker's headers, streaming, refusals, and what the router ran."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from agents import resolve_policy
from experiments.live.gateway import free_ports
from runtime.live.cluster import LiveCluster, local_decider
from runtime.live.config import LiveOptions
from runtime.live.router import Router
from runtime.preset import load_preset
from runtime.serving import headers as h
from runtime.serving.served import ServedWorkload

SPEC = load_preset("tiny", ("block_tokens=1024",))  # engines 0, 1 prefill; 2, 3 decode


class Serving:
    """A live cluster serving its fronts on a thread (``options``: besides the fronts)."""

    def __init__(self, options: LiveOptions | None = None) -> None:
        self.options = options or LiveOptions(time_scale=0.25)
        self.ports = free_ports(SPEC.engines)
        self.router: Router | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.result: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        while not self.ready.wait(0.5):
            assert self.thread.is_alive(), f"the cluster did not start: {self.error!r}"

    def _run(self) -> None:
        policy = resolve_policy("dualpath", SPEC).policy
        options = dataclasses.replace(self.options, fronts=tuple(self.ports))
        try:
            self.result = LiveCluster(SPEC, options).run(
                ServedWorkload(SPEC.block_tokens), local_decider(policy),
                router_hook=self._hook, serving=True)
        except BaseException as exc:
            self.error = exc
            raise

    def _hook(self, router: Router) -> None:
        self.router, self.loop = router, asyncio.get_running_loop()
        self.ready.set()

    def url(self, engine: int, path: str = "/v1/completions") -> str:
        return f"http://127.0.0.1:{self.ports[engine]}{path}"

    def picked(self, rid: int, pe: int, share: float = 1.0, hit: int = 0) -> dict[str, str]:
        """The headers the endpoint picker sets."""
        return {h.REQUEST_ID: str(rid), h.PREFILLER: f"127.0.0.1:{self.ports[pe]}",
                h.DECODE_SHARE: str(share), h.HIT_TOKENS: str(hit)}

    def stop(self) -> dict[str, Any]:
        assert self.loop is not None and self.router is not None
        self.loop.call_soon_threadsafe(self.router.stop_serving)
        self.thread.join(120)
        return self.result


@pytest.fixture(scope="module")
def cluster() -> Iterator[Serving]:
    serving = Serving()
    yield serving
    result = serving.stop()
    assert result["lost"] == 0 and result["completed"] == result["admitted"] > 0, result


def test_a_request_without_picker_headers_is_served_by_the_local_policy(cluster) -> None:
    reply = requests.post(cluster.url(2), json={"model": "m", "prompt": "hello",
                                                "max_tokens": 7}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["choices"][0]["text"]) == 7 and body["usage"]["prompt_tokens"] == 5
    assert body["dualpath"]["placeholder_tokens"] and body["dualpath"]["decode_engine"] == 2
    assert body["dualpath"]["prefill_engine"] is None  # no picker: the router chose


def test_the_picker_decision_is_kept_and_a_reused_id_refused(cluster) -> None:
    prompt = "p" * (3 * SPEC.block_tokens)
    reply = requests.post(cluster.url(3), json={"prompt": prompt, "max_tokens": 3},
                          headers=cluster.picked(77, 1, 1.0, 2 * SPEC.block_tokens), timeout=60)
    assert reply.status_code == 200, reply.text
    extra = reply.json()["dualpath"]
    assert (extra["request_id"], extra["prefill_engine"], extra["decode_engine"],
            extra["decode_share"]) == (77, 1, 3, 1.0)
    row = [r for r in requests.get(cluster.url(3, "/dualpath/received"), timeout=10).json()
           if r["request_id"] == 77]
    assert row == [{"request_id": 77, "decode_engine": 3, "prefill_engine": 1,
                    "decode_share": 1.0, "hit_tokens": 2 * SPEC.block_tokens, "picked": True}]
    again = requests.post(cluster.url(3), json={"prompt": "x", "max_tokens": 1},
                          headers=cluster.picked(77, 0), timeout=60)
    assert again.status_code == 409 and "already in use" in again.text


def test_streaming_sends_one_chunk_per_token_then_usage(cluster) -> None:
    reply = requests.post(cluster.url(2, "/v1/chat/completions"), stream=True, timeout=60,
                          json={"messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 6, "stream": True,
                                "stream_options": {"include_usage": True}})
    events = [line[len(b"data: "):] for line in reply.iter_lines() if line]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([t for t in text if t]) == 6 and chunks[0]["choices"][0]["delta"]["role"]
    assert chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize(("engine", "headers", "status", "needle"), [
    (0, {}, 421, "prefill engine"),
    (2, {h.REQUEST_ID: "x"}, 400, "not an integer"),
    (2, {h.REQUEST_ID: "5", h.PREFILLER: "127.0.0.1:1"}, 400, "not a prefill engine"),
    (2, {h.LATENCY_CLASS: "urgent"}, 400, "latency class"),
])
def test_bad_requests_are_refused_by_name(cluster, engine, headers, status, needle) -> None:
    reply = requests.post(cluster.url(engine), json={"prompt": "x", "max_tokens": 1},
                          headers=headers, timeout=60)
    assert reply.status_code == status and needle in reply.json()["error"]["message"]


def test_a_bad_share_and_an_oversized_prompt_are_400(cluster) -> None:
    bad_share = {**cluster.picked(90, 0), h.DECODE_SHARE: "2"}
    reply = requests.post(cluster.url(2), json={"prompt": "x"}, headers=bad_share, timeout=60)
    assert reply.status_code == 400 and "not in [0, 1]" in reply.text
    most = int(SPEC.node.de_hbm_kv_bytes // SPEC.model.kv_bytes_per_token)
    tokens = most - 999_999  # with max_tokens 1,000,000: one token more than an engine holds
    reply = requests.post(cluster.url(2), json={"prompt": [1] * tokens,
                                                "max_tokens": 1_000_000}, timeout=60)
    assert reply.status_code == 400 and "decode engine holds" in reply.text


def test_health_models_and_metrics(cluster) -> None:
    assert requests.get(cluster.url(0, "/health"), timeout=10).json()["role"] == "prefill"
    models = requests.get(cluster.url(3, "/v1/models"), timeout=10).json()
    assert models["data"][0]["id"] == "dualpath-emulated"
    text = requests.get(cluster.url(2, "/metrics"), timeout=10).text
    assert 'dualpath_front_requests_total{code="200",engine="2"}' in text
