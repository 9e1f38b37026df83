"""A decode engine's continuous batch with the model engine: real batched steps.

A request joins with its prompt's KV (the P→D transfer put it in the engine's buffer)
and its first token (from the prefill's logits). Each step feeds every member its last
token and yields its next one, until it has generated ``gen_tokens``. A member whose
answer is written back (an agent's: its next turn hits every token of this one) then
takes one more step with its last token, for that token's KV, as an engine that keeps
a session's cache does; it is done after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from runtime.live.engines.job import LiveJob
from runtime.live.engines.model import NodeModel
from runtime.transformer import DecodeSeq


@dataclass
class Member:
    """A request in the batch: its KV per layer (room for the whole answer) and tokens."""

    job: LiveJob
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int  # tokens whose KV is in keys/values
    tokens: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Every token generated, and the last one's KV computed if it is written back."""
        gen = self.job.request.gen_tokens
        return len(self.tokens) >= gen and (
            not self.job.writes or self.length >= self.job.request.prompt_tokens + gen)


#: What the batch tells its engine: a member's new token, and a member that is done (or
#: cancelled: the engine then only gives its room back).
OnToken = Callable[[LiveJob, int], None]
OnDone = Callable[[Member], None]


class ModelBatch:
    """One decode engine's members and the loop that steps them."""

    def __init__(self, model: NodeModel, view: memoryview, on_token: OnToken,
                 on_done: OnDone) -> None:
        self.model = model
        self.view = view
        self.on_token = on_token
        self.on_done = on_done
        self.members: list[Member] = []
        self.steps = 0
        self._running = False

    async def join(self, job: LiveJob, first_token: int) -> None:
        """Add ``job`` (its prompt's KV is in the buffer at its offset)."""
        member = await self.model.run(self._load, job)
        member.tokens.append(first_token)
        self.on_token(job, first_token)
        if member.done:
            self.on_done(member)
            return
        self.members.append(member)
        if not self._running:
            self._running = True
            asyncio.ensure_future(self._loop())

    def _load(self, job: LiveJob) -> Member:
        """The member's KV: the prompt's from the buffer, room for its answer's."""
        model, req = self.model, job.request
        cfg = model.config
        room = req.prompt_tokens + req.gen_tokens
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for layer in range(cfg.layers):
            k, v = model.context(self.view, job, layer, req.prompt_tokens)
            for rows, into in ((k, keys), (v, values)):
                store = torch.empty(room, cfg.kv_heads, cfg.head_dim, dtype=cfg.torch_dtype,
                                    device=model.device)
                store[:req.prompt_tokens] = rows
                into.append(store)
        return Member(job, keys, values, req.prompt_tokens)

    async def _loop(self) -> None:
        try:
            while self.members:
                for member in [m for m in self.members if m.job.cancelled]:
                    self.members.remove(member)
                    self.on_done(member)  # rescheduled elsewhere: its room is given back
                if not self.members:
                    break
                batch = list(self.members)
                produced = await self.model.run(self._step, batch)
                self.steps += 1
                for member, token in zip(batch, produced, strict=True):
                    if token is not None and not member.job.cancelled:
                        member.tokens.append(token)
                        self.on_token(member.job, token)
                    if member.done and member in self.members:
                        self.members.remove(member)
                        self.on_done(member)
        finally:
            self._running = False

    def _step(self, batch: list[Member]) -> list[int | None]:
        """One step: every member's last token in, its KV kept, its next token out (None
        for a member past its last token, which only needed that token's KV)."""
        seqs = [DecodeSeq(m.tokens[-1], m.length,
                          [(k[:m.length], v[:m.length]) for k, v in zip(m.keys, m.values,
                                                                        strict=True)])
                for m in batch]
        logits, kv = self.model.model.decode_step(seqs)
        out: list[int | None] = []
        for i, member in enumerate(batch):
            for layer, (k, v) in enumerate(kv[i]):
                member.keys[layer][member.length] = k.reshape(member.keys[layer].shape[1:])
                member.values[layer][member.length] = v.reshape(member.values[layer].shape[1:])
            member.length += 1
            more = len(member.tokens) < member.job.request.gen_tokens
            out.append(int(torch.argmax(logits[i])) if more else None)
        return out

    def answer_blocks(self, member: Member) -> list[bytes]:
        """The Full Blocks the answer goes on in: from the prompt's last (partial) block."""
        req, block = member.job.request, self.model.block_tokens
        per_layer = [(k[:member.length], v[:member.length])
                     for k, v in zip(member.keys, member.values, strict=True)]
        first = req.prompt_tokens // block
        return self.model.pack(per_layer, first, first + len(member.job.writes))
