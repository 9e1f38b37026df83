"""What a policy answers for one request."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from runtime.slots import slot_init


@slot_init
@dataclass(frozen=True, slots=True)
class Decision:
    """The prefill engine, the decode engine and the path of one request.

    ``decode_share`` is the fraction of the request's hit blocks loaded through
    the decode-engine path (storage → DE node → RDMA → PE): 0 reads everything on
    the PE node, 1 everything on the DE node, values between split the blocks.
    A policy answers :class:`Defer` (or ``None``) instead of a Decision to defer.
    """

    prefill_engine: int
    decode_engine: int
    decode_share: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.decode_share <= 1.0:
            raise ValueError(f"decode_share must lie in [0, 1], got {self.decode_share}")


class WaitFor(IntEnum):
    """What a deferred request waits for before the policy is asked again."""

    ANY = 0       # any change: an arrival, a finished prefill batch or a finished request
    PREFILL = 1   # a prefill batch finished (PE tokens and HBM freed)
    DECODE = 2    # a request finished (decode HBM and batch slots freed)


@dataclass(frozen=True, slots=True)
class Defer:
    """A policy's answer when no engine can take the request now.

    The request keeps its place at the head of the FIFO queue. ``wait_for`` lets
    the executor ask again only when that kind of capacity frees (answering
    ``None`` means ``Defer()``: ask again on any change); ``reason`` says why.
    """

    reason: str = ""
    wait_for: WaitFor = WaitFor.ANY


def split_tokens(hit_tokens: int, decode_share: float, block_tokens: int) -> tuple[int, int]:
    """(PE-path tokens, DE-path tokens) of ``hit_tokens`` under ``decode_share``.

    Whole blocks go to the DE path (the share rounded to blocks); the partial
    last block, if any, stays with whichever side the rounding leaves it.
    """
    blocks = -(-hit_tokens // block_tokens)
    de_tokens = min(hit_tokens, round(decode_share * blocks) * block_tokens)
    return hit_tokens - de_tokens, de_tokens
