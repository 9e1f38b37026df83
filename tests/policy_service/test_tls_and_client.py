"""TLS with a certificate made here, and ``RemotePolicy``: identical runs, fallbacks."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from agents import resolve_policy
from policy_service.client import RemotePolicy, RemoteSpec
from policy_service.proto import scheduler_pb2 as pb
from runtime.policy import (
    FallsBack,
    HoldsResources,
    LearnsOnline,
    Policy,
    as_learner,
    close_policy,
)
from tests.policy_service.conftest import Client, schedule_msg, sim_points


def _make_cert(folder):
    key, cert = folder / "key.pem", folder / "cert.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot make a test certificate with openssl: {err}")
    return str(cert), str(key)


def test_tls_serves_trusted_clients_and_refuses_plaintext(start_server, tmp_path):
    cert, key = _make_cert(tmp_path)
    server = start_server(tls_cert=cert, tls_key=key, policy="dualpath_split")
    creds = grpc.ssl_channel_credentials(Path(cert).read_bytes())
    client = Client(server.target, creds)
    request, view = sim_points(1)[0]
    assert not client.Schedule(schedule_msg(request, view), timeout=5).defer
    plain = Client(server.target)
    with pytest.raises(grpc.RpcError) as err:
        plain.Ping(pb.PingRequest(), timeout=2)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    # RemotePolicy over TLS, through the resolver's grpc:// spec. The server serves
    # dualpath_split and the client falls back to pe_only: they decide this request
    # otherwise, so a fallback could not pass for the service's answer.
    remote = resolve_policy(f"grpc://127.0.0.1:{server.port}?ca={cert}&fallback=pe_only").policy
    assert isinstance(remote, FallsBack)
    served = resolve_policy("dualpath_split").policy.decide(request, view)
    assert remote.fallback.decide(request, view) != served
    assert remote.decide(request, view) == served
    assert (remote.fallbacks, remote.served) == (0, 1)
    remote.close()
    client.close()
    plain.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_policy_falls_back_when_the_service_does_not_answer():
    port = _free_port()  # nothing listens there
    remote = RemotePolicy(RemoteSpec.parse(f"grpc://127.0.0.1:{port}?timeout_ms=50"))
    local = resolve_policy("dualpath").policy
    points = sim_points(5)
    for request, view in points:
        assert remote.decide(request, view) == local.decide(request, view)
    assert (remote.fallbacks, remote.served) == (len(points), 0)
    remote.close()


def test_remote_policy_raises_on_a_refused_call(served):
    server, _ = served
    remote = RemotePolicy(RemoteSpec.parse(f"grpc://{server.target}"))
    request, view = sim_points(1, preset="tiny")[0]  # another cluster than the service's
    with pytest.raises(ValueError, match="INVALID_ARGUMENT.*another cluster"):
        remote.decide(request, view)
    assert (remote.fallbacks, remote.served) == (0, 0)
    remote.close()


def test_remote_policy_declares_its_capabilities():
    remote = RemotePolicy(RemoteSpec.parse(f"grpc://127.0.0.1:{_free_port()}"))
    assert isinstance(remote, Policy)
    assert isinstance(remote, FallsBack)
    assert isinstance(remote, HoldsResources)
    assert isinstance(remote, LearnsOnline)
    assert as_learner(remote) is remote
    close_policy(remote)


@pytest.mark.parametrize("spec,message", [
    ("grpc://127.0.0.1", "expected grpc://HOST:PORT"),
    ("grpc://127.0.0.1:1?speed=9", "unknown option"),
    ("grpc://127.0.0.1:1?timeout_ms=0", "timeout_ms must be > 0"),
    ("grpc://127.0.0.1:1?ca=/no/such.pem", "no such file"),
])
def test_bad_remote_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        RemoteSpec.parse(spec)


def test_simulation_through_the_service_equals_the_local_one(start_server):
    """The service serves ``dualpath_split`` while the client's local fallback is
    ``dualpath``, which decides otherwise: equal results with no fallback show that every
    decision came from the service."""
    from agents.running import policy_run
    from experiments.evaluation.runner import RunConfig, build_workload, run
    from runtime.preset import load_preset
    from runtime.sim import Simulator

    server = start_server(policy="dualpath_split")
    wall = {"wall_s", "sim_requests_per_s"}
    cfg = RunConfig(preset="ds27b-1p1d", agents=24, mal="32k", policy="dualpath_split")
    local = run(cfg)
    cluster = load_preset(cfg.preset)
    with policy_run(f"grpc://{server.target}", cluster) as remote:
        policy = remote.policy
        assert isinstance(policy, RemotePolicy) and policy.fallback.name == "dualpath"
        decisions = _count_decisions(policy)
        metrics = Simulator(cluster, build_workload(cfg, cluster)).run(policy).metrics
        counts = remote.counts()
    assert counts["policy_fallbacks"] == 0
    assert counts["policy_served"] == decisions["n"] >= metrics["requests"] > 50
    assert {k: v for k, v in local.items() if k in metrics and k not in wall} == \
        {k: v for k, v in metrics.items() if k not in wall}
    # The fallback would have given other results: a fallback could not pass unseen.
    fallback_run = run(RunConfig(preset=cfg.preset, agents=24, mal="32k", policy="dualpath"))
    assert fallback_run["jct_s"] != local["jct_s"]


def _count_decisions(policy: RemotePolicy) -> dict[str, int]:
    """Count ``policy``'s ``decide`` calls (into the returned dict's ``n``)."""
    counted = {"n": 0}
    decide = policy.decide

    def counting(request, view):
        counted["n"] += 1
        return decide(request, view)

    policy.decide = counting
    return counted
