"""Fixed-shape kernels: the row-wise operations of the model, run so that a row's result
never depends on how many other rows there are.

A matmul kernel (MKL on the CPU, cuBLAS on a GPU) picks its code path, and so its
reduction order, from the shape of the call: ``torch.mm`` of 1, 2, 3, 5, 7 or 9 rows
gives other bits for the same row than 16 rows do. So every matmul here is called on
tiles of exactly :attr:`Tiles.rows` rows (the rows padded with zeros to a multiple of
it), batched with ``torch.bmm`` whose per-tile shape is fixed. Within such a call a row's
result depends neither on the other rows nor on its place in the tile nor on the number
of tiles (checked by the invariance tests).

Elementwise operations are used only where every element's result is the correctly
rounded value of its inputs (``+ - * /``, ``sqrt``) or is checked not to depend on the
element's place in the tensor (``exp``); ``rsqrt``, ``sigmoid`` and ``silu`` are avoided
because their vectorised and scalar tails round differently. Reductions of varying
length are replaced by :func:`tree_sum`, whose pairing depends only on the index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tiles:
    """The fixed shapes of a model's kernels.

    ``rows``: rows of one linear-layer matmul. ``attn_rows``: query rows (pairs of token
    and query head of one K/V head) of one attention matmul. ``keys``: keys of one
    attention tile. Results are bitwise invariant for one ``Tiles`` (and one device and
    thread count); other tiles give other (equally valid) bits.
    """

    rows: int = 16
    attn_rows: int = 4
    keys: int = 1024

    def __post_init__(self) -> None:
        for name in ("rows", "attn_rows", "keys"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Tiles.{name} must be a positive integer, got {value!r}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms, softmax and attention compute in: float64 for float64, else
    float32 (half-precision K/V are widened)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pad_rows(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` with zero rows appended to a multiple of ``multiple`` rows (``x`` if none)."""
    extra = -x.shape[0] % multiple
    if not extra:
        return x
    return torch.cat([x, x.new_zeros((extra,) + tuple(x.shape[1:]))])


def linear(x: torch.Tensor, w: torch.Tensor, rows: int) -> torch.Tensor:
    """``x @ w`` for ``x`` [n, in] and ``w`` [in, out], in tiles of ``rows`` rows: one
    ``bmm`` call whatever ``n`` is, each tile a matmul of the same shape."""
    n = x.shape[0]
    tiles = pad_rows(x, rows).view(-1, rows, x.shape[1])
    out = torch.bmm(tiles, w.expand(tiles.shape[0], *w.shape))
    return out.view(-1, w.shape[1])[:n]


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, rows: int) -> torch.Tensor:
    """RMSNorm of rows ``x`` [n, dim] with weight ``w``, computed in :func:`acc_dtype` on
    padded tiles (a row reduction over a fixed width; never a single-row reduction,
    which torch may split across threads)."""
    n, acc = x.shape[0], acc_dtype(x.dtype)
    h = pad_rows(x, rows).to(acc)
    mean_square = (h * h).mean(-1, keepdim=True)
    out = h / torch.sqrt(mean_square + eps) * w.to(acc)
    return out[:n].to(x.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` with silu as ``g / (1 + exp(-g))`` (exactly rounded operations
    and ``exp``; torch's own silu rounds differently in a tensor's tail)."""
    return gate / (1.0 + torch.exp(-gate)) * up


def tree_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over dim 0 by pairs ``(0, 1), (2, 3), ...``, then pairs of those, and so on.

    The pairing depends only on the index, so appending zero slices (tiles past a row's
    last key) leaves every partial sum, hence the result, bitwise unchanged.
    """
    n = x.shape[0]
    size = 1 << (n - 1).bit_length()
    if size > n:
        x = torch.cat([x, x.new_zeros((size - n,) + tuple(x.shape[1:]))])
    while x.shape[0] > 1:
        x = x[0::2] + x[1::2]
    return x[0]
