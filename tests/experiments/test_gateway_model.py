"""Through a real Envoy and the endpoint picker to engines that run the model: the official
``openai`` client receives the model's tokens, equal to a direct computation."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from runtime.serving.openai import CHAT, parse_completion
from runtime.serving.tokenizer import ByteTokenizer
from runtime.transformer import Transformer, config_for
from tests.experiments.test_gateway import Running, start
from tests.requirements import require_module


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start(tmp_path_factory.mktemp("gateway-model"), engine="model")
    yield running
    result = running.stop()
    assert result.get("lost", 0) == 0 and result["completed"] == result["admitted"], result
    live = result["live"]
    assert live["tokens_checked"] == live["tokens_generated"] > 0
    assert live["token_mismatches"] == 0


def test_the_openai_client_receives_the_models_tokens(gateway: Running) -> None:
    openai = require_module("openai", "the official client of the API the fronts speak")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=120)
    model = Transformer(config_for("tiny"))
    prompt = "The scheduler picks a prefill engine, a decode engine and a path. " * 3
    done = client.completions.create(model="any", prompt=prompt, max_tokens=8)
    assert [ord(c) for c in done.choices[0].text] == model.generate(list(prompt.encode()), 8)
    assert done.model_extra["dualpath"]["placeholder_tokens"] is False
    messages = [{"role": "user", "content": "hello"}]
    chunks = list(client.chat.completions.create(model="any", messages=messages, max_tokens=6,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    chat = parse_completion(CHAT, json.dumps({"messages": messages, "max_tokens": 6}).encode(),
                            ByteTokenizer())
    assert [ord(c) for c in text] == model.generate(list(chat.tokens), 6)
    assert [m.id for m in client.models.list()] == ["dualpath-tiny"]


def test_the_picker_placed_the_models_requests(gateway: Running) -> None:
    received = gateway.received()
    assert received and all(r["picked"] for r in received)
