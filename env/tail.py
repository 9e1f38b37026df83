"""Encoding version 2's features, written after version 1's (see :mod:`env.encoding`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from runtime.cluster import ClusterSpec
from runtime.request import Request
from runtime.slo import BATCH
from runtime.view import ClusterView

NODE_CACHE_FEATURES = 3
PE_CACHE_FEATURES = 1
REQUEST_CLASS_FEATURES = 2
CHOICE_FEATURES = 4
QUEUE_CHOICES = 4


def tail_size(max_nodes: int, max_prefill: int) -> int:
    return (max_nodes * NODE_CACHE_FEATURES + max_prefill * PE_CACHE_FEATURES
            + REQUEST_CLASS_FEATURES + QUEUE_CHOICES * CHOICE_FEATURES)


def write_tail(out: np.ndarray, max_nodes: int, max_prefill: int, spec: ClusterSpec,
               request: Request | None, view: ClusterView, waiting: Sequence[Request]) -> None:
    """Caches, the request's class and wait, and the waiting requests, into ``out`` (the
    encoding's padding: ``max_nodes`` nodes, ``max_prefill`` prefill engines)."""
    out[:] = 0.0
    log1p, kvb = math.log1p, spec.model.kv_bytes_per_token
    dram, snic = spec.node.dram_cache_bytes, spec.node.snic_bytes_s
    hit = request.hit_tokens if request is not None else 0
    prefix = view.prefix
    if prefix is None or request is None or prefix.request_id != request.request_id or not hit:
        prefix = None
    for n in view.nodes:
        k = n.node_id * NODE_CACHE_FEATURES
        out[k] = n.cache_used_bytes / dram if dram > 0 else 0.0
        if prefix is not None:
            out[k + 1] = min(prefix.dram_blocks[n.node_id] * prefix.block_tokens, hit) / hit
        out[k + 2] = spec.compute_factor_of(n.node_id)
    at = max_nodes * NODE_CACHE_FEATURES
    if prefix is not None:
        for k, blocks in enumerate(prefix.hbm_blocks):
            out[at + k] = min(blocks * prefix.block_tokens, hit) / hit
    at += max_prefill * PE_CACHE_FEATURES
    if request is not None:
        out[at] = 1.0 if request.slo_class == BATCH else 0.0
        out[at + 1] = log1p(max(0.0, view.time_s - request.arrival_s))
    at += REQUEST_CLASS_FEATURES
    for r in list(waiting)[:QUEUE_CHOICES]:
        out[at] = 1.0
        out[at + 1] = log1p(r.hit_tokens * kvb / snic)
        out[at + 2] = log1p(max(0.0, view.time_s - r.arrival_s))
        out[at + 3] = 1.0 if r.slo_class == BATCH else 0.0
        at += CHOICE_FEATURES
