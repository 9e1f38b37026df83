"""Blocks held in host memory, written into a prefill engine's buffer layer by layer.

One rule for both senders: the decode side's storage reads (the DE path) and a
peer's DRAM-cached blocks. Each layer of every block is gathered into a staging
slot and written with one one-sided write; the sender's CNIC is paced here unless
the kernel shapes it, and the prefill engine is told as each layer lands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from runtime.execution.link import Link
from runtime.live.engines.host import NodeServices
from runtime.live.engines.staging import Staging
from runtime.live.reader import record_transfer
from runtime.live.transport.base import RemoteRegion, Transport


async def push_layers(node: NodeServices, transport: Transport, staging: Staging, link: Link,
                      blocks: Sequence[bytes], remote: RemoteRegion, offset: int, stride: int,
                      nbytes: float, layer_done: Callable[[int], None]) -> bool:
    """Write ``blocks`` (Full Blocks) at ``offset`` of ``remote``, layer ``i`` at ``offset +
    i * stride``; ``nbytes`` is what ``link`` (the sender's CNIC) accounts. Calls
    ``layer_done(i)`` as each lands; False if a write failed (the peer is gone)."""
    clock, layers, size = node.clock, node.layers, node.slice_bytes
    now = clock.now()
    if node.paced_cnic:
        start, end = link.reserve(now, nbytes, node.cost.rdma_overhead_s(nbytes))
    for layer in range(layers):
        slot = await staging.take()
        try:
            ok = await node.writer.write_gathered(
                transport, staging.region, slot, staging.slot_bytes,
                [data[layer * size:(layer + 1) * size] for data in blocks],
                remote, offset + layer * stride)
        finally:
            staging.give(slot)
        if not ok:
            return False
        if node.paced_cnic:
            await clock.sleep_until(start + (layer + 1) * (end - start) / layers)
        layer_done(layer)
    if not node.paced_cnic:
        record_transfer(link, now, clock.now(), nbytes)
    return True
