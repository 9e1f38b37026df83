"""The :class:`~runtime.Request` of a served prompt: one rule for the picker and the fronts."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from runtime.request import Request
from runtime.slo import CLASSES, INTERACTIVE


def agent_of(session: str) -> int:
    """A session's agent id: the same for every turn of the session, on every process."""
    digest = hashlib.blake2b(session.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") >> 1


def latency_class(value: str | None) -> str:
    """The class a request asked for (``x-dualpath-class``; interactive by default)."""
    if value is None or value == "":
        return INTERACTIVE
    if value not in CLASSES:
        raise ValueError(f"latency class {value!r}: expected one of {', '.join(CLASSES)}")
    return value


def served_request(request_id: int, agent_id: int, prompt_tokens: int, hashes: Sequence[int],
                   hit_tokens: int, gen_tokens: int, arrival_s: float, block_tokens: int,
                   slo_class: str = INTERACTIVE, turn: int = 0) -> Request:
    """A served prompt's request: of ``hit_tokens``, the whole blocks ``hashes`` cover (one
    token always left to compute) are loaded, the rest appended; its blocks are named by
    ``hashes`` (:func:`runtime.cache.prefix.token_block_hashes` of the prompt)."""
    full = min(len(hashes) * block_tokens, prompt_tokens - 1)
    hit = max(0, min(hit_tokens, full)) // block_tokens * block_tokens
    return Request(request_id, agent_id, turn, hit, prompt_tokens - hit, gen_tokens,
                   arrival_s, tuple(hashes), slo_class)


class ServedWorkload:
    """The workload of a cluster serving HTTP: no requests of its own (they are submitted
    as they come); blocks named by content hashes of ``block_tokens``."""

    name = "served"

    def __init__(self, block_tokens: int) -> None:
        self.trace_block_tokens = block_tokens

    def initial_requests(self) -> list[Request]:
        return []

    def on_complete(self, request: Request, finish_s: float) -> list[Request]:
        return []
