"""The scheduler server: ``dualpath serve``.

One ``grpc.aio`` server hosts the scheduler, its admin service, the standard
health service (NOT_SERVING until a policy is loaded) and server reflection.
Policy loads run in a worker thread, so a swap never stalls the calls being
served; SIGTERM (or :meth:`SchedulerServer.stop`) stops taking calls, lets those
in flight finish, then flushes the decision log.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agents.model_registry import MODEL_NAME, alias_version
from policy_service.cache_index import CacheIndex
from policy_service.canary import CanaryConfig
from policy_service.cluster_state import ClusterState
from policy_service.decision_log import DecisionLog
from policy_service.epp.picker import Picker
from policy_service.epp.processor import SERVICE as EXT_PROC
from policy_service.epp.processor import ExtProc
from policy_service.hot_swap import CanarySlot, LoadedPolicy, PolicyRefused, PolicyRegistry
from policy_service.metrics import Metrics
from policy_service.proto import scheduler_pb2 as pb
from policy_service.scheduler import SchedulerCore
from policy_service.servicer import ADMIN, SCHEDULER, Servicer
from runtime.cluster import ClusterSpec
from runtime.preset import load_preset
from runtime.serving.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two updates of the endpoint picker's readiness.
EPP_HEALTH_S = 0.1


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``dualpath serve`` takes; checked on construction."""

    policy: str | None = "dualpath"
    preset: str = "ds27b-1p1d"
    overrides: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 50051
    watch_alias: str | None = None
    model_name: str = MODEL_NAME
    watch_interval_s: float = 0.25
    tracking_uri: str | None = None
    db: str | None = "sqlite:///decisions.db"
    log_flush_s: float = 0.5
    metrics_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    admin_token_file: str | None = None
    max_batch: int = 1024
    engine_max_age_s: float = 2.0
    grace_s: float = 10.0
    cache_ttl_s: float = 30.0
    epp_port: int | None = None
    epp_max_wait_s: float = 30.0
    tokenizer: str = "bytes"
    canary_max_regression: float = 0.10
    canary_min_completions: int = 50
    canary_window: int = 2000

    def __post_init__(self) -> None:
        self.canary_config()  # its checks name the value that is wrong
        for flag, port in (("--port", self.port), ("--metrics-port", self.metrics_port),
                           ("--epp-port", self.epp_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{flag} must lie in 0..65535, got {port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                           ("--admin-token-file", self.admin_token_file)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{flag} {path}: no such file")
        for name in ("watch_interval_s", "log_flush_s", "engine_max_age_s", "grace_s",
                     "cache_ttl_s", "epp_max_wait_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.max_batch <= 100_000:
            raise ValueError(f"max_batch must lie in 1..100000, got {self.max_batch}")
        if self.policy is None and self.watch_alias is None:
            raise ValueError("nothing to serve: give --policy SPEC or --watch-alias ALIAS")

    def canary_config(self) -> CanaryConfig:
        return CanaryConfig(max_regression=self.canary_max_regression,
                            min_completions=self.canary_min_completions,
                            window=self.canary_window)

    def token(self) -> str | None:
        if self.admin_token_file is None:
            return None
        token = Path(self.admin_token_file).read_text().strip()
        if not token:
            raise ValueError(f"--admin-token-file {self.admin_token_file} is empty")
        return token


class Admin:
    """Policy changes: loads off the event loop, one at a time, counted in the metrics."""

    def __init__(self, registry: PolicyRegistry, metrics: Metrics,
                 on_change: Callable[[], Awaitable[None]]) -> None:
        self.registry = registry
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self._on_change = on_change

    async def swap(self, spec: str, kind: str = "swap") -> LoadedPolicy:
        async with self._lock:
            loaded = await self._load(self.registry.swap, spec)
        self.metrics.swaps.labels(kind).inc()
        await self._on_change()
        log.info("serving %s (%s)", loaded.version, kind)
        return loaded

    async def rollback(self) -> LoadedPolicy:
        async with self._lock:
            loaded = self.registry.rollback()
        self.metrics.swaps.labels("rollback").inc()
        log.info("rolled back to %s", loaded.version)
        return loaded

    async def set_shadow(self, spec: str) -> LoadedPolicy | None:
        async with self._lock:
            loaded = await self._load(self.registry.set_shadow, spec)
        self.metrics.swaps.labels("shadow").inc()
        return loaded

    async def set_canary(self, spec: str, share: float) -> CanarySlot | None:
        """Start (or, with an empty spec, end) the canary; the challenger loads in a
        worker thread."""
        async with self._lock:
            slot = await self._load(self.registry.set_canary, spec, share)
        self.metrics.swaps.labels("canary").inc()
        if slot is not None:
            log.info("canary: %.1f%% of the sessions on %s", 100 * share, slot.loaded.version)
        return slot

    async def promote_canary(self) -> LoadedPolicy:
        async with self._lock:
            loaded = self.registry.promote_canary()
        self.metrics.swaps.labels("promote").inc()
        await self._on_change()
        log.info("promoted the canary: serving %s", loaded.version)
        return loaded

    async def _load(self, change: Callable[..., T], *args: Any) -> T:
        """``change(*args)`` in a worker thread (it loads a policy); a refusal counted."""
        try:
            return await asyncio.to_thread(change, *args)
        except PolicyRefused:
            self.metrics.refused.inc()
            raise


class SchedulerServer:
    """Build with a config, ``await start()``, then ``await stop()`` (or serve until SIGTERM)."""

    def __init__(self, config: ServeConfig, cluster: ClusterSpec | None = None) -> None:
        self.config = config
        self.cluster = cluster or load_preset(config.preset, config.overrides)
        self.metrics = Metrics()
        self.registry = PolicyRegistry(self.cluster, canary=config.canary_config())
        decision_log = (DecisionLog(config.db, flush_interval_s=config.log_flush_s)
                        if config.db else None)
        self.core = SchedulerCore(self.registry, ClusterState(self.cluster,
                                                              config.engine_max_age_s),
                                  self.metrics, decision_log, config.max_batch,
                                  CacheIndex(self.cluster, config.cache_ttl_s))
        self.admin = Admin(self.registry, self.metrics, self._health_follows_policy)
        self.servicer = Servicer(self.core, self.admin, config.token())
        self.health = health.aio.HealthServicer()
        self.picker = (Picker(self.core, load_tokenizer(config.tokenizer), config.epp_max_wait_s)
                       if config.epp_port is not None else None)
        self.epp_port: int | None = None
        self._epp: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_http: WSGIServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.watched_version: int | None = None

    async def start(self) -> int:
        """Bind, start serving (health NOT_SERVING), then load the policy; returns the port."""
        cfg = self.config
        server = grpc.aio.server(handlers=self.servicer.handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SCHEDULER, ADMIN, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            creds = grpc.ssl_server_credentials(
                [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind {address}")
        await self._set_health(False)
        await server.start()
        self._server = server
        if self.picker is not None:
            await self._start_epp()
        if cfg.metrics_port is not None:
            http = self.metrics.serve(cfg.metrics_port, cfg.host)
            self._metrics_http = http
            self.metrics_port = http.server_port
        if cfg.policy is not None:
            await self.admin.swap(cfg.policy, kind="initial")
        if cfg.watch_alias is not None:
            await self._watch_once()
            self._tasks.append(asyncio.create_task(self._watch_loop()))
        return self.port

    async def _start_epp(self) -> None:
        """The endpoint picker on its own port: ext_proc, health and reflection."""
        assert self.picker is not None
        server = grpc.aio.server(handlers=[ExtProc(self.picker).handler()])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (EXT_PROC, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{self.config.host}:{self.config.epp_port}"
        self.epp_port = server.add_insecure_port(address)
        if self.epp_port == 0:
            raise OSError(f"cannot bind the endpoint picker to {address}")
        await server.start()
        self._epp = server
        self._tasks.append(asyncio.create_task(self._epp_health()))

    async def _epp_health(self) -> None:
        """The picker's checks, as its protocol asks: ``liveness`` while the process
        answers; ``readiness`` and the ext_proc service once it can pick (a policy is
        loaded and some decode engine reported its endpoint, so a restarted picker is not
        ready before its view is), which a gateway's health check of it follows."""
        assert self.picker is not None
        serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                                health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set("liveness", serving)
        while True:
            ready = serving if self.picker.ready() else not_serving
            for service in ("readiness", EXT_PROC):
                await self.health.set(service, ready)
            await asyncio.sleep(EPP_HEALTH_S)

    async def _health_follows_policy(self) -> None:
        await self._set_health(self.registry.current is not None)

    async def _set_health(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SCHEDULER):
            await self.health.set(service, status)

    # -- the alias watch -----------------------------------------------------------------
    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.watch_interval_s)
            try:
                await self._watch_once()
            except Exception as err:  # noqa: BLE001 - keep serving what we serve
                log.warning("alias watch: %s", err)

    async def _watch_once(self) -> None:
        cfg = self.config
        version = await asyncio.to_thread(alias_version, cfg.watch_alias or "",
                                          cfg.tracking_uri, cfg.model_name)
        if version is None or version == self.watched_version:
            return
        try:
            await self.admin.swap(f"models:/{cfg.model_name}/{version}", kind="watch")
        except PolicyRefused as err:
            log.error("alias %s moved to version %s, which is refused: %s",
                      cfg.watch_alias, version, err)
        self.watched_version = version  # a refused version is not retried until the alias moves

    # -- stopping -------------------------------------------------------------------------
    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new calls, finish those in flight, flush the decision log."""
        for task in self._tasks:
            task.cancel()
        await self._set_health(False)
        grace = self.config.grace_s if grace_s is None else grace_s
        if self._epp is not None:
            await self._epp.stop(grace)
        if self._server is not None:
            await self._server.stop(grace)
        await asyncio.to_thread(self.core.close)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


def serve(config: ServeConfig) -> int:
    """Run a server until SIGTERM or SIGINT, then drain; the exit status."""
    return asyncio.run(_serve(config))


def tune_interpreter() -> None:
    """Settings for a latency-bound server process (not for a library's callers).

    The decision log's writer and the shadow are threads: with the default 5 ms
    switch interval, a call that arrives while one holds the GIL waits up to 5 ms.
    Objects alive after start-up (policies, presets, gRPC) are frozen out of the
    cyclic collector, whose full passes over them would otherwise stall calls.
    """
    sys.setswitchinterval(0.0002)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def _serve(config: ServeConfig) -> int:
    server = SchedulerServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await server.start()
    tune_interpreter()
    current = server.registry.current
    print(f"dualpath scheduler on {config.host}:{port} serving "
          f"{current.version if current else 'nothing yet'} for {server.cluster.name}"
          + (f"; metrics on :{server.metrics_port}" if server.metrics_port else "")
          + (f"; endpoint picker on :{server.epp_port}" if server.epp_port else ""), flush=True)
    await stop.wait()
    print("draining", flush=True)
    await server.stop()
    print("stopped", flush=True)
    return 0


__all__ = ["SchedulerServer", "ServeConfig", "pb", "serve"]
