"""Reservations a scheduler holds on a view it does not own (the service's view of a
cluster whose engines report to it): each lasts until the engines it names report
after it, or until the request completes."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from runtime.decision import Decision
from runtime.placement.ledger import reserve_view
from runtime.request import Request
from runtime.view import ClusterView


@dataclass(frozen=True, slots=True)
class _Hold:
    request: Request
    decision: Decision
    made: float  # the holder's clock


class Holds:
    """Decisions not yet reflected in the engines' reports, applied on top of them."""

    def __init__(self) -> None:
        self._held: dict[Hashable, _Hold] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, key: Hashable, request: Request, decision: Decision, now: float) -> None:
        self._held[key] = _Hold(request, decision, now)

    def release(self, key: Hashable) -> bool:
        """Drop a hold; False if there was none (already released or absorbed)."""
        return self._held.pop(key, None) is not None

    def release_where(self, chosen: Callable[[Hashable], bool]) -> int:
        """Drop the holds whose keys are ``chosen``; how many."""
        keys = [k for k in self._held if chosen(k)]
        for key in keys:
            del self._held[key]
        return len(keys)

    def expire(self, before: float) -> None:
        """Drop the holds made before ``before`` (the holder's clock)."""
        self.release_where(lambda key: self._held[key].made < before)

    def absorb(self, reported_at: Callable[[int], float | None]) -> None:
        """Drop the holds both of whose engines reported after the decision
        (``reported_at(engine)``: when it last reported, ``None`` if never): their
        reports count the request now."""
        for key, h in list(self._held.items()):
            pe = reported_at(h.decision.prefill_engine)
            de = reported_at(h.decision.decode_engine)
            if pe is not None and de is not None and min(pe, de) > h.made:
                del self._held[key]

    def apply(self, view: ClusterView) -> ClusterView:
        for h in self._held.values():
            view = reserve_view(view, h.request, h.decision)
        return view
