"""A scheduler server running in this process (its own event loop thread), and clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest

from policy_service.proto import scheduler_pb2 as pb
from policy_service.server import SchedulerServer, ServeConfig
from policy_service.servicer import ADMIN, SCHEDULER

TOKEN = "test-token-0123456789"


class RunningServer:
    """A :class:`SchedulerServer` on its own loop thread; ``stop()`` drains it."""

    def __init__(self, config: ServeConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self.run(_build(config))
        self.port = self.run(self.server.start())
        self.target = f"127.0.0.1:{self.port}"
        self._stopped = False

    def run(self, coro: Any, timeout_s: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self, grace_s: float = 5.0) -> None:
        if not self._stopped:
            self._stopped = True
            self.run(self.server.stop(grace_s))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


async def _build(config: ServeConfig) -> SchedulerServer:
    return SchedulerServer(config)


class Client:
    """Raw stubs for every method (messages in, messages out), with a deadline on each."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.channel = (grpc.secure_channel(target, credentials) if credentials
                        else grpc.insecure_channel(target))
        replies = {"Schedule": pb.Decision, "ScheduleBatch": pb.ScheduleBatchResponse,
                   "ReportEngineState": pb.ReportAck, "ReportCacheEvents": pb.ReportAck,
                   "Complete": pb.CompleteResponse,
                   "GetPolicy": pb.PolicyInfo, "Ping": pb.PingResponse,
                   "SwapPolicy": pb.PolicyInfo, "Rollback": pb.PolicyInfo,
                   "SetShadow": pb.PolicyInfo}
        admin = {"SwapPolicy", "Rollback", "SetShadow"}
        for name, reply in replies.items():
            service = ADMIN if name in admin else SCHEDULER
            setattr(self, name, self.channel.unary_unary(
                f"/{service}/{name}", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=reply.FromString))

    def admin(self, name: str, msg: Any, token: str | None = TOKEN, timeout: float = 120) -> Any:
        metadata = [("authorization", f"Bearer {token}")] if token is not None else None
        return getattr(self, name)(msg, timeout=timeout, metadata=metadata)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return str(path)


@pytest.fixture
def start_server(tmp_path, token_file) -> Iterator[Any]:
    """``start_server(**config)``: a running server (stopped at teardown)."""
    servers: list[RunningServer] = []

    def start(**overrides: Any) -> RunningServer:
        config = ServeConfig(port=0, db=f"sqlite:///{tmp_path / 'decisions.db'}",
                             admin_token_file=token_file, log_flush_s=0.05)
        server = RunningServer(replace(config, **overrides))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def served(start_server) -> Iterator[tuple[RunningServer, Client]]:
    """A server of ds27b-1p1d serving dualpath, and a client."""
    server = start_server()
    client = Client(server.target)
    yield server, client
    client.close()


def sim_points(n: int = 200, preset: str = "ds27b-1p1d", seed: int = 0) -> list[tuple[Any, Any]]:
    """(request, view) pairs of a short simulation under dualpath."""
    from experiments.bench.service import sample_points

    return sample_points(n, seed, preset, agents=64, mal="32k")


def schedule_msg(request: Any, view: Any | None, client_id: str = "t") -> pb.ScheduleRequest:
    from policy_service.codec import request_to_pb, view_to_pb

    msg = pb.ScheduleRequest(request=request_to_pb(request), client_id=client_id)
    if view is not None:
        msg.view.CopyFrom(view_to_pb(view))
    return msg
