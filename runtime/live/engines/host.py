"""What the live engines use of their node: :class:`NodeServices`.

The node (:class:`runtime.live.node.Node`) implements it; the engines see only
this, so they do not import the node that owns them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from runtime.cluster import ClusterSpec
from runtime.cost import CostModel
from runtime.live.cache import NodeCaches
from runtime.live.clock import Clock
from runtime.live.config import LiveOptions
from runtime.live.engines.job import LiveJob
from runtime.live.front import Front
from runtime.live.messages import NodeReport, PeerMessage
from runtime.live.reader import StorageSide
from runtime.live.transport.base import RemoteRegion
from runtime.live.writer import Writer

if TYPE_CHECKING:  # needs torch: imported only where the model engine runs
    from runtime.live.engines.model import NodeModel


class NodeServices(Protocol):
    """The node's state and services its engines use."""

    node_id: int
    spec: ClusterSpec
    opts: LiveOptions
    cost: CostModel
    layers: int
    block_bytes: int
    slice_bytes: int
    paced_cnic: bool  # CNICs paced by the node (else shaped by the kernel)
    counters: Counter[str]
    jobs: dict[int, LiveJob]
    pool: ThreadPoolExecutor
    loop: asyncio.AbstractEventLoop
    clock: Clock
    storage: StorageSide
    caches: NodeCaches | None  # None: the cluster has no cache
    writer: Writer  # one-sided writes into peers' buffers
    front: Front | None  # its HTTP fronts, where it serves requests over HTTP
    model: NodeModel | None  # the model engine's transformer (None: emulated engines)

    def node_of(self, engine: int) -> int: ...

    def remote(self, local: int, peer: int) -> RemoteRegion: ...

    def to_router(self, msg: NodeReport) -> None: ...

    def to_peer(self, node: int, msg: PeerMessage) -> None: ...

    async def write_back(self, tokens: int, names: list[str],
                         blocks: list[bytes] | None = None) -> None: ...

    async def guard(self, coro: Coroutine[Any, Any, Any]) -> Any: ...

    def fatal(self, message: str) -> None: ...
