"""A request: one turn of an agent, or one line of a trace."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    """One prefill+decode job.

    ``hit_tokens`` of the prompt have KV in storage and are loaded;
    ``appended_tokens`` are computed by prefill; ``gen_tokens`` are generated
    (the first by the prefill engine, the rest by the decode engine).
    ``request_id`` is unique within a run.
    """

    request_id: int
    agent_id: int
    turn: int
    hit_tokens: int
    appended_tokens: int
    gen_tokens: int
    arrival_s: float
    block_hashes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.hit_tokens < 0 or self.appended_tokens < 0:
            raise ValueError(f"request {self.request_id}: token counts must be >= 0")
        if self.appended_tokens + self.hit_tokens <= 0:
            raise ValueError(f"request {self.request_id}: empty prompt")
        if self.gen_tokens < 1:
            raise ValueError(f"request {self.request_id}: gen_tokens must be >= 1")
        if self.arrival_s < 0:
            raise ValueError(f"request {self.request_id}: arrival_s must be >= 0")

    @property
    def prompt_tokens(self) -> int:
        return self.hit_tokens + self.appended_tokens

    @property
    def total_tokens(self) -> int:
        """Context at the end of decoding: what the decode engine must hold."""
        return self.prompt_tokens + self.gen_tokens
