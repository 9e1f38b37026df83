"""The one protocol every scheduler implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from runtime.decision import Decision
from runtime.request import Request
from runtime.view import ClusterView


@runtime_checkable
class Policy(Protocol):
    """Chooses the prefill engine, decode engine and path for a request.

    ``decide`` does no I/O and does not mutate ``view``; it returns ``None`` to
    defer (no engine can take the request now; it then waits in FIFO order).
    The executor applies the decision (reserving capacity) before asking about
    the next request. A policy that learns from outcomes may also define
    ``complete(request_id, outcome)``.
    """

    name: str

    def decide(self, request: Request, view: ClusterView) -> Decision | None: ...
