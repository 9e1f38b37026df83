"""The transformer's shape: a frozen, validated config, the named sizes, and whether a
size fits a device's memory.

Everything here is arithmetic on the config (no tensor is allocated), so callers can
size KV buffers and refuse a model that does not fit before any weight exists.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}

# Weights may take at most 1 / FIT_MARGIN of a device's memory: the rest is left to
# activations, the KV a step touches and the allocator's slack.
FIT_MARGIN = 1.25

# The named sizes (chosen here; vocab stays the byte tokenizer's 256 ids everywhere).
# "tiny": CPU and CI; "small": a quick CPU model; "base": ~135M parameters; "1b": the
# shape of Llama-3.2-1B (its vocab aside), ~0.97e9 parameters with vocab 256.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"dim": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn_dim": 176,
             "max_context": 65536},
    "small": {"dim": 256, "layers": 4, "heads": 8, "kv_heads": 2, "ffn_dim": 688,
              "max_context": 65536},
    "base": {"dim": 1024, "layers": 12, "heads": 16, "kv_heads": 4, "ffn_dim": 2816,
             "max_context": 131072},
    "1b": {"dim": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "ffn_dim": 8192,
           "max_context": 131072, "rope_theta": 500000.0},
}


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"TransformerConfig.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """A Llama-style decoder-only transformer: RMSNorm, rotary positions, grouped-query
    attention (``heads`` query heads share ``kv_heads`` K/V heads), SwiGLU MLP, untied
    embedding and output head. ``seed`` fixes every weight (see :mod:`.weights`).
    Keyword-only; ``vocab`` defaults to the byte tokenizer's 256 ids."""

    vocab: int = 256
    dim: int
    layers: int
    heads: int
    kv_heads: int
    ffn_dim: int
    max_context: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("dim", "layers", "heads", "kv_heads", "ffn_dim", "max_context", "vocab"):
            _positive(name, getattr(self, name))
        if self.heads % self.kv_heads:
            raise ValueError(f"TransformerConfig.heads ({self.heads}) must be a multiple of "
                             f"kv_heads ({self.kv_heads})")
        if self.dim % self.heads:
            raise ValueError(f"TransformerConfig.dim ({self.dim}) must be a multiple of "
                             f"heads ({self.heads})")
        if self.head_dim % 2:
            raise ValueError(f"TransformerConfig head_dim = dim / heads = {self.head_dim} "
                             "must be even (rotary embeddings rotate pairs)")
        if not self.rope_theta > 1.0:
            raise ValueError(f"TransformerConfig.rope_theta must be > 1, got {self.rope_theta!r}")
        if not self.norm_eps > 0.0:
            raise ValueError(f"TransformerConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TransformerConfig.seed must be an integer >= 0, got {self.seed!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TransformerConfig.dtype {self.dtype!r} is not one of "
                             f"{sorted(DTYPES)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def itemsize(self) -> int:
        return self.torch_dtype.itemsize

    @property
    def layer_kv_bytes_per_token(self) -> int:
        """One layer's K then V of one token: ``2 * kv_heads * head_dim * itemsize``."""
        return 2 * self.kv_heads * self.head_dim * self.itemsize

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.layer_kv_bytes_per_token

    @property
    def params(self) -> int:
        """Parameter count (embedding and output head untied), computed, not allocated."""
        attn = self.dim * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        layer = 2 * self.dim + attn + 3 * self.dim * self.ffn_dim
        return 2 * self.vocab * self.dim + self.dim + self.layers * layer

    @property
    def weight_bytes(self) -> int:
        return self.params * self.itemsize


def config_for(size: str, **overrides: Any) -> TransformerConfig:
    """The config of a named size (:data:`SIZES`), any field overridden by keyword."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known sizes: {', '.join(SIZES)}")
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown TransformerConfig field(s) {unknown}; fields: {sorted(fields)}")
    return TransformerConfig(**{**SIZES[size], **overrides})


def size_name(config: TransformerConfig) -> str:
    """The name of the size whose shape ``config`` has, or a description of its shape."""
    for name, shape in SIZES.items():
        if all(getattr(config, key) == value for key, value in shape.items()
               if key != "max_context"):
            return name
    return f"dim {config.dim} x {config.layers} layers"


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_fits(config: TransformerConfig, memory_bytes: int, *, where: str) -> None:
    """Refuse (``ValueError``) a model whose weights, times :data:`FIT_MARGIN`, exceed
    ``memory_bytes`` of the device described by ``where``."""
    need = config.weight_bytes * FIT_MARGIN
    if need > memory_bytes:
        raise ValueError(
            f"model size {size_name(config)!r} needs {_gb(config.weight_bytes)} of weights in "
            f"{config.dtype} ({_gb(need)} with the {FIT_MARGIN:g}x margin for activations and "
            f"KV) but {where} has {_gb(memory_bytes)}")


def device_memory_bytes(device: str | torch.device) -> int:
    """Total memory of ``device``: a CUDA device's memory, or the host's physical RAM."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    if dev.type == "cpu":
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    raise ValueError(f"device_memory_bytes: device type {dev.type!r} is not cuda or cpu")
