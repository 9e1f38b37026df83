"""Batch invariance, bitwise: a sequence's K/V and logits do not depend on how its
prefill is chunked, nor on its decode batch mates or its place in the batch."""

from __future__ import annotations

import random

import pytest
import torch

from runtime.transformer.config import config_for
from runtime.transformer.kv import layer_from_bytes, pack_layer
from runtime.transformer.model import KV, DecodeSeq, Transformer
from runtime.transformer.tiles import Tiles

CONFIG = config_for("tiny", max_context=8192)
# Small tiles cross many tile boundaries in short contexts; the defaults are checked too.
# The second: matmuls of a fixed number of key tiles, all K/V heads at once, as on a GPU.
TILES = [Tiles(rows=4, attn_rows=4, keys=8),
         Tiles(rows=16, attn_rows=3, keys=32, key_batch=3, all_heads=True), Tiles()]


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(CONFIG.vocab) for _ in range(n)]


def _chunked(model: Transformer, tokens: list[int], sizes: list[int]
             ) -> tuple[list[torch.Tensor], list[KV]]:
    """Prefill ``tokens`` chunk by chunk; each chunk's last logits and the whole K/V."""
    kv = [model.empty_kv() for _ in range(CONFIG.layers)]
    logits, at = [], 0
    for size in sizes:
        out, new = model.prefill(tokens[at:at + size], kv)
        kv = [(torch.cat([pk, k]), torch.cat([pv, v]))
              for (pk, pv), (k, v) in zip(kv, new, strict=True)]
        logits.append(out)
        at += size
    assert at == len(tokens)
    return logits, kv


def _random_split(n: int, rng: random.Random) -> list[int]:
    cuts = sorted(rng.sample(range(1, n), rng.randrange(1, 6)))
    return [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]


def _same_kv(a: list[KV], b: list[KV]) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("tiles", TILES[:2], ids=["keys8", "keys32"])
def test_prefill_chunking_is_bitwise_invariant(tiles: Tiles) -> None:
    model = Transformer(CONFIG, tiles=tiles)
    tokens = _tokens(300, 1)
    whole_logits, whole_kv = model.prefill(tokens)
    rng = random.Random(2)
    splits = [[100, 200], [1, 299], [299, 1], [7, 8, 9, 276]] + \
        [_random_split(300, rng) for _ in range(6)]
    for sizes in splits:
        logits, kv = _chunked(model, tokens, sizes)
        assert torch.equal(logits[-1], whole_logits), sizes
        assert _same_kv(kv, whole_kv), sizes
    # Every chunk's logits are those of the one-call prefill of the tokens up to it.
    logits, _ = _chunked(model, tokens, [37, 64, 199])
    for end, chunk_logits in zip([37, 101, 300], logits, strict=True):
        assert torch.equal(chunk_logits, model.prefill(tokens[:end])[0])


def test_prefill_chunking_with_default_tiles_across_key_tiles() -> None:
    model = Transformer(CONFIG)
    keys = model.tiles.keys
    tokens = _tokens(2 * keys + 37, 3)
    whole_logits, whole_kv = model.prefill(tokens)
    for sizes in ([1, len(tokens) - 1], [keys - 1, 2, len(tokens) - keys - 1],
                  [keys + 5, keys, 32]):
        logits, kv = _chunked(model, tokens, sizes)
        assert torch.equal(logits[-1], whole_logits) and _same_kv(kv, whole_kv), sizes


def _contexts(model: Transformer, lengths: list[int]) -> list[tuple[list[int], list[KV]]]:
    out = []
    for j, n in enumerate(lengths):
        tokens = _tokens(n + 1, 100 + j)
        out.append((tokens, model.prefill(tokens[:-1])[1]))
    return out


@pytest.mark.parametrize("tiles", TILES, ids=["keys8", "keys32", "default"])
def test_decode_is_bitwise_invariant_to_batch_mates_and_place(tiles: Tiles) -> None:
    model = Transformer(CONFIG, tiles=tiles)
    lengths = [1, 7, 8, 9, 31, 33, 64, 100, 129, 255]
    contexts = _contexts(model, lengths)
    seqs = [DecodeSeq(tokens[-1], len(tokens) - 1, kv) for tokens, kv in contexts]
    alone = [model.decode_step([s]) for s in seqs]
    rng = random.Random(4)
    for _ in range(6):
        batch = rng.sample(range(len(seqs)), rng.choice([2, 5, 7, len(seqs)]))
        logits, kv = model.decode_step([seqs[j] for j in batch])
        for row, j in enumerate(batch):
            assert torch.equal(logits[row], alone[j][0][0]), (batch, j)
            assert _same_kv(kv[row], alone[j][1][0]), (batch, j)
    # The same sequence several times in one batch, at every place.
    logits, _ = model.decode_step([seqs[3]] * 7)
    assert all(torch.equal(logits[r], alone[3][0][0]) for r in range(7))


@pytest.mark.parametrize("tiles", TILES, ids=["keys8", "keys32", "default"])
def test_decode_step_equals_prefill_of_the_token(tiles: Tiles) -> None:
    model = Transformer(CONFIG, tiles=tiles)
    for tokens, past in _contexts(model, [1, 8, 40, 65]):
        step_logits, step_kv = model.decode_step([DecodeSeq(tokens[-1], len(tokens) - 1,
                                                            past)])
        logits, kv = model.prefill(tokens[-1:], past)
        assert torch.equal(step_logits[0], logits) and _same_kv(step_kv[0], kv)
        # ... and the last token of the one-call prefill of the whole context.
        whole_logits, whole_kv = model.prefill(tokens)
        assert torch.equal(whole_logits, logits)
        assert _same_kv([(k[-1:], v[-1:]) for k, v in whole_kv], kv)


def test_generation_is_invariant_to_a_crowded_batch() -> None:
    """Greedy tokens of a sequence decoded alone and inside a batch of others."""
    model = Transformer(CONFIG, tiles=TILES[0])
    prompts = [_tokens(n, 50 + n) for n in (5, 12, 30)]
    alone = [model.generate(p, 25) for p in prompts]
    states = []
    for p in prompts:
        logits, kv = model.prefill(p)
        states.append([[int(torch.argmax(logits))], kv])
    for _ in range(24):
        seqs = [DecodeSeq(out[-1], kv[0][0].shape[0], kv) for out, kv in states]
        logits, new = model.decode_step(seqs[::-1])  # reversed: other places than alone
        for j, state in enumerate(reversed(states)):
            state[0].append(int(torch.argmax(logits[j])))
            state[1] = [(torch.cat([pk, k]), torch.cat([pv, v]))
                        for (pk, pv), (k, v) in zip(state[1], new[j], strict=True)]
    assert [s[0] for s in states] == alone


def test_past_read_from_bytes_gives_the_same_bits() -> None:
    """A past viewed over raw bytes (strided K and V) is as good as a contiguous one."""
    model = Transformer(CONFIG, tiles=TILES[0])
    tokens = _tokens(70, 7)
    _, kv = model.prefill(tokens[:-1])
    views = []
    for k, v in kv:
        raw = bytearray(pack_layer(k, v).view(torch.uint8).numpy().tobytes())
        views.append(layer_from_bytes(memoryview(raw), k.shape[0], CONFIG))
    assert not views[0][0].is_contiguous()
    a = model.decode_step([DecodeSeq(tokens[-1], 69, kv)])
    b = model.decode_step([DecodeSeq(tokens[-1], 69, views)])
    assert torch.equal(a[0], b[0]) and _same_kv(a[1][0], b[1][0])


def test_invariance_holds_with_two_threads() -> None:
    torch.set_num_threads(2)  # the conftest fixture restores the count
    model = Transformer(CONFIG, tiles=Tiles(rows=16, attn_rows=8, keys=16))
    tokens = _tokens(70, 9)
    whole_logits, whole_kv = model.prefill(tokens)
    logits, kv = _chunked(model, tokens, [33, 1, 36])
    assert torch.equal(logits[-1], whole_logits) and _same_kv(kv, whole_kv)
    contexts = _contexts(model, [3, 17, 40])
    seqs = [DecodeSeq(tokens[-1], len(tokens) - 1, kv) for tokens, kv in contexts]
    batch_logits, _ = model.decode_step(seqs)
    for row, seq in enumerate(seqs):
        assert torch.equal(batch_logits[row], model.decode_step([seq])[0][0])
