"""OpenAI completions and chat request bodies, read strictly.

Every field we act on is checked; a body that is not what the API allows raises
:class:`BadRequest` naming the field (the picker and the fronts answer it with 400).
Fields we do not act on (temperature, stop, ...) are accepted and ignored: the
engines decide how many tokens they produce (``max_tokens``; default
:data:`DEFAULT_MAX_TOKENS`, as the completions API's). A chat's messages become one
prompt text, ``<|role|>content`` per message, one per line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runtime.serving.tokenizer import Tokenizer

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
DEFAULT_MAX_TOKENS = 16
MAX_TOKENS_LIMIT = 1 << 20
TOKEN_ID_LIMIT = 1 << 31


class BadRequest(ValueError):
    """A request the API does not allow; the message says what is wrong."""


@dataclass(frozen=True)
class Completion:
    """What a completions or chat request asks for, its prompt as token ids."""

    chat: bool
    model: str
    tokens: tuple[int, ...]
    max_tokens: int
    stream: bool
    include_usage: bool
    user: str | None


def parse_completion(path: str, body: bytes, tokenizer: Tokenizer) -> Completion:
    """The request posted to ``path`` (:data:`COMPLETIONS` or :data:`CHAT`)."""
    if path not in (COMPLETIONS, CHAT):
        raise BadRequest(f"no completions at {path!r}; POST {COMPLETIONS} or {CHAT}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(data).__name__}")
    chat = path == CHAT
    tokens = (_chat_tokens(data, tokenizer) if chat else _prompt_tokens(data, tokenizer))
    if not tokens:
        raise BadRequest("the prompt is empty")
    options = _field(data, "stream_options", dict, {})
    return Completion(
        chat=chat, model=_field(data, "model", str, ""), tokens=tokens,
        max_tokens=_max_tokens(data), stream=_field(data, "stream", bool, False),
        include_usage=_field(options, "include_usage", bool, False),
        user=_field(data, "user", str, None))


def _field(data: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"'{name}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _max_tokens(data: dict[str, Any]) -> int:
    n = _field(data, "n", int, 1)
    if n != 1:
        raise BadRequest(f"'n' must be 1 (one completion per request), got {n}")
    value = data.get("max_completion_tokens", data.get("max_tokens"))
    if value is None:
        return DEFAULT_MAX_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= MAX_TOKENS_LIMIT:
        raise BadRequest(f"'max_tokens' must be an integer in 1..{MAX_TOKENS_LIMIT}, "
                         f"got {value!r}")
    return value


def _prompt_tokens(data: dict[str, Any], tokenizer: Tokenizer) -> tuple[int, ...]:
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return tuple(tokenizer.encode(prompt))
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                        for t in prompt):
        if any(not 0 <= t < TOKEN_ID_LIMIT for t in prompt):
            raise BadRequest(f"'prompt' token ids must lie in 0..{TOKEN_ID_LIMIT - 1}")
        return tuple(prompt)
    if prompt is None:
        raise BadRequest("'prompt' is missing")
    raise BadRequest("'prompt' must be a string, a list of token ids, or a list holding "
                     "one of those (one prompt per request)")


def _chat_tokens(data: dict[str, Any], tokenizer: Tokenizer) -> tuple[int, ...]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    lines = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'")
        lines.append(f"<|{message['role']}|>{_content(message.get('content'), i)}")
    return tuple(tokenizer.encode("\n".join(lines)))


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"messages[{i}].content must be a string or a list of text parts")
