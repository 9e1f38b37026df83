"""What a KV block is called, what it holds and how its bytes are checked. Pure functions, no I/O.

A block here is a *Full Block*: every layer of ``block_tokens`` tokens, laid out
layer after layer. Blocks are content-addressed the way prefix caches are: a
block's name stands for the token prefix that produced it, so two requests that
share a prefix share its blocks, and a name always means the same bytes. The
live runtime has no model, so "computing" a block is :func:`block_content`:
deterministic pseudo-random bytes drawn from the name.
"""

from __future__ import annotations

import hashlib
import struct
import threading

import numpy as np

#: Bytes in a block name's digest; a name is twice as many hex characters.
NAME_DIGEST_BYTES = 12
#: Bytes in a payload checksum; its hex form is twice as many characters.
CHECKSUM_BYTES = 16

# blake2b's personalisation keeps the namespaces apart: an agent's block and a
# trace block can never share a name, whatever their numbers.
_AGENT_PERSON = b"dualpath-agentkv"
_TRACE_PERSON = b"dualpath-tracekv"
_CONTENT_PERSON = b"dualpath-content"

_U64_MAX = (1 << 64) - 1
# Words per generated piece: 64 KiB stays in cache, where numpy runs at memory speed.
_PIECE_WORDS = 8192
# Little-endian words, so a block's bytes are the same on every machine.
_WORD = np.dtype("<u8")


def _check_u64(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= int(value) <= _U64_MAX:
        raise ValueError(f"{what} must be in [0, 2**64), got {value}")


def block_name(agent_id: int, index: int) -> str:
    """The name of block ``index`` of agent ``agent_id``'s context (generated workloads).

    An agent's context only grows, so its block ``index`` always holds the same
    tokens: the pair names the prefix. 24 lowercase hex characters.
    """
    _check_u64(agent_id, "agent_id")
    _check_u64(index, "index")
    data = struct.pack("<QQ", int(agent_id), int(index))
    return hashlib.blake2b(data, digest_size=NAME_DIGEST_BYTES, person=_AGENT_PERSON).hexdigest()


def hashed_block_name(hash_id: int) -> str:
    """The name of a trace block with Mooncake hash id ``hash_id`` (shared across requests).

    24 lowercase hex characters, never equal to a :func:`block_name`.
    """
    _check_u64(hash_id, "hash_id")
    data = struct.pack("<Q", int(hash_id))
    return hashlib.blake2b(data, digest_size=NAME_DIGEST_BYTES, person=_TRACE_PERSON).hexdigest()


# A fixed random table, twice a piece long so any offset below one piece leaves
# a whole piece after it. SHAKE's output is fixed by its standard, so every
# process on every machine builds the same table.
_TABLE = np.frombuffer(hashlib.shake_128(b"dualpath block content table").digest(
    2 * _PIECE_WORDS * 8), dtype=_WORD)


class _Scratch(threading.local):
    """Per-thread output words for :func:`block_content`.

    Reused because a fresh large array next to the caller's fresh result costs
    page faults that take longer than the generating (measured: ~10x at 1 MiB).
    """

    def __init__(self) -> None:
        self.words = np.empty(0, dtype=_WORD)

    def take(self, n_words: int) -> np.ndarray:
        if self.words.size < n_words:
            self.words = np.empty(n_words, dtype=_WORD)
        return self.words[:n_words]


_SCRATCH = _Scratch()


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _U64_MAX
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64_MAX
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64_MAX
    return x ^ (x >> 31)


def _content_words(name: str, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """``ceil(size / 8)`` pseudo-random uint64 words for block ``name``, written to
    ``out`` or else to this thread's scratch array (valid until its next call).

    Each 64 KiB piece is a window of :data:`_TABLE` at a name-derived offset,
    XORed with a name-derived key: one numpy call per piece, which is what
    keeps small blocks fast (a seeded generator costs more than a 16 KiB block).
    Table words are random and keys differ per piece, so no two slices of a
    block are alike: a receiver that puts a layer at the wrong offset fails
    the checksum.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"block name must be a non-empty str, got {name!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"block size must be an int >= 0, got {size!r}")
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=_CONTENT_PERSON).digest()
    seed = int.from_bytes(digest, "little")
    n_words = -(-size // 8)
    if out is None:
        out = _SCRATCH.take(n_words)
    for piece, start in enumerate(range(0, n_words, _PIECE_WORDS)):
        key = _splitmix64(seed + piece)
        offset = _splitmix64(key) % _PIECE_WORDS
        length = min(_PIECE_WORDS, n_words - start)
        np.bitwise_xor(_TABLE[offset:offset + length], key, out=out[start:start + length])
    return out


def block_content(name: str, size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes: what computing block ``name`` produces.

    Every byte depends on the name and no two chunks of a block are alike.
    """
    return _content_words(name, size).view(np.uint8)[:size].tobytes()


def fill_block_content(name: str, buf: memoryview | bytearray) -> None:
    """Write ``block_content(name, len(buf))`` into the writable buffer ``buf``."""
    view = memoryview(buf).cast("B")
    if view.readonly:
        raise ValueError("fill_block_content needs a writable buffer")
    size = view.nbytes
    if size % 8 == 0:
        _content_words(name, size, out=np.frombuffer(view, dtype=_WORD))
    else:
        np.frombuffer(view, dtype=np.uint8)[:] = _content_words(name, size).view(np.uint8)[:size]


def checksum(data: bytes | bytearray | memoryview) -> str:
    """The checksum stored with a payload: blake2b, 16-byte digest, 32 hex characters."""
    return hashlib.blake2b(data, digest_size=CHECKSUM_BYTES).hexdigest()


class Checksummer:
    """:func:`checksum` over data that arrives in pieces (a block's layers as separate slices).

    ``Checksummer().update(a, b).hexdigest() == checksum(a + b)``. The pieces
    must be fed in payload order.
    """

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=CHECKSUM_BYTES)

    def update(self, *chunks: bytes | bytearray | memoryview) -> Checksummer:
        """Feed ``chunks`` in order; returns self so calls chain."""
        for chunk in chunks:
            self._hash.update(chunk)
        return self

    def hexdigest(self) -> str:
        """The checksum of everything fed so far (feeding may go on after)."""
        return self._hash.hexdigest()


def layer_slices(block_size: int, layers: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of each layer inside a Full Block of ``block_size`` bytes.

    Layers are equal and laid out in order; ``block_size`` must divide by ``layers``.
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be an int >= 1, got {layers!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if block_size % layers:
        raise ValueError(f"block_size {block_size} does not divide into {layers} equal layers")
    length = block_size // layers
    return [(i * length, length) for i in range(layers)]


def write_blocks(names: list[str], size: int) -> list[tuple[str, bytes]]:
    """The KV blocks a request produced, as (name, content) to write back."""
    return [(name, block_content(name, size)) for name in names]
