"""runtime/serving: request bodies, tokens, content hashes, served requests; stored blocks."""

from __future__ import annotations

import json

import pytest

from runtime.cache.prefix import AGENT_CHAIN, token_block_hashes
from runtime.cache.stored import StoredBlocks
from runtime.serving.openai import (
    CHAT,
    COMPLETIONS,
    DEFAULT_MAX_TOKENS,
    BadRequest,
    parse_completion,
)
from runtime.serving.served import ServedWorkload, agent_of, latency_class, served_request
from runtime.serving.tokenizer import ByteTokenizer, load_tokenizer

TOK = ByteTokenizer()


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_completion_text_and_token_ids() -> None:
    c = parse_completion(COMPLETIONS, body(model="any", prompt="héllo", max_tokens=3,
                                           stream=True, stream_options={"include_usage": True},
                                           user="u1"), TOK)
    assert c.tokens == tuple("héllo".encode()) and len(c.tokens) == 6  # UTF-8 bytes
    assert (c.max_tokens, c.stream, c.include_usage, c.user, c.chat) == (3, True, True, "u1",
                                                                          False)
    ids = parse_completion(COMPLETIONS, body(prompt=[[5, 6, 700]]), TOK)
    assert ids.tokens == (5, 6, 700) and ids.max_tokens == DEFAULT_MAX_TOKENS


def test_chat_messages_become_one_prompt() -> None:
    c = parse_completion(CHAT, body(model="m", messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        max_completion_tokens=2), TOK)
    assert bytes(c.tokens).decode() == "<|system|>be brief\n<|user|>hi" and c.chat
    assert c.max_tokens == 2


@pytest.mark.parametrize(("path", "raw", "needle"), [
    (COMPLETIONS, b"not json", "not JSON"),
    (COMPLETIONS, b"[1, 2]", "JSON object"),
    (COMPLETIONS, body(), "'prompt' is missing"),
    (COMPLETIONS, body(prompt=""), "empty"),
    (COMPLETIONS, body(prompt=["a", "b"]), "one prompt per request"),
    (COMPLETIONS, body(prompt=[1, -2]), "token ids"),
    (COMPLETIONS, body(prompt="x", max_tokens=0), "max_tokens"),
    (COMPLETIONS, body(prompt="x", max_tokens=True), "max_tokens"),
    (COMPLETIONS, body(prompt="x", n=2), "'n' must be 1"),
    (COMPLETIONS, body(prompt="x", stream="yes"), "'stream' must be a bool"),
    (COMPLETIONS, body(prompt="x", model=3), "'model' must be a str"),
    (CHAT, body(messages=[]), "non-empty list"),
    (CHAT, body(messages=[{"content": "x"}]), "role"),
    (CHAT, body(messages=[{"role": "user", "content": 5}]), "content"),
    ("/v1/embeddings", body(prompt="x"), "no completions"),
])
def test_bad_bodies_name_what_is_wrong(path: str, raw: bytes, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle):
        parse_completion(path, raw, TOK)


def test_token_block_hashes_are_chained_and_below_agent_chains() -> None:
    a = token_block_hashes(list(range(100)), 16)
    assert len(a) == 6  # full blocks only
    b = token_block_hashes([*range(64), 999, *range(65, 100)], 16)
    assert a[:4] == b[:4] and a[4] != b[4] and a[5] != b[5]  # equal up to the change
    assert all(0 <= h < AGENT_CHAIN for h in a + b)
    assert token_block_hashes(list(range(100)), 16) == a  # deterministic
    with pytest.raises(ValueError, match="block_tokens"):
        token_block_hashes([1], 0)


def test_served_request_loads_only_whole_blocks_and_computes_one_token() -> None:
    hashes = token_block_hashes(list(range(40)), 16)
    r = served_request(7, agent_of("s"), 40, hashes, 40, 4, 1.5, 16, "batch")
    assert (r.hit_tokens, r.appended_tokens, r.gen_tokens, r.slo_class) == (32, 8, 4, "batch")
    exact = served_request(7, 1, 32, hashes[:2], 32, 1, 0.0, 16)
    assert (exact.hit_tokens, exact.appended_tokens) == (16, 16)  # one token is left
    assert served_request(7, 1, 40, hashes, 20, 1, 0.0, 16).hit_tokens == 16
    assert agent_of("s") == agent_of("s") != agent_of("t")
    assert latency_class(None) == "interactive"
    with pytest.raises(ValueError, match="latency class"):
        latency_class("urgent")
    w = ServedWorkload(64)
    assert w.initial_requests() == [] and w.trace_block_tokens == 64


def test_tokenizer_plug_in_and_its_errors() -> None:
    assert load_tokenizer("bytes").encode("ab") == [97, 98]
    tok = load_tokenizer("runtime.serving.tokenizer:ByteTokenizer")
    assert tok.encode("a") == [97]
    for bad, needle in (("nope", "module:attribute"), ("no.such.mod:x", "No module"),
                        ("runtime.serving.tokenizer:Missing", "Missing"),
                        ("runtime.serving.openai:DEFAULT_MAX_TOKENS", "encode")):
        with pytest.raises(ValueError, match=needle):
            load_tokenizer(bad)


def test_stored_blocks_count_leading_and_forget_the_oldest() -> None:
    stored = StoredBlocks(capacity=4)
    stored.add([1, 2, 3])
    assert stored.leading([1, 2, 3, 4]) == 3 and stored.leading([2, 3]) == 2
    assert stored.leading([9, 1]) == 0
    stored.add([5, 6])  # 5 entries > 4: the least recently used (1... touched) goes
    assert len(stored) == 4
    with pytest.raises(ValueError):
        StoredBlocks(0)
