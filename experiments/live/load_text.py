"""Prompt text for ``dualpath load``: deterministic filler whose length is its token count.

The servers this load is meant for tokenize text as its UTF-8 bytes
(:mod:`runtime.serving.tokenizer`), so the text here is printable ASCII (lowercase
letters and spaces): ``n`` characters are ``n`` bytes are ``n`` tokens. Text is a
function of a key only — the same key gives the same text in every run and process —
so a server's prefix cache sees exactly the sharing the workload describes, and none
it does not (two different keys share no prefix except by chance, a few bytes at most).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

#: The filler's characters: 26 letters and a space (a space about every 27 bytes, so the
#: text reads as "words" to a human looking at a request log).
ALPHABET = b"abcdefghijklmnopqrstuvwxyz "
# Byte value -> filler character; the modulo bias (256 is not a multiple of 27) only
# makes a few letters slightly commoner, which nothing here depends on.
_TABLE = bytes(ALPHABET[b % len(ALPHABET)] for b in range(256))


def filler(key: str, n: int) -> str:
    """``n`` filler characters determined by ``key`` (SHAKE-256 of the key, mapped onto
    :data:`ALPHABET`): an extendable-output hash, so any length comes in one C call."""
    if n < 0:
        raise ValueError(f"filler length must be >= 0, got {n!r}")
    if n == 0:
        return ""
    return hashlib.shake_256(key.encode("utf-8")).digest(n).translate(_TABLE).decode("ascii")


def turn_text(seed: int, agent: int, turn: int, n: int) -> str:
    """The ``n`` new tokens an agent's turn appends to its context."""
    return filler(f"turn:{seed}:{agent}:{turn}", n)


@lru_cache(maxsize=4096)
def block_text(hash_id: int, block_tokens: int) -> str:
    """The text of one trace block: a function of its hash id only, so equal ids are equal
    text in every line and run (cached: a trace's prefixes repeat their blocks often)."""
    return filler(f"block:{hash_id}:{block_tokens}", block_tokens)


def trace_prompt(line_no: int, hash_ids: tuple[int, ...], input_length: int,
                 block_tokens: int) -> str:
    """A trace line's prompt: its blocks' texts in order, cut to ``input_length`` bytes.

    A line whose blocks cover less than ``input_length`` tokens is padded with text of
    its own (keyed by the line number), which no other line shares.
    """
    needed = -(-input_length // block_tokens)
    text = "".join(block_text(h, block_tokens) for h in hash_ids[:needed])
    if len(text) < input_length:
        text += filler(f"tail:{line_no}", input_length - len(text))
    return text[:input_length]
