"""Names of a request's cluster blocks in storage, and the placement that carries them."""

from __future__ import annotations

import hashlib
from dataclasses import astuple

from runtime.cluster import ClusterSpec
from runtime.live.blocks import block_name, hashed_block_name
from runtime.live.messages import Place
from runtime.live.router.records import Entry
from runtime.placement.plan import LoadPlan
from runtime.request import Request
from runtime.workload.base import Workload


class BlockNamer:
    """Names the cluster's blocks of a request's context; ``ratio`` is how many of a
    trace's blocks one cluster block holds (1 for generated workloads)."""

    def __init__(self, spec: ClusterSpec, workload: Workload) -> None:
        self.ratio = _trace_ratio(spec, workload)

    def names(self, req: Request, first: int, end: int) -> list[str]:
        """Names of the cluster's blocks ``first .. end-1`` of ``req``'s context.

        A trace names its own (smaller) blocks by hash id; a cluster block holding
        ``k`` of them is named by the ids together, so equal prefixes share blocks.
        """
        hashes = req.block_hashes
        if hashes is None:
            return [block_name(req.agent_id, i) for i in range(first, end)]
        k = self.ratio
        return [hashed_block_name(_fold(hashes[i * k:(i + 1) * k]))
                for i in range(first, min(end, -(-len(hashes) // k)))]


def _trace_ratio(spec: ClusterSpec, workload: Workload) -> int:
    """How many of a trace's blocks one cluster block holds (1 for generated workloads)."""
    trace_block = getattr(workload, "trace_block_tokens", None)
    if trace_block is None:
        return 1
    k, rest = divmod(spec.block_tokens, trace_block)
    if k < 1 or rest:
        raise ValueError(f"block_tokens {spec.block_tokens} must be a multiple of the trace's "
                         f"block of {trace_block} tokens to name blocks by its hash ids")
    return k


def _fold(ids: tuple[int, ...]) -> int:
    """One 63-bit id for a run of trace block ids (the id itself when there is one)."""
    if len(ids) == 1:
        return ids[0]
    digest = hashlib.blake2b(repr(ids).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def place_message(spec: ClusterSpec, namer: BlockNamer, entry: Entry, names: list[str],
                  split: tuple[int, int], plan: LoadPlan | None) -> Place:
    """The placement of ``entry``'s current attempt: hit blocks ``names``, the storage
    tokens each side reads (``split``) and, with caches, the hashes and the load plan."""
    req, block = entry.request, spec.block_tokens
    pe_tokens, de_tokens = split
    return Place(
        rid=req.request_id, attempt=entry.attempt, agent=req.agent_id, turn=req.turn,
        hit=req.hit_tokens, app=req.appended_tokens, gen=req.gen_tokens,
        arrival=req.arrival_s, pe=entry.pe, de=entry.de, pe_tokens=pe_tokens,
        de_tokens=de_tokens, names=names, nde=-(-de_tokens // block),
        pe_writes=namer.names(req, req.hit_tokens // block, -(-req.prompt_tokens // block)),
        de_writes=([] if req.block_hashes else
                   namer.names(req, req.prompt_tokens // block, -(-req.total_tokens // block))),
        hashes=[] if plan is None else list(entry.job.prefix[0]),
        plan=[] if plan is None else list(astuple(plan)),  # LoadPlan(*plan) reads it back
        tokens=entry.prompt_ids)
