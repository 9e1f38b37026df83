"""What the router keeps about requests and nodes, the faults it injects, how it fails."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from runtime.cache.stored import StoredBlocks
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer
from runtime.execution.job import Job
from runtime.live.clock import Clock
from runtime.live.messages import (
    Fin,
    First,
    Loaded,
    Rdma,
    Stats,
)
from runtime.live.wire import Channel
from runtime.placement import Ledger, Phase, WaitingQueue
from runtime.placement.lifecycle import (
    DECODING,
    FINISHED,
    LOADING_RDMA,
    LOADING_STORAGE,
    PREFILLING,
    WAITING,
)
from runtime.request import Request
from runtime.view import ClusterView

if TYPE_CHECKING:
    from runtime.live.router.caches import RouterCaches

#: The unfinished tokens a dead engine shows in the view (far above any real backlog).
DEAD_BACKLOG_TOKENS = 10**12
#: Phases in which a request's work sits on its engines' nodes.
ON_NODES = frozenset({LOADING_STORAGE, LOADING_RDMA, PREFILLING, DECODING})

#: Node reports about one attempt of one request.
Progress = Rdma | Loaded | First | Fin

Decider = Callable[[Request, ClusterView], Awaitable[Decision | Defer | None]]


class RunFailed(RuntimeError):
    """A node reported a fatal error, or the run cannot make progress; ``outcome`` holds
    the run's admitted/completed/lost/duplicated counts where the router had started."""

    def __init__(self, message: str, outcome: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class Entry:
    """A request in the router: its simulator-style record, its phase and where it went."""

    job: Job
    phase: Phase = WAITING
    attempt: int = 0
    pe: int = -1
    de: int = -1
    peer: int = -1  # the node whose DRAM cache sends it blocks (-1: none)
    completions: int = 0  # ``fin`` reports of its current attempt (more than 1: duplicated)
    front: int = -1  # served over HTTP: the decode engine whose front holds it (else -1)
    pinned: Decision | None = None  # the endpoint picker's decision, kept unless it fails
    # The model engine's: a served prompt's ids, and the tokens the request generated.
    prompt_ids: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)

    @property
    def request(self) -> Request:
        return self.job.request

    def nodes(self, spec: ClusterSpec) -> set[int]:
        """The nodes its current attempt uses: its engines' and a peer serving blocks."""
        return {spec.node_of(self.pe), spec.node_of(self.de)} | (
            {self.peer} if self.peer >= 0 else set())


def outcome(entries: dict[int, Entry], duplicated: int) -> dict[str, int]:
    """Admitted, completed (exactly once), lost and duplicated requests of a run."""
    completed = sum(e.phase is FINISHED for e in entries.values())
    return {"admitted": len(entries), "completed": completed,
            "lost": len(entries) - completed, "duplicated": duplicated}


@dataclass
class NodeState:
    """The latest report of one node, and placements sent since it."""

    channel: Channel
    pid: int = 0
    read_q: float = 0.0
    free_buffer: float = 0.0
    ack: int = -1
    busy: dict[int, float] = field(default_factory=dict)
    placed: list[tuple[int, float]] = field(default_factory=list)  # (sent, modelled bytes)
    sent: int = 0  # placements sent to it (a node acknowledges them by this number)
    dead: bool = False
    stats: Stats | None = None
    heard: float = 0.0  # wall clock of its last message


class Routing(Protocol):
    """What the router's helpers (:mod:`.ingress`, :mod:`.loss`) use of it."""

    spec: ClusterSpec
    nodes: dict[int, NodeState]
    entries: dict[int, Entry]
    counters: Counter[str]
    clock: Clock
    ledger: Ledger
    waiting: WaitingQueue[Entry]
    caches: RouterCaches | None
    stored: StoredBlocks
    decider: Decider
    serving: bool

    def admit(self, entry: Entry) -> None: ...

    def down(self, engine: int) -> str | None: ...

    def fail(self, message: str) -> None: ...

    def requeue(self, entry: Entry) -> None: ...


@dataclass(frozen=True)
class Faults:
    """Faults to inject: kill a node at a model time; corrupt, in storage, the first block
    of the first ``corrupt_blocks`` requests that read any."""

    kill_node: int | None = None
    kill_at_s: float = 0.0
    corrupt_blocks: int = 0


NO_FAULTS = Faults()
