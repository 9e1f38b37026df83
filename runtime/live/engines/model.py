"""The model engine of a node (``engine="model"``): a real transformer computes on the KV
that either path delivered into an engine's registered buffer.

Layout of a request's range (see :mod:`runtime.live.engines`): the hit blocks layer-major
(layer ``l``'s row holds ``nblocks * block_tokens`` tokens, the first ``hit`` valid), then
the appended tokens' KV, also layer-major (layer ``l``'s row holds ``appended`` tokens).
A layer's KV for ``n`` tokens is ``[n, 2, kv_heads, head_dim]`` in the model's dtype
(:mod:`runtime.transformer.kv`), so the bytes storage holds and the transports move are
the model's KV.

One transformer per node process, shared by its engines. Its computation runs on one
worker thread (the node's stream: one thing computes at a time, as on one GPU), off the
event loop, so the node keeps answering its peers and the router while it computes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from runtime.cluster import ClusterSpec
from runtime.live.config import LiveOptions
from runtime.live.engines.job import LiveJob
from runtime.live.model_run import model_config
from runtime.transformer import Transformer, appended_tokens, check_fits, device_memory_bytes

_T = TypeVar("_T")
#: Where a request's range is read from: the host buffer, or its GPU copy (uint8).
Buffer = memoryview | torch.Tensor


@dataclass
class Chunk:
    """``len(tokens)`` prompt tokens of one request, at positions ``start..``, in a batch."""

    job: LiveJob
    start: int
    tokens: list[int]
    store: bool  # its KV goes to the appended rows (False: a full hit's recomputed last token)
    final: bool  # the request's last chunk: its last token's logits give the first token
    x: torch.Tensor | None = field(default=None, repr=False)


class NodeModel:
    """The node's transformer, its worker thread and the buffer layout it reads."""

    def __init__(self, spec: ClusterSpec, opts: LiveOptions) -> None:
        self.config = model_config(opts)
        device = "cuda" if opts.device == "cuda" else "cpu"
        check_fits(self.config, device_memory_bytes(device), where=f"the engine's {device}")
        if device == "cpu":
            # Several node processes share the host's cores: one thread each keeps them
            # from oversubscribing it (and torch's results do not depend on it).
            torch.set_num_threads(1)
        self.device = torch.device(device)
        self.model = Transformer(self.config, device=device)
        self.block_tokens = spec.block_tokens
        self.layer_bytes = self.config.layer_kv_bytes_per_token
        self.seed = opts.model_seed
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the model's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # -- the buffer layout ------------------------------------------------------------
    def _rows(self, buf: Buffer, at: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V ``[tokens, kv_heads, head_dim]`` (views) of a layer row at ``at`` of
        ``buf``: the registered host buffer, or its copy in GPU memory."""
        cfg = self.config
        if tokens == 0:
            empty = torch.empty(0, cfg.kv_heads, cfg.head_dim, dtype=cfg.torch_dtype)
            return empty, empty
        end = at + tokens * self.layer_bytes
        raw = (buf[at:end].view(cfg.torch_dtype) if isinstance(buf, torch.Tensor) else
               torch.frombuffer(buf[at:end], dtype=cfg.torch_dtype))
        kv = raw.view(tokens, 2, cfg.kv_heads, cfg.head_dim)
        return kv[:, 0], kv[:, 1]

    def hit_rows(self, buf: Buffer, job: LiveJob, layer: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s K and V of the request's hit tokens."""
        row_tokens = len(job.names) * self.block_tokens
        k, v = self._rows(buf, job.offset + layer * row_tokens * self.layer_bytes, row_tokens)
        hit = job.request.hit_tokens
        return k[:hit], v[:hit]

    def app_rows(self, view: memoryview, job: LiveJob, layer: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s K and V of the request's appended tokens (their rows)."""
        layers, app = self.config.layers, job.request.appended_tokens
        base = job.offset + len(job.names) * self.block_tokens * layers * self.layer_bytes
        return self._rows(view, base + layer * app * self.layer_bytes, app)

    def context(self, view: memoryview, job: LiveJob, layer: int, end: int,
                hits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s K and V of the request's tokens ``0..end-1`` (contiguous copies,
        on the model's device): the hit ones (from ``hits``, the buffer's GPU copy, when
        the engine keeps one), then the appended ones computed so far."""
        hk, hv = self.hit_rows(view if hits is None else hits, job, layer)
        ak, av = self.app_rows(view, job, layer)
        hit = min(end, len(hk))
        n = end - hit
        dev = self.device
        return (torch.cat([hk[:hit].to(dev), ak[:n].to(dev)]),
                torch.cat([hv[:hit].to(dev), av[:n].to(dev)]))

    def prompt_tokens(self, job: LiveJob, start: int, end: int) -> list[int]:
        """Token ids of prompt positions ``start..end-1`` (all at or after ``hit - 1``)."""
        req = job.request
        if job.tokens:  # served: the prompt's ids came with the placement
            return job.tokens[start:end]
        ids = appended_tokens(self.seed, req.agent_id, req.turn, req.appended_tokens,
                              self.config.vocab)
        if start < req.hit_tokens:
            raise ValueError(f"request {req.request_id}: an agent's turn appends no tokens "
                             f"(hit {req.hit_tokens} of {req.prompt_tokens}); nothing to "
                             f"compute its first token from")
        return ids[start - req.hit_tokens:end - req.hit_tokens]

    # -- prefill ----------------------------------------------------------------------
    def chunks(self, batch: list[tuple[LiveJob, int]]) -> list[Chunk]:
        """The batch's chunks: each request's next ``n`` prompt tokens (a full hit
        recomputes its last token, whose KV it already has)."""
        out = []
        for job, n in batch:
            req = job.request
            start = job.context if req.appended_tokens > 0 else req.prompt_tokens - 1
            out.append(Chunk(job, start, self.prompt_tokens(job, start, start + n),
                             store=req.appended_tokens > 0, final=n >= job.remaining))
        return out

    def embed(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            ids = torch.tensor(chunk.tokens, dtype=torch.long, device=self.device)
            chunk.x = self.model.embed(ids)

    def layer(self, view: memoryview, chunks: list[Chunk], layer: int,
              hits: torch.Tensor | None = None) -> None:
        """Layer ``layer`` of every chunk, on the KV of its request's earlier tokens (hit
        rows from ``hits`` if given: see :meth:`context`); the new tokens' KV goes into
        the appended rows (where the P→D send and the write-back take it from)."""
        for chunk in chunks:
            if chunk.job.cancelled:
                continue
            assert chunk.x is not None
            n = len(chunk.tokens)
            past_k, past_v = self.context(view, chunk.job, layer, chunk.start, hits)
            positions = torch.arange(chunk.start, chunk.start + n, device=self.device)
            chunk.x, k, v = self.model.layer(layer, chunk.x, positions, past_k, past_v)
            if chunk.store:
                ak, av = self.app_rows(view, chunk.job, layer)
                first = chunk.start - chunk.job.request.hit_tokens
                ak[first:first + n] = k.to("cpu")
                av[first:first + n] = v.to("cpu")

    def finish(self, view: memoryview, chunks: list[Chunk]) -> None:
        """For every request whose prompt a chunk ends: its first generated token, and the
        blocks its prompt completes (taken now: its range is freed once it is sent)."""
        block = self.block_tokens
        for chunk in chunks:
            job = chunk.job
            if not chunk.final or job.cancelled:
                continue
            assert chunk.x is not None
            logits = self.model.logits(chunk.x[-1:])
            job.first_token = int(torch.argmax(logits[0]))
            first, end = job.request.hit_tokens // block, job.request.prompt_tokens // block
            job.kv_out = self.blocks(view, job, first, first + len(job.writes[:end - first]))

    def blocks(self, view: memoryview, job: LiveJob, first: int, end: int) -> list[bytes]:
        """Full Blocks ``first..end-1`` of the request's prompt KV, from its range."""
        per_layer = [self.context(view, job, layer, end * self.block_tokens)
                     for layer in range(self.config.layers)]
        return self.pack(per_layer, first, end)

    def pack(self, per_layer: list[tuple[torch.Tensor, torch.Tensor]], first: int,
             end: int) -> list[bytes]:
        """Full Blocks ``first..end-1`` (layer-major, zero past the tokens given) of a
        context whose K and V per layer are ``per_layer``."""
        cfg, size = self.config, self.block_tokens
        out = []
        for b in range(first, end):
            slices = []
            for k, v in per_layer:
                kv = torch.zeros(size, 2, cfg.kv_heads, cfg.head_dim, dtype=cfg.torch_dtype)
                part = slice(b * size, min((b + 1) * size, len(k)))
                n = part.stop - part.start
                kv[:n, 0] = k[part].to("cpu")
                kv[:n, 1] = v[part].to("cpu")
                slices.append(kv.view(torch.uint8).numpy().tobytes())
            out.append(b"".join(slices))
        return out
