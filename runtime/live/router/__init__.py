"""The router of a live cluster: replays a workload and asks a policy for every request.

Modules: :mod:`.core` (:class:`Router`), :mod:`.records` (what it keeps about requests
and nodes, :class:`Faults`, :class:`RunFailed`) and :mod:`.naming` (block names).

The placement core (``runtime/placement``) gives it the waiting queue (FIFO, defer
and ``WaitFor`` as in the simulator), the check of a decision and the ledger of
engine reservations (taken by its decisions, given back as the nodes report
progress). It takes the nodes' storage read queues and CNIC backlogs from their
``state`` reports (plus what it placed since each report) and builds the
:class:`ClusterView` it passes to the policy.

Every admitted request has one :class:`Phase` at every moment (placing, which
awaits the storage service, included), and the run ends only when every
admitted request is finished; otherwise it fails naming those that are not. A
node that goes away, or stays silent longer than ``liveness_s`` (it is then
killed: fenced), has its requests cancelled on the other side and put back at
the head of the queue under a new attempt number; reports of an old attempt are
ignored, so every request completes exactly once.
"""

from runtime.live.router.core import Router
from runtime.live.router.records import (
    DEAD_BACKLOG_TOKENS,
    Decider,
    Entry,
    Faults,
    NodeState,
    RunFailed,
)

__all__ = ["DEAD_BACKLOG_TOKENS", "Decider", "Entry", "Faults", "NodeState", "Router", "RunFailed"]
