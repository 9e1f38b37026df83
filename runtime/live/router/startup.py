"""The router's start-up handshake with the nodes: hello, setup, ready, go."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.live.messages import Go, Hello, Ready, Setup
from runtime.live.router.records import NodeState, RunFailed
from runtime.live.wire import Channel

#: Hellos waiting for the router, with the channel each came on.
Hellos = asyncio.Queue[tuple[Hello, Channel]]


def accept_hello(hellos: Hellos) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                             Awaitable[None]]:
    """The router's connection handler: a node's first message, a hello, joins ``hellos``."""
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        msg = await channel.recv()
        if not isinstance(msg, Hello):
            channel.close()
            return
        await hellos.put((msg, channel))
    return accept


async def gather_nodes(hellos: Hellos, count: int, timeout_s: float
                       ) -> tuple[dict[int, NodeState], dict[str, dict[str, Any]],
                                  dict[str, list[Any]]]:
    """Wait for ``count`` nodes' hellos; returns their states, every engine's buffer
    descriptor and every node's peer address (as :class:`Setup` carries them)."""
    nodes: dict[int, NodeState] = {}
    regions: dict[str, dict[str, Any]] = {}
    peers: dict[str, list[Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(nodes) < count:
        left = deadline - time.monotonic()
        try:
            msg, channel = await asyncio.wait_for(hellos.get(), max(left, 0.01))
        except TimeoutError:
            raise RunFailed(f"only {len(nodes)} of {count} nodes came up "
                            f"within {timeout_s:.0f} s") from None
        node = msg.node
        nodes[node] = NodeState(channel, pid=msg.pid, heard=time.monotonic())
        regions.update(msg.regions)
        peers[str(node)] = msg.peer
    return nodes, regions, peers


async def start_nodes(nodes: dict[int, NodeState], setup: Setup, timeout_s: float) -> None:
    """Send every node ``setup``, wait until each is ready, then say go."""
    for state in nodes.values():
        state.channel.send(setup)
    for node, state in nodes.items():
        ready = await asyncio.wait_for(state.channel.recv(), timeout_s)
        if not isinstance(ready, Ready):
            raise RunFailed(f"node {node} did not get ready: {ready}")
    for state in nodes.values():
        state.channel.send(Go())
