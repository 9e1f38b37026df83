"""The OpenAI API's response objects, for completions and chat, whole and streamed.

Emulated engines compute no model, so the tokens they produce are placeholders:
one ASCII letter each (one token under the byte tokenizer, so an agent's next
prompt, which includes the answer, has the length the workload says), and every
response says so under ``dualpath.placeholder_tokens``.
"""

from __future__ import annotations

import json
from typing import Any

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def placeholder_text(rid: int, first: int, end: int) -> str:
    """The text of placeholder tokens ``first .. end-1`` of request ``rid``."""
    return "".join(_LETTERS[(rid + i) % 26] for i in range(first, end))


def token_text(ids: list[int]) -> str:
    """The model engine's generated ids as text: each id as the character of that code
    point (ids are the byte tokenizer's 0..255, which need not form UTF-8: this keeps
    every token, one character each)."""
    return "".join(map(chr, ids))


def usage(prompt: int, generated: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": generated,
            "total_tokens": prompt + generated}


def whole(chat: bool, rid: int, model: str, created: int, text: str, prompt: int,
          generated: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The response of a request not streamed."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": _id(chat, rid), "object": "chat.completion" if chat else "text_completion",
            "created": created, "model": model, "choices": [choice],
            "usage": usage(prompt, generated), "dualpath": extra}


def chunk(chat: bool, rid: int, model: str, created: int, text: str | None,
          finish: str | None, extra: dict[str, Any], first: bool = False) -> dict[str, Any]:
    """One streamed chunk: ``text`` (None: no text, only ``finish``)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        delta: dict[str, str] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    return {"id": _id(chat, rid), "object": "chat.completion.chunk" if chat
            else "text_completion", "created": created, "model": model, "choices": [choice],
            "dualpath": extra}


def usage_chunk(chat: bool, rid: int, model: str, created: int, prompt: int,
                generated: int) -> dict[str, Any]:
    """The last chunk of a stream that asked for usage (``stream_options``)."""
    return {"id": _id(chat, rid), "object": "chat.completion.chunk" if chat
            else "text_completion", "created": created, "model": model, "choices": [],
            "usage": usage(prompt, generated)}


def error(status: int, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": status}}


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event (``data: [DONE]`` for the string)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _id(chat: bool, rid: int) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{rid:x}"
