"""``dualpath gateway``: a live cluster serving HTTP behind Envoy and the endpoint picker.

Processes: the scheduler service with its endpoint picker (``dualpath serve
--epp-port``, supervised: restarted on the same ports if it dies), the live
cluster (storage, one process per node, each engine with its HTTP front; the
router here), and Envoy with the configuration of :mod:`experiments.live.envoy`.
This process feeds the service what the cluster knows (engine state with each
engine's endpoint, cache events, completions: :class:`policy_service.feed.
ServiceFeed`). Once all are up it prints ``ready http://127.0.0.1:PORT``; on
SIGTERM or SIGINT (or :attr:`Gateway.stop`) the cluster stops taking requests, those
in flight finish (at most ``drain_s``), and every process is stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.spec import resolve_policy
from experiments.live.envoy import EnvoyProcess, envoy_config
from experiments.live.service_process import ServiceProcess
from policy_service.feed import ServiceFeed
from runtime.execution.job import Job, outcome
from runtime.live.cluster import LiveCluster, local_decider
from runtime.live.config import LiveOptions, load_live_preset
from runtime.live.front.server import LOCAL_IDS
from runtime.live.model_run import model_overrides
from runtime.live.router import Router
from runtime.placement.order import order_of
from runtime.serving.served import ServedWorkload

#: How often the supervisor looks at the service process (seconds).
SUPERVISE_S = 0.2


@dataclass(frozen=True)
class GatewayConfig:
    """What ``dualpath gateway`` takes; checked on construction."""

    preset: str
    policy: str = "dualpath"
    port: int = 8080
    fail_open: bool = True
    overrides: tuple[str, ...] = ()
    db: str | None = "sqlite:///decisions.db"
    admin_token_file: str | None = None
    local_policy: str = "dualpath"  # decides requests that come without the picker's choice
    max_wait_s: float = 30.0
    round_robin_port: int | None = None  # also serve the engines by plain round robin here
    drain_s: float = 30.0
    transport: str = "shm"
    engine: str = "emulated"  # "model": the engines run a real transformer
    model_size: str | None = None  # default: the live preset's [model] engine_size

    def __post_init__(self) -> None:
        for flag, port in (("--port", self.port), ("round_robin_port", self.round_robin_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{flag} must lie in 0..65535, got {port}")
        for name in ("max_wait_s", "drain_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        load_live_preset(self.preset)  # names the known presets if it is not one


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now on loopback, below the kernel's ephemeral range: a port
    the OS hands out for ``bind(0)`` may go to another process's outgoing connection (the
    cluster opens many) before our listener binds it, one below that range may not. A later
    bind may still race with another listener."""
    low = _ephemeral_low()
    candidates = random.Random().sample(range(PORT_FLOOR, low), k=min(4 * n + 64,
                                                                      low - PORT_FLOOR))
    ports: list[int] = []
    for port in candidates:
        if len(ports) == n:
            break
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    if len(ports) < n:
        raise RuntimeError(f"found only {len(ports)} free ports in {PORT_FLOOR}..{low - 1}")
    return ports


#: The lowest port :func:`free_ports` hands out (below: well-known and registered services).
PORT_FLOOR = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return max(PORT_FLOOR + 1024, int(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768


class Gateway:
    """One gateway run: :meth:`run` blocks until stopped; ``stop`` (a threading event)
    stops it from another thread, as SIGTERM does."""

    def __init__(self, cfg: GatewayConfig, on_ready: Callable[[Gateway], None] | None = None,
                 announce: bool = True) -> None:
        self.cfg = cfg
        self.announce = announce  # print the ready line on stdout (what the command does)
        self.preset = load_live_preset(cfg.preset)
        self.options = self._options()
        # The service must see the cluster the engines run (the model's shape included).
        self.overrides = cfg.overrides + model_overrides(self.options)
        self.spec = self.preset.spec(self.overrides)
        self.on_ready = on_ready
        self.stop = threading.Event()
        self.ready = threading.Event()  # set once Envoy sees the picker ready
        ports = free_ports(self.spec.engines + 5)
        self.fronts = ports[:self.spec.engines]
        (self.epp_port, self.service_port, self.metrics_port, self.admin_port,
         port) = ports[self.spec.engines:]
        self.port = cfg.port or port
        self.endpoints = {e: f"127.0.0.1:{p}" for e, p in enumerate(self.fronts)}
        self.options = dataclasses.replace(self.options, fronts=tuple(self.fronts))
        self.service: ServiceProcess | None = None
        self.envoy: EnvoyProcess | None = None
        self.feed: ServiceFeed | None = None
        self.router: Router | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="dualpath-gateway-"))
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the service, supervised ------------------------------------------------------
    def _service_args(self) -> list[str]:
        cfg = self.cfg
        args = ["--policy", cfg.policy, "--preset", cfg.preset, "--port", str(self.service_port),
                "--epp-port", str(self.epp_port), "--epp-max-wait-s", f"{cfg.max_wait_s:g}",
                "--metrics-port", str(self.metrics_port),
                "--db", cfg.db or "none"]
        for item in self.overrides:
            args += ["--set", item]
        if cfg.admin_token_file:
            args += ["--admin-token-file", cfg.admin_token_file]
        return args

    def _options(self) -> LiveOptions:
        """The cluster's options (its fronts' ports are set once they are chosen)."""
        cfg, preset = self.cfg, self.preset
        if cfg.engine != "model":
            return LiveOptions(time_scale=preset.time_scale, bytes_scale=preset.bytes_scale,
                               transport=cfg.transport)
        size = cfg.model_size or preset.engine_size
        return LiveOptions(time_scale=preset.time_scale, bytes_scale=1, transport=cfg.transport,
                           engine="model", model_size=size, served_model=f"dualpath-{size}")

    def _start_service(self) -> None:
        self.service = ServiceProcess(self._service_args())

    def _supervise(self) -> None:
        """Restart the service whenever it dies, until the gateway stops."""
        while not self.stop.wait(SUPERVISE_S):
            with self._lock:
                service = self.service
                if service is None or service.proc.poll() is None:
                    continue
                print(f"gateway: the scheduler service died ({service.proc.returncode}); "
                      f"restarting it", file=sys.stderr, flush=True)
                try:
                    self._start_service()
                except RuntimeError as exc:
                    print(f"gateway: restart failed: {exc}", file=sys.stderr, flush=True)

    def _stop_service(self) -> None:
        with self._lock:
            service, self.service = self.service, None
        if service is not None:
            service.__exit__(None, None, None)

    # -- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Serve until stopped; returns the cluster's metrics of what it served."""
        from runtime.live.router import RunFailed

        local = resolve_policy(self.cfg.local_policy).policy
        with ExitStack() as stack:
            stack.callback(shutil.rmtree, self._workdir, True)  # Envoy's config and log
            self._start_service()
            stack.callback(self._stop_service)
            threading.Thread(target=self._supervise, name="service-supervisor",
                             daemon=True).start()
            self.feed = feed = ServiceFeed(f"127.0.0.1:{self.service_port}", self.endpoints)
            stack.callback(feed.close)
            stack.callback(self._stop_envoy)
            stack.callback(self.stop.set)  # the supervisor stops before the service does
            try:
                return LiveCluster(self.spec, self.options).run(
                    ServedWorkload(self.spec.block_tokens), local_decider(local),
                    router_hook=self._hook, order=order_of(local), serving=True)
            except RunFailed as exc:
                return {"error": str(exc), **(exc.outcome or {})}

    def _stop_envoy(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()

    def _hook(self, router: Router) -> None:
        self.router = router
        router.on_finish = self._finished
        asyncio.ensure_future(self._serve(router))

    def _finished(self, job: Job) -> None:
        rid = job.request.request_id
        if self.feed is not None and rid < LOCAL_IDS:  # the picker's: complete it there
            self.feed.complete(rid, outcome(job))

    async def _serve(self, router: Router) -> None:
        assert self.feed is not None
        if router.caches is not None:
            self.feed.remote.watch_caches(router.caches, router.clock.now)
        asyncio.ensure_future(self.feed.run(router.view, router.placed_ids))
        decode = [("127.0.0.1", p) for e, p in enumerate(self.fronts)
                  if e >= self.spec.prefill_engines]
        config = envoy_config(self.port, self.admin_port, decode, ("127.0.0.1", self.epp_port),
                              fail_open=self.cfg.fail_open, max_wait_s=self.cfg.max_wait_s,
                              round_robin_port=self.cfg.round_robin_port)
        try:
            self.envoy = await asyncio.to_thread(EnvoyProcess, config, self._workdir)
            # Ready once Envoy sees the picker ready (its view synced with the engines).
            await asyncio.to_thread(self.envoy.wait_healthy, "epp")
        except (OSError, RuntimeError) as exc:
            print(f"gateway: {exc}", file=sys.stderr, flush=True)
            router.fail(f"envoy did not start: {exc}")
            return
        if self.announce:
            print(f"ready {self.url}", flush=True)
        print(f"gateway: scheduler 127.0.0.1:{self.service_port} (pid {self.service_pid()}, "
              f"metrics :{self.metrics_port}), picker :{self.epp_port}, envoy admin "
              f":{self.admin_port}, fronts {self.endpoints}", file=sys.stderr, flush=True)
        if self.on_ready is not None:
            self.on_ready(self)
        self.ready.set()
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
        router.stop_serving()
        asyncio.get_running_loop().call_later(self.cfg.drain_s, _give_up, router)

    def service_pid(self) -> int | None:
        with self._lock:
            return self.service.proc.pid if self.service is not None else None


@contextmanager
def running(gateway: Gateway, join_s: float = 300.0) -> Iterator[dict[str, Any]]:
    """Run ``gateway`` on a thread; the block runs once it is ready, and leaving it stops
    the gateway. Yields the dict the run's result (the cluster's figures) fills once
    stopped; RuntimeError if the gateway never comes up."""
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(gateway.run()), daemon=True)
    runner.start()
    try:
        while not gateway.ready.wait(0.5):
            if not runner.is_alive():
                raise RuntimeError("the gateway did not come up (see its messages above)")
        yield result
    finally:
        gateway.stop.set()
        runner.join(join_s)


def _give_up(router: Router) -> None:
    if router.open:
        router.fail(f"stopping: {router.open} request(s) still open after the drain")


def run_gateway(cfg: GatewayConfig) -> dict[str, Any]:
    """``dualpath gateway``: serve until SIGTERM or SIGINT."""
    gateway = Gateway(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: gateway.stop.set())
    return gateway.run()
