"""What is reserved on one engine, and the only code that changes it."""

from __future__ import annotations


class EngineLoad:
    """An engine's unfinished sequences (``seq``), unfinished tokens (``tok``) and, for a
    decode engine, the HBM not yet reserved (``free_hbm``).

    The simulator's engines are ``EngineLoad`` s; the live router and nodes keep
    their own. Reservations are taken and given back only through these methods
    (called by :class:`~runtime.placement.ledger.Ledger` and the engines' own
    progress), so every execution counts the same way.
    """

    __slots__ = ("seq", "tok", "free_hbm")

    def __init__(self, free_hbm: float = 0.0) -> None:
        self.seq = 0
        self.tok = 0
        self.free_hbm = free_hbm

    def admit(self, tokens: int) -> None:
        """A sequence arrives with ``tokens`` to process (a live node's own engine count)."""
        self.seq += 1
        self.tok += tokens

    def computed(self, tokens: int) -> None:
        """``tokens`` of the engine's work are done (never below zero: reports may race)."""
        tok = self.tok - tokens
        self.tok = tok if tok > 0 else 0

    def left(self) -> None:
        """A sequence left the engine (its last prefill chunk is done, or it was dropped)."""
        self.seq -= 1
