"""The K/V byte layout: per-layer [n, 2, kv_heads, head_dim], layer-major Full Blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.transformer.config import config_for
from runtime.transformer.kv import (
    block_range,
    blocks_to_bytes,
    bytes_to_layers,
    layer_from_bytes,
    pack_layer,
)
from runtime.transformer.model import DecodeSeq, Transformer

CONFIG = config_for("tiny", layers=3, max_context=1024)


def _layers(n: int, config=CONFIG, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, config.kv_heads, config.head_dim)
    return [(torch.randn(shape, generator=g).to(config.torch_dtype),
             torch.randn(shape, generator=g).to(config.torch_dtype))
            for _ in range(config.layers)]


def test_pack_layer() -> None:
    k, v = _layers(5)[0]
    kv = pack_layer(k, v)
    assert kv.shape == (5, 2, 2, 16) and kv.is_contiguous()
    assert torch.equal(kv[:, 0], k) and torch.equal(kv[:, 1], v)
    assert kv.numel() * kv.element_size() == 5 * CONFIG.layer_kv_bytes_per_token
    with pytest.raises(ValueError, match="pack_layer"):
        pack_layer(k, v[:4])


def test_layer_from_bytes_views_a_writable_slice_without_copy() -> None:
    k, v = _layers(6)[0]
    layer = CONFIG.layer_kv_bytes_per_token
    buf = bytearray(layer * 2) + bytearray(pack_layer(k, v).view(torch.uint8).numpy().tobytes())
    view = memoryview(buf)[2 * layer:]
    k2, v2 = layer_from_bytes(view, 6, CONFIG)
    assert torch.equal(k2, k) and torch.equal(v2, v)
    k2[0, 0, 0] = 123.0  # lands in the buffer: a view, not a copy
    assert np.frombuffer(buf, dtype=np.float32)[2 * layer // 4] == 123.0
    k3, _ = layer_from_bytes(buf[2 * layer:2 * layer + 4 * layer], 4, CONFIG)  # bytearray
    assert torch.equal(k3, k2[:4])


def test_layer_from_bytes_other_buffers_and_errors() -> None:
    k, v = _layers(3)[0]
    raw = pack_layer(k, v).view(torch.uint8).numpy().tobytes()
    for buf in (raw, np.frombuffer(raw, dtype=np.uint8).copy(), memoryview(raw)):
        k2, v2 = layer_from_bytes(buf, 3, CONFIG)
        assert torch.equal(k2, k) and torch.equal(v2, v)
    assert layer_from_bytes(b"", 0, CONFIG)[0].shape == (0, 2, 16)
    with pytest.raises(ValueError, match="4 tokens need 1024 bytes, the buffer has 768"):
        layer_from_bytes(raw, 4, CONFIG)


def test_block_range() -> None:
    assert block_range(0, 0, 16) == range(0, 0)
    assert block_range(0, 1, 16) == range(0, 1)
    assert block_range(15, 17, 16) == range(0, 2)
    assert block_range(32, 48, 16) == range(2, 3)
    with pytest.raises(ValueError):
        block_range(5, 3, 16)


def test_full_blocks_are_layer_major_and_zero_padded() -> None:
    n, bt = 37, 16
    layers = _layers(n)
    blocks = blocks_to_bytes(layers, n, bt, CONFIG)
    assert len(blocks) == 3
    assert all(len(b) == bt * CONFIG.kv_bytes_per_token for b in blocks)
    slice_bytes = bt * CONFIG.layer_kv_bytes_per_token
    for b, block in enumerate(blocks):
        for i, (k, v) in enumerate(layers):
            part = block[i * slice_bytes:(i + 1) * slice_bytes]
            tokens = range(b * bt, min((b + 1) * bt, n))
            want = pack_layer(k[tokens.start:tokens.stop], v[tokens.start:tokens.stop])
            valid = len(tokens) * CONFIG.layer_kv_bytes_per_token
            assert part[:valid] == want.view(torch.uint8).numpy().tobytes()
            assert part[valid:] == bytes(slice_bytes - valid)
    assert blocks_to_bytes(layers, n, bt, CONFIG, blocks=range(1, 3)) == blocks[1:]
    with pytest.raises(ValueError, match="outside"):
        blocks_to_bytes(layers, n, bt, CONFIG, blocks=range(2, 4))
    with pytest.raises(ValueError, match="2 layers given"):
        blocks_to_bytes(layers[:2], n, bt, CONFIG)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_blocks_roundtrip(dtype: str) -> None:
    config = config_for("tiny", layers=3, dtype=dtype)
    layers = _layers(50, config, seed=1)
    blocks = blocks_to_bytes(layers, 50, 16, config)
    for n in (0, 1, 16, 33, 50):
        back = bytes_to_layers(blocks, n, config)
        assert len(back) == 3
        for (k, v), (k2, v2) in zip(layers, back, strict=True):
            assert torch.equal(k[:n], k2) and torch.equal(v[:n], v2)
    writable = [bytearray(b) for b in blocks]
    assert torch.equal(bytes_to_layers(writable, 50, config)[2][1], layers[2][1])
    with pytest.raises(ValueError, match="65 tokens but 4 blocks of 16"):
        bytes_to_layers(blocks, 65, config)
    with pytest.raises(ValueError, match="block sizes"):
        bytes_to_layers([blocks[0], blocks[1][:-1]], 20, config)


def test_blocks_of_a_prefill_serve_as_the_past_of_a_decode() -> None:
    model = Transformer(CONFIG)
    tokens = list(range(100, 141))
    _, kv = model.prefill(tokens[:-1])
    blocks = blocks_to_bytes(kv, 40, 16, CONFIG)
    past = bytes_to_layers(blocks, 40, CONFIG)
    a = model.decode_step([DecodeSeq(tokens[-1], 40, kv)])
    b = model.decode_step([DecodeSeq(tokens[-1], 40, past)])
    assert torch.equal(a[0], b[0])
