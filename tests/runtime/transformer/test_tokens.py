"""Seeded token ids of an agent's turn."""

from __future__ import annotations

import pytest

from runtime.transformer.tokens import appended_tokens


def test_pinned_values_and_determinism() -> None:
    # Pinned: blake2b makes these the same on every machine and numpy version.
    assert appended_tokens(0, 0, 0, 12, 256) == [94, 51, 110, 125, 53, 2, 115, 100, 142, 149,
                                                  3, 53]
    assert appended_tokens(7, 3, 2, 5, 1000) == [802, 730, 651, 516, 42]
    assert appended_tokens(1, 2, 3, 40, 256) == appended_tokens(1, 2, 3, 40, 256)


def test_range_prefixes_and_independence() -> None:
    ids = appended_tokens(5, 1, 9, 5000, 256)
    assert len(ids) == 5000 and min(ids) == 0 and max(ids) == 255
    assert len(set(ids)) == 256  # every byte id shows up
    assert appended_tokens(5, 1, 9, 17, 256) == ids[:17]  # shorter runs are prefixes
    others = [appended_tokens(6, 1, 9, 50, 256), appended_tokens(5, 2, 9, 50, 256),
              appended_tokens(5, 1, 8, 50, 256)]
    assert all(o != ids[:50] for o in others)
    assert all(0 <= t < 7 for t in appended_tokens(5, 1, 9, 300, 7))
    assert appended_tokens(0, 0, 0, 0, 256) == []


@pytest.mark.parametrize(("args", "name"), [
    ((-1, 0, 0, 3, 256), "seed"), ((0, -1, 0, 3, 256), "agent"),
    ((0, 0, -1, 3, 256), "turn"), ((0, 0, 0, -3, 256), "n"), ((0, 0, 0, 3, 0), "vocab"),
])
def test_bad_arguments(args: tuple[int, ...], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        appended_tokens(*args)
