"""``dualpath bench gateway``: what the endpoint picker adds to a request's latency.

One gateway (``tiny-live``, the decision log on) whose Envoy has two listeners over
the same decode fronts: one asks our picker about every request (ext_proc), the other
routes by plain round robin (the fronts' local policy then picks the prefill engine).
Requests are streamed with ``max_tokens`` 1 and prompts no block of which storage or a
cache holds (each unique and shorter than a block), so both listeners do the same work
behind Envoy. At each concurrency, warm-up requests go first, then the measured ones in
alternating blocks (round robin, picker, ...), so a drift of the machine touches both
alike. The figure is the time to the first token at the client; ``epp_added_*_ms`` is
the picker's percentile minus round robin's.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from experiments.live.gateway import Gateway, GatewayConfig, free_ports, running
from experiments.live.load import stream_completion
from runtime.serving.openai import COMPLETIONS

CONCURRENCY = (1, 8)
REQUESTS = 2_000
WARMUP = 200
BLOCK = 200  # measured requests per alternating block


async def _block(url: str, n: int, concurrency: int, timeout_s: float = 60.0
                 ) -> tuple[list[float], int]:
    """``n`` requests by ``concurrency`` clients; their TTFTs (s) and the errors."""
    ttfts: list[float] = []
    errors = 0
    left = iter(range(n))
    async with aiohttp.ClientSession() as http:
        async def client() -> None:
            nonlocal errors
            for _ in left:
                body = {"model": "bench", "prompt": secrets.token_hex(24), "max_tokens": 1,
                        "stream": True, "user": "bench"}
                out = await stream_completion(http, url + COMPLETIONS, body, timeout_s)
                if out.error is not None or out.ttft_s is None:
                    errors += 1
                else:
                    ttfts.append(out.ttft_s)
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return ttfts, errors


async def _measure(urls: dict[str, str], concurrency: int, requests: int, warmup: int
                   ) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in urls}
    errors = 0
    for url in urls.values():
        errors += (await _block(url, warmup, concurrency))[1]
    done = 0
    while done < requests:
        n = min(BLOCK, requests - done)
        for name, url in urls.items():
            ttfts, failed = await _block(url, n, concurrency)
            samples[name] += ttfts
            errors += failed
        done += n
    row: dict[str, Any] = {"concurrency": concurrency, "requests": requests, "errors": errors}
    for name, values in samples.items():
        ms = np.asarray(values) * 1e3
        row[f"{name}_p50_ms"] = float(np.percentile(ms, 50))
        row[f"{name}_p99_ms"] = float(np.percentile(ms, 99))
    for q in ("p50", "p99"):
        row[f"epp_added_{q}_ms"] = row[f"picker_{q}_ms"] - row[f"round_robin_{q}_ms"]
    return row


def bench_gateway(requests: int = REQUESTS, warmup: int = WARMUP,
                  concurrency: tuple[int, ...] = CONCURRENCY,
                  preset: str = "tiny-live") -> dict[str, Any]:
    """Both listeners at each concurrency; ``rows`` per concurrency and the targets."""
    if requests < 1 or warmup < 0:
        raise ValueError(f"requests must be >= 1 and warmup >= 0, got {requests}, {warmup}")
    workdir = Path(tempfile.mkdtemp(prefix="dualpath-bench-gateway-"))
    gateway = Gateway(GatewayConfig(preset=preset, port=0, db=f"sqlite:///{workdir}/d.db",
                                    round_robin_port=free_ports(1)[0]), announce=False)
    with running(gateway):
        urls = {"round_robin": f"http://127.0.0.1:{gateway.cfg.round_robin_port}",
                "picker": gateway.url}
        rows = [asyncio.run(_measure(urls, c, requests, warmup)) for c in concurrency]
    worst = max(r["epp_added_p99_ms"] for r in rows)
    return {"preset": preset, "rows": rows,
            "epp_added_p50_ms": max(r["epp_added_p50_ms"] for r in rows),
            "epp_added_p99_ms": worst, "target_p99_ms": 2.0, "target_met": worst <= 2.0}


def render_gateway(payload: dict[str, Any]) -> str:
    lines = [f"{'clients':>7}  {'rr p50':>8}  {'rr p99':>8}  {'epp p50':>8}  {'epp p99':>8}  "
             f"{'added p50':>9}  {'added p99':>9}  errors"]
    for r in payload["rows"]:
        lines.append(f"{r['concurrency']:>7}  {r['round_robin_p50_ms']:>8.2f}  "
                     f"{r['round_robin_p99_ms']:>8.2f}  {r['picker_p50_ms']:>8.2f}  "
                     f"{r['picker_p99_ms']:>8.2f}  {r['epp_added_p50_ms']:>9.2f}  "
                     f"{r['epp_added_p99_ms']:>9.2f}  {r['errors']}")
    verdict = "met" if payload["target_met"] else "NOT met"
    lines.append(f"ms to the first token at the client; target: the picker adds at most "
                 f"{payload['target_p99_ms']:g} ms at p99 ({verdict})")
    return "\n".join(lines)
