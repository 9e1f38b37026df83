"""A request inside a live node: the execution's record plus what the live path needs."""

from __future__ import annotations

import asyncio

from runtime.execution.job import Job
from runtime.live.cache import Held
from runtime.live.messages import (
    Place,
)
from runtime.live.reader import Fetched
from runtime.placement.plan import LoadPlan
from runtime.request import Request


class LiveJob(Job):
    """A request inside a node: the execution's record plus what the live path needs."""

    __slots__ = ("attempt", "names", "nde", "writes", "fetched", "de_checksums",
                 "offset", "de_offset", "de_layers", "de_loaded", "cancelled", "nbytes_real",
                 "prompt_names", "plan", "ncache", "nlocal", "pe_tokens", "de_tokens",
                 "cached_in", "peer_layers", "peer_checksums", "fetch_sent", "tokens",
                 "first_token", "kv_out")

    def __init__(self, request: Request, msg: Place, *, kv_bytes_per_token: int,
                 block_tokens: int, block_bytes: int, bytes_scale: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(request)
        self.attempt = msg.attempt
        self.pe, self.de = msg.pe, msg.de
        kvb = kv_bytes_per_token
        self.pe_tokens, self.de_tokens = msg.pe_tokens, msg.de_tokens
        self.pe_bytes = msg.pe_tokens * kvb
        self.de_bytes = msg.de_tokens * kvb
        self.names = msg.names  # hit blocks: cached ones, then the PE's reads, then the DE's
        self.nde = msg.nde
        # Every prompt block's name: the full hit blocks, then those the prefill writes.
        self.prompt_names = msg.names[:request.hit_tokens // block_tokens] + msg.pe_writes
        self.plan = plan = LoadPlan(*msg.plan) if msg.plan else None
        if msg.hashes:
            self.prefix = (msg.hashes, block_tokens)
        # Leading hit blocks served by caches, and of them those on the prefill node.
        self.ncache = self.nlocal = 0
        if plan is not None:
            self.ncache = -(-plan.cached_tokens // block_tokens)
            self.nlocal = -(-(plan.hbm_tokens + plan.dram_local_tokens) // block_tokens)
            self.dram_bytes = plan.dram_local_tokens * kvb
            self.peer_bytes = plan.dram_peer_tokens * kvb
        self.cached_in: dict[int, Held] = {}  # column → bytes, for the HBM and local ones
        self.peer_layers: list[asyncio.Future[None]] = []
        self.peer_checksums: list[str] = []
        self.fetch_sent = False
        self.writes: list[str] = []
        self.fetched: Fetched | None = None
        self.de_checksums: list[str] = []
        self.offset = -1     # of its KV in the engine's registered buffer
        self.de_offset: asyncio.Future[int] = loop.create_future()
        self.de_layers: list[asyncio.Future[None]] = []
        self.de_loaded: asyncio.Future[None] = loop.create_future()
        self.cancelled = False
        self.tokens = msg.tokens  # the model engine's prompt ids, for served requests
        self.first_token = -1  # the model engine's first generated token
        self.kv_out: list[bytes] = []  # the model engine's blocks to write back
        # Its prompt's KV as stored and moved: whole hit blocks, then the appended tokens.
        self.nbytes_real = (len(self.names) * block_bytes
                            + -(-request.appended_tokens * kvb // bytes_scale))

    @property
    def pe_names(self) -> list[str]:
        """The blocks the prefill side reads from storage."""
        return self.names[self.ncache:len(self.names) - self.nde]

    @property
    def de_names(self) -> list[str]:
        """The blocks the decode side reads from storage (the last ``nde``)."""
        return self.names[len(self.names) - self.nde:]

    @property
    def cached_tokens(self) -> int:
        return self.plan.cached_tokens if self.plan is not None else 0

    def expected_checksums(self) -> list[str]:
        """The checksum each hit block must have, by column (block index)."""
        out = [self.cached_in[i][1] for i in range(self.nlocal)] + self.peer_checksums
        if self.fetched is not None:
            out += self.fetched.checksums
        return out + self.de_checksums

    def source_of(self, column: int) -> str:
        """Where hit block ``column`` came from, in words."""
        if column < self.nlocal:
            return "this node's cache"
        if column < self.ncache:
            return "a peer's DRAM cache"
        return "PE path" if column < len(self.names) - self.nde else "DE path"
