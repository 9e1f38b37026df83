"""What a scheduler may look at: immutable snapshots of engines, nodes, links and the queue."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.cluster import ClusterSpec
from runtime.role import Role
from runtime.slots import slot_init


@slot_init
@dataclass(frozen=True, slots=True)
class EngineView:
    """One engine (one GPU).

    ``seq`` and ``tok`` count requests assigned to the engine and not yet
    finished there. A prefill engine counts the tokens it still has to compute
    (the prompt tokens not loaded from storage); a decode engine counts the
    context tokens of its requests (prompt plus tokens to generate), which is
    what occupies its HBM. ``free_hbm_bytes`` is HBM left for KV after
    reservations. The engine's CNIC (its link view) is busy with queued KV
    transfers until ``cnic_busy_until_s``; see :meth:`ClusterView.cnic_backlog_bytes`.
    """

    engine_id: int
    role: Role
    node_id: int
    group: int
    seq: int
    tok: int
    free_hbm_bytes: float
    cnic_busy_until_s: float = 0.0


@slot_init
@dataclass(frozen=True, slots=True)
class NodeView:
    """One node. ``read_q_tokens`` is the node's storage read queue (its SNIC link view):
    tokens of KV requested from storage through this node and not yet read.
    ``cache_used_bytes``: what its DRAM KV cache holds (of ``node.dram_cache_gb``)."""

    node_id: int
    role: Role
    read_q_tokens: float
    snic_bytes_s: float
    free_buffer_bytes: float
    cache_used_bytes: float = 0.0


@slot_init
@dataclass(frozen=True, slots=True)
class QueueView:
    """Requests waiting for a decision (FIFO), with their total prompt tokens."""

    requests: int
    tokens: int


@slot_init
@dataclass(frozen=True, slots=True)
class PrefixView:
    """Where the prefix of the request at hand (``request_id``) sits in the caches:
    ``dram_blocks[n]`` leading blocks of it in node ``n``'s DRAM, ``hbm_blocks[e]`` in
    prefill engine ``e``'s HBM cache; a block holds ``block_tokens`` tokens."""

    request_id: int
    block_tokens: int
    dram_blocks: tuple[int, ...]
    hbm_blocks: tuple[int, ...]

    @property
    def anywhere(self) -> bool:
        """Some cache holds some of the prefix."""
        return any(self.dram_blocks) or any(self.hbm_blocks)


@slot_init
@dataclass(frozen=True, slots=True)
class ClusterView:
    """A snapshot of the cluster at ``time_s`` that a policy decides on; never mutated.

    ``prefix`` is where the prefix of the request the policy is asked about sits
    (``None`` where the cluster has no cache).
    """

    time_s: float
    spec: ClusterSpec
    engines: tuple[EngineView, ...]
    nodes: tuple[NodeView, ...]
    queue: QueueView
    prefix: PrefixView | None = None

    def prefill_engines(self) -> tuple[EngineView, ...]:
        return self.engines[: self.spec.prefill_engines]

    def decode_engines(self) -> tuple[EngineView, ...]:
        return self.engines[self.spec.prefill_engines:]

    def cnic_backlog_bytes(self, engine_id: int) -> float:
        """KV bytes still queued on the engine's CNIC at ``time_s``."""
        busy = self.engines[engine_id].cnic_busy_until_s - self.time_s
        return max(0.0, busy) * self.spec.node.cnic_kv_bytes_s
