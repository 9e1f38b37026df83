"""The rules of placement, shared by the simulator, the live router and the service.

- :mod:`~runtime.placement.queue`: the waiting queue, defer and ``WaitFor``;
- :mod:`~runtime.placement.ledger`: the check of a decision and the reservations it
  makes on engines (:class:`Ledger`) or on a view (:func:`reserve_view`);
- :mod:`~runtime.placement.load`: an engine's reserved load, changed only here;
- :mod:`~runtime.placement.holds`: reservations held on a view fed by reports;
- :mod:`~runtime.placement.lifecycle`: each request's :class:`Phase`.
"""

from runtime.placement.holds import Holds
from runtime.placement.ledger import (
    Ledger,
    PlacementError,
    check_engines,
    prefill_tokens,
    reserve_view,
    unavailable,
)
from runtime.placement.lifecycle import Phase, Unfinished, unfinished_message
from runtime.placement.load import EngineLoad
from runtime.placement.queue import WaitingQueue

__all__ = [
    "EngineLoad", "Holds", "Ledger", "Phase", "PlacementError", "Unfinished",
    "WaitingQueue", "check_engines", "prefill_tokens", "reserve_view", "unavailable",
    "unfinished_message",
]
