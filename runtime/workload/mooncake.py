"""Mooncake-format request traces (JSON lines) replayed as a workload.

Each line is one request::

    {"timestamp": 0, "input_length": 40160, "output_length": 6, "hash_ids": [0, 1, ...]}

A line may also carry ``"class"``: the request's latency class (``interactive``, the
default, or ``batch``; see :mod:`runtime.slo`).

``timestamp`` is the arrival in milliseconds, ``hash_ids`` the ids of the
prompt's prefix blocks (512 tokens each in Mooncake's traces): equal ids are
equal blocks, so a request can load the KV of every leading block already in
storage instead of computing it.

Hits are decided once, at load time, in timestamp order: a request hits the
leading run of its blocks that are stored when it arrives, and all its blocks
are stored right after it (the write-back), before the next line is looked at.
That is the usual trace-replay convention (the trace knows nothing of when a
request finishes); it overstates hits only for a request whose prefix was
written by a request still running when it arrives.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.request import Request
from runtime.slo import INTERACTIVE, check_class

_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


@dataclass(frozen=True, slots=True)
class TraceLine:
    """One validated line of a trace."""

    line_no: int
    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]
    slo_class: str = INTERACTIVE


class StoredBlockSet:
    """The set of stored prefix blocks: unlimited, or an LRU of ``capacity`` blocks.

    ``lookup`` returns how many leading blocks are stored and refreshes them;
    ``store`` writes all blocks of a request. Blocks of one request are touched
    last-to-first, so its head blocks are the most recent and a full store
    evicts tails first: evicting a head block would orphan every block behind
    it in that prefix (the same order as vLLM's prefix cache).
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def lookup(self, hash_ids: Iterable[int]) -> int:
        run: list[int] = []
        for block in hash_ids:
            if block not in self._blocks:
                break
            run.append(block)
        if self.capacity is not None:
            for block in reversed(run):
                self._blocks.move_to_end(block)
        return len(run)

    def store(self, hash_ids: tuple[int, ...]) -> None:
        if self.capacity == 0:
            return
        for block in reversed(hash_ids):
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        if self.capacity is not None:
            while len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)


class MooncakeTrace:
    """A Mooncake-format trace as a ``Workload``: every line is one request.

    Request ``i`` (the ``i``-th non-blank line, from 0) has ``request_id`` and
    ``agent_id`` ``i`` (each request is its own agent), turn 0, arrival
    ``timestamp / 1000 × time_scale`` seconds (``time_scale`` < 1 compresses
    the trace into a higher load), ``hit_tokens`` = stored leading blocks ×
    ``trace_block_tokens`` capped at ``input_length - 1`` (one token must be
    computed), ``appended_tokens`` = the rest of the prompt,
    ``gen_tokens = max(1, output_length)`` and ``block_hashes = hash_ids``.
    ``storage_capacity_blocks`` bounds the store to an LRU of that many
    blocks (None = unlimited). ``limit`` keeps only the first requests.
    Malformed lines raise ``ValueError`` naming the file and line; blank lines
    are skipped.
    """

    def __init__(self, path: str | Path, *, storage_capacity_blocks: int | None = None,
                 trace_block_tokens: int = 512, time_scale: float = 1.0,
                 limit: int | None = None) -> None:
        _check_int("storage_capacity_blocks", storage_capacity_blocks, 0, optional=True)
        _check_int("trace_block_tokens", trace_block_tokens, 1)
        _check_int("limit", limit, 1, optional=True)
        if not (isinstance(time_scale, int | float) and math.isfinite(time_scale)
                and time_scale > 0):
            raise ValueError(f"time_scale: must be a finite number > 0, got {time_scale!r}")
        self.path = Path(path)
        self.name = f"mooncake-{self.path.stem}"
        self.storage_capacity_blocks = storage_capacity_blocks
        self.trace_block_tokens = trace_block_tokens
        self.time_scale = float(time_scale)
        self._store = StoredBlockSet(storage_capacity_blocks)
        self._requests: list[Request] = []
        self._hit_blocks = 0
        self._blocks = 0
        for line in read_trace(self.path, limit):
            self._requests.append(self._request(line))
        if not self._requests:
            raise ValueError(f"{self.path}: no requests in the trace")
        self.total_requests = len(self._requests)

    def _request(self, line: TraceLine) -> Request:
        hit_blocks = self._store.lookup(line.hash_ids)
        self._store.store(line.hash_ids)
        self._hit_blocks += hit_blocks
        self._blocks += len(line.hash_ids)
        hit = min(hit_blocks * self.trace_block_tokens, line.input_length - 1)
        index = len(self._requests)
        return Request(
            request_id=index, agent_id=index, turn=0, hit_tokens=hit,
            appended_tokens=line.input_length - hit,
            gen_tokens=max(1, line.output_length),
            arrival_s=line.timestamp_ms / 1000.0 * self.time_scale,
            block_hashes=line.hash_ids, slo_class=line.slo_class,
        )

    def initial_requests(self) -> list[Request]:
        """Every request of the trace, in arrival order."""
        return list(self._requests)

    def on_complete(self, request: Request, finish_s: float) -> list[Request]:
        """A trace releases nothing: every request is known up front."""
        return []

    def stats(self) -> dict[str, float]:
        """Requests, span, mean prompt/output/hit tokens, hit rate, block reuse share.

        ``block_reuse`` is the share of all prompt blocks that were a stored
        leading prefix (before the one-token cap); ``hit_rate`` the share of
        prompt tokens loaded rather than computed.
        """
        reqs = self._requests
        n = len(reqs)
        prompt = sum(r.prompt_tokens for r in reqs)
        hits = sum(r.hit_tokens for r in reqs)
        return {
            "requests": float(n),
            "duration_s": reqs[-1].arrival_s - reqs[0].arrival_s,
            "mean_input": prompt / n,
            "mean_output": sum(r.gen_tokens for r in reqs) / n,
            "mean_hit": hits / n,
            "hit_rate": hits / prompt,
            "block_reuse": self._hit_blocks / self._blocks if self._blocks else 0.0,
        }


def read_trace(path: Path, limit: int | None = None) -> Iterator[TraceLine]:
    """Validated lines of a trace file, in order; ``ValueError`` names file and line."""
    previous: int | None = None
    count = 0
    with path.open(encoding="utf-8") as lines:
        for line_no, text in enumerate(lines, start=1):
            if limit is not None and count >= limit:
                return
            if not text.strip():
                continue
            line = parse_line(text, line_no, path)
            if previous is not None and line.timestamp_ms < previous:
                raise ValueError(f"{path}:{line_no}: timestamp {line.timestamp_ms} goes "
                                 f"backwards (previous line: {previous})")
            previous = line.timestamp_ms
            count += 1
            yield line


def parse_line(text: str, line_no: int, path: Path | str = "<trace>") -> TraceLine:
    """One line of a trace, validated."""
    where = f"{path}:{line_no}"
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in _FIELDS:
        if key not in obj:
            raise ValueError(f"{where}: missing field {key!r}")
    for key, low in (("timestamp", 0), ("input_length", 1), ("output_length", 0)):
        value = obj[key]
        if not _is_int(value) or value < low:
            raise ValueError(f"{where}: {key} must be an integer >= {low}, got {value!r}")
    hash_ids = obj["hash_ids"]
    if not isinstance(hash_ids, list) or not all(_is_int(h) for h in hash_ids):
        raise ValueError(f"{where}: hash_ids must be a list of integers, got "
                         f"{_short(hash_ids)}")
    slo_class = check_class(obj.get("class", INTERACTIVE), f"{where}: class")
    return TraceLine(line_no, obj["timestamp"], obj["input_length"], obj["output_length"],
                     tuple(hash_ids), slo_class)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_int(key: str, value: int | None, low: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{key}: must be an integer >= {low}, got {value!r}")
