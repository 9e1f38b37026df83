"""The fronts of a cluster whose engines run the model: the client gets the model's tokens,
equal to a direct computation of the same request; what the model cannot compute gets a
400 and loses nothing in flight."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from runtime.live.config import LiveOptions
from runtime.transformer import Transformer, config_for
from tests.runtime.live.test_front import Serving

MODEL = Transformer(config_for("tiny"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Serving]:
    serving = Serving(LiveOptions(engine="model", bytes_scale=1))
    yield serving
    result = serving.stop()
    assert result["lost"] == 0 and result["completed"] == result["admitted"] > 0, result
    live = result["live"]
    assert live["tokens_checked"] == live["tokens_generated"] > 0
    assert live["token_mismatches"] == 0


def direct(prompt: bytes, n: int) -> list[int]:
    return MODEL.generate(list(prompt), n)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_a_completion_is_the_models_tokens(cluster: Serving) -> None:
    reply = requests.post(cluster.url(2), json={"prompt": "hello world", "max_tokens": 6},
                          timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert ids(body["choices"][0]["text"]) == direct(b"hello world", 6)
    assert body["dualpath"]["placeholder_tokens"] is False


def test_streamed_tokens_are_the_models_too(cluster: Serving) -> None:
    with requests.post(cluster.url(3), json={"prompt": "stream me", "max_tokens": 5,
                                             "stream": True}, stream=True, timeout=120) as r:
        assert r.status_code == 200
        pieces = [line for line in r.iter_lines() if line.startswith(b"data: {")]
    import json

    text = "".join(json.loads(p[6:])["choices"][0]["text"] for p in pieces)
    assert ids(text) == direct(b"stream me", 5)


def test_a_prompt_whose_prefix_is_stored_loads_it_and_gives_the_same_tokens(cluster) -> None:
    prefix = bytes(range(32, 127)) * 12  # 1,140 tokens: its first 1,024-token block is written
    first = requests.post(cluster.url(2), json={"prompt": prefix.decode(), "max_tokens": 3},
                          timeout=120)
    assert first.status_code == 200
    prompt = prefix + b" and more"
    again = requests.post(cluster.url(2), json={"prompt": prompt.decode(), "max_tokens": 4},
                          timeout=120)
    assert again.status_code == 200
    assert ids(again.json()["choices"][0]["text"]) == direct(prompt, 4)
    assert cluster.router is not None
    assert any(e.request.hit_tokens >= 1024 for e in cluster.router.entries.values())


def test_what_the_model_cannot_compute_gets_400_and_nothing_is_lost(cluster) -> None:
    def good() -> list[int]:
        reply = requests.post(cluster.url(3), json={"prompt": "keep going", "max_tokens": 12},
                              timeout=120)
        return ids(reply.json()["choices"][0]["text"])

    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(good) for _ in range(2)]
        bad_id = requests.post(cluster.url(2), json={"prompt": [72, 300], "max_tokens": 2},
                               timeout=60)
        too_long = requests.post(cluster.url(2), json={"prompt": "x" * 70_000,
                                                       "max_tokens": 2}, timeout=60)
        answers = [f.result() for f in running]
    assert bad_id.status_code == 400 and "vocabulary" in bad_id.json()["error"]["message"]
    assert too_long.status_code == 400 and "context" in too_long.json()["error"]["message"]
    assert answers == [direct(b"keep going", 12)] * 2
