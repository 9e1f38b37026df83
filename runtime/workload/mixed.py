"""Several workloads replayed together as one (e.g. agents plus one-shot trace requests)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from runtime.request import Request
from runtime.workload.base import Workload


class MixedWorkload:
    """The union of ``parts``, each run as if alone; implements ``Workload``.

    Ids are remapped so that they stay unique across parts: part ``p`` of
    ``n`` issues request id ``r`` as ``r × n + p`` and agent id ``a`` as
    ``a × n + p`` (the part index in the low digits, so ids stay small and a
    part's order is kept). Every other field is the part's own; in particular
    ``block_hashes`` are not remapped (each part decided its hits alone).

    ``on_complete`` is routed to the part that issued the request and given
    that part's own original :class:`Request` object; what it releases is
    remapped in turn. ``initial_requests`` merges the parts' by arrival time
    (stable: ties keep part order). Deterministic when every part is.
    """

    def __init__(self, parts: Sequence[Workload]) -> None:
        parts = tuple(parts)
        if not parts:
            raise ValueError("parts: a mixed workload needs at least one part, got none")
        for i, part in enumerate(parts):
            if not all(hasattr(part, attr) for attr in
                       ("name", "initial_requests", "on_complete")):
                raise ValueError(f"parts[{i}]: not a workload (needs name, "
                                 f"initial_requests, on_complete), got {type(part).__name__}")
        self.parts = parts
        self.name = f"mixed({'+'.join(part.name for part in parts)})"
        totals = [getattr(part, "total_requests", None) for part in parts]
        counts = [t for t in totals if isinstance(t, int)]
        #: Requests the whole run will issue, when every part knows its own (else None).
        self.total_requests: int | None = sum(counts) if len(counts) == len(parts) else None
        # Issued and not yet completed: mixed id -> (part index, the part's own request).
        self._pending: dict[int, tuple[int, Request]] = {}

    def initial_requests(self) -> list[Request]:
        """Every part's initial requests, remapped, by arrival time."""
        merged = [self._issue(p, r) for p, part in enumerate(self.parts)
                  for r in part.initial_requests()]
        return sorted(merged, key=lambda r: r.arrival_s)

    def on_complete(self, request: Request, finish_s: float) -> list[Request]:
        """Forward to the owning part; remap the requests it releases."""
        entry = self._pending.pop(request.request_id, None)
        if entry is None:
            raise ValueError(f"request {request.request_id}: not issued by {self.name}, "
                             "or already completed")
        p, own = entry
        return [self._issue(p, r) for r in self.parts[p].on_complete(own, finish_s)]

    def _issue(self, part: int, request: Request) -> Request:
        n = len(self.parts)
        mixed_id = request.request_id * n + part
        if mixed_id in self._pending:
            raise ValueError(f"{self.parts[part].name}: request id {request.request_id} "
                             "issued twice while pending")
        self._pending[mixed_id] = (part, request)
        return dataclasses.replace(request, request_id=mixed_id,
                                   agent_id=request.agent_id * n + part)

    def part_of(self, request_id: int) -> int:
        """Index of the part that issued the mixed id ``request_id``."""
        return request_id % len(self.parts)
