"""The float64 reference: the independent check of the engine's tokens.

Built from the same config, it draws the same weights (:func:`.weights.init_weights`,
cast to float64) and computes in float64 on the CPU with a plain implementation that
shares nothing with the engine's tiled kernels: whole-row matmuls and softmax, K/V
heads repeated for grouped-query attention, rotary embeddings as complex rotations.
One causal pass runs over a sequence in chunks of query tokens (so the score matrix
stays bounded for 32K+ tokens), keeping every layer's K/V.

:meth:`Reference.check` compares the tokens an engine generated with the reference's
greedy choices: a token that differs where the reference's top two logits are at least
:data:`NEAR_TIE` apart is a mismatch; one that differs on a nearer tie is a near tie
(float32 rounding may legitimately flip those).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from runtime.transformer.config import TransformerConfig
from runtime.transformer.weights import init_weights

NEAR_TIE = 1e-4
# Score elements (heads x queries x keys) one chunk may hold: 2**24 float64 = 128 MiB.
SCORE_BUDGET = 1 << 24


@dataclass(frozen=True)
class CheckResult:
    """Over ``checked`` positions: ``mismatches`` (a token other than the reference's,
    whose top two logits were at least NEAR_TIE apart) and ``near_ties`` (other, nearer)."""

    checked: int
    mismatches: int
    near_ties: int


class Reference:
    """The float64 model of ``config`` (see the module docstring)."""

    def __init__(self, config: TransformerConfig, *, chunk: int = 256):
        if chunk <= 0:
            raise ValueError(f"Reference chunk must be positive, got {chunk}")
        self.config, self.chunk = config, chunk
        self.w = {name: t.to(torch.float64) for name, t in init_weights(config).items()}
        half = config.head_dim // 2
        self.inv_freq = config.rope_theta ** (
            -torch.arange(half, dtype=torch.float64) * 2.0 / config.head_dim)

    def teacher_forced(self, tokens: Sequence[int],
                       positions: Sequence[int]) -> list[tuple[int, float]]:
        """For each ``p`` of ``positions`` (``1 <= p <= len(tokens)``): the reference's
        greedy token after ``tokens[:p]`` and the gap between its top two logits."""
        if any(not 1 <= p <= len(tokens) for p in positions):
            raise ValueError(f"teacher_forced: positions must be in 1 .. {len(tokens)}")
        if any(not 0 <= t < self.config.vocab for t in tokens):
            raise ValueError(f"teacher_forced: token ids must be in [0, {self.config.vocab})")
        if not positions:
            return []
        end = max(positions)
        ids = torch.tensor(list(tokens[:end]), dtype=torch.int64)
        rows = torch.tensor(sorted({p - 1 for p in positions}), dtype=torch.int64)
        found = dict(zip(rows.tolist(), self._pass(ids, rows), strict=True))
        return [found[p - 1] for p in positions]

    def check(self, tokens: Sequence[int], positions: Sequence[int]) -> CheckResult:
        """Count mismatches and near ties of ``tokens[p]`` for ``p`` in ``positions``
        (each ``1 <= p < len(tokens)``: the index of a generated token)."""
        if any(not 1 <= p < len(tokens) for p in positions):
            raise ValueError(f"check: positions must be in 1 .. {len(tokens) - 1}")
        mismatches = near_ties = 0
        for p, (token, gap) in zip(positions, self.teacher_forced(tokens, positions),
                                   strict=True):
            if tokens[p] != token:
                if gap >= NEAR_TIE:
                    mismatches += 1
                else:
                    near_ties += 1
        return CheckResult(len(positions), mismatches, near_ties)

    # -- the pass -------------------------------------------------------------------------

    def _pass(self, ids: torch.Tensor, rows: torch.Tensor) -> list[tuple[int, float]]:
        """Greedy token and top-two gap after each row index ``rows`` (sorted) of ``ids``."""
        cfg, n = self.config, ids.shape[0]
        step = max(1, min(self.chunk, SCORE_BUDGET // (cfg.heads * n)))
        cache: list[list[torch.Tensor]] = [[torch.empty(0, cfg.kv_heads, cfg.head_dim,
                                                        dtype=torch.float64)] * 2
                                           for _ in range(cfg.layers)]
        out: list[tuple[int, float]] = []
        for start in range(0, n, step):
            stop = min(start + step, n)
            x = self._forward(ids[start:stop], start, cache)
            wanted = rows[(rows >= start) & (rows < stop)]
            if len(wanted):
                top = torch.topk(self._logits(x[wanted - start]), 2, dim=-1)
                gaps = (top.values[:, 0] - top.values[:, 1]).tolist()
                out += list(zip(top.indices[:, 0].tolist(), gaps, strict=True))
        return out

    def _forward(self, ids: torch.Tensor, start: int,
                 cache: list[list[torch.Tensor]]) -> torch.Tensor:
        """Hidden states after all layers of tokens ``ids`` at ``start ..``; appends
        their K/V to ``cache``."""
        x = self.w["embed"][ids]
        positions = torch.arange(start, start + ids.shape[0], dtype=torch.float64)
        for i in range(self.config.layers):
            x = self._layer(i, x, positions, cache[i])
        return x

    def _layer(self, i: int, x: torch.Tensor, positions: torch.Tensor,
               cache: list[torch.Tensor]) -> torch.Tensor:
        cfg, w, p = self.config, self.w, f"layers.{i}."
        n, hd = x.shape[0], cfg.head_dim
        h = self._norm(x, w[p + "attn_norm"])
        q = self._rotate((h @ w[p + "wq"]).view(n, cfg.heads, hd), positions)
        k = self._rotate((h @ w[p + "wk"]).view(n, cfg.kv_heads, hd), positions)
        v = (h @ w[p + "wv"]).view(n, cfg.kv_heads, hd)
        cache[0], cache[1] = torch.cat([cache[0], k]), torch.cat([cache[1], v])
        group = cfg.heads // cfg.kv_heads
        keys = cache[0].repeat_interleave(group, dim=1).transpose(0, 1)  # [heads, L, hd]
        values = cache[1].repeat_interleave(group, dim=1).transpose(0, 1)
        scores = q.transpose(0, 1) @ keys.transpose(1, 2) / hd ** 0.5  # [heads, n, L]
        key_pos = torch.arange(keys.shape[1], dtype=torch.float64)
        scores = scores.masked_fill(key_pos[None, None, :] > positions[None, :, None],
                                    float("-inf"))
        att = (torch.softmax(scores, dim=-1) @ values).transpose(0, 1).reshape(n, cfg.dim)
        x = x + att @ w[p + "wo"]
        h = self._norm(x, w[p + "ffn_norm"])
        ffn = torch.nn.functional.silu(h @ w[p + "w_gate"]) * (h @ w[p + "w_up"])
        return x + ffn @ w[p + "w_down"]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.norm_eps) * weight

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary embedding as the complex product of pairs (x_j, x_{j + hd/2}) with
        ``exp(i * position * inv_freq_j)``."""
        half = x.shape[-1] // 2
        pairs = torch.complex(x[..., :half], x[..., half:])
        turn = torch.polar(torch.ones_like(self.inv_freq[None, :]),
                           positions[:, None] * self.inv_freq[None, :])
        rotated = pairs * turn[:, None, :]
        return torch.cat([rotated.real, rotated.imag], dim=-1)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x, self.w["norm"]) @ self.w["lm_head"]
