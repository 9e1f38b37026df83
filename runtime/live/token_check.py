"""The model engine's tokens against a float64 recomputation of the same requests.

Every generated token of a finished request is checked: the reference computes, in
float64 and with a plain (untiled) implementation, the greedy token for the same
context. A token that differs where the reference's top two logits are at least
``NEAR_TIE`` apart is a mismatch; one that differs on a nearer tie is a near tie
(float32 rounding may decide those either way).

An agent's turns form one sequence (each turn's prompt is every earlier turn's
appended and generated tokens, then its own appended ones), so one causal pass checks
all its turns; a served request is its own sequence (its prompt ids, then its answer).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from runtime.request import Request
from runtime.transformer import Reference, TransformerConfig, appended_tokens


@dataclass(frozen=True)
class Answered:
    """A finished request as the check needs it."""

    request: Request
    generated: list[int]
    prompt_ids: list[int]  # a served prompt's ids ([]: an agent's turn, seeded)


@dataclass
class Sequence:
    """Token ids and the indices of those the engine generated."""

    tokens: list[int]
    generated: list[int]


def sequences(answered: Iterable[Answered], config: TransformerConfig,
              seed: int) -> list[Sequence]:
    """The sequences to check: one per agent (its turns in order), one per served request."""
    out: list[Sequence] = []
    turns: dict[int, list[Answered]] = defaultdict(list)
    for a in answered:
        if a.prompt_ids:
            n = len(a.prompt_ids)
            out.append(Sequence([*a.prompt_ids, *a.generated],
                                list(range(n, n + len(a.generated)))))
        else:
            turns[a.request.agent_id].append(a)
    for agent in sorted(turns):
        out.append(_agent_sequence(sorted(turns[agent], key=lambda a: a.request.turn), config,
                                   seed))
    return out


def _agent_sequence(turns: list[Answered], config: TransformerConfig, seed: int) -> Sequence:
    seq = Sequence([], [])
    for a in turns:
        req = a.request
        if req.hit_tokens != len(seq.tokens):
            raise ValueError(f"agent {req.agent_id} turn {req.turn}: hits {req.hit_tokens} "
                             f"tokens but its earlier turns hold {len(seq.tokens)} (a turn "
                             f"missing from the check?)")
        seq.tokens += appended_tokens(seed, req.agent_id, req.turn, req.appended_tokens,
                                      config.vocab)
        seq.generated += range(len(seq.tokens), len(seq.tokens) + len(a.generated))
        seq.tokens += a.generated
    return seq


def check_tokens(answered: list[Answered], config: TransformerConfig, seed: int
                 ) -> dict[str, int]:
    """``tokens_generated``, ``tokens_checked``, ``token_mismatches``, ``token_near_ties``."""
    reference = Reference(config)
    out = {"tokens_generated": sum(len(a.generated) for a in answered), "tokens_checked": 0,
           "token_mismatches": 0, "token_near_ties": 0}
    for seq in sequences(answered, config, seed):
        if not seq.generated:
            continue
        result = reference.check(seq.tokens, seq.generated)
        out["tokens_checked"] += result.checked
        out["token_mismatches"] += result.mismatches
        out["token_near_ties"] += result.near_ties
    return out
