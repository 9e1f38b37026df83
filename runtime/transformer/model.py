"""The transformer: embedding, layers one at a time, logits; prefill and batched decode.

Batch invariance -- the key property. A sequence's K/V and logits (hence its tokens) are
bitwise identical whatever its batch mates are, wherever it sits in a decode batch, and
however its prefill is split into chunks (each given the earlier chunks' K/V as past).
Real engines get this with fixed-shape kernels; so does this one (:mod:`.tiles`):

- every linear layer and the output head run as matmuls of exactly ``Tiles.rows``
  rows (the last tile padded with zeros): a row's result never depends on how many
  rows a step has (MKL gives other bits to a row of a 1-, 2-, 3-, 5-, 7- or 9-row
  matmul than of a 16-row one);
- attention runs per sequence, in row tiles of ``Tiles.attn_rows`` query rows against
  key tiles of ``Tiles.keys`` keys at absolute positions, with an exact maximum and an
  index-paired tree sum across key tiles (:mod:`.attention`): a query at position ``p``
  does the same arithmetic whatever chunk it came in;
- sums of a fixed width use one order per width (never one chosen by the row count);
  rotary angles come from a table computed once; only exactly rounded elementwise
  operations, and ``exp``, touch activations.

The tests check it bitwise (``torch.equal``) over random chunkings, batch compositions
and contexts crossing tile boundaries, on the CPU (and on a GPU where one is present).
It holds for one ``Tiles``, one device and one thread count; ``Tiles.for_device`` picks
the defaults (a GPU's also fix the number of key tiles per matmul and take all K/V heads
at once, since cuBLAS chooses kernels by the batch count). What it costs: decode pads
each sequence's query rows to ``attn_rows`` and the step's rows to a multiple of
``rows``; a row computes whole key tiles; attention loops in Python over row tiles (and,
on a CPU, K/V heads). On one core of the development CPU, the tiny size prefills 500
tokens after 30,000 in about 0.5 s and decodes a step of 8 sequences at 30,000 tokens in
about 20 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from runtime.transformer.attention import attend
from runtime.transformer.config import TransformerConfig
from runtime.transformer.rotary import Rotary
from runtime.transformer.tiles import Tiles, acc_dtype, linear, rms_norm, swiglu
from runtime.transformer.weights import init_weights, weight_shapes

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class DecodeSeq:
    """One sequence of a decode step: its last ``token``, that token's ``position`` (the
    length of its past) and ``past``: per layer, (K, V) [position, kv_heads, head_dim]."""

    token: int
    position: int
    past: list[KV]


@dataclass(frozen=True)
class _Segment:
    """The rows ``start .. start + n - 1`` of a step that are one sequence's new tokens."""

    start: int
    n: int
    past: KV


class Transformer:
    """A seeded Llama-style transformer on ``device`` (see the module docstring).

    ``weights`` default to :func:`~.weights.init_weights` of ``config``; ``tiles`` to
    :meth:`Tiles.for_device`. Activations and K/V are in ``config.dtype``; norms and
    attention compute in float32 (float64 for a float64 config).
    """

    def __init__(self, config: TransformerConfig, device: str | torch.device = "cpu",
                 weights: dict[str, torch.Tensor] | None = None, *,
                 tiles: Tiles | None = None):
        self.config = config
        self.device = torch.device(device)
        self.tiles = tiles if tiles is not None else Tiles.for_device(self.device)
        given = weights if weights is not None else init_weights(config)
        shapes = weight_shapes(config)
        if set(given) != set(shapes):
            raise ValueError(f"weights: names differ from the config's: missing "
                             f"{sorted(set(shapes) - set(given))}, extra "
                             f"{sorted(set(given) - set(shapes))}")
        for name, shape in shapes.items():
            if tuple(given[name].shape) != shape:
                raise ValueError(f"weights[{name!r}] has shape {tuple(given[name].shape)}, "
                                 f"the config needs {shape}")
        self.w = {name: t.to(device=self.device, dtype=config.torch_dtype).contiguous()
                  for name, t in given.items()}
        self.rotary = Rotary(config, self.device, acc_dtype(config.torch_dtype))

    # -- the pieces -----------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Embeddings [n, dim] of token ids [n]; ``ValueError`` naming an id outside
        ``[0, vocab)``."""
        ids = torch.as_tensor(tokens, dtype=torch.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.config.vocab)]
        if bad.numel():
            raise ValueError(f"token id {int(bad[0])} is outside [0, {self.config.vocab})")
        return self.w["embed"][ids.to(self.device)]

    def layer(self, i: int, x: torch.Tensor, positions: torch.Tensor, past_k: torch.Tensor,
              past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer ``i`` for ``n`` new tokens of one sequence: ``x`` [n, dim] at
        ``positions`` [n] = ``m .. m + n - 1`` after ``past_k``/``past_v`` [m, kv_heads,
        head_dim] (this layer's K, already rotated, and V of positions ``0 .. m - 1``).
        Returns (x_out [n, dim], k_new, v_new [n, kv_heads, head_dim])."""
        self._check_layer(i)
        n, m = x.shape[0], past_k.shape[0]
        self._check_past(past_k, past_v, m, f"layer {i}")
        if m + n > self.config.max_context:
            raise ValueError(f"layer {i}: positions up to {m + n - 1} exceed max_context "
                             f"{self.config.max_context}")
        want = torch.arange(m, m + n, device=positions.device)
        if positions.shape != (n,) or not torch.equal(positions.to(torch.int64), want):
            raise ValueError(f"positions must be {m} .. {m + n - 1} (the past has {m} tokens, "
                             f"x has {n} rows), got {positions.tolist()[:8]}...")
        return self._layer(i, x, positions.to(self.device), [_Segment(0, n, (past_k, past_v))])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and output head of rows ``x`` [b, dim]: logits [b, vocab] float32."""
        h = rms_norm(x, self.w["norm"], self.config.norm_eps)
        return linear(h, self.w["lm_head"], self.tiles.rows).to(torch.float32)

    # -- prefill, decode, generate ------------------------------------------------------

    def prefill(self, tokens: torch.Tensor | Sequence[int],
                past: Sequence[KV] | None = None) -> tuple[torch.Tensor, list[KV]]:
        """New tokens of one sequence after ``past`` (per layer (K, V), or None): the
        logits [vocab] of the last new token and the new tokens' (K, V) per layer."""
        x = self.embed(tokens)
        n = x.shape[0]
        if n == 0:
            raise ValueError("prefill needs at least one token")
        pasts = list(past) if past is not None else [self.empty_kv()] * self.config.layers
        if len(pasts) != self.config.layers:
            raise ValueError(f"past has {len(pasts)} layers, the model {self.config.layers}")
        m = pasts[0][0].shape[0]
        positions = torch.arange(m, m + n, device=self.device)
        out = []
        for i, (pk, pv) in enumerate(pasts):
            x, k, v = self.layer(i, x, positions, pk, pv)
            out.append((k, v))
        return self.logits(x[-1:])[0], out

    def decode_step(self, seqs: Sequence[DecodeSeq]) -> tuple[torch.Tensor, list[list[KV]]]:
        """One step of ``b`` sequences: the logits [b, vocab] of each one's next token and,
        per sequence, per layer, the (K, V) [1, kv_heads, head_dim] of its token. Linear
        layers run batched over the sequences, attention per sequence."""
        if not seqs:
            raise ValueError("decode_step needs at least one sequence")
        for j, seq in enumerate(seqs):
            if len(seq.past) != self.config.layers:
                raise ValueError(f"sequence {j}: past has {len(seq.past)} layers, the model "
                                 f"{self.config.layers}")
            for i, (pk, pv) in enumerate(seq.past):
                self._check_past(pk, pv, seq.position, f"sequence {j}, layer {i}")
        x = self.embed([seq.token for seq in seqs])
        positions = torch.tensor([seq.position for seq in seqs], device=self.device)
        per_layer = []
        for i in range(self.config.layers):
            segments = [_Segment(j, 1, seq.past[i]) for j, seq in enumerate(seqs)]
            x, k, v = self._layer(i, x, positions, segments)
            per_layer.append((k, v))
        kv = [[(k[j:j + 1], v[j:j + 1]) for k, v in per_layer] for j in range(len(seqs))]
        return self.logits(x), kv

    def generate(self, prompt: torch.Tensor | Sequence[int], n: int) -> list[int]:
        """``n`` greedy tokens after ``prompt`` (prefill, then ``n - 1`` decode steps)."""
        logits, kv = self.prefill(prompt)
        position = kv[0][0].shape[0]
        out = [int(torch.argmax(logits))]
        while len(out) < n:
            step, new = self.decode_step([DecodeSeq(out[-1], position, kv)])
            kv = [(torch.cat([pk, k]), torch.cat([pv, v])) for (pk, pv), (k, v)
                  in zip(kv, new[0], strict=True)]
            position += 1
            out.append(int(torch.argmax(step[0])))
        return out[:n]

    def empty_kv(self) -> KV:
        """An empty past of one layer: (K, V) [0, kv_heads, head_dim]."""
        shape = (0, self.config.kv_heads, self.config.head_dim)
        empty = torch.empty(shape, dtype=self.config.torch_dtype, device=self.device)
        return empty, empty

    # -- internals ------------------------------------------------------------------------

    def _layer(self, i: int, x: torch.Tensor, positions: torch.Tensor,
               segments: list[_Segment]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, rows, w = self.config, self.tiles.rows, self.w
        p = f"layers.{i}."
        n = x.shape[0]
        h = rms_norm(x, w[p + "attn_norm"], cfg.norm_eps)
        q = self.rotary(linear(h, w[p + "wq"], rows).view(n, cfg.heads, cfg.head_dim),
                        positions)
        k = self.rotary(linear(h, w[p + "wk"], rows).view(n, cfg.kv_heads, cfg.head_dim),
                        positions)
        v = linear(h, w[p + "wv"], rows).view(n, cfg.kv_heads, cfg.head_dim)
        att = torch.empty_like(q)
        for seg in segments:
            part = slice(seg.start, seg.start + seg.n)
            first = seg.past[0].shape[0]
            att[part] = attend(q[part], first, seg.past[0], seg.past[1], k[part], v[part],
                               self.tiles)
        x = x + linear(att.view(n, cfg.dim), w[p + "wo"], rows)
        h = rms_norm(x, w[p + "ffn_norm"], cfg.norm_eps)
        gated = swiglu(linear(h, w[p + "w_gate"], rows), linear(h, w[p + "w_up"], rows))
        return x + linear(gated, w[p + "w_down"], rows), k, v

    def _check_layer(self, i: int) -> None:
        if not 0 <= i < self.config.layers:
            raise ValueError(f"layer {i} is outside 0 .. {self.config.layers - 1}")

    def _check_past(self, pk: torch.Tensor, pv: torch.Tensor, m: int, where: str) -> None:
        shape = (m, self.config.kv_heads, self.config.head_dim)
        if tuple(pk.shape) != shape or tuple(pv.shape) != shape:
            raise ValueError(f"{where}: past K/V shapes {tuple(pk.shape)}/{tuple(pv.shape)}, "
                             f"expected {shape}")
        if m >= self.config.max_context:
            raise ValueError(f"{where}: position {m} is beyond max_context "
                             f"{self.config.max_context}")
