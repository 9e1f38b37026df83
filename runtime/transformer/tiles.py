"""Fixed-shape kernels: the row-wise operations of the model, run so that a row's result
never depends on how many other rows there are.

A matmul kernel (MKL on the CPU, cuBLAS on a GPU) picks its code path, and so its
reduction order, from the shape of the call: ``torch.mm`` of 1, 2, 3, 5, 7 or 9 rows
gives other bits for the same row than 16 rows do (measured on MKL). So every matmul
here is called on tiles of exactly :attr:`Tiles.rows` rows, the last padded with zeros:
within such a call a row's result depends neither on the other rows nor on its place in
the tile (checked by the invariance tests).

Elementwise operations are used only where every element's result is the correctly
rounded value of its inputs (``+ - * /``, ``sqrt``) or is checked not to depend on the
element's place in the tensor (``exp``); ``rsqrt``, ``sigmoid`` and ``silu`` are avoided
because their vectorised and scalar tails round differently on the CPU. Sums of a fixed
width go through :func:`row_sum`, sums over a varying count through :func:`tree_sum`,
whose pairing depends only on the index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tiles:
    """The fixed shapes of a model's kernels.

    ``rows``: rows of one linear-layer matmul. ``attn_rows``: query rows (pairs of token
    and query head of one K/V head) of one attention matmul. ``keys``: keys of one
    attention tile. ``key_batch``: key tiles per batched attention matmul -- 0 for calls
    over however many tiles (MKL's result per tile does not depend on the count), else
    calls of exactly that many tiles (cuBLAS picks its kernel by the batch count).
    ``all_heads``: attend with all K/V heads in the same calls, over a head-major copy of
    the context (see :mod:`.attention`). Results are bitwise invariant for one ``Tiles``
    (and one device and thread count); other tiles give other, equally valid, bits.
    """

    rows: int = 16
    attn_rows: int = 4
    keys: int = 1024
    key_batch: int = 0
    all_heads: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.all_heads, bool):
            raise ValueError(f"Tiles.all_heads must be a bool, got {self.all_heads!r}")
        for name in ("rows", "attn_rows", "keys", "key_batch"):
            value = getattr(self, name)
            least = 0 if name == "key_batch" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"Tiles.{name} must be an integer >= {least}, got {value!r}")

    @classmethod
    def for_device(cls, device: str | torch.device) -> Tiles:
        """The default tiles of a device: small row tiles, one K/V head at a time, on a
        CPU (padding and copies cost real time there); on a GPU large tiles, fixed
        batches and all heads at once (kernel launches cost more than padding)."""
        if torch.device(device).type == "cpu":
            return cls()
        return cls(rows=64, attn_rows=64, keys=1024, key_batch=8, all_heads=True)


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
    """``x @ w`` for ``x`` [n, in] and ``w`` [in, out]: one matmul of the same shape
    [rows, in] x [in, out] per tile of ``rows`` rows (the last padded with zeros)."""
    n = x.shape[0]
    tiles = pad_rows(x, rows)
    out = x.new_empty(tiles.shape[0], w.shape[1])
    for at in range(0, tiles.shape[0], rows):
        torch.mm(tiles[at:at + rows], w, out=out[at:at + rows])
    return out[:n]


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of rows ``x`` [n, dim] with weight ``w``, computed in :func:`acc_dtype`
    (the mean square by :func:`row_sum`)."""
    h = x.to(acc_dtype(x.dtype))
    mean_square = row_sum(h * h).unsqueeze(-1) / h.shape[-1]
    return (h / torch.sqrt(mean_square + eps) * w.to(h.dtype)).to(x.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` with silu as ``g / (1 + exp(-g))`` (exactly rounded operations
    and ``exp``; torch's own silu rounds differently in a tensor's tail)."""
    return gate / (1.0 + torch.exp(-gate)) * up


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over the last dim, in an order that depends only on its width.

    On a CPU, torch's sum of a contiguous last dim reduces each row alone with the same
    vectorised cascade, rows split across threads -- unless there is only one row,
    which it may split across threads: a lone row gets a zero row beside it. Elsewhere
    (a GPU's reduction picks its plan by the number of rows): halves added to halves,
    elementwise.
    """
    if x.device.type == "cpu":
        rows = x.reshape(-1, x.shape[-1])
        return pad_rows(rows, 2).sum(-1)[:rows.shape[0]].reshape(x.shape[:-1])
    return halving_sum(x)


def halving_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over the last dim as halves added to halves (zero-padded to a power of
    two): elementwise additions only, one fixed order on every device."""
    size = 1 << (x.shape[-1] - 1).bit_length()
    if size > x.shape[-1]:
        x = torch.nn.functional.pad(x, (0, size - x.shape[-1]))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def tree_sum(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The sum over ``dim`` by pairs ``(0, 1), (2, 3), ...``, then pairs of those, and so
    on: only elementwise additions, the same on every device and for any other dims.

    The pairing depends only on the index, so appending zeros (key tiles past a row's
    last key, say) leaves every partial sum, hence the result, bitwise unchanged.
    """
    x = x.movedim(dim, 0)
    n = x.shape[0]
    size = 1 << (n - 1).bit_length()
    if size > n:
        x = torch.cat([x, x.new_zeros((size - n,) + tuple(x.shape[1:]))])
    while x.shape[0] > 1:
        x = x[0::2] + x[1::2]
    return x[0]
