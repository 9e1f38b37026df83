"""The waiting queue: first-in first-out, with defer and ``WaitFor``.

The head is asked about first. A policy that defers the head names what it
waits for (``WaitFor``); the queue is asked again only when that kind of
capacity frees (or anything at all, for ``WaitFor.ANY``) or a request arrives.
This is the one place that decides when a deferred request is asked again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from runtime.decision import Defer, WaitFor
from runtime.request import Request
from runtime.view import QueueView

_ANY = WaitFor.ANY


class Queued(Protocol):
    @property
    def request(self) -> Request: ...


T = TypeVar("T", bound=Queued)


class WaitingQueue(Generic[T]):
    """Requests (any record with a ``request``) waiting for a decision.

    ``due`` says whether the head should be asked now; ``items`` is public for
    hot loops that only read it.
    """

    __slots__ = ("items", "tokens", "due", "_wait", "_view")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self.tokens = 0           # prompt tokens of the waiting requests
        self.due = False
        self._wait: WaitFor | None = None  # what a deferred head waits for
        self._view = QueueView(0, 0)

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
        wait = self._wait  # wake(None), inlined: once per arrival
        if wait is None or wait is _ANY:
            self.due = True

    def put_back(self, item: T) -> None:
        """A request whose placement was undone goes back to the head (it keeps its turn)
        and is asked about at once: what the old head waited for does not hold for it."""
        self.items.appendleft(item)
        self.tokens += item.request.prompt_tokens
        self._wait = None
        self.due = True

    def defer(self, answer: Defer | None) -> None:
        """The policy deferred the head: wait for what it names (``None``: anything)."""
        self.due = False
        self._wait = answer.wait_for if answer is not None else _ANY

    def take(self) -> T:
        """The head was placed: remove and return it."""
        self._wait = None
        item = self.items.popleft()
        self.tokens -= item.request.prompt_tokens
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
