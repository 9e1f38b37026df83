"""What a policy answers for one request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    """The prefill engine, the decode engine and the path of one request.

    ``decode_share`` is the fraction of the request's hit blocks loaded through
    the decode-engine path (storage → DE node → RDMA → PE): 0 reads everything on
    the PE node, 1 everything on the DE node, values between split the blocks.
    A policy answers ``None`` instead of a Decision to defer.
    """

    prefill_engine: int
    decode_engine: int
    decode_share: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.decode_share <= 1.0:
            raise ValueError(f"decode_share must lie in [0, 1], got {self.decode_share}")
