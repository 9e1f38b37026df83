"""The one protocol every scheduler implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from runtime.decision import Decision, Defer
from runtime.request import Request
from runtime.view import ClusterView


@runtime_checkable
class Policy(Protocol):
    """Chooses the prefill engine, decode engine and path for a request.

    ``decide`` does no I/O and does not mutate ``view``; it returns a
    :class:`Defer` (or ``None``) when no engine can take the request now; the
    request then waits at the head of the FIFO queue.
    The executor applies the decision (reserving capacity) before asking about
    the next request. A policy that learns from outcomes may also define
    ``complete(request_id, outcome)``.
    """

    name: str

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer | None: ...
