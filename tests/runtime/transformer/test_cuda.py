"""On a GPU (skipped without one): the same bitwise invariance with the GPU's default
tiles (fixed key-tile batches, all K/V heads at once), and agreement with the reference.
"""

from __future__ import annotations

import random

import pytest
import torch

from runtime.transformer.config import config_for
from runtime.transformer.model import KV, DecodeSeq, Transformer
from runtime.transformer.reference import CheckResult, Reference
from runtime.transformer.tiles import Tiles

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _grow(kv: list[KV], new: list[KV]) -> list[KV]:
    return [(torch.cat([pk, k]), torch.cat([pv, v]))
            for (pk, pv), (k, v) in zip(kv, new, strict=True)]


def _same(a: list[KV], b: list[KV]) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("dtype", "tiles"), [
    ("float32", None), ("bfloat16", None),
    ("float32", Tiles(rows=4, attn_rows=4, keys=8, key_batch=2)),
])
def test_invariance_on_cuda(dtype: str, tiles: Tiles | None) -> None:
    model = Transformer(config_for("tiny", dtype=dtype, max_context=4096), device="cuda",
                        tiles=tiles)
    rng = random.Random(0)
    tokens = [rng.randrange(256) for _ in range(2100)]
    whole_logits, whole_kv = model.prefill(tokens)
    for sizes in ([1, 2099], [1000, 1100], [1023, 2, 1075], [7, 300, 1793]):
        kv, at = [model.empty_kv() for _ in range(model.config.layers)], 0
        for size in sizes:
            logits, new = model.prefill(tokens[at:at + size], kv)
            kv, at = _grow(kv, new), at + size
        assert torch.equal(logits, whole_logits) and _same(kv, whole_kv), sizes
    lengths = (5, 40, 300, 1030)
    seqs = [DecodeSeq(tokens[n], n, model.prefill(tokens[:n])[1]) for n in lengths]
    alone = [model.decode_step([s]) for s in seqs]
    batch_logits, batch_kv = model.decode_step(seqs[::-1] + seqs)
    for j in range(len(seqs)):
        for row in (len(seqs) - 1 - j, len(seqs) + j):
            assert torch.equal(batch_logits[row], alone[j][0][0])
            assert _same(batch_kv[row], alone[j][1][0])
        logits, kv = model.prefill([seqs[j].token], seqs[j].past)
        assert torch.equal(logits, alone[j][0][0]) and _same(kv, alone[j][1][0])


def test_cuda_generation_agrees_with_the_reference() -> None:
    config = config_for("tiny", max_context=4096)
    model = Transformer(config, device="cuda")
    prompt = [random.Random(1).randrange(256) for _ in range(40)]
    tokens = prompt + model.generate(prompt, 300)
    assert Reference(config).check(tokens, list(range(40, 340))) == CheckResult(300, 0, 0)
