"""The float64 reference agrees with the float32 engine's greedy tokens."""

from __future__ import annotations

import random

import pytest
import torch

from runtime.transformer.config import config_for
from runtime.transformer.model import Transformer
from runtime.transformer.reference import NEAR_TIE, CheckResult, Reference
from runtime.transformer.tiles import Tiles
from runtime.transformer.tokens import appended_tokens

TINY = config_for("tiny", max_context=8192)


def _prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(256) for _ in range(n)]


@pytest.mark.parametrize(("size", "tiles", "prompt", "new"), [
    ("tiny", Tiles(), 40, 300),
    ("tiny", Tiles(rows=4, attn_rows=3, keys=16), 20, 300),
    ("tiny", Tiles(), 2500, 40),  # a context across the default key tiles
    ("small", Tiles(), 30, 150),
])
def test_engine_generation_agrees_with_the_reference(size: str, tiles: Tiles, prompt: int,
                                                     new: int) -> None:
    config = config_for(size, max_context=8192)
    engine = Transformer(config, tiles=tiles)
    tokens = _prompt(prompt, prompt + new)
    tokens += engine.generate(tokens, new)  # prefill, then decode steps
    generated = list(range(prompt, len(tokens)))
    result = Reference(config).check(tokens, generated)
    assert result == CheckResult(checked=new, mismatches=0, near_ties=0)


def test_a_wrong_token_is_a_mismatch() -> None:
    engine, reference = Transformer(TINY), Reference(TINY)
    tokens = _prompt(30, 1)
    tokens += engine.generate(tokens, 20)
    wrong = list(tokens)
    wrong[40] = (wrong[40] + 1) % 256
    assert reference.check(wrong, [40]) == CheckResult(1, 1, 0)
    assert reference.check(wrong, list(range(30, 40))) == CheckResult(10, 0, 0)


def test_a_difference_on_a_near_tie_is_not_a_mismatch() -> None:
    class Tied(Reference):
        def teacher_forced(self, tokens, positions):  # type: ignore[no-untyped-def]
            return [((tokens[p] + 1) % 256, NEAR_TIE / 2) for p in positions]

    assert Tied(TINY).check([1, 2, 3, 4], [1, 3]) == CheckResult(2, 0, 2)


def test_teacher_forced_matches_engine_logits_and_is_chunk_invariant() -> None:
    engine = Transformer(TINY)
    tokens = appended_tokens(3, 1, 2, 600, 256)
    positions = [1, 17, 255, 256, 599, 600]
    a = Reference(TINY).teacher_forced(tokens, positions)
    b = Reference(TINY, chunk=7).teacher_forced(tokens, positions)
    assert [t for t, _ in a] == [t for t, _ in b]
    assert all(abs(x - y) < 1e-9 for (_, x), (_, y) in zip(a, b, strict=True))
    for p, (token, gap) in zip(positions, a, strict=True):
        logits = engine.prefill(tokens[:p])[0]
        top = torch.topk(logits.double(), 2).values
        assert int(torch.argmax(logits)) == token
        assert abs(float(top[0] - top[1]) - gap) < 1e-3


def test_positions_are_checked() -> None:
    reference = Reference(TINY)
    assert reference.teacher_forced([1, 2], []) == []
    with pytest.raises(ValueError, match="positions must be in 1 .. 2"):
        reference.teacher_forced([1, 2], [0])
    with pytest.raises(ValueError, match="positions must be in 1 .. 1"):
        reference.check([1, 2], [2])
    with pytest.raises(ValueError, match="token ids"):
        reference.teacher_forced([1, 300], [1])
