"""A request inside an execution: its lifecycle phase (``state``), placement and timestamps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.placement.lifecycle import WAITING
from runtime.policy import as_learner
from runtime.request import Request

NAN = float("nan")
_NO_READ = (NAN, NAN)  # (start, end) of a read that did not happen


class Job:
    """Mutable record of one request in either execution (simulated or live)."""

    __slots__ = (
        "request", "state", "pe", "de", "share", "pe_bytes", "de_bytes", "dram_bytes",
        "peer_bytes", "peer_engine", "cached", "prefix", "reads_left",
        "remaining", "context", "loaded", "t_decision", "t_pe_read", "t_de_read",
        "t_prefill_start", "t_first_token", "t_transfer", "t_finish", "hbm_bytes",
    )

    def __init__(self, request: Request) -> None:
        self.request = request
        self.state = WAITING
        self.pe = -1
        self.de = -1
        self.share = 0.0
        self.pe_bytes = 0.0
        self.de_bytes = 0.0
        self.dram_bytes = 0.0     # hit KV from the PE node's DRAM cache
        self.peer_bytes = 0.0     # hit KV from a peer node's DRAM cache ...
        self.peer_engine = -1     # ... sent through this engine's CNIC
        self.cached = 0           # hit tokens served by caches (the leading ones)
        self.prefix: Any = None   # its block hashes and block size, once caches need them
        self.reads_left = 0
        # A full hit still computes its last token to produce the first output.
        appended = request.appended_tokens
        self.remaining = appended if appended > 1 else 1  # tokens left to prefill (>= 1)
        self.context = request.hit_tokens         # tokens before the next chunk
        self.loaded = False                       # hit KV brought into the PE yet
        self.t_decision = NAN
        self.t_pe_read = _NO_READ
        self.t_de_read = _NO_READ
        self.t_prefill_start = NAN
        self.t_first_token = NAN
        self.t_transfer = NAN     # when the P→D transfer of its KV ends
        self.t_finish = NAN
        self.hbm_bytes = 0.0

    # The request's latencies once it finished; :func:`runtime.execution.metrics.latencies`
    # is the same definition over a whole run.
    @property
    def ttft_s(self) -> float:
        """Arrival to the first token (the end of prefill)."""
        return self.t_first_token - self.request.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first; 0 for a single-token answer."""
        gen = self.request.gen_tokens
        return (self.t_finish - self.t_first_token) / (gen - 1) if gen > 1 else 0.0

    @property
    def latency_s(self) -> float:
        """Arrival to the last token."""
        return self.t_finish - self.request.arrival_s


def outcome(job: Job) -> dict[str, float]:
    """What a learning policy's ``complete`` (and the service's log) is told about a
    finished request: its TTFT, TPOT, latency and finish time."""
    return {"ttft_s": job.ttft_s, "tpot_s": job.tpot_s, "latency_s": job.latency_s,
            "finish_s": job.t_finish}


def completion_hook(policy: object) -> Callable[[Job], None] | None:
    """What an execution calls as each job finishes, for a policy that learns online
    (``None`` for one that does not): its ``complete`` with the job's outcome."""
    learner = as_learner(policy)
    if learner is None:
        return None
    return lambda job: learner.complete(job.request.request_id, outcome(job))
