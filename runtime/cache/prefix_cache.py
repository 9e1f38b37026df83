"""One KV cache of bounded size that keeps prefixes: a radix tree of block runs.

Prompts are chains of block hashes (see :mod:`runtime.cache.prefix`), so what a
cache holds is a tree: a run of blocks, then branches where prompts diverge (as
SGLang's radix cache). Each node of the tree is a run ``hashes[start:end]`` of
consecutive blocks, so storing or matching a whole prompt costs a few dictionary
lookups, not one per block: an agent's next turn extends its run in place. Thanks
to the chain, comparing the last hash of a run tells whether all of it matches.

Sizes are in tokens (a block holds ``block_tokens`` of its request's tokens). Only
a leaf run gives up blocks, tail first, so a cache always holds whole prefixes;
the leaf with the smallest key goes first, and the key is what the eviction policy
says (LRU: the time of the last hit). Every change can be reported to an
``observer`` (``"store"`` / ``"evict"``, hashes, start, end): tests audit the cache
with it block by block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from heapq import heappop, heappush

from runtime.eviction import Eviction

Observer = Callable[[str, Sequence[int], int, int], None]


class _Run:
    """Blocks ``hashes[start:end]``, below ``parent`` (None: a root run)."""

    __slots__ = ("hashes", "start", "end", "parent", "children", "key", "block_tokens",
                 "alive")

    def __init__(self, hashes: Sequence[int], start: int, end: int, parent: _Run | None,
                 key: float, block_tokens: int) -> None:
        self.hashes = hashes
        self.start = start
        self.end = end
        self.parent = parent
        self.children: dict[int, _Run] = {}
        self.key = key
        self.block_tokens = block_tokens
        self.alive = True


class PrefixCache:
    """A prefix cache of ``capacity_tokens`` tokens (see the module docstring)."""

    __slots__ = ("capacity_tokens", "used_tokens", "_eviction", "roots", "_heap", "_seq",
                 "_runs", "observer")

    def __init__(self, capacity_tokens: int, eviction: Eviction) -> None:
        if capacity_tokens < 0:
            raise ValueError(f"cache capacity must be >= 0 tokens, got {capacity_tokens}")
        self.capacity_tokens = capacity_tokens
        self.used_tokens = 0
        self._eviction = eviction
        #: The runs that start a prefix, by their first block (read-only outside).
        self.roots: dict[int, _Run] = {}  # runs that start a prefix, by first block
        self._heap: list[tuple[float, int, _Run]] = []
        self._seq = 0
        self._runs = 0  # live runs: the heap is compacted when it outgrows them
        self.observer: Observer | None = None

    # -- reading --------------------------------------------------------------------
    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` the cache holds (nothing changes)."""
        if not hashes or hashes[0] not in self.roots:  # the usual miss, without a walk
            return 0
        return self._walk(hashes, len(hashes))[0]

    def _walk(self, hashes: Sequence[int], limit: int) -> tuple[int, _Run | None]:
        """(matched blocks of ``hashes[:limit]``, the run holding the last matched one)."""
        if limit <= 0:
            return 0, None
        run = self.roots.get(hashes[0])
        pos, last = 0, None
        while run is not None:
            end = run.end if run.end < limit else limit
            stored = run.hashes
            if stored[end - 1] != hashes[end - 1]:
                return _diverge(stored, hashes, pos, end), run
            pos, last = end, run
            if end < run.end or end >= limit or not run.children:
                return pos, last
            run = run.children.get(hashes[end])
        return pos, last

    # -- changing -------------------------------------------------------------------
    def touch(self, hashes: Sequence[int], blocks: int, now: float) -> None:
        """A hit on the leading ``blocks`` of ``hashes``: the eviction policy re-keys them."""
        matched, run = self._walk(hashes, blocks)
        if run is not None and matched > 0:
            self._rekey(run, self._eviction.touched(run.key, now))

    def store(self, hashes: Sequence[int], end: int, block_tokens: int, now: float,
              start: int = 0) -> int:
        """Keep blocks ``[0, end)`` of ``hashes``, if the cache holds ``[0, start)`` already
        (a run that would not continue a held prefix is useless, so it is not kept); then
        give up blocks until the cache fits. Returns the leading blocks held before."""
        end = min(end, len(hashes))
        if self.capacity_tokens <= 0 or end <= 0:
            return 0
        held, run = self._walk(hashes, end)
        if held < start:
            return held
        if held < end:
            self._grow(hashes, held, end, run, block_tokens, now)
        elif run is not None:
            self._rekey(run, self._eviction.touched(run.key, now))
        if self.used_tokens > self.capacity_tokens:
            self._fit()
        return held

    def _grow(self, hashes: Sequence[int], held: int, end: int, run: _Run | None,
              block_tokens: int, now: float) -> None:
        """Add blocks ``[held, end)`` below ``run`` (which holds block ``held - 1``)."""
        if run is not None and held < run.end:
            self._split(run, held)
        if (run is not None and not run.children and run.block_tokens == block_tokens
                and run.end == held):
            run.hashes = hashes  # the chain: equal up to held, so one run goes on
            run.end = end
            run.key = now  # a leaf: its heap entry is re-keyed when it comes up
        else:
            fresh = _Run(hashes, held, end, run, now, block_tokens)
            self._runs += 1
            (run.children if run is not None else self.roots)[hashes[held]] = fresh
            self._push(fresh)
        self.used_tokens += (end - held) * block_tokens
        if self.observer is not None:
            self.observer("store", hashes, held, end)

    def _split(self, run: _Run, at: int) -> None:
        """Cut ``run`` at block ``at``: it keeps ``[start, at)``, a new child the rest."""
        tail = _Run(run.hashes, at, run.end, run, run.key, run.block_tokens)
        self._runs += 1
        tail.children = run.children
        for child in tail.children.values():
            child.parent = tail
        run.children = {run.hashes[at]: tail}
        run.end = at
        if not tail.children:
            self._push(tail)

    def _rekey(self, run: _Run, key: float) -> None:
        # Keys only grow: a leaf's heap entry, when it comes up, is pushed again with the
        # new key (one push per eviction check rather than one per hit).
        run.key = key

    def _push(self, run: _Run) -> None:
        self._seq += 1
        heappush(self._heap, (run.key, self._seq, run))
        if len(self._heap) > 4 * self._runs + 64:  # drop stale entries (sorted is a heap)
            self._heap = sorted((e[2].key, e[1], e[2]) for e in self._heap
                                if e[2].alive and not e[2].children)

    def _fit(self) -> None:
        """Give up tail blocks of the leaf with the smallest key until the cache fits."""
        while self.used_tokens > self.capacity_tokens:
            key, _, run = heappop(self._heap)
            if not run.alive or run.children:
                continue  # a stale entry: the run is gone or no longer a leaf
            if run.key != key:
                self._push(run)  # hit since it was pushed: back in with its new key
                continue
            over = self.used_tokens - self.capacity_tokens
            take = min(-(-over // run.block_tokens), run.end - run.start)
            run.end -= take
            self.used_tokens -= take * run.block_tokens
            if self.observer is not None:
                self.observer("evict", run.hashes, run.end, run.end + take)
            if run.end > run.start:
                self._push(run)  # the same key: still the oldest
            else:
                self._remove(run)

    def _remove(self, run: _Run) -> None:
        run.alive = False
        self._runs -= 1
        parent = run.parent
        siblings = parent.children if parent is not None else self.roots
        del siblings[run.hashes[run.start]]
        if parent is not None and not parent.children:
            # The parent is a leaf again: its key covers the hits its subtree had.
            if run.key > parent.key:
                parent.key = run.key
            self._push(parent)


def _diverge(stored: Sequence[int], hashes: Sequence[int], pos: int, end: int) -> int:
    """The last position ``m`` in ``(pos, end)`` where both chains agree on ``[0, m)``
    (they agree at ``pos`` and not at ``end - 1``): a binary search, by the chain."""
    low, high = pos + 1, end - 1
    while low < high:
        mid = (low + high + 1) // 2
        if stored[mid - 1] == hashes[mid - 1]:
            low = mid
        else:
            high = mid - 1
    return low
