"""A request: one turn of an agent, or one line of a trace."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.slo import CLASSES, INTERACTIVE
from runtime.slots import slot_init


@slot_init
@dataclass(frozen=True, slots=True)
class Request:
    """One prefill+decode job.

    ``hit_tokens`` of the prompt have KV in storage and are loaded;
    ``appended_tokens`` are computed by prefill; ``gen_tokens`` are generated
    (the first by the prefill engine, the rest by the decode engine).
    ``request_id`` is unique within a run. ``block_hashes`` name the prompt's
    blocks (chained; see :mod:`runtime.cache.prefix`), ``slo_class`` its latency
    class (:mod:`runtime.slo`).
    """

    request_id: int
    agent_id: int
    turn: int
    hit_tokens: int
    appended_tokens: int
    gen_tokens: int
    arrival_s: float
    block_hashes: tuple[int, ...] | None = None
    slo_class: str = INTERACTIVE
    # Derived, stored once: the simulator, the encoder and the policies read them
    # many times per request, and a property call costs several attribute reads.
    #: Prompt length: hit plus appended tokens.
    prompt_tokens: int = field(init=False, repr=False, compare=False)
    #: Context at the end of decoding: what the decode engine must hold.
    total_tokens: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hit_tokens < 0 or self.appended_tokens < 0:
            raise ValueError(f"request {self.request_id}: token counts must be >= 0")
        if self.appended_tokens + self.hit_tokens <= 0:
            raise ValueError(f"request {self.request_id}: empty prompt")
        if self.gen_tokens < 1:
            raise ValueError(f"request {self.request_id}: gen_tokens must be >= 1")
        if self.arrival_s < 0:
            raise ValueError(f"request {self.request_id}: arrival_s must be >= 0")
        if self.slo_class is not INTERACTIVE and self.slo_class not in CLASSES:
            raise ValueError(f"request {self.request_id}: unknown latency class "
                             f"{self.slo_class!r}; choose one of {', '.join(CLASSES)}")
        prompt = self.hit_tokens + self.appended_tokens
        object.__setattr__(self, "prompt_tokens", prompt)
        object.__setattr__(self, "total_tokens", prompt + self.gen_tokens)

