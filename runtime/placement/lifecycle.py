"""A request's lifecycle, as one explicit state shared by every execution.

Every admitted request is in exactly one :class:`Phase` at every moment. A
change that crosses an ``await`` (placing a request asks the storage service
first) is a phase of its own, never a gap in which the request is nowhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from enum import IntEnum


class Phase(IntEnum):
    WAITING = 0          # in the waiting queue, no decision yet
    PLACING = 1          # decided; its placement is being applied (may cross an await)
    LOADING_STORAGE = 2  # hit KV being read from storage (either side)
    LOADING_RDMA = 3     # hit KV read on the decode side, being pushed to the prefill engine
    PREFILLING = 4       # KV loaded (or none to load): queued for or in a prefill batch
    TRANSFERRING = 5     # P→D transfer of the prompt's KV
    DECODING = 6         # in the decode engine's continuous batch
    FINISHED = 7
    RESCHEDULED = 8      # its engine's node was lost; about to wait again under a new attempt
    FAILED = 9           # cannot complete (the run fails naming it)


# The members as module globals, for hot paths: reading ``Phase.PREFILLING`` goes
# through the enum class's attribute machinery, several times slower than a global.
(WAITING, PLACING, LOADING_STORAGE, LOADING_RDMA, PREFILLING, TRANSFERRING, DECODING,
 FINISHED, RESCHEDULED, FAILED) = Phase


class Unfinished(RuntimeError):
    """A run ended with admitted requests that did not finish; the message names them."""


def unfinished_message(phases: Iterable[tuple[int, Phase]], limit: int = 20) -> str | None:
    """``None`` when every ``(request_id, phase)`` is finished, else a message naming
    the requests that are not and their phases."""
    left = sorted((rid, phase) for rid, phase in phases if phase is not FINISHED)
    if not left:
        return None
    counts = Counter(phase.name.lower() for _, phase in left)
    named = ", ".join(f"{rid} ({phase.name.lower()})" for rid, phase in left[:limit])
    more = f" and {len(left) - limit} more" if len(left) > limit else ""
    by_phase = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    return f"{len(left)} admitted request(s) did not finish ({by_phase}): {named}{more}"
