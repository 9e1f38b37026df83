"""Seeded weights: the same config gives bitwise the same weights on every machine.

Each tensor comes from its own ``torch.Generator`` on the CPU, seeded by a blake2b hash
of ``(config.seed, tensor name)``, so a tensor never depends on which others were drawn
before it (adding a layer leaves the others unchanged). The draw is ``torch.rand`` in
float32 -- a serial Mersenne-Twister stream turned into floats by integer arithmetic, the
same on every CPU -- mapped by exact IEEE operations onto a uniform distribution of the
wanted standard deviation, then cast to ``config.torch_dtype``. (A normal draw would go
through vectorised log/cos whose last bits differ between CPU kinds.)

Scales keep activations O(1) through the layers: every projection has standard deviation
``1 / sqrt(fan_in)`` (Q and K :data:`QK_GAIN` times that), the embedding 1, the norms'
weights are ones. The output head has
``LOGIT_GAIN / sqrt(dim)`` so that logits (of a unit-RMS final state) spread by about
``LOGIT_GAIN``: greedy decoding then has clear winners (near ties are rare).

Each projection is stored ``[in_features, out_features]``, so a layer computes
``x @ w``.
"""

from __future__ import annotations

import hashlib
import math

import torch

from runtime.transformer.config import TransformerConfig

LOGIT_GAIN = 3.0
# Q and K projections are QK_GAIN times larger (scores spread ~QK_GAIN**2): attention
# then singles out a few keys, so greedy generations follow their context instead of
# settling into short loops (measured on the tiny size: about 70 distinct tokens in 100
# generated, against about 45 at gain 1).
QK_GAIN = 2.0
# A uniform distribution on [-a, a] has standard deviation a / sqrt(3).
_UNIFORM_HALF_WIDTH = math.sqrt(3.0)


def weight_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every weight's name and shape, in a fixed order."""
    d, hd = config.dim, config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"embed": (config.vocab, d)}
    for i in range(config.layers):
        shapes.update({
            f"layers.{i}.attn_norm": (d,),
            f"layers.{i}.wq": (d, config.heads * hd),
            f"layers.{i}.wk": (d, config.kv_heads * hd),
            f"layers.{i}.wv": (d, config.kv_heads * hd),
            f"layers.{i}.wo": (config.heads * hd, d),
            f"layers.{i}.ffn_norm": (d,),
            f"layers.{i}.w_gate": (d, config.ffn_dim),
            f"layers.{i}.w_up": (d, config.ffn_dim),
            f"layers.{i}.w_down": (config.ffn_dim, d),
        })
    shapes.update({"norm": (d,), "lm_head": (d, config.vocab)})
    return shapes


def tensor_seed(seed: int, name: str) -> int:
    """The generator seed of tensor ``name`` for model seed ``seed`` (63 bits)."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _std(name: str, shape: tuple[int, ...]) -> float:
    if name == "embed":
        return 1.0
    if name == "lm_head":
        return LOGIT_GAIN / math.sqrt(shape[0])
    if name.endswith((".wq", ".wk")):
        return QK_GAIN / math.sqrt(shape[0])
    return 1.0 / math.sqrt(shape[0])  # a projection [fan_in, fan_out]


def init_weights(config: TransformerConfig) -> dict[str, torch.Tensor]:
    """All weights of ``config`` (names as :func:`weight_shapes`), on the CPU, in its dtype."""
    weights = {}
    for name, shape in weight_shapes(config).items():
        if name.endswith("norm"):
            weights[name] = torch.ones(shape, dtype=config.torch_dtype)
            continue
        gen = torch.Generator(device="cpu").manual_seed(tensor_seed(config.seed, name))
        unit = torch.rand(shape, generator=gen, dtype=torch.float32)  # [0, 1)
        half_width = _UNIFORM_HALF_WIDTH * _std(name, shape)
        weights[name] = ((unit * 2.0 - 1.0) * half_width).to(config.torch_dtype)
    return weights
