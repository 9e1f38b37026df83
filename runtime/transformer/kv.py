"""The byte layout of K/V that the runtime stores in buffers and files and moves.

- A layer's K/V of ``n`` tokens is the contiguous tensor ``[n, 2, kv_heads, head_dim]``
  (index 0 = K, already rotated; 1 = V) in the config's dtype:
  ``n * config.layer_kv_bytes_per_token`` bytes.
- A *Full Block* of ``block_tokens`` tokens is layer-major: for layer ``0 .. L-1``, that
  layer's ``[block_tokens, 2, kv_heads, head_dim]`` bytes, each slice
  ``block_tokens * layer_kv_bytes_per_token`` bytes. Slots past the block's valid
  tokens are zero bytes.

Blocks are numbered from the start of the context: block ``b`` holds tokens
``b * block_tokens .. (b + 1) * block_tokens - 1``. :func:`blocks_to_bytes` takes the
K/V of the whole context ``0 .. n-1`` (a block that starts mid-run needs its earlier
tokens, so a run is never packed alone) and which blocks to emit;
:func:`block_range` names the blocks that cover a run of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from runtime.transformer.config import TransformerConfig

KV = tuple[torch.Tensor, torch.Tensor]
Buffer = bytes | bytearray | memoryview


def pack_layer(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """K and V [n, kv_heads, head_dim] as one contiguous [n, 2, kv_heads, head_dim]."""
    if k.shape != v.shape or k.dim() != 3:
        raise ValueError(f"pack_layer: K {tuple(k.shape)} and V {tuple(v.shape)} must both "
                         "be [n, kv_heads, head_dim]")
    return torch.stack([k, v], dim=1).contiguous()


def layer_from_bytes(buf: Any, n_tokens: int, config: TransformerConfig) -> KV:
    """(K, V) views [n_tokens, kv_heads, head_dim] over the first
    ``n_tokens * layer_kv_bytes_per_token`` bytes of ``buf``.

    ``buf`` is any buffer (bytes, bytearray, memoryview -- a slice of one too -- or a
    numpy uint8 array). A writable buffer is viewed without a copy (writes to the
    tensors land in it, and it must outlive them); a read-only one is copied once,
    since torch tensors are always writable.
    """
    view = memoryview(buf).cast("B")
    need = n_tokens * config.layer_kv_bytes_per_token
    if n_tokens < 0 or len(view) < need:
        raise ValueError(f"layer_from_bytes: {n_tokens} tokens need {need} bytes, the buffer "
                         f"has {len(view)}")
    shape = (n_tokens, 2, config.kv_heads, config.head_dim)
    if n_tokens == 0:
        kv = torch.empty(shape, dtype=config.torch_dtype)
    else:
        source = view[:need] if not view.readonly else bytearray(view[:need])
        kv = torch.frombuffer(source, dtype=config.torch_dtype).view(shape)
    return kv[:, 0], kv[:, 1]


def block_range(first_token: int, end_token: int, block_tokens: int) -> range:
    """The blocks holding any of tokens ``first_token .. end_token - 1``."""
    if not 0 <= first_token <= end_token or block_tokens <= 0:
        raise ValueError(f"block_range: bad tokens {first_token}..{end_token} or block size "
                         f"{block_tokens}")
    return range(first_token // block_tokens, -(-end_token // block_tokens))


def _as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def blocks_to_bytes(kv_layers: Sequence[KV], n_tokens: int, block_tokens: int,
                    config: TransformerConfig, blocks: range | None = None) -> list[bytes]:
    """Full Blocks (each ``block_tokens * kv_bytes_per_token`` bytes) of a context whose
    per-layer (K, V) [>= n_tokens, kv_heads, head_dim] hold its tokens ``0 .. n_tokens-1``.

    ``blocks``: which blocks (default all ``ceil(n_tokens / block_tokens)``); slots past
    ``n_tokens`` are zero.
    """
    if len(kv_layers) != config.layers:
        raise ValueError(f"blocks_to_bytes: {len(kv_layers)} layers given, the config has "
                         f"{config.layers}")
    if block_tokens <= 0 or n_tokens < 0:
        raise ValueError(f"blocks_to_bytes: bad block_tokens {block_tokens} or n_tokens "
                         f"{n_tokens}")
    present = range(-(-n_tokens // block_tokens))
    wanted = present if blocks is None else blocks
    if len(wanted) and (wanted[0] not in present or wanted[-1] not in present):
        raise ValueError(f"blocks_to_bytes: blocks {wanted} outside the context's {present}")
    layers = [(k[:n_tokens].cpu(), v[:n_tokens].cpu()) for k, v in kv_layers]
    out = []
    for b in wanted:
        start = b * block_tokens
        stop = min(start + block_tokens, n_tokens)
        block = torch.zeros(config.layers, block_tokens, 2, config.kv_heads, config.head_dim,
                            dtype=config.torch_dtype)
        for i, (k, v) in enumerate(layers):
            block[i, :stop - start, 0] = k[start:stop]
            block[i, :stop - start, 1] = v[start:stop]
        out.append(_as_bytes(block))
    return out


def bytes_to_layers(blocks: Sequence[Buffer], n_tokens: int,
                    config: TransformerConfig) -> list[KV]:
    """Per-layer (K, V) [n_tokens, kv_heads, head_dim] of the first ``n_tokens`` tokens of
    a context whose Full Blocks ``0, 1, ...`` are ``blocks`` (copies, on the CPU)."""
    sizes = {len(memoryview(b).cast("B")) for b in blocks}
    if len(sizes) > 1 or (sizes and next(iter(sizes)) % config.kv_bytes_per_token):
        raise ValueError(f"bytes_to_layers: block sizes {sorted(sizes)} are not one multiple "
                         f"of kv_bytes_per_token {config.kv_bytes_per_token}")
    block_tokens = next(iter(sizes)) // config.kv_bytes_per_token if sizes else 0
    if n_tokens < 0 or n_tokens > len(blocks) * block_tokens:
        raise ValueError(f"bytes_to_layers: {n_tokens} tokens but {len(blocks)} blocks of "
                         f"{block_tokens} tokens")
    slice_bytes = block_tokens * config.layer_kv_bytes_per_token
    used = blocks[:-(-n_tokens // block_tokens)] if n_tokens else []
    out = []
    for i in range(config.layers):
        parts = [layer_from_bytes(memoryview(b).cast("B")[i * slice_bytes:], block_tokens,
                                  config) for b in used]
        k = torch.cat([p[0] for p in parts])[:n_tokens] if parts else _empty(config)
        v = torch.cat([p[1] for p in parts])[:n_tokens] if parts else _empty(config)
        out.append((k, v))
    return out


def _empty(config: TransformerConfig) -> torch.Tensor:
    return torch.empty(0, config.kv_heads, config.head_dim, dtype=config.torch_dtype)
