"""The waiting queue: in arrival order, with defer, ``WaitFor`` and a queue order.

The request the order picks (:meth:`WaitingQueue.pick`; the head under FIFO) is
asked about first. A policy that defers the head names what it
waits for (``WaitFor``); the queue is asked again only when that kind of
capacity frees (or anything at all, for ``WaitFor.ANY``) or a request arrives.
This is the one place that decides when a deferred request is asked again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from heapq import heappop, heappush
from typing import Any, Generic, Protocol, TypeVar

from runtime.cluster import ClusterSpec
from runtime.decision import Defer, WaitFor
from runtime.placement.order import FIFO, QueueOrder
from runtime.request import Request
from runtime.view import QueueView

_ANY = WaitFor.ANY


class Queued(Protocol):
    @property
    def request(self) -> Request: ...


T = TypeVar("T", bound=Queued)


class WaitingQueue(Generic[T]):
    """Requests (any record with a ``request``) waiting for a decision.

    ``due`` says whether the queue should be asked now; ``items`` (in arrival
    order) is public for hot loops that only read it.
    """

    __slots__ = ("items", "tokens", "due", "ordered", "_wait", "_view", "_order", "_key",
                 "_heap", "_live", "_seq")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self.tokens = 0           # prompt tokens of the waiting requests
        self.due = False
        self._wait: WaitFor | None = None  # what a deferred head waits for
        self._view = QueueView(0, 0)
        self._order = FIFO
        self.ordered = False  # an order other than FIFO: pick() has work to do
        self._key: Any = None
        # Non-FIFO orders: a heap of (key, seq, item), an entry valid while _live
        # maps the item to its seq (taken items are dropped lazily).
        self._heap: list[tuple[Any, int, T]] = []
        self._live: dict[int, int] = {}
        self._seq = 0

    def set_order(self, order: QueueOrder, spec: ClusterSpec) -> None:
        """Order the queue by ``order`` from now on (FIFO until set)."""
        self._order = order
        self.ordered = not order.fifo
        self._key = None if order.fifo else order.key(spec)
        self._heap, self._live = [], {}
        if self._key is not None:
            for item in self.items:
                self._index(item)

    def _index(self, item: T) -> None:
        self._seq += 1
        self._live[id(item)] = self._seq
        heappush(self._heap, (self._key(item.request), self._seq, item))

    def choices(self, pick: int, k: int) -> list[int]:
        """Indexes of up to ``k`` requests: ``pick``, then the others in arrival order."""
        n = len(self.items)
        return ([pick] + [i for i in range(min(n, k + 1)) if i != pick])[:k] if n else []

    def pick(self, now: float) -> int:
        """Index in ``items`` of the request to ask about next: the one waiting longest
        if it waited over ``max_wait_s``, else the order's first."""
        items = self.items
        if self._key is None or len(items) < 2:
            return 0
        if now - items[0].request.arrival_s > self._order.max_wait_s:
            return 0
        heap, live = self._heap, self._live
        while live.get(id(heap[0][2])) != heap[0][1]:
            heappop(heap)
        first = heap[0][2]
        return 0 if first is items[0] else items.index(first)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    @property
    def head(self) -> T:
        return self.items[0]

    @property
    def ready(self) -> bool:
        """A request waits and should be asked about now."""
        return self.due and bool(self.items)

    def arrive(self, item: T) -> None:
        """A new request joins at the tail; the head is asked again."""
        self.items.append(item)
        self.tokens += item.request.prompt_tokens
        if self._key is not None:
            self._index(item)
        wait = self._wait  # wake(None), inlined: once per arrival
        if wait is None or wait is _ANY:
            self.due = True

    def put_back(self, item: T) -> None:
        """A request whose placement was undone goes back to the head (it keeps its turn)
        and is asked about at once: what the old head waited for does not hold for it."""
        self.items.appendleft(item)
        self.tokens += item.request.prompt_tokens
        if self._key is not None:
            self._index(item)
        self._wait = None
        self.due = True

    def defer(self, answer: Defer | None) -> None:
        """The policy deferred the head: wait for what it names (``None``: anything)."""
        self.due = False
        self._wait = answer.wait_for if answer is not None else _ANY

    def take(self, index: int = 0) -> T:
        """The request at ``index`` (the head by default) was placed: remove and return it."""
        self._wait = None
        if index == 0:
            item = self.items.popleft()
        else:
            item = self.items[index]
            del self.items[index]
        self.tokens -= item.request.prompt_tokens
        if self._key is not None:
            del self._live[id(item)]
        return item

    def wake(self, freed: WaitFor | None) -> bool:
        """Something changed (``freed`` capacity; ``None``: an arrival or a change of
        any kind). Returns whether the head is due now."""
        wait = self._wait
        if wait is None or wait is _ANY or wait is freed:
            self.due = True
        return self.due

    def view(self) -> QueueView:
        """The queue as policies see it (the same object while nothing changed)."""
        view = self._view
        if view.requests != len(self.items) or view.tokens != self.tokens:
            view = self._view = QueueView(len(self.items), self.tokens)
        return view
