"""The model being served: what one token costs in bytes, FLOPs and decode time."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from runtime.errors import require


@dataclass(frozen=True)
class ModelSpec:
    """A served model, as far as scheduling cares.

    Prefill cost per new token is ``dense + attention(context) + indexer(context)``
    FLOPs; attention is over ``min(context, attn_window_tokens)`` tokens when the
    model attends sparsely (``attn_window_tokens > 0``) and over the whole
    context otherwise. The achieved share of the GPU's peak grows with the number
    of tokens in a batch, given as ``prefill_efficiency``: pairs of (batch tokens,
    efficiency), interpolated linearly and held flat outside the table.

    One decode iteration over a batch costs ``decode_base_s + decode_per_seq_s *
    batch + decode_per_ctx_token_s * context tokens in the batch``.
    """

    name: str
    layers: int
    kv_bytes_per_token: int
    dense_flops_per_token: float
    attn_flops_per_ctx_token: float
    attn_window_tokens: int = 0
    indexer_flops_per_ctx_token: float = 0.0
    prefill_efficiency: tuple[tuple[float, float], ...] = ((1.0, 0.5),)
    decode_base_s: float = 0.03
    decode_per_seq_s: float = 0.0
    decode_per_ctx_token_s: float = 0.0
    _eff_x: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _eff_y: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require(bool(self.name), "model.name", "must not be empty")
        require(self.layers > 0, "model.layers", f"must be > 0, got {self.layers}")
        require(self.kv_bytes_per_token > 0, "model.kv_bytes_per_token",
                f"must be > 0, got {self.kv_bytes_per_token}")
        require(self.dense_flops_per_token > 0, "model.dense_flops_per_token",
                f"must be > 0, got {self.dense_flops_per_token}")
        for key in ("attn_flops_per_ctx_token", "indexer_flops_per_ctx_token",
                    "attn_window_tokens", "decode_per_seq_s", "decode_per_ctx_token_s"):
            value = getattr(self, key)
            require(value >= 0, f"model.{key}", f"must be >= 0, got {value}")
        require(self.decode_base_s > 0, "model.decode_base_s",
                f"must be > 0, got {self.decode_base_s}")
        table = tuple((float(x), float(y)) for x, y in self.prefill_efficiency)
        require(len(table) > 0, "model.prefill_efficiency", "must have at least one point")
        xs = [x for x, _ in table]
        require(all(b > a for a, b in zip(xs, xs[1:], strict=False)) and xs[0] > 0,
                "model.prefill_efficiency", "batch sizes must be positive and increasing")
        require(all(0 < y <= 1 for _, y in table), "model.prefill_efficiency",
                "efficiencies must lie in (0, 1]")
        object.__setattr__(self, "prefill_efficiency", table)
        object.__setattr__(self, "_eff_x", tuple(xs))
        object.__setattr__(self, "_eff_y", tuple(y for _, y in table))

    def attention_flops_per_token(self, context: float) -> float:
        """Attention (and indexer) FLOPs for one new token attending ``context`` tokens."""
        window = context if self.attn_window_tokens == 0 else min(context, self.attn_window_tokens)
        return self.attn_flops_per_ctx_token * window + self.indexer_flops_per_ctx_token * context

    def prefill_flops_per_token(self, context: float) -> float:
        """All prefill FLOPs for one new token at position ``context``."""
        return self.dense_flops_per_token + self.attention_flops_per_token(context)

    def efficiency(self, batch_tokens: float) -> float:
        """Achieved share of peak FLOP/s for a prefill batch of ``batch_tokens`` new tokens."""
        xs, ys = self._eff_x, self._eff_y
        if batch_tokens <= xs[0]:
            return ys[0]
        if batch_tokens >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, batch_tokens)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (batch_tokens - x0) / (x1 - x0)

    def decode_iteration_s(self, batch: int, context_tokens: float) -> float:
        """Duration of one decode iteration (one token for each of ``batch`` sequences)."""
        return (self.decode_base_s + self.decode_per_seq_s * batch
                + self.decode_per_ctx_token_s * context_tokens)
