"""Rotary position embeddings (RoPE, the "rotate half" layout of Llama).

The cosines and sines of every position up to ``max_context`` are computed once, in
float64, and stored in the compute dtype; a token at position ``p`` is rotated by row
``p`` of that table with exactly rounded multiplies and adds, so its rotated Q and K are
the same bits whichever chunk or batch it comes in.
"""

from __future__ import annotations

import torch

from runtime.transformer.config import TransformerConfig


def angles(config: TransformerConfig, positions: torch.Tensor) -> torch.Tensor:
    """Rotation angles [len(positions), head_dim / 2] in float64."""
    half = config.head_dim // 2
    exponents = torch.arange(half, dtype=torch.float64) * 2.0 / config.head_dim
    inv_freq = config.rope_theta ** -exponents
    return positions.to(torch.float64)[:, None] * inv_freq[None, :]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [n, heads, head_dim] by per-token ``cos``/``sin`` [n, head_dim / 2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class Rotary:
    """The cos/sin table of one model, on its device, in ``dtype``."""

    def __init__(self, config: TransformerConfig, device: torch.device, dtype: torch.dtype):
        theta = angles(config, torch.arange(config.max_context))
        self.max_context = config.max_context
        self.cos = torch.cos(theta).to(device=device, dtype=dtype)
        self.sin = torch.sin(theta).to(device=device, dtype=dtype)

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` [n, heads, head_dim] rotated for ``positions`` [n] (in ``x``'s dtype)."""
        cos, sin = self.cos[positions], self.sin[positions]
        return rotate(x.to(cos.dtype), cos, sin).to(x.dtype)
