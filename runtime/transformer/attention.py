"""Causal grouped-query attention of one sequence, in fixed-shape tiles.

Keys are cut into tiles of ``Tiles.keys`` keys at absolute positions (tile ``t`` holds
positions ``t * keys .. (t + 1) * keys - 1``, zeros past the last key); the query rows of
one K/V head (each a pair of token and query head, token-major) into tiles of
``Tiles.attn_rows`` rows. For one row tile against its key tiles ``0 .. T-1`` (``T`` from
the tile's last position):

1. scores ``[T, rows, keys]``: a ``bmm`` of fixed per-tile shape; keys past a row's
   position are set to ``-inf``;
2. each row's maximum over all its scores (exact in any order);
3. ``exp(score - max)``; per tile, the row sums over the fixed ``keys`` width and the
   products with V (another fixed-shape ``bmm``);
4. the tiles' sums and products added by :func:`~.tiles.tree_sum`, then divided.

A row's result is therefore the same bits whatever chunk it came in and whoever shares
its tile: tiles past its position contribute exact zeros, which the index-paired tree
sum ignores; its keys sit at the same slots of the same tiles; every kernel call has the
same shape. Past keys are read in place (views of full tiles of ``past``); only the
last, partial tile and the new keys are copied.

The cost: a decode token's query rows are padded to ``attn_rows`` rows, and a row
computes whole key tiles (up to ``keys - 1`` masked keys in its last tile).
"""

from __future__ import annotations

import math

import torch

from runtime.transformer.tiles import Tiles, acc_dtype, pad_rows, tree_sum


class KeyTiles:
    """One sequence's keys and values of one layer as tiles: full tiles of the past as
    views, the rest (the past's partial tile, the new keys, zero padding) as a copy."""

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor, new_k: torch.Tensor,
                 new_v: torch.Tensor, keys: int, dtype: torch.dtype):
        self.keys = keys
        self.full = past_k.shape[0] // keys
        cut = self.full * keys
        self.past_k = _tiles(_usable(past_k[:cut], dtype), keys)
        self.past_v = _tiles(_usable(past_v[:cut], dtype), keys)
        tail_k = torch.cat([past_k[cut:].to(dtype), new_k.to(dtype)])
        tail_v = torch.cat([past_v[cut:].to(dtype), new_v.to(dtype)])
        self.tail_k = _tiles(pad_rows(tail_k, keys), keys)
        self.tail_v = _tiles(pad_rows(tail_v, keys), keys)

    def scores(self, q: torch.Tensor, head: int, count: int) -> torch.Tensor:
        """``q`` [rows, hd] times the keys of K/V head ``head`` in tiles ``0..count-1``:
        [count, rows, keys]."""
        out = q.new_empty(count, q.shape[0], self.keys)
        past = min(count, self.full)
        if past:
            keys = self.past_k[:past, :, head].transpose(1, 2)
            torch.bmm(q.expand(past, *q.shape), keys, out=out[:past])
        if count > past:
            keys = self.tail_k[:count - past, :, head].transpose(1, 2)
            torch.bmm(q.expand(count - past, *q.shape), keys, out=out[past:])
        return out

    def values(self, p: torch.Tensor, head: int) -> torch.Tensor:
        """Per tile, weights ``p`` [count, rows, keys] times the values of ``head``:
        [count, rows, hd]."""
        count = p.shape[0]
        out = p.new_empty(count, p.shape[1], self.tail_v.shape[-1])
        past = min(count, self.full)
        if past:
            torch.bmm(p[:past], self.past_v[:past, :, head], out=out[:past])
        if count > past:
            torch.bmm(p[past:], self.tail_v[:count - past, :, head], out=out[past:])
        return out


def _usable(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` with a unit-stride last dim (a view when it already is)."""
    x = x.to(dtype)
    return x if x.stride(-1) == 1 else x.contiguous()


def _tiles(x: torch.Tensor, keys: int) -> torch.Tensor:
    """[n * keys, kvh, hd] as [n, keys, kvh, hd] (a view)."""
    return x.unflatten(0, (x.shape[0] // keys, keys))


def attend_tile(q: torch.Tensor, pos: torch.Tensor, span: tuple[int, int], kv: KeyTiles,
                head: int) -> torch.Tensor:
    """Attention of one row tile: ``q`` [rows, hd] (scaled), ``pos`` [rows] its rows'
    positions, ``span`` their (lowest, highest) position, for K/V head ``head``."""
    lo, hi = span
    count = hi // kv.keys + 1
    s = kv.scores(q, head, count)
    first = lo // kv.keys  # tiles before it are wholly visible to every row
    key_pos = torch.arange(first * kv.keys, count * kv.keys, device=q.device)
    s[first:].masked_fill_(key_pos.view(-1, 1, kv.keys) > pos.view(1, -1, 1), -math.inf)
    s.sub_(s.amax(dim=(0, 2), keepdim=True)).exp_()
    o = torch.cat([kv.values(s, head), s.sum(-1, keepdim=True)], dim=-1)
    total = tree_sum(o)
    return total[:, :-1] / total[:, -1:]


def attend(q: torch.Tensor, first: int, past_k: torch.Tensor, past_v: torch.Tensor,
           new_k: torch.Tensor, new_v: torch.Tensor, tiles: Tiles) -> torch.Tensor:
    """Causal attention of ``n`` new tokens of one sequence at positions
    ``first .. first + n - 1`` (``first`` = the past's length).

    ``q`` [n, heads, hd] rotated queries; ``past_k``/``past_v`` [first, kvh, hd] and
    ``new_k``/``new_v`` [n, kvh, hd] rotated keys and values. Returns [n, heads, hd] in
    ``q``'s dtype.
    """
    n, heads, hd = q.shape
    kvh = new_k.shape[1]
    group, rows = heads // kvh, tiles.attn_rows
    acc = acc_dtype(q.dtype)
    kv = KeyTiles(past_k, past_v, new_k, new_v, tiles.keys, acc)
    scaled = q.to(acc) * (1.0 / math.sqrt(hd))
    padded = n * group + (-n * group % rows)
    # Row r is (token r // group, head r % group); padding rows repeat the last position.
    row_pos = first + (torch.arange(padded, device=q.device) // group).clamp(max=n - 1)
    out = torch.empty(n, heads, hd, dtype=acc, device=q.device)
    for head in range(kvh):
        qs = pad_rows(scaled[:, head * group:(head + 1) * group].reshape(n * group, hd), rows)
        res = torch.empty(padded, hd, dtype=acc, device=q.device)
        for at in range(0, padded, rows):
            span = (first + at // group, first + min((at + rows - 1) // group, n - 1))
            res[at:at + rows] = attend_tile(qs[at:at + rows], row_pos[at:at + rows], span,
                                            kv, head)
        out[:, head * group:(head + 1) * group] = res[:n * group].view(n, group, hd)
    return out.to(q.dtype)
