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

from collections.abc import Sequence

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
