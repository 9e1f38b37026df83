"""Cached hit blocks on the live data path.

A placement's load plan (:func:`runtime.placement.plan.load_plan`, made by the router
on its block index) says which leading hit blocks caches serve: the prefill engine's
HBM cache and its node's DRAM (:func:`take_cached`, copied into the engine's buffer
with the storage-read blocks), and another node's DRAM (:func:`serve_fetch` on that
node, written into the engine's buffer over the transport layer by layer, as the
decode path's blocks are). The index can be a moment behind the caches: a block
evicted since the decision is read from storage by the node that should have served
it (counted as ``cache_fallback_blocks``), so every placement completes. Every block,
whatever its source, is verified against its checksum when it is in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.live.blocks import block_content, checksum
from runtime.live.cache import Held, Supply
from runtime.live.engines.host import NodeServices
from runtime.live.engines.job import LiveJob
from runtime.live.engines.push import push_layers
from runtime.live.engines.staging import Staging
from runtime.live.messages import Fetch, Layer
from runtime.live.reader import Fetched


def buffer_supply(node: NodeServices, view: memoryview, job: LiveJob) -> Supply:
    """Prompt block ``i`` as ``job``'s KV in an engine's buffer holds it (its hit blocks
    are there, layer-major), or as computing it gives it (the blocks its prefill made)."""
    size, layers, columns = node.slice_bytes, node.layers, len(job.names)
    stride = columns * size

    def supply(i: int) -> Held:
        if i < columns:
            at = job.offset + i * size
            data = b"".join([view[at + layer * stride:at + layer * stride + size]
                             for layer in range(layers)])
        else:
            data = block_content(job.prompt_names[i], size * layers)
        return data, checksum(data)
    return supply


def read_supply(fetched: Fetched, first: int) -> Supply:
    """Prompt block ``i`` from a storage read of the blocks from column ``first`` on."""
    def supply(i: int) -> Held | None:
        k = i - first
        if 0 <= k < len(fetched.payloads):
            return fetched.payloads[k], fetched.checksums[k]
        return None
    return supply


def take_cached(node: NodeServices, job: LiveJob) -> list[int]:
    """Take ``job``'s HBM and local DRAM blocks from this node's caches into
    ``job.cached_in``; returns the columns they no longer hold."""
    caches, plan = node.caches, job.plan
    assert caches is not None and plan is not None
    caches.served(job.prefix, plan, job.pe, node.node_id)
    hashes = job.prefix[0]
    nhbm = -(-plan.hbm_tokens // node.spec.block_tokens)
    missing = []
    for engine, first, end in ((job.pe, 0, nhbm), (-1, nhbm, job.nlocal)):
        for i, held in zip(range(first, end), caches.take(engine, hashes[first:end]),
                           strict=True):
            if held is None:
                missing.append(i)
            else:
                job.cached_in[i] = held
    return missing


def fetch_message(node: NodeServices, job: LiveJob) -> Fetch:
    """What to ask the peer node for: ``job``'s peer-cached blocks, into its buffer."""
    plan = job.plan
    assert plan is not None and job.prefix is not None
    size = node.slice_bytes
    return Fetch(job.request.request_id, job.attempt, job.pe,
                 plan.peer_engine(job.pe, node.spec.node.gpus),
                 job.offset + job.nlocal * size, len(job.names) * size,
                 list(job.prefix[0][job.nlocal:job.ncache]), job.names[job.nlocal:job.ncache],
                 plan.dram_peer_tokens)


async def read_missing(node: NodeServices, names: Sequence[str]) -> Fetched:
    """Blocks a cache no longer holds, read from storage through this node's SNIC."""
    nbytes = len(names) * node.spec.block_tokens * node.spec.model.kv_bytes_per_token
    node.counters["cache_fallback_blocks"] += len(names)
    fetched = await node.storage.read(nbytes, names)
    node.storage.release(nbytes)  # copied out of the host buffer at once
    return fetched


async def serve_fetch(node: NodeServices, sender: Any, staging: Staging, msg: Fetch) -> None:
    """Send cached blocks from this node's DRAM into prefill engine ``msg.engine``'s
    buffer through local engine ``sender`` (a live engine: its transport and CNIC). The
    blocks were touched when the placement reached this node, as the model does at the
    decision (:meth:`runtime.live.node.Node._place`)."""
    caches = node.caches
    assert caches is not None
    held = caches.take(-1, msg.hashes)
    missing = [k for k, h in enumerate(held) if h is None]
    if missing:
        fetched = await read_missing(node, [msg.names[k] for k in missing])
        for k, payload, stored in zip(missing, fetched.payloads, fetched.checksums,
                                      strict=True):
            held[k] = (payload, stored)
    blocks = [h for h in held if h is not None]
    checksums = [c for _, c in blocks]
    pe_node = node.node_of(msg.engine)

    def landed(layer: int) -> None:
        node.to_peer(pe_node, Layer(msg.rid, msg.attempt, layer, "peer",
                                    checksums if layer == 0 else []))
    if await push_layers(node, sender.transport, staging, sender.core.cnic_out,
                         [data for data, _ in blocks], node.remote(sender.engine_id, msg.engine),
                         msg.offset, msg.stride, msg.tokens * node.spec.model.kv_bytes_per_token,
                         landed):
        node.counters["peer_blocks_sent"] += len(blocks)
