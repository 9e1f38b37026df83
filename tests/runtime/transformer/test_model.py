"""The transformer's pieces: seeded weights, embedding, layer contract, generation."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
import torch

from runtime.transformer.config import config_for
from runtime.transformer.model import DecodeSeq, Transformer
from runtime.transformer.tiles import Tiles, halving_sum, row_sum, tree_sum
from runtime.transformer.weights import init_weights, weight_shapes

CONFIG = config_for("tiny", max_context=2048)
# sha256 over (name, float32 bytes) of the tiny size's weights, names sorted: pins that
# every machine (and every later run) draws the same weights.
TINY_WEIGHTS_SHA256 = "8b27a76188bbe8b5c52e10caf7778f3affdf21c0a5e3ad095eb0cddc13f4e48f"


def _digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].numpy().tobytes())
    return h.hexdigest()


def test_weights_are_reproducible_and_pinned() -> None:
    a, b = init_weights(CONFIG), init_weights(CONFIG)
    assert list(a) == list(weight_shapes(CONFIG))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert _digest(init_weights(config_for("tiny"))) == TINY_WEIGHTS_SHA256
    other = init_weights(config_for("tiny", seed=1))
    assert not torch.equal(a["layers.0.wq"], other["layers.0.wq"])
    # A tensor depends on its name and the seed only, not on which others exist.
    deeper = init_weights(config_for("tiny", layers=3))
    assert torch.equal(deeper["layers.1.w_up"], a["layers.1.w_up"])
    assert not torch.equal(a["layers.0.w_up"], a["layers.1.w_up"])


def test_weights_dtype_and_scale() -> None:
    w = init_weights(config_for("tiny", dtype="bfloat16"))
    assert all(t.dtype == torch.bfloat16 for t in w.values())
    w = init_weights(CONFIG)
    assert torch.equal(w["norm"], torch.ones(64))
    assert abs(float(w["embed"].std()) - 1.0) < 0.05
    for name in ("layers.0.wv", "layers.0.wo", "layers.1.w_down"):
        fan_in = w[name].shape[0]
        assert abs(float(w[name].std()) * math.sqrt(fan_in) - 1.0) < 0.05, name


def test_activations_stay_order_one_and_logits_spread() -> None:
    model = Transformer(config_for("small", max_context=512))
    x = model.embed(list(range(0, 256, 2)))
    positions = torch.arange(128)
    for i in range(model.config.layers):
        x, _, _ = model.layer(i, x, positions, *model.empty_kv())
        rms = float(x.pow(2).mean().sqrt())
        assert 0.5 < rms < 10, (i, rms)
    logits = model.logits(x)
    assert logits.shape == (128, 256) and logits.dtype == torch.float32
    top = torch.topk(logits, 2).values
    assert 1.5 < float(logits.std()) < 6
    assert float((top[:, 0] - top[:, 1]).min()) > 1e-4


def test_embed_refuses_ids_outside_the_vocab() -> None:
    model = Transformer(CONFIG)
    assert model.embed([0, 255]).shape == (2, 64)
    with pytest.raises(ValueError, match=r"token id 256 is outside \[0, 256\)"):
        model.embed([3, 256, 4])
    with pytest.raises(ValueError, match="token id -1"):
        model.embed(torch.tensor([-1]))
    with pytest.raises(ValueError, match="token id 999"):
        model.prefill([1, 999])


def test_layer_contract() -> None:
    model = Transformer(CONFIG)
    x = model.embed([1, 2, 3])
    out, k, v = model.layer(0, x, torch.arange(3), *model.empty_kv())
    assert out.shape == (3, 64) and k.shape == v.shape == (3, 2, 16)
    out2, k2, v2 = model.layer(0, x[2:], torch.tensor([2]), k[:2], v[:2])
    assert torch.equal(out2, out[2:]) and torch.equal(k2, k[2:]) and torch.equal(v2, v[2:])
    with pytest.raises(ValueError, match=r"positions must be 2 \.\. 2"):
        model.layer(0, x[2:], torch.tensor([5]), k[:2], v[:2])
    with pytest.raises(ValueError, match="layer 2 is outside 0 .. 1"):
        model.layer(2, x, torch.arange(3), *model.empty_kv())
    with pytest.raises(ValueError, match="past K/V shapes"):
        model.layer(0, x, torch.arange(3), k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="max_context"):
        model.prefill([1] * 2049)


def test_decode_step_contract() -> None:
    model = Transformer(CONFIG)
    _, kv = model.prefill([5, 6, 7])
    logits, new = model.decode_step([DecodeSeq(8, 3, kv), DecodeSeq(9, 3, kv)])
    assert logits.shape == (2, 256) and len(new) == 2 and len(new[0]) == CONFIG.layers
    assert new[0][0][0].shape == (1, 2, 16)
    with pytest.raises(ValueError, match="sequence 0, layer 0: past K/V shapes"):
        model.decode_step([DecodeSeq(8, 4, kv)])
    with pytest.raises(ValueError, match="at least one"):
        model.decode_step([])
    with pytest.raises(ValueError, match="sequence 0: past has 1 layers"):
        model.decode_step([DecodeSeq(8, 3, kv[:1])])


def test_weights_given_are_checked_and_used() -> None:
    weights = init_weights(CONFIG)
    model = Transformer(CONFIG, weights=weights)
    assert torch.equal(model.w["lm_head"], weights["lm_head"])
    with pytest.raises(ValueError, match="missing \\['norm'\\]"):
        Transformer(CONFIG, weights={k: t for k, t in weights.items() if k != "norm"})
    with pytest.raises(ValueError, match="weights\\['embed'\\] has shape"):
        Transformer(CONFIG, weights={**weights, "embed": torch.zeros(3, 3)})


def test_generation_is_greedy_deterministic_and_varied() -> None:
    model = Transformer(CONFIG)
    rng = random.Random(0)
    prompt = [rng.randrange(256) for _ in range(16)]
    out = model.generate(prompt, 100)
    assert out == model.generate(prompt, 100) and len(out) == 100
    assert len(set(out)) > 30  # not stuck on one token or a short loop
    logits, _ = model.prefill(prompt + out[:10])
    assert int(torch.argmax(logits)) == out[10]


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_other_dtypes_run_and_keep_their_kv_dtype(dtype: str) -> None:
    config = config_for("tiny", dtype=dtype, max_context=256)
    model = Transformer(config, tiles=Tiles(keys=16))
    logits, kv = model.prefill(list(range(40)))
    assert logits.dtype == torch.float32 and kv[0][0].dtype == config.torch_dtype
    reference = Transformer(config_for("tiny", max_context=256), tiles=Tiles(keys=16))
    close = torch.allclose(logits, reference.prefill(list(range(40)))[0], atol=0.5)
    assert close, dtype


def test_tiles_and_tree_sum() -> None:
    with pytest.raises(ValueError, match="Tiles.keys must be an integer >= 1, got 0"):
        Tiles(keys=0)
    with pytest.raises(ValueError, match="Tiles.key_batch must be an integer >= 0, got -1"):
        Tiles(key_batch=-1)
    assert Tiles.for_device("cpu") == Tiles()
    assert Tiles.for_device("cuda:0").key_batch > 0 and Tiles.for_device("cuda").all_heads
    with pytest.raises(ValueError, match="all_heads must be a bool"):
        Tiles(all_heads=1)  # type: ignore[arg-type]
    x = torch.arange(5.0)[:, None]
    assert float(tree_sum(x)[0]) == 10.0
    assert torch.equal(tree_sum(torch.arange(6.0).view(2, 3), dim=-1), torch.tensor([3., 12.]))
    rows = torch.randn(7, 37, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(row_sum(rows), rows.sum(-1), atol=1e-5)
    assert torch.equal(row_sum(rows[2:3])[0], row_sum(rows)[2])  # a lone row: the same bits
    assert row_sum(torch.ones(2, 3, 5)).shape == (2, 3)
    assert torch.allclose(halving_sum(rows), rows.sum(-1), atol=1e-5)
    assert float(halving_sum(torch.tensor([1.0, 2.0, 3.0]))) == 6.0
    values = torch.randn(5, 3)
    padded = torch.cat([values, torch.zeros(6, 3)])
    assert torch.equal(tree_sum(values), tree_sum(padded))  # zeros past the end: no change
