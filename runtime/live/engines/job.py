"""A request inside a live node: the execution's record plus what the live path needs."""

from __future__ import annotations

import asyncio

from runtime.execution.job import Job
from runtime.live.messages import (
    Place,
)
from runtime.live.reader import Fetched
from runtime.request import Request


class LiveJob(Job):
    """A request inside a node: the execution's record plus what the live path needs."""

    __slots__ = ("attempt", "names", "nde", "writes", "fetched", "de_checksums",
                 "offset", "de_offset", "de_layers", "de_loaded", "cancelled", "nbytes_real")

    def __init__(self, request: Request, msg: Place, *, kv_bytes_per_token: int,
                 block_bytes: int, bytes_scale: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(request)
        self.attempt = msg.attempt
        self.pe, self.de = msg.pe, msg.de
        kvb = kv_bytes_per_token
        self.pe_bytes = msg.pe_tokens * kvb
        self.de_bytes = msg.de_tokens * kvb
        self.names = msg.names
        self.nde = msg.nde
        self.writes: list[str] = []
        self.fetched: Fetched | None = None
        self.de_checksums: list[str] = []
        self.offset = -1     # of its KV in the engine's registered buffer
        self.de_offset: asyncio.Future[int] = loop.create_future()
        self.de_layers: list[asyncio.Future[None]] = []
        self.de_loaded: asyncio.Future[None] = loop.create_future()
        self.cancelled = False
        # Its prompt's KV as stored and moved: whole hit blocks, then the appended tokens.
        self.nbytes_real = (len(self.names) * block_bytes
                            + -(-request.appended_tokens * kvb // bytes_scale))
