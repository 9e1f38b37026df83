"""``dualpath canary trial``: a canary on a live cluster behind the gateway, end to end.

The gateway (Envoy, the endpoint picker, the service logging every decision) serves
``champion``; once it is up, ``SetCanary(challenger, share)`` sends that share of the
sessions to the challenger, and real HTTP clients run the agentic load through it.
The trial watches ``GetCanary`` while the load runs. A challenger that regresses is
rolled back by the service itself, and the trial reports when (seconds after the
canary was set, each arm's completions), why, the rollback metric, and the decision
log's canary events and rows per arm. A challenger still running when the load ends
is put to the promotion rule (``dualpath promote --canary``, which promotes it when
it passes). "No request lost": every planned request completed at the client and in
the cluster.
"""

from __future__ import annotations

import secrets
import sqlite3
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.live.gateway import Gateway, GatewayConfig, running
from experiments.live.load import LoadConfig, run_load
from experiments.training.canary import canary_status, set_canary
from experiments.training.promote import promote_canary

POLL_S = 0.25


@dataclass(frozen=True)
class TrialConfig:
    champion: str = "dualpath"
    challenger: str = "pe_only"
    share: float = 0.2
    preset: str = "io-bound-live"
    overrides: tuple[str, ...] = ()  # preset overrides: for example a degraded SNIC
    agents: int = 16
    mal: str = "32k"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.share < 1:
            raise ValueError(f"share must lie in (0, 1), got {self.share!r}")
        if self.agents < 1:
            raise ValueError(f"agents must be >= 1, got {self.agents}")


class _Watch(threading.Thread):
    """Polls the canary until stopped; keeps the first status that is not running."""

    def __init__(self, target: str) -> None:
        super().__init__(name="canary-watch", daemon=True)
        self.target, self.stop = target, threading.Event()
        self.started = time.monotonic()
        self.ended: dict[str, Any] | None = None
        self.ended_after_s: float | None = None

    def run(self) -> None:
        while not self.stop.wait(POLL_S) and self.ended is None:
            status = canary_status(self.target)
            if status["state"] != "running":
                self.ended, self.ended_after_s = status, time.monotonic() - self.started


def canary_trial(cfg: TrialConfig, workdir: Path | None = None) -> dict[str, Any]:
    folder = workdir or Path(tempfile.mkdtemp(prefix="dualpath-canary-trial-"))
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "admin-token"
    token.write_text(secrets.token_hex(16))
    db = folder / "log.db"
    gateway = Gateway(GatewayConfig(preset=cfg.preset, policy=cfg.champion, port=0,
                                    overrides=cfg.overrides, db=f"sqlite:///{db}",
                                    admin_token_file=str(token)), announce=False)
    with running(gateway) as live:
        result = _trial(cfg, gateway, token)
    return {**result, "live_requests": live.get("requests"), "live_error": live.get("error"),
            "log": str(db), **_logged(db)}


def _trial(cfg: TrialConfig, gateway: Gateway, token: Path) -> dict[str, Any]:
    target = f"127.0.0.1:{gateway.service_port}"
    set_canary(target, str(token), cfg.challenger, cfg.share)
    watch = _Watch(target)
    watch.start()
    client = run_load(LoadConfig(url=gateway.url, agents=cfg.agents, mal=cfg.mal,
                                 seed=cfg.seed))
    watch.stop.set()
    watch.join()
    final = canary_status(target)
    promoted = (promote_canary(target, str(token)) if final["state"] == "running" else None)
    return {"config": vars(cfg), "client": client, "canary_at_end": watch.ended or final,
            "ended_after_s": watch.ended_after_s, "promote": promoted,
            "rollbacks_metric": _rollbacks(gateway.metrics_port)}


def _rollbacks(port: int) -> dict[str, float]:
    """``dualpath_canary_rollbacks_total`` by reason, from the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("dualpath_canary_rollbacks_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def _logged(db: Path) -> dict[str, Any]:
    """The log's canary events, and its decisions per arm before and after the first
    event that ended the canary."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        events = [dict(zip(("at", "event", "version", "share", "reason"), row, strict=True))
                  for row in conn.execute("SELECT at, event, version, share, reason FROM "
                                          "canary_events ORDER BY event_id")]
        end = next((e["at"] for e in events if e["event"] != "set"), float("inf"))
        arms = {f"{arm}_{'before' if before else 'after'}_end": n for arm, before, n in
                conn.execute("SELECT arm, decided_at < ?, count(*) FROM decisions "
                             "GROUP BY arm, decided_at < ?", (end, end))}
    return {"events": events, "decisions_by_arm": arms}


def render_trial(p: dict[str, Any]) -> str:
    c, status = p["config"], p["canary_at_end"]
    client = p["client"]
    where = " ".join([c["preset"], *c["overrides"]])
    lines = [f"canary {c['challenger']} at {c['share']:.0%} on {c['champion']} "
             f"({where}, {c['agents']} agents): {status['state']}"
             + (f" after {p['ended_after_s']:.1f} s" if p["ended_after_s"] is not None else ""),
             f"  reason: {status['reason'] or '-'}",
             f"  completions: champion {status['champion']['completions']}, challenger "
             f"{status['challenger']['completions']}",
             f"  client: {client['requests']}/{client['planned_requests']} requests, "
             f"{client['errors']} errors; cluster: {p['live_requests']} requests",
             f"  dualpath_canary_rollbacks_total: {p['rollbacks_metric'] or 0}",
             f"  decision log: {p['decisions_by_arm']}; events "
             f"{[e['event'] for e in p['events']]}"]
    if p["promote"] is not None:
        lines.append(f"  promote --canary: {p['promote']['reason']}")
    return "\n".join(lines)
