"""Prompt text → token ids.

The default tokenizer is the UTF-8 bytes of the text (one token per byte, ids
0..255): no vocabulary to download, the same ids in the picker and every front,
and a length anyone can predict. A real deployment plugs its model's tokenizer in
as ``module:attribute`` — an object, or a class or function returning one, with
``encode(text) -> list[int]`` and a ``name``.
"""

from __future__ import annotations

import importlib
from typing import Protocol


class Tokenizer(Protocol):
    name: str

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """One token per UTF-8 byte of the text."""

    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def load_tokenizer(spec: str = "bytes") -> Tokenizer:
    """``bytes`` or ``module:attribute`` (see the module docstring)."""
    if spec == "bytes":
        return ByteTokenizer()
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"tokenizer {spec!r}: expected 'bytes' or 'module:attribute'")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"tokenizer {spec!r}: {exc}") from None
    # A class or a factory function gives the tokenizer; anything else is one.
    made = isinstance(obj, type) or (callable(obj) and not hasattr(obj, "encode"))
    tokenizer = obj() if made else obj
    if not callable(getattr(tokenizer, "encode", None)):
        raise ValueError(f"tokenizer {spec!r}: has no encode(text) method")
    return tokenizer
