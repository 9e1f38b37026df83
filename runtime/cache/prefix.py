"""A request's prefix as block hashes.

Hashes are chained: equal hashes at position ``i`` mean equal prompts up to the
end of block ``i`` (vLLM's and Mooncake's convention), so a cache can tell how
many leading blocks of a prompt it holds from the hashes alone. A trace gives
each request its hashes (``Request.block_hashes``, one per trace block). A
request without them is an agent's turn: an agent's context only grows, so its
block ``i`` is the same block in every turn, and the chain is ``(agent, i)`` —
the name the live runtime gives that block in storage — covering the prompt's
full blocks of the cluster's ``block_tokens``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from runtime.request import Request

#: Agents' chains live above every trace's hash ids (bit 62 set); agent ``a``'s block
#: ``i`` is ``AGENT_CHAIN | a << 24 | i`` (2**24 blocks per agent).
AGENT_CHAIN = 1 << 62
_AGENT_SHIFT = 24


def prefix_hashes(request: Request, block_tokens: int) -> Sequence[int]:
    """The request's block hashes, or its agent's chain over its prompt's full blocks."""
    hashes = request.block_hashes
    if hashes is not None:
        return hashes
    base = AGENT_CHAIN | request.agent_id << _AGENT_SHIFT
    return range(base, base + request.prompt_tokens // block_tokens)


#: Token-content chains stay below bit 62, apart from agents' chains (and, as 62-bit
#: digests, in practice from a trace's small hash ids).
_TOKEN_CHAIN_BITS = 62
_TOKEN_PERSON = b"dualpath-tokens"


def token_block_hashes(tokens: Sequence[int], block_tokens: int) -> tuple[int, ...]:
    """Chained hashes of ``tokens``' full blocks of ``block_tokens``: hash ``i`` digests
    hash ``i - 1`` and block ``i``'s token ids, so equal hashes mean equal prompts up to
    the end of that block. The one rule by which served prompts (the endpoint picker, the
    live cluster's HTTP fronts) name their blocks; storage names a block by its hash
    (:func:`runtime.live.blocks.hashed_block_name`)."""
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
    ids = np.asarray(tokens, dtype="<i8")
    if ids.ndim != 1:
        raise ValueError("tokens must be a flat sequence of token ids")
    out: list[int] = []
    previous = b""
    for start in range(0, len(ids) - block_tokens + 1, block_tokens):
        digest = hashlib.blake2b(previous + ids[start:start + block_tokens].tobytes(),
                                 digest_size=8, person=_TOKEN_PERSON).digest()
        previous = digest
        out.append(int.from_bytes(digest, "little") >> (64 - _TOKEN_CHAIN_BITS))
    return tuple(out)
