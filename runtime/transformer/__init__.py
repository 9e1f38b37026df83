"""A small Llama-style decoder-only transformer in torch, its weights drawn from a seed.

- :mod:`.config`: :class:`TransformerConfig` (frozen, validated), the named
  :data:`SIZES` ("tiny", "small", "base", "1b") and :func:`config_for`,
  :func:`check_fits` and :func:`device_memory_bytes`;
- :mod:`.weights`: :func:`init_weights`, bitwise the same on every machine for a config;
- :mod:`.model`: :class:`Transformer` -- ``embed``, ``layer``, ``logits``, ``prefill``,
  batched ``decode_step`` over :class:`DecodeSeq`, greedy ``generate`` -- whose results
  for a sequence are bitwise independent of its batch mates and of how its prefill is
  chunked (fixed-shape kernels, :mod:`.tiles` and :mod:`.attention`);
- :mod:`.kv`: the byte layout of K/V that the runtime stores and moves (per-layer
  ``[n, 2, kv_heads, head_dim]``, layer-major Full Blocks);
- :mod:`.tokens`: :func:`appended_tokens`, the workload's seeded token ids;
- :mod:`.reference`: :class:`Reference`, the float64 check of the engine's tokens.

It imports nothing else of this repository.
"""

from runtime.transformer.config import (
    SIZES,
    TransformerConfig,
    check_fits,
    config_for,
    device_memory_bytes,
)
from runtime.transformer.kv import (
    block_range,
    blocks_to_bytes,
    bytes_to_layers,
    layer_from_bytes,
    pack_layer,
)
from runtime.transformer.model import DecodeSeq, Transformer
from runtime.transformer.reference import NEAR_TIE, CheckResult, Reference
from runtime.transformer.tiles import Tiles
from runtime.transformer.tokens import appended_tokens
from runtime.transformer.weights import init_weights

__all__ = [
    "NEAR_TIE",
    "SIZES",
    "CheckResult",
    "DecodeSeq",
    "Reference",
    "Tiles",
    "Transformer",
    "TransformerConfig",
    "appended_tokens",
    "block_range",
    "blocks_to_bytes",
    "bytes_to_layers",
    "check_fits",
    "config_for",
    "device_memory_bytes",
    "init_weights",
    "layer_from_bytes",
    "pack_layer",
]
