"""``dualpath bench engine``: the real model's prefill, decode and KV copies, timed on the
device, written as the measurements ``dualpath calibrate engine`` fits a preset to.

- **prefill**: ``r`` requests of ``n`` new tokens each after ``c`` tokens of past KV
  (random tensors of the model's shape and dtype on the device), the model's ``layer``
  per request per layer; batch tokens ``r x n`` swept against ``c``.
- **decode**: one ``decode_step`` over ``b`` sequences of ``c`` tokens of past each.
- **copy**: ``k`` host-to-device copies of one block-layer slice (``block_tokens x
  layer_kv_bytes_per_token`` bytes, and of a larger size for the link's bandwidth) from
  pinned host memory, ``non_blocking`` on a copy stream: the CPU-side time per submission,
  then the time until the stream is done gives bytes/s. On the CPU device a copy is a
  memcpy into another tensor (run on a worker thread, the CPU's stand-in for a stream).
- **layerwise**: prefill of ``n`` new tokens on ``c`` hit tokens whose KV sits in pinned
  host memory as per-layer block slices: copy-only, compute-only (KV already on the
  device), serial (copy every layer, then compute) and layer-wise (the copy stream copies
  layer ``l``'s blocks and records an event; compute waits for that event and runs layer
  ``l``, so copies of later layers overlap compute of earlier ones). ``hidden_share`` =
  (serial - overlapped) / copy: the share of the copy time layer-wise loading hides.

Every figure is the median of ``repeats`` runs after a warm-up (fewer runs where one run
is long); on CUDA the device is synchronized around every timed run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import torch

from experiments.evaluation.table import format_table
from runtime.transformer.config import TransformerConfig, config_for
from runtime.transformer.model import DecodeSeq, Transformer

SCHEMA = 1
Past = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Sweep:
    """The points measured. Prefill requests hold ``min(batch tokens, max_new_tokens)``
    new tokens each; a point whose positions pass the model's ``max_context`` is left out.
    Copies are ``(count, size as a multiple of a block-layer slice)``. Past KV is drawn
    from a pool of at most ``kv_pool_bytes`` (reused round-robin beyond it)."""

    batch_tokens: tuple[int, ...]
    contexts: tuple[int, ...]
    max_new_tokens: int
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    copies: tuple[tuple[int, int], ...]
    layerwise: tuple[tuple[int, int], ...]  # (context, new tokens)
    repeats: int = 5
    point_budget_s: float = 4.0  # fewer repeats where one run takes longer than a share
    kv_pool_bytes: int = 8 << 30
    warm_up_s: float = 3.0  # prefill before the first point (a GPU's clocks ramp up)


FULL = Sweep(batch_tokens=(64, 128, 256, 512, 1024, 2048, 4096, 8192),
             contexts=(0, 4096, 16384, 32768), max_new_tokens=512,
             decode_batches=(1, 4, 16, 64), decode_contexts=(1024, 4096, 16384, 32768),
             copies=((256, 1), (1024, 1), (32, 64)),
             layerwise=((4096, 512), (32768, 512)))
QUICK = Sweep(batch_tokens=(16, 64, 256), contexts=(0, 512), max_new_tokens=128,
              decode_batches=(1, 8), decode_contexts=(64, 512), copies=((64, 1), (8, 64)),
              layerwise=((512, 64),), repeats=3, point_budget_s=1.0, kv_pool_bytes=64 << 20,
              warm_up_s=0.0)

#: A bounded sweep for a billion-parameter model on one GPU (minutes, not tens of them).
MEDIUM = Sweep(batch_tokens=(64, 256, 1024, 4096), contexts=(0, 8192, 32768),
               max_new_tokens=512, decode_batches=(1, 8, 32),
               decode_contexts=(1024, 8192, 32768), copies=((256, 1), (1024, 1), (32, 64)),
               layerwise=((8192, 512), (32768, 512)), repeats=3, point_budget_s=2.0)
SWEEPS = {"quick": QUICK, "medium": MEDIUM, "full": FULL}


# -- timing ------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Any], device: torch.device, sweep: Sweep) -> tuple[float, int]:
    """(median seconds, runs) of ``run`` after one warm-up; the device synchronized
    around each run, fewer runs where one takes more than the point's budget allows (and
    the warm-up itself where it alone takes the whole budget)."""
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    first = time.perf_counter() - start
    if first >= sweep.point_budget_s:  # a run this long (many layer calls) warms itself up
        return first, 1
    repeats = max(1, min(sweep.repeats, int(sweep.point_budget_s / max(first, 1e-9))))
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), repeats


class KvPool:
    """Random past K and V of one layer, ``[tokens, kv_heads, head_dim]`` each, on the
    device: at most ``budget`` bytes of distinct tensors, handed out round-robin (so that
    a batch reads distinct memory, as real KV is, wherever the budget allows)."""

    def __init__(self, config: TransformerConfig, device: torch.device, tokens: int,
                 budget: int) -> None:
        self.shape = (max(tokens, 1), config.kv_heads, config.head_dim)
        per = 2 * self.shape[0] * config.kv_heads * config.head_dim * config.itemsize
        self.size = max(1, budget // per)
        self.device, self.dtype = device, config.torch_dtype
        self.pool: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.next = 0

    def take(self, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.pool) < self.size:  # drawn on the device: fast, and seeded once
            k, v = (torch.randn(self.shape, device=self.device, dtype=self.dtype)
                    for _ in range(2))
            self.pool.append((k, v))
        k, v = self.pool[self.next % len(self.pool)]
        self.next += 1
        return k[:context], v[:context]

    def past(self, layers: int, context: int) -> Past:
        """One sequence's past: a (K, V) per layer."""
        return [self.take(context) for _ in range(layers)]


# -- prefill and decode ---------------------------------------------------------------------

def warm_up(model: Transformer, sweep: Sweep, device: torch.device) -> None:
    """Prefill requests of ``max_new_tokens`` for ``warm_up_s`` (at least one), so that
    the first point is not timed at idle clocks or with cold caches and allocators."""
    n = min(sweep.max_new_tokens, model.config.max_context - 1)
    x = model.embed(torch.randint(0, model.config.vocab, (n,)))
    past = model.empty_kv()
    start = time.perf_counter()
    while True:
        h = x
        for layer in range(model.config.layers):
            h = model.layer(layer, h, torch.arange(n), *past)[0]
        _sync(device)
        if time.perf_counter() - start >= sweep.warm_up_s:
            return


def prefill_points(model: Transformer, sweep: Sweep, pool: KvPool) -> list[dict[str, Any]]:
    cfg, device = model.config, pool.device
    warm_up(model, sweep, device)
    points = []
    for context in sweep.contexts:
        for tokens in sweep.batch_tokens:
            n = min(tokens, sweep.max_new_tokens)
            r = max(1, tokens // n)
            if context + n > cfg.max_context:
                continue
            positions = torch.arange(context, context + n)  # on the host: checks need no sync
            x = model.embed(torch.randint(0, cfg.vocab, (n,)))
            pasts = [pool.past(cfg.layers, context) for _ in range(r)]

            def run(pasts: list[Past] = pasts, x: torch.Tensor = x,
                    positions: torch.Tensor = positions) -> None:
                for past in pasts:
                    h = x
                    for layer, (k, v) in enumerate(past):
                        h = model.layer(layer, h, positions, k, v)[0]

            seconds, runs = timed(run, device, sweep)
            points.append({"requests": r, "new_tokens": n, "context": context,
                           "batch_tokens": r * n, "seconds": seconds, "runs": runs})
    return points


def decode_points(model: Transformer, sweep: Sweep, pool: KvPool) -> list[dict[str, Any]]:
    cfg, device = model.config, pool.device
    points = []
    for context in sweep.decode_contexts:
        if context + 1 > cfg.max_context:
            continue
        for batch in sweep.decode_batches:
            seqs = [DecodeSeq(token=int(i % cfg.vocab), position=context,
                              past=pool.past(cfg.layers, context)) for i in range(batch)]

            def run(seqs: list[DecodeSeq] = seqs) -> None:
                model.decode_step(seqs)

            seconds, runs = timed(run, device, sweep)
            points.append({"batch": batch, "context": context, "seconds": seconds,
                           "runs": runs})
    return points


# -- copies --------------------------------------------------------------------------------

def host_tensor(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host tensor, pinned where the device is a GPU, filled with a repeated random chunk
    (normal values for a float dtype, so that no NaN or denormal slows the compute)."""
    t = torch.empty(tuple(shape), dtype=dtype, pin_memory=device.type == "cuda")
    flat = t.view(-1)
    n = min(flat.numel(), 1 << 20)
    gen = torch.Generator().manual_seed(flat.numel())
    chunk = (torch.randn(n, generator=gen).to(dtype) if dtype.is_floating_point
             else torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8).to(dtype))
    for i in range(0, flat.numel(), n):
        flat[i:i + n].copy_(chunk[:flat.numel() - i])
    return t


class CopyQueue:
    """Host-to-device copies in order, beside compute: on CUDA a copy stream (each batch
    of copies ``non_blocking``, then an event that compute waits on); on the CPU a worker
    thread doing memcpys (each batch's future stands for the event)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.worker = None if self.stream else ThreadPoolExecutor(1, "bench-copy")
        self.marks: list[Any] = []

    def submit(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Queue ``dst.copy_(src)`` for every pair; returns the mark to :meth:`wait` on."""
        if self.stream is not None:
            with torch.cuda.stream(self.stream):
                for dst, src in pairs:
                    dst.copy_(src, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            self.marks.append(event)
        else:
            assert self.worker is not None
            self.marks.append(self.worker.submit(_copy_all, pairs))
        return len(self.marks) - 1

    def wait(self, mark: int) -> None:
        """Make the compute that follows wait for the copies of ``mark``."""
        done = self.marks[mark]
        if isinstance(done, Future):
            done.result()
        else:
            torch.cuda.current_stream(self.device).wait_event(done)

    def finish(self) -> None:
        """Block the host until every queued copy is done."""
        if self.stream is not None:
            self.stream.synchronize()
        for mark in range(len(self.marks)):
            self.wait(mark)
        self.marks.clear()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()


def _copy_all(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.inference_mode():  # the tensors were made in it (a thread does not inherit it)
        for dst, src in pairs:
            dst.copy_(src)


def copy_point(queue: CopyQueue, count: int, nbytes: int, sweep: Sweep) -> dict[str, Any]:
    """Submission cost per copy and bytes/s of ``count`` copies of ``nbytes`` each."""
    device = queue.device
    src = host_tensor((count, nbytes), torch.uint8, device)
    dst = torch.empty((count, nbytes), dtype=torch.uint8, device=device)
    pairs = list(zip(dst.unbind(0), src.unbind(0), strict=True))
    submits, totals = [], []
    for i in range(sweep.repeats + 1):
        _sync(device)
        start = time.perf_counter()
        if queue.stream is None:  # a memcpy is its own submission
            _copy_all(pairs)
        else:
            queue.submit(pairs)
        submitted = time.perf_counter()
        queue.finish()
        end = time.perf_counter()
        if i:  # the first is the warm-up
            submits.append((submitted - start) / count)
            totals.append(end - start)
    if not torch.equal(dst[-1].cpu(), src[-1]):
        raise RuntimeError("bench engine: a copied block differs from its source")
    return {"copies": count, "bytes_per_copy": nbytes,
            "submit_s_per_copy": statistics.median(submits),
            "bytes_s": count * nbytes / statistics.median(totals)}


# -- layer-wise prefill ------------------------------------------------------------------

def layerwise_point(model: Transformer, queue: CopyQueue, context: int, new_tokens: int,
                    block_tokens: int, sweep: Sweep) -> dict[str, Any]:
    """Copy-only, compute-only, serial and layer-wise times of one request."""
    cfg, device = model.config, queue.device
    blocks = -(-context // block_tokens)
    slot = (blocks, block_tokens, 2, cfg.kv_heads, cfg.head_dim)
    host = [host_tensor(slot, cfg.torch_dtype, device) for _ in range(cfg.layers)]
    hbm = [torch.empty(slot, dtype=cfg.torch_dtype, device=device) for _ in range(cfg.layers)]
    pairs = [list(zip(d.unbind(0), h.unbind(0), strict=True)) for d, h in zip(hbm, host,
                                                                             strict=True)]
    pasts = [(t.flatten(0, 1)[:context, 0], t.flatten(0, 1)[:context, 1]) for t in hbm]
    positions = torch.arange(context, context + new_tokens)
    x = model.embed(torch.randint(0, cfg.vocab, (new_tokens,)))

    def compute(layer: int, h: torch.Tensor) -> torch.Tensor:
        return model.layer(layer, h, positions, *pasts[layer])[0]

    def copy_only() -> None:
        for layer_pairs in pairs:
            queue.submit(layer_pairs)
        queue.finish()

    def compute_only() -> None:
        h = x
        for layer in range(cfg.layers):
            h = compute(layer, h)

    def serial() -> None:
        copy_only()
        compute_only()

    submit_s: list[float] = []  # host time in submissions, per overlapped run

    def overlapped() -> None:
        start = time.perf_counter()
        marks = [queue.submit(pairs[0])]
        spent = time.perf_counter() - start
        h = x
        for layer in range(cfg.layers):
            if layer + 1 < cfg.layers:  # the next layer's copies go ahead of this compute
                start = time.perf_counter()
                marks.append(queue.submit(pairs[layer + 1]))
                spent += time.perf_counter() - start
            queue.wait(marks[layer])
            h = compute(layer, h)
        queue.finish()
        submit_s.append(spent)

    copy_s, compute_s, serial_s, overlapped_s = (
        timed(run, device, sweep)[0] for run in (copy_only, compute_only, serial, overlapped))
    return {"context": context, "new_tokens": new_tokens, "blocks": blocks,
            "compute_s": compute_s, "copy_s": copy_s, "serial_s": serial_s,
            "overlapped_s": overlapped_s, "hidden_share": (serial_s - overlapped_s) / copy_s,
            "overlapped_submit_s": statistics.median(submit_s)}


# -- the whole bench -----------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def model_record(config: TransformerConfig, size: str) -> dict[str, Any]:
    return {"size": size, **dataclasses.asdict(config), "head_dim": config.head_dim,
            "params": config.params, "layer_kv_bytes_per_token":
            config.layer_kv_bytes_per_token, "kv_bytes_per_token": config.kv_bytes_per_token}


def bench_engine(size: str = "tiny", dtype: str = "float32", device: str = "cpu",
                 quick: bool = False, block_tokens: int = 64,
                 progress: Callable[[str], None] | None = None,
                 sweep_name: str | None = None) -> dict[str, Any]:
    """Every measurement of a :class:`Sweep` (``sweep_name`` of :data:`SWEEPS`, else
    ``QUICK`` or ``FULL``) of the ``size`` model in ``dtype`` on ``device``, as the
    measurements file's object."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if sweep_name is not None and sweep_name not in SWEEPS:
        raise ValueError(f"sweep {sweep_name!r}: expected one of {', '.join(SWEEPS)}")
    sweep = SWEEPS[sweep_name] if sweep_name else QUICK if quick else FULL
    config = config_for(size, dtype=dtype)
    say = progress or (lambda line: None)
    started = time.perf_counter()
    with torch.inference_mode(), closing(CopyQueue(dev)) as queue:
        model = Transformer(config, device=device)
        torch.manual_seed(0)  # the random past KV
        longest = max(sweep.contexts + sweep.decode_contexts)
        pool = KvPool(config, dev, min(longest, config.max_context), sweep.kv_pool_bytes)
        say(f"prefill on {device_name(dev)} ...")
        prefill = prefill_points(model, sweep, pool)
        say("decode ...")
        decode = decode_points(model, sweep, pool)
        del pool
        say("copies ...")
        slice_bytes = block_tokens * config.layer_kv_bytes_per_token
        copies = [copy_point(queue, count, slice_bytes * multiple, sweep)
                  for count, multiple in sweep.copies]
        say("layer-wise prefill ...")
        layerwise = [layerwise_point(model, queue, c, n, block_tokens, sweep)
                     for c, n in sweep.layerwise if c + n <= config.max_context]
    return {"schema": SCHEMA, "device": device_name(dev), "torch": torch.__version__,
            "model": model_record(config, size), "block_tokens": block_tokens,
            "repeats": sweep.repeats, "quick": quick, "threads": torch.get_num_threads(),
            "wall_s": time.perf_counter() - started, "prefill": prefill, "decode": decode,
            "copy": copies, "layerwise": layerwise}


# -- the table -----------------------------------------------------------------------------

def _grid(points: Sequence[dict[str, Any]], row: str, col: str,
          cell: Callable[[dict[str, Any]], float]) -> str:
    """``points`` as a table: one line per ``row`` value, one column per ``col`` value."""
    cols = sorted({p[col] for p in points})
    rows: dict[Any, dict[str, Any]] = {}
    for p in points:
        rows.setdefault(p[row], {row: p[row]})[f"{col} {p[col]:,}"] = cell(p)
    return format_table([rows[k] for k in sorted(rows)],
                        [row, *(f"{col} {c:,}" for c in cols)])


def render(payload: dict[str, Any]) -> str:
    """Prefill tokens/s, decode step ms, copy cost and layer-wise hiding, for the terminal."""
    model = payload["model"]
    head = (f"bench engine: {model['size']} ({model['params']:,} parameters, "
            f"{model['layers']} layers) in {model['dtype']} on {payload['device']}, "
            f"torch {payload['torch']}, {payload['wall_s']:.0f} s")
    copies = [{**p, "submit_us": p["submit_s_per_copy"] * 1e6, "GB_s": p["bytes_s"] / 1e9}
              for p in payload["copy"]]
    return "\n".join([
        head, "", "prefill tokens/s by batch tokens and context",
        _grid(payload["prefill"], "batch_tokens", "context",
              lambda p: p["batch_tokens"] / p["seconds"]),
        "", "decode step ms by batch and context",
        _grid(payload["decode"], "batch", "context", lambda p: p["seconds"] * 1e3),
        "", f"host-to-device copies (block of {payload['block_tokens']} tokens)",
        format_table(copies, ["copies", "bytes_per_copy", "submit_us", "GB_s"]),
        "", "layer-wise prefill (seconds)",
        format_table(payload["layerwise"], ["context", "new_tokens", "compute_s", "copy_s",
                                            "serial_s", "overlapped_s", "overlapped_submit_s",
                                            "hidden_share"]),
    ])
