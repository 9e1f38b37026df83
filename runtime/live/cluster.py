"""Launch a live cluster, run one workload through it, tear it down, report.

Processes: the storage service, one process per node, and the router (here,
in the calling process). On loopback every process listens on 127.0.0.1 and
the nodes pace their NICs; with ``netns`` each node and the storage service
run in their own network namespace on separate storage and compute networks
shaped by ``tc``. Whatever happens, the processes are stopped, the storage
directory is removed and the namespaces are torn down.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any

from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer
from runtime.live.config import LiveOptions, spec_to_dict
from runtime.live.node import NodeConfig
from runtime.live.router import Decider, Faults, Router
from runtime.policy import Policy
from runtime.request import Request
from runtime.sim.link import Link
from runtime.sim.metrics import summarize
from runtime.view import ClusterView
from runtime.workload.base import Workload


def local_decider(policy: Policy) -> Decider:
    """A policy called in the router's process (a ``RemotePolicy`` makes its gRPC call here)."""
    async def decide(request: Request, view: ClusterView) -> Decision | Defer | None:
        return policy.decide(request, view)
    return decide


class LiveCluster:
    """The processes of one live run; :meth:`run` replays a workload through them."""

    def __init__(self, spec: ClusterSpec, options: LiveOptions) -> None:
        self.options = options
        self.spec = spec
        self.block_bytes = options.real_block_bytes(self.spec)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stack = ExitStack()
        self.fabric: Any = None

    # -- processes ------------------------------------------------------------------------
    def _popen(self, name: str, argv: list[str], host: Any = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if host is not None:
            proc = self.fabric.popen(host, argv, stdout=subprocess.PIPE, env=env)
        else:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
        self._procs[name] = proc
        return proc

    def _start_storage(self, root: str) -> tuple[tuple[str, int], tuple[str, int]]:
        """Start the storage service; returns (address for nodes, address for the router)."""
        argv = [sys.executable, "-m", "runtime.live.storage", "--root", root,
                "--replicas", str(self.options.replicas)]
        if self.fabric is None:
            proc = self._popen("storage", argv)
        else:
            proc = self._popen("storage", [*argv, "--host", "0.0.0.0"], self.fabric.storage)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("storage listening on "):
            raise RuntimeError(f"storage service did not start (said {line!r}, "
                               f"exit code {proc.poll()})")
        port = int(line.rsplit(":", 1)[1])
        if self.fabric is None:
            return ("127.0.0.1", port), ("127.0.0.1", port)
        return (self.fabric.storage.storage_ip, port), (self.fabric.storage.mgmt_ip, port)

    def _start_nodes(self, router: tuple[str, int], storage: tuple[str, int]) -> None:
        options = self.options.__dict__
        for node in range(self.spec.nodes):
            host = self.fabric.nodes[node] if self.fabric is not None else None
            cfg = NodeConfig(
                node_id=node, spec=spec_to_dict(self.spec), options=options,
                router=router, storage=storage,
                control_host=host.mgmt_ip if host is not None else "127.0.0.1",
                compute_ips=tuple(host.compute_ips) if host is not None else (),
                kernel_shaped=host is not None)
            self._popen(f"node{node}", [sys.executable, "-m", "runtime.live.node",
                                        "--config", cfg.to_json()], host)

    def kill_node(self, node: int) -> None:
        proc = self._procs.get(f"node{node}")
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)

    def _build_fabric(self) -> None:
        from runtime.live.netns import Fabric, NodeLinks
        scale = self.options.time_scale * self.options.bytes_scale
        spec = self.spec
        links = [NodeLinks(n, spec.snic_bytes_s_of(n) / scale,
                           tuple([spec.node.cnic_kv_bytes_s / scale] * spec.node.gpus))
                 for n in range(spec.nodes)]
        self.fabric = self._stack.enter_context(Fabric(links))

    def close(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()
        self._stack.close()

    # -- a run ---------------------------------------------------------------------------
    def run(self, workload: Workload, decider: Decider, faults: Faults | None = None,
            router_hook: Any = None) -> dict[str, Any]:
        """Replay ``workload``; returns the simulator's metrics plus the live counters."""
        root = tempfile.mkdtemp(prefix="dualpath-kv-")
        self._stack.callback(shutil.rmtree, root, True)
        before, wall = os.times(), time.perf_counter()
        try:
            if self.options.netns:
                self._build_fabric()
            metrics = asyncio.run(self._run(root, workload, decider, faults or Faults(),
                                            router_hook))
        finally:
            self.close()
        # CPU of the router and every process of the run (waited for by close()), over the
        # run's wall time: how close the machine came to saturation.
        after = os.times()
        cpu = sum(after[:4]) - sum(before[:4])
        metrics["cpu_cores_busy"] = cpu / (time.perf_counter() - wall)
        return metrics

    async def _run(self, root: str, workload: Workload, decider: Decider, faults: Faults,
                   router_hook: Any) -> dict[str, Any]:
        for_nodes, for_router = self._start_storage(root)
        host = "0.0.0.0" if self.fabric is not None else "127.0.0.1"
        router = Router(self.spec, workload, decider, clock_scale=self.options.time_scale,
                        block_bytes=self.block_bytes, storage=for_router, storage_root=root,
                        host=host, faults=faults, kill=self.kill_node)
        port = await router.listen()
        router_ip = self.fabric.router_ip if self.fabric is not None else "127.0.0.1"
        self._start_nodes((router_ip, port), for_nodes)
        await router.start()
        if router_hook is not None:
            router_hook(router)
        wall = time.perf_counter()
        await router.run()
        wall = time.perf_counter() - wall
        stats = await router.stop()
        return self._metrics(router, stats, wall)

    def _metrics(self, router: Router, stats: list[dict[str, Any]], wall_s: float
                 ) -> dict[str, Any]:
        spec = self.spec
        links: dict[str, Link] = {}
        counters: Counter[str] = Counter(router.counters)
        for node_stats in stats:
            counters.update(node_stats["counters"])
            for name, (bytes_s, starts, ends, sizes) in node_stats["links"].items():
                link = Link(name, bytes_s)
                link.starts, link.ends, link.sizes = starts, ends, sizes
                links[name] = link
        snics = [links.get(f"snic{n}") or Link(f"snic{n}", spec.snic_bytes_s_of(n))
                 for n in range(spec.nodes)]
        cnics = [(links.get(f"cnic{e}-in") or Link("-", 1.0),
                  links.get(f"cnic{e}-out") or Link("-", 1.0)) for e in range(spec.engines)]
        metrics = summarize(router.recorder, spec, snics, cnics, router.hit_bytes, wall_s)
        metrics.pop("sim_requests_per_s", None)
        metrics.update({
            "preset": spec.name, "transport": self.options.transport,
            "netns": self.options.netns, "time_scale": self.options.time_scale,
            "bytes_scale": self.options.bytes_scale, "layerwise": self.options.layerwise,
            "oracle": self.options.oracle, "live": dict(sorted(counters.items())),
        })
        return metrics
