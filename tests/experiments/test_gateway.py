"""The gateway end to end: a real Envoy, the endpoint picker, a live cluster's HTTP fronts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from experiments.live.envoy import ENVOY_BIN
from experiments.live.gateway import Gateway, GatewayConfig
from policy_service.proto import scheduler_pb2 as pb
from policy_service.servicer import ADMIN
from tests.requirements import require_module, require_tool

TOKEN = "gateway-test-token"
BIN = Path(sys.prefix)


class Running:
    """A :class:`Gateway` serving on a thread until :meth:`stop`."""

    def __init__(self, cfg: GatewayConfig) -> None:
        ready = threading.Event()
        self.gateway = Gateway(cfg, on_ready=lambda _: ready.set())
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not ready.wait(180):
            self.stop()
            raise RuntimeError(f"the gateway did not come up: {self.result}")
        self.url = self.gateway.url

    def _run(self) -> None:
        self.result = self.gateway.run()

    def stop(self) -> dict[str, Any]:
        self.gateway.stop.set()
        self.thread.join(120)
        return self.result

    def post(self, body: dict[str, Any], timeout: float = 60, **headers: str
             ) -> requests.Response:
        return requests.post(f"{self.url}/v1/completions", json=body, timeout=timeout,
                             headers={k.replace("_", "-"): v for k, v in headers.items()})

    def received(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        seen = set()
        for port in self.gateway.fronts:
            for row in requests.get(f"http://127.0.0.1:{port}/dualpath/received",
                                    timeout=10).json():
                if row["request_id"] not in seen:
                    seen.add(row["request_id"])
                    out.append(row)
        return out


def start(tmp: Path, **overrides: Any) -> Running:
    require_tool(ENVOY_BIN, "Envoy, unpacked by scripts/bootstrap.sh")
    token = tmp / "token"
    token.write_text(TOKEN)
    cfg = GatewayConfig(preset="tiny-live", port=0, db=f"sqlite:///{tmp / 'decisions.db'}",
                        admin_token_file=str(token), **overrides)
    return Running(cfg)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start(tmp_path_factory.mktemp("gateway"))
    yield running
    result = running.stop()
    assert result.get("lost", 0) == 0, result


def prompt(session: int, turn: int) -> str:
    return f"session {session} " + "context " * (300 * (turn + 1))


def logged(gw: Running) -> dict[int, tuple[int, int, float]]:
    db = gw.gateway.cfg.db
    assert db is not None
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        return {rid: (pe, de, share) for rid, pe, de, share in conn.execute(
            "SELECT request_id, prefill_engine, decode_engine, decode_share FROM decisions "
            "WHERE client_id = 'epp' AND defer = 0")}


def test_every_request_lands_on_the_engines_the_policy_chose(gateway: Running) -> None:
    served = []
    for session in range(4):
        for turn in range(2):
            reply = gateway.post({"model": "any", "prompt": prompt(session, turn),
                                  "max_tokens": 3}, x_session_id=f"s{session}")
            assert reply.status_code == 200, reply.text
            served.append(reply.json()["dualpath"])
    deadline = time.monotonic() + 30
    while not all(s["request_id"] in (log := logged(gateway)) for s in served):
        assert time.monotonic() < deadline, "decisions missing from the log"
        time.sleep(0.2)
    received = {r["request_id"]: r for r in gateway.received()}
    for s in served:
        pe, de, share = log[s["request_id"]]
        r = received[s["request_id"]]
        assert r["picked"] and (r["prefill_engine"], r["decode_engine"]) == (pe, de)
        assert r["decode_share"] == pytest.approx(share)
        # The front that answered is the decode engine the policy chose: Envoy honoured it.
        assert (s["decode_engine"], s["prefill_engine"]) == (de, pe)
    assert any(r["hit_tokens"] for r in received.values())  # second turns load their first


def test_the_openai_client_completes_and_streams(gateway: Running) -> None:
    openai = require_module("openai", "the official client of the API the fronts speak")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=60)
    done = client.completions.create(model="any", prompt="Say hello", max_tokens=4)
    assert len(done.choices[0].text) == 4 and done.usage.completion_tokens == 4
    assert done.model_extra["dualpath"]["placeholder_tokens"] is True
    chunks = list(client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) == 5 and chunks[-1].usage.completion_tokens == 5
    assert [m.id for m in client.models.list()] == ["dualpath-emulated"]


def test_malformed_bodies_get_400_and_nothing_crashes(gateway: Running) -> None:
    pid = gateway.gateway.service_pid()
    url = f"{gateway.url}/v1/completions"
    for raw in (b"not json", b"[]", json.dumps({"prompt": 5}).encode(),
                json.dumps({"prompt": "x", "max_tokens": "many"}).encode(),
                json.dumps({"prompt": "x", "max_tokens": 10**9}).encode()):
        reply = requests.post(url, data=raw, timeout=30)
        assert reply.status_code == 400 and reply.json()["error"]["message"], raw
    reply = gateway.post({"prompt": "x"}, x_dualpath_class="urgent")
    assert reply.status_code == 400 and "latency class" in reply.text
    assert gateway.post({"prompt": "fine", "max_tokens": 1}).status_code == 200
    assert gateway.gateway.service_pid() == pid  # the picker did not restart


def test_a_policy_swap_under_http_load_fails_no_request(gateway: Running) -> None:
    stop = threading.Event()

    def load(worker: int) -> list[int]:
        codes = []
        while not stop.is_set():
            codes.append(gateway.post({"prompt": prompt(100 + worker, 0), "max_tokens": 2},
                                      x_session_id=f"w{worker}").status_code)
        return codes

    with ThreadPoolExecutor(4) as pool, grpc.insecure_channel(
            f"127.0.0.1:{gateway.gateway.service_port}") as channel:
        futures = [pool.submit(load, w) for w in range(4)]
        swap = channel.unary_unary(f"/{ADMIN}/SwapPolicy",
                                   request_serializer=pb.SwapPolicyRequest.SerializeToString,
                                   response_deserializer=pb.PolicyInfo.FromString)
        for spec in ("pe_only", "dualpath", "round_robin", "dualpath"):
            time.sleep(0.5)
            info = swap(pb.SwapPolicyRequest(spec=spec), timeout=60,
                        metadata=[("authorization", f"Bearer {TOKEN}")])
            assert info.spec == spec
        stop.set()
        codes = [c for f in futures for c in f.result(120)]
    assert codes and set(codes) == {200}, codes


def test_grpcurl_lists_the_services_and_promtool_accepts_the_metrics(gateway: Running,
                                                                      tmp_path: Path) -> None:
    grpcurl = require_tool(BIN / "bin" / "grpcurl", "installed by scripts/install_tools.sh")
    promtool = require_tool(BIN / "libexec" / "promtool", "installed by "
                            "scripts/install_tools.sh")
    gw = gateway.gateway
    for port, expected in ((gw.service_port, {"dualpath.v1.Scheduler",
                                              "dualpath.v1.SchedulerAdmin"}),
                           (gw.epp_port, {"envoy.service.ext_proc.v3.ExternalProcessor",
                                          "grpc.health.v1.Health"})):
        out = subprocess.run([grpcurl, "-plaintext", f"127.0.0.1:{port}", "list"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and expected <= set(out.stdout.split()), out
    gateway.post({"prompt": "metrics", "max_tokens": 2})
    for port in (gw.metrics_port, gw.fronts[-1]):
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        check = subprocess.run([promtool, "check", "metrics"], input=text,
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    assert "dualpath_front_requests_total" in text


def _kill_picker_under_load(gw: Running) -> tuple[list[int], list[dict[str, Any]]]:
    """SIGKILL the service while 3 clients send requests; returns their status codes and
    the ``dualpath`` part of the answers that came after the kill."""
    stop = threading.Event()

    def load(worker: int) -> list[tuple[int, dict[str, Any]]]:
        out = []
        while not stop.is_set():
            reply = gw.post({"prompt": f"load {worker}", "max_tokens": 2})
            # Envoy's own 503 (fail-closed) has no JSON body.
            out.append((reply.status_code,
                        reply.json()["dualpath"] if reply.status_code == 200 else {}))
        return out

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(load, w) for w in range(3)]
        time.sleep(1.0)
        pid = gw.gateway.service_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # Decisions resume: a request is picked again once the supervisor restarted it.
        while time.monotonic() - killed_at < 120:
            reply = gw.post({"prompt": "after", "max_tokens": 1})
            if reply.status_code == 200 and reply.json()["dualpath"]["prefill_engine"] \
                    is not None and gw.gateway.service_pid() != pid:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the picker did not come back")
        stop.set()
        results = [r for f in futures for r in f.result(120)]
    return [code for code, _ in results], [d for _, d in results]


def test_fail_open_keeps_serving_while_the_picker_is_killed(gateway: Running) -> None:
    codes, answers = _kill_picker_under_load(gateway)
    assert set(codes) == {200}, codes
    # Some were served without the picker (the front's local policy chose the engines).
    assert any(a.get("prefill_engine") is None for a in answers)


def test_fail_closed_answers_503_while_the_picker_is_down(tmp_path: Path) -> None:
    running = start(tmp_path, fail_open=False)
    try:
        codes, _ = _kill_picker_under_load(running)
    finally:
        result = running.stop()
    assert 503 in codes and set(codes) <= {200, 503}, codes
    assert result.get("lost", 0) == 0, result


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` now (by parent links in /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - out
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1]
    except OSError:
        return False


def test_the_command_prints_ready_serves_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    import select

    require_tool(ENVOY_BIN, "Envoy, unpacked by scripts/bootstrap.sh")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "gateway", "--preset",
                             "tiny-live", "--port", "0", "--db", f"sqlite:///{tmp_path}/d.db"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 240)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("ready http://127.0.0.1:"), line
        url = line.split()[1]
        reply = requests.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                              timeout=60)
        assert reply.status_code == 200 and len(reply.json()["choices"][0]["text"]) == 2
        children = _descendants(proc.pid)
        assert len(children) >= 5  # storage, two nodes, the service, Envoy
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait(60) == 0
        while any(_alive(p) for p in children) and time.monotonic() - start < 60:
            time.sleep(0.2)
        assert not [p for p in children if _alive(p)]
        assert proc.stdout.read() == ""  # stdout carries the ready line only
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_shipped_envoy_config_and_the_generated_one_validate(tmp_path: Path) -> None:
    from experiments.live.envoy import envoy_config

    envoy = require_tool(ENVOY_BIN, "Envoy, unpacked by scripts/bootstrap.sh")
    generated = tmp_path / "envoy.json"
    generated.write_text(json.dumps(envoy_config(
        8080, 9901, [("127.0.0.1", 8001)], ("127.0.0.1", 9002), fail_open=False,
        round_robin_port=8081)))
    shipped = Path(__file__).resolve().parents[2] / "examples" / "envoy-epp.yaml"
    for path in (shipped, generated):
        out = subprocess.run([envoy, "--mode", "validate", "-c", str(path)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
