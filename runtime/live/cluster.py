"""Launch a live cluster, run one workload through it, tear it down, report.

Processes: the storage service, one process per node, and the router (here,
in the calling process). On loopback every process listens on 127.0.0.1 and
the nodes pace their NICs; with ``netns`` each node and the storage service
run in their own network namespace on separate storage and compute networks
shaped by ``tc``. Whatever happens, the processes are stopped, the storage
directory is removed and the namespaces are torn down.

The storage service is supervised while the workload runs: if it dies it is
started again within :data:`STORAGE_POLL_S` plus its start-up time, on the same
address, port and directory, so the clients' reconnection finds it and every
block it acknowledged is still there.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any

from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer
from runtime.execution.link import Link
from runtime.execution.metrics import summarize
from runtime.live.config import LiveOptions, spec_to_dict
from runtime.live.messages import Stats
from runtime.live.model_run import check_workload, spec_for_model
from runtime.live.node import NodeConfig
from runtime.live.router import Decider, Faults, Router
from runtime.placement.lifecycle import FINISHED
from runtime.placement.order import FIFO, QueueOrder
from runtime.policy import Policy
from runtime.request import Request
from runtime.view import ClusterView
from runtime.workload.base import Workload

log = logging.getLogger(__name__)

#: How often the supervisor checks that the storage service is alive.
STORAGE_POLL_S = 0.1
#: How long a storage service may take to announce itself (a loaded machine is slow
#: to start Python).
STORAGE_START_S = 60.0
#: Failed restarts in a row after which the supervisor gives up (the clients then
#: fail with StorageUnavailable, and the run with them).
STORAGE_RESTART_TRIES = 5


def local_decider(policy: Policy) -> Decider:
    """A policy called in the router's process (a ``RemotePolicy`` makes its gRPC call here).
    Its queue order goes to :meth:`LiveCluster.run` apart (``order_of(policy)``)."""

    async def decide(request: Request, view: ClusterView) -> Decision | Defer | None:
        return policy.decide(request, view)
    return decide


class LiveCluster:
    """The processes of one live run; :meth:`run` replays a workload through them."""

    def __init__(self, spec: ClusterSpec, options: LiveOptions) -> None:
        self.options = options
        self.spec = spec_for_model(spec, options)
        self.block_bytes = options.real_block_bytes(self.spec)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stack = ExitStack()
        self.fabric: Any = None
        self.storage_restarts = 0

    # -- processes ------------------------------------------------------------------------
    def _popen(self, name: str, argv: list[str], host: Any = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if host is not None:
            proc = self.fabric.popen(host, argv, stdout=subprocess.PIPE, env=env)
        else:
            # Its own session: a terminal's Ctrl-C reaches the launcher only, which then
            # stops its processes in order (a served cluster drains first).
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env,
                                    start_new_session=True)
        self._procs[name] = proc
        return proc

    def _start_storage(self, root: str) -> tuple[tuple[str, int], tuple[str, int]]:
        """Start the storage service; returns (address for nodes, address for the router)."""
        port = self._launch_storage(root, 0)
        if self.fabric is None:
            return ("127.0.0.1", port), ("127.0.0.1", port)
        return (self.fabric.storage.storage_ip, port), (self.fabric.storage.mgmt_ip, port)

    def _launch_storage(self, root: str, port: int) -> int:
        """Start a storage service on ``port`` (0: any free one) serving ``root``; returns
        the port it announced once it accepts connections."""
        argv = [sys.executable, "-m", "runtime.live.storage", "--root", root,
                "--replicas", str(self.options.replicas), "--port", str(port)]
        if self.fabric is None:
            proc = self._popen("storage", argv)
        else:
            proc = self._popen("storage", [*argv, "--host", "0.0.0.0"], self.fabric.storage)
        line = _first_line(proc, STORAGE_START_S)
        if not line.startswith("storage listening on "):
            if proc.poll() is None:
                proc.kill()
            raise RuntimeError(f"storage service did not start (said {line!r}, "
                               f"exit code {proc.poll()})")
        return int(line.rsplit(":", 1)[1])

    def kill_storage(self) -> bool:
        """SIGKILL the storage service (fault injection; callable from any thread).
        While a run goes on the supervisor restarts it. Returns whether it was running."""
        proc = self._procs.get("storage")
        if proc is None or proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        return True

    def _supervise_storage(self, root: str, port: int, stop: threading.Event) -> None:
        """Restart the storage service on ``port`` whenever it dies, until ``stop`` is set.

        Runs in its own thread: a restart blocks until the new process announces
        itself, and the run's event loop must go on meanwhile.
        """
        failures = 0
        while not stop.wait(STORAGE_POLL_S) and failures < STORAGE_RESTART_TRIES:
            old = self._procs["storage"]
            code = old.poll()
            if code is None:
                continue
            if old.stdout is not None:
                old.stdout.close()
            try:
                self._launch_storage(root, port)
            except (OSError, RuntimeError) as exc:
                failures += 1
                log.error("storage service died (exit code %s); restart %d of %d failed: %s",
                          code, failures, STORAGE_RESTART_TRIES, exc)
                continue
            failures = 0
            self.storage_restarts += 1
            log.warning("storage service died (exit code %s); restarted on port %d",
                        code, port)

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

    def signal_node(self, node: int, sig: int) -> None:
        """Send ``sig`` to node ``node``'s process (a fault injector stops and resumes nodes)."""
        proc = self._procs.get(f"node{node}")
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def set_snic_rate(self, node: int, model_bytes_s: float) -> None:
        """Change node ``node``'s storage link to ``model_bytes_s`` (model bytes/s) mid-run;
        needs network namespaces (the kernel shapes the link)."""
        if self.fabric is None:
            raise RuntimeError("changing a link's rate needs --netns (kernel-shaped links)")
        scale = self.options.time_scale * self.options.bytes_scale
        self.fabric.set_snic_rate(node, model_bytes_s / scale)

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
            router_hook: Any = None, order: QueueOrder = FIFO, serving: bool = False
            ) -> dict[str, Any]:
        """Replay ``workload``, asking about waiting requests in ``order``; returns the
        simulator's metrics plus the live counters. ``serving``: also take the requests
        the nodes' HTTP fronts submit, until ``router.stop_serving()`` (``router_hook``
        gets the router once the nodes are up)."""
        if self.options.fronts and len(self.options.fronts) != self.spec.engines:
            raise ValueError(f"fronts: {len(self.options.fronts)} ports for "
                             f"{self.spec.engines} engines")
        check_workload(self.options, workload, self.spec)
        root = tempfile.mkdtemp(prefix="dualpath-kv-")
        self._stack.callback(shutil.rmtree, root, True)
        before, wall = os.times(), time.perf_counter()
        try:
            if self.options.netns:
                self._build_fabric()
            router_hook = _with_order(router_hook, order)
            metrics = asyncio.run(self._run(root, workload, decider, faults or Faults(),
                                            router_hook, serving))
        finally:
            self.close()
        # CPU of the router and every process of the run (waited for by close()), over the
        # run's wall time: how close the machine came to saturation.
        after = os.times()
        cpu = sum(after[:4]) - sum(before[:4])
        metrics["cpu_cores_busy"] = cpu / (time.perf_counter() - wall)
        return metrics

    async def _run(self, root: str, workload: Workload, decider: Decider, faults: Faults,
                   router_hook: Any, serving: bool) -> dict[str, Any]:
        for_nodes, for_router = self._start_storage(root)
        stop = threading.Event()
        supervisor = threading.Thread(target=self._supervise_storage, name="storage-supervisor",
                                      args=(root, for_nodes[1], stop), daemon=True)
        supervisor.start()
        try:
            router, wall = await self._replay(for_nodes, for_router, root, workload, decider,
                                              faults, router_hook, serving)
        finally:
            # The workload is done (or failed): from here on a dead storage stays dead. A
            # restart under way finishes first, so close() stops what it started.
            stop.set()
            await asyncio.get_running_loop().run_in_executor(None, supervisor.join)
        stats = await router.stop()
        return self._metrics(router, stats, wall)

    async def _replay(self, for_nodes: tuple[str, int], for_router: tuple[str, int], root: str,
                      workload: Workload, decider: Decider, faults: Faults, router_hook: Any,
                      serving: bool) -> tuple[Router, float]:
        """Start the router and the nodes and replay ``workload``; returns the router
        and the replay's wall time."""
        host = "0.0.0.0" if self.fabric is not None else "127.0.0.1"
        router = Router(self.spec, workload, decider, clock_scale=self.options.time_scale,
                        block_bytes=self.block_bytes, storage=for_router, storage_root=root,
                        host=host, faults=faults, kill=self.kill_node,
                        liveness_s=self.options.liveness_s, stall_s=self.options.stall_s,
                        real_kv=self.options.engine == "model")
        port = await router.listen()
        router_ip = self.fabric.router_ip if self.fabric is not None else "127.0.0.1"
        self._start_nodes((router_ip, port), for_nodes)
        await router.start()
        router.serving = serving
        if router_hook is not None:
            router_hook(router)
        wall = time.perf_counter()
        await router.run()
        return router, time.perf_counter() - wall

    def _metrics(self, router: Router, stats: list[Stats], wall_s: float
                 ) -> dict[str, Any]:
        spec = self.spec
        links: dict[str, Link] = {}
        counters: Counter[str] = Counter(router.counters)
        for node_stats in stats:
            counters.update(node_stats.counters)
            for name, (bytes_s, starts, ends, sizes) in node_stats.links.items():
                link = Link(name, bytes_s)
                link.starts, link.ends, link.sizes = starts, ends, sizes
                links[name] = link
        snics = [links.get(f"snic{n}") or Link(f"snic{n}", spec.snic_bytes_s_of(n))
                 for n in range(spec.nodes)]
        cnics = [(links.get(f"cnic{e}-in") or Link("-", 1.0),
                  links.get(f"cnic{e}-out") or Link("-", 1.0)) for e in range(spec.engines)]
        caches = router.caches
        metrics = summarize(router.recorder, spec, snics, cnics, router.hit_bytes, wall_s,
                            None if caches is None else caches.by_source)
        if caches is not None:
            metrics["index"] = caches.audit()
        metrics.pop("sim_requests_per_s", None)
        metrics.update({
            "preset": spec.name, "transport": self.options.transport,
            "netns": self.options.netns, "time_scale": self.options.time_scale,
            "bytes_scale": self.options.bytes_scale, "layerwise": self.options.layerwise,
            "oracle": self.options.oracle,
            "live": dict(sorted({**counters, "storage_restarts": self.storage_restarts,
                                 **self._token_check(router)}.items())),
            "engine": self.options.engine, **_tokens_digest(router),
            **router.outcome(),
        })
        return metrics

    def _token_check(self, router: Router) -> dict[str, int]:
        """With the model engine: its tokens against a float64 recomputation."""
        if self.options.engine != "model":
            return {}
        from runtime.live.model_run import model_config
        from runtime.live.token_check import Answered, check_tokens

        answered = [Answered(e.request, e.generated, e.prompt_ids)
                    for e in router.entries.values() if e.phase is FINISHED]
        if not self.options.token_check:
            return {"tokens_generated": sum(len(a.generated) for a in answered)}
        return check_tokens(answered, model_config(self.options), self.options.model_seed)


def _tokens_digest(router: Router) -> dict[str, str]:
    """With the model engine: one digest of every request's generated tokens, by agent
    and turn, so two runs (other paths, other batch mates) can be compared."""
    answers = sorted((e.request.agent_id, e.request.turn, e.generated)
                     for e in router.entries.values() if e.generated)
    if not answers:
        return {}
    return {"tokens_digest": hashlib.blake2b(repr(answers).encode(), digest_size=16).hexdigest()}


def _first_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The first line ``proc`` prints, or what it printed by ``timeout_s`` (never blocks
    longer, so a hung process can't hang the launcher)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().decode().strip() if ready else ""


def _with_order(hook: Any, order: QueueOrder) -> Any:
    """``hook`` after setting the router's queue order (before any request arrives)."""
    def set_order(router: Router) -> None:
        router.waiting.set_order(order, router.spec)
        if hook is not None:
            hook(router)
    return set_order
