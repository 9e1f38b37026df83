"""Causal grouped-query attention of one sequence, in fixed-shape tiles.

Keys are cut into tiles of ``Tiles.keys`` keys at absolute positions (tile ``t`` holds
positions ``t * keys .. (t + 1) * keys - 1``, zeros past the last key); the query rows of
each K/V head (pairs of token and query head, token-major) into tiles of
``Tiles.attn_rows`` rows. For one row tile against its key tiles ``0 .. T-1`` (``T`` from
the tile's last position), for one K/V head or, with ``Tiles.all_heads``, all at once:

1. scores ``[T, heads, rows, keys]``: ``bmm`` calls of fixed per-tile shape (and, where
   ``key_batch`` is set, of a fixed number of tiles, extra tiles masked); keys past a
   row's position are set to ``-inf``;
2. each row's maximum over all its scores (exact in any order);
3. ``exp(score - max)``; per tile, the row sums over the ``keys`` width
   (:func:`~.tiles.row_sum`) and the products with V (another fixed-shape ``bmm``);
4. the tiles' sums and products added by :func:`~.tiles.tree_sum`, then divided.

A row's result is therefore the same bits whatever chunk it came in and whoever shares
its tile: tiles past its position contribute exact zeros, which the index-paired tree
sum ignores; its keys sit at the same slots of the same tiles; every kernel call has the
same shape. One head at a time, past keys are read in place (views of whole tiles of
``past``) and only the past's last tiles and the new keys are copied -- what a CPU
wants, where copying a long past costs as much as attending to it. ``all_heads`` copies
the whole context once per call into a head-major layout and runs every K/V head in
the same kernel calls -- what a GPU wants, where launches cost more than copies.

The cost: a decode token's query rows are padded to ``attn_rows`` rows, and a row
computes whole key tiles (up to ``keys - 1`` masked keys in its last tile).
"""

from __future__ import annotations

import math

import torch

from runtime.transformer.tiles import Tiles, acc_dtype, pad_rows, row_sum, tree_sum


class KeyTiles:
    """One sequence's keys and values of one layer as tiles ``[tiles, keys, kvh, hd]``:
    whole tiles of the past as views (up to a whole number of ``key_batch`` calls), the
    rest (the past's last tiles, the new keys, zero padding) as a copy. With
    ``all_heads`` everything is copied, head-major: ``[tiles, kvh, keys, hd]``."""

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor, new_k: torch.Tensor,
                 new_v: torch.Tensor, tiles: Tiles, dtype: torch.dtype):
        self.keys, self.batch, self.all_heads = tiles.keys, tiles.key_batch, tiles.all_heads
        full = 0 if self.all_heads else past_k.shape[0] // self.keys
        self.full = full - full % self.batch if self.batch else full
        cut = self.full * self.keys
        self.past_k = _tiles(_usable(past_k[:cut], dtype), self.keys)
        self.past_v = _tiles(_usable(past_v[:cut], dtype), self.keys)
        # The copy ends on a whole call of key_batch tiles, so every call has its shape.
        multiple = self.keys * max(self.batch, 1)
        tail_k = pad_rows(torch.cat([past_k[cut:].to(dtype), new_k.to(dtype)]), multiple)
        tail_v = pad_rows(torch.cat([past_v[cut:].to(dtype), new_v.to(dtype)]), multiple)
        self.tail_k, self.tail_v = _tiles(tail_k, self.keys), _tiles(tail_v, self.keys)
        if self.all_heads:
            self.tail_k = self.tail_k.transpose(1, 2).contiguous()
            self.tail_v = self.tail_v.transpose(1, 2).contiguous()

    def calls(self, count: int) -> list[tuple[int, int]]:
        """Tile ranges ``[start, end)`` of the matmul calls that cover tiles ``0 ..
        count - 1``: each ``key_batch`` tiles (the last call's extra tiles hold later
        keys or zeros), or one call for the past's tiles and one for the rest."""
        if self.batch:
            return [(s, s + self.batch) for s in range(0, count, self.batch)]
        return [(s, e) for s, e in ((0, min(count, self.full)), (self.full, count)) if e > s]

    def _tiles(self, start: int, end: int, head: int | None, values: bool) -> torch.Tensor:
        """Keys (or values) of tiles ``start .. end - 1`` of K/V head ``head`` (None: all
        heads) as matmul operands ``[tiles * heads, keys, hd]``."""
        if self.all_heads:
            return (self.tail_v if values else self.tail_k)[start:end].flatten(0, 1)
        if start < self.full:
            return (self.past_v if values else self.past_k)[start:end, :, head]
        tail = self.tail_v if values else self.tail_k
        return tail[start - self.full:end - self.full, :, head]

    def scores(self, q: torch.Tensor, head: int | None, calls: list[tuple[int, int]]
               ) -> torch.Tensor:
        """``q`` [heads, rows, hd] times the keys of the tiles of ``calls``:
        [tiles, heads, rows, keys]."""
        out = q.new_empty(calls[-1][1], *q.shape[:2], self.keys)
        for start, end in calls:
            keys = self._tiles(start, end, head, values=False).transpose(1, 2)
            queries = q.expand(end - start, *q.shape).reshape(-1, *q.shape[1:])
            torch.bmm(queries, keys, out=out[start:end].flatten(0, 1))
        return out

    def values(self, p: torch.Tensor, head: int | None, calls: list[tuple[int, int]]
               ) -> torch.Tensor:
        """Per tile, weights ``p`` [tiles, heads, rows, keys] times the values:
        [tiles, heads, rows, hd]."""
        out = p.new_empty(*p.shape[:3], self.tail_v.shape[-1])
        for start, end in calls:
            values = self._tiles(start, end, head, values=True)
            torch.bmm(p[start:end].flatten(0, 1), values, out=out[start:end].flatten(0, 1))
        return out


def _usable(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` with a unit-stride last dim (a view when it already is)."""
    x = x.to(dtype)
    return x if x.stride(-1) == 1 else x.contiguous()


def _tiles(x: torch.Tensor, keys: int) -> torch.Tensor:
    """[n * keys, kvh, hd] as [n, keys, kvh, hd] (a view)."""
    return x.unflatten(0, (x.shape[0] // keys, keys))


def attend_tile(q: torch.Tensor, pos: torch.Tensor, span: tuple[int, int], kv: KeyTiles,
                head: int | None) -> torch.Tensor:
    """Attention of one row tile: ``q`` [heads, rows, hd] (scaled), ``pos`` [rows] its
    rows' positions, ``span`` their (lowest, highest) position; K/V head ``head`` (None:
    all, ``q`` holding every head's rows). Returns [heads, rows, hd]."""
    lo, hi = span
    calls = kv.calls(hi // kv.keys + 1)
    s = kv.scores(q, head, calls)
    first = lo // kv.keys  # tiles before it are wholly visible to every row
    key_pos = torch.arange(first * kv.keys, s.shape[0] * kv.keys, device=q.device)
    hidden = key_pos.view(-1, 1, 1, kv.keys) > pos.view(1, 1, -1, 1)
    s[first:].masked_fill_(hidden, -math.inf)
    s.sub_(s.amax(dim=(0, 3), keepdim=True)).exp_()
    o = torch.cat([kv.values(s, head, calls), row_sum(s).unsqueeze(-1)], dim=-1)
    total = tree_sum(o)
    return total[..., :-1] / total[..., -1:]


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
    kv = KeyTiles(past_k, past_v, new_k, new_v, tiles, acc)
    # Per K/V head, row r is (token r // group, query head r % group) of that K/V head.
    scaled = (q.to(acc) * (1.0 / math.sqrt(hd))).view(n, kvh, group, hd)
    by_head = pad_rows(scaled.transpose(0, 1).reshape(kvh, n * group, hd).transpose(0, 1),
                       rows).transpose(0, 1).contiguous()
    padded = by_head.shape[1]
    # Padding rows repeat the last position (their results are dropped).
    row_pos = first + (torch.arange(padded, device=q.device) // group).clamp(max=n - 1)
    out = torch.empty(kvh, padded, hd, dtype=acc, device=q.device)
    heads_at_once: list[int | None] = [None] if tiles.all_heads else list(range(kvh))
    for head in heads_at_once:
        chosen = slice(None) if head is None else slice(head, head + 1)
        for at in range(0, padded, rows):
            span = (first + at // group, first + min((at + rows - 1) // group, n - 1))
            out[chosen, at:at + rows] = attend_tile(by_head[chosen, at:at + rows],
                                                    row_pos[at:at + rows], span, kv, head)
    per_token = out[:, :n * group].view(kvh, n, group, hd).transpose(0, 1)
    return per_token.reshape(n, heads, hd).to(q.dtype)
