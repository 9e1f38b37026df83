"""Seeded token ids of the agentic workload: each agent's turn appends ids that depend
only on ``(seed, agent, turn)``.

The ids come from blake2b in counter mode -- a fixed, versionless function, unlike a
library generator whose stream may change between releases -- so every machine and
every later version draws the same ids. Each 64-byte digest of
``"{seed}/{agent}/{turn}/{counter}"`` gives sixteen little-endian 32-bit words, each
mapped to ``[0, vocab)`` by ``word * vocab >> 32`` (exact for a power-of-two ``vocab``
such as the byte tokenizer's 256; otherwise biased by at most ``vocab / 2**32``).
"""

from __future__ import annotations

import hashlib

import numpy as np

_WORDS_PER_DIGEST = 16  # 64 bytes / 4


def appended_tokens(seed: int, agent: int, turn: int, n: int, vocab: int) -> list[int]:
    """``n`` token ids in ``[0, vocab)`` for ``agent``'s turn ``turn`` under ``seed``."""
    for name, value in (("seed", seed), ("agent", agent), ("turn", turn), ("n", n)):
        if value < 0:
            raise ValueError(f"appended_tokens: {name} must be >= 0, got {value}")
    if not 0 < vocab <= 2**32:
        raise ValueError(f"appended_tokens: vocab must be in 1 .. 2**32, got {vocab}")
    digests = b"".join(
        hashlib.blake2b(f"{seed}/{agent}/{turn}/{c}".encode(), digest_size=64).digest()
        for c in range(-(-n // _WORDS_PER_DIGEST)))
    words = np.frombuffer(digests, dtype="<u4")[:n].astype(np.uint64)
    return ((words * np.uint64(vocab)) >> np.uint64(32)).astype(np.int64).tolist()
