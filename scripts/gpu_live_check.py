"""Run a small live cluster with prefill KV in GPU memory, beside the same run on the CPU.

Used on a CUDA host: ``python3 scripts/gpu_live_check.py``. Prints one JSON object:
each run's throughput, mean JCT and verified blocks, the bytes copied host → GPU, and
the host → GPU bandwidth of the pinned, registered buffer measured in the same process;
a third run has DRAM and HBM caches on (its hit bytes by source).
"""

from __future__ import annotations

import json
import time

import torch

from agents.heuristics import DualPath
from runtime.live.cluster import LiveCluster, local_decider
from runtime.live.config import LiveOptions
from runtime.live.transport import make_transport
from runtime.preset import load_preset
from runtime.workload.agentic import AgenticWorkload


def h2d_gib_s(size: int = 64 << 20, repeats: int = 10) -> float:
    transport = make_transport("shm")
    region = transport.register(size)
    host = torch.frombuffer(region.view, dtype=torch.uint8)
    torch.cuda.cudart().cudaHostRegister(host.data_ptr(), size, 0)
    device = torch.empty(size, dtype=torch.uint8, device="cuda")
    device.copy_(host)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        device.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    torch.cuda.cudart().cudaHostUnregister(host.data_ptr())
    del host
    transport.close()
    return size * repeats / seconds / 2**30


def main() -> None:
    plain = load_preset("tiny", ("block_tokens=1024",))
    # With caches: 2 prefill nodes, so hits come from the PE's HBM cache, its node's DRAM
    # and a peer's DRAM (the HBM cache's blocks are host memory, copied to the GPU with
    # the rest of the batch's KV).
    cached = load_preset("tiny", ("block_tokens=1024", "prefill_nodes=2",
                                  "node.dram_cache_gb=0.05", "node.hbm_cache_gb=0.02"))
    out = {"gpu": torch.cuda.get_device_name(), "h2d_pinned_gib_s": h2d_gib_s()}
    for name, spec, device in (("cpu", plain, "cpu"), ("cuda", plain, "cuda"),
                               ("cuda_caches", cached, "cuda")):
        options = LiveOptions(time_scale=0.5, device=device)
        metrics = LiveCluster(spec, options).run(AgenticWorkload(4, "32k", 0),
                                                 local_decider(DualPath()))
        out[name] = {k: metrics[k] for k in ("requests", "throughput_tok_s", "jct_mean_s",
                                             "wall_s", "cpu_cores_busy")}
        out[name]["live"] = metrics["live"]
        out[name]["hit_bytes_by_source"] = metrics["hit_bytes_by_source"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
