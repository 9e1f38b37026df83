"""The workload contract the simulator and the live runtime drive."""

from __future__ import annotations

from typing import Protocol

from runtime.request import Request


class Workload(Protocol):
    """A source of requests.

    ``initial_requests`` gives every request whose arrival time is known before
    the run (offline agents' first turns, online agents' first turns, a trace's
    lines). ``on_complete`` is told when a request finishes at ``finish_s`` and
    returns the requests it releases (an agent's next turn), with arrival times
    at or after ``finish_s``. Request ids are unique within a workload. The run
    ends when every request has completed and none is released.
    """

    name: str

    def initial_requests(self) -> list[Request]: ...

    def on_complete(self, request: Request, finish_s: float) -> list[Request]: ...
