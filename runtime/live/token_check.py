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

import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import torch

from runtime.request import Request
from runtime.transformer import CheckResult, Reference, TransformerConfig, appended_tokens


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
    """``tokens_generated``, ``tokens_checked``, ``token_mismatches``, ``token_near_ties``.

    Sequences are checked in parallel, one process per core (longest first), each
    computing single-threaded: the passes are independent and the run is over."""
    seqs = sorted((s for s in sequences(answered, config, seed) if s.generated),
                  key=lambda s: -len(s.tokens))
    workers = min(len(seqs), os.cpu_count() or 1)
    if workers <= 1 or sum(len(s.tokens) for s in seqs) < IN_PROCESS_TOKENS:
        _start(config)
        results = [_check(seq) for seq in seqs]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_start, initargs=(config,)) as pool:
            results = list(pool.map(_check, seqs))
    return {"tokens_generated": sum(len(a.generated) for a in answered),
            "tokens_checked": sum(r.checked for r in results),
            "token_mismatches": sum(r.mismatches for r in results),
            "token_near_ties": sum(r.near_ties for r in results)}


#: Below this many tokens in all, starting processes costs more than it saves.
IN_PROCESS_TOKENS = 50_000
_REFERENCE: list[Reference] = []  # the checking process's reference model


def _start(config: TransformerConfig) -> None:
    torch.set_num_threads(1)
    _REFERENCE[:] = [Reference(config)]


def _check(seq: Sequence) -> CheckResult:
    return _REFERENCE[0].check(seq.tokens, seq.generated)
