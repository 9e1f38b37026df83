"""Sessions rebuilt from a decision log, replayed closed-loop.

A logged session is its turns in order: each turn's tokens and latency class, and the
think time between the previous turn's finish and its arrival, as the log saw them.
Replayed, a session's first turn arrives when it did (relative to the log's first
arrival) and each next turn ``think_s`` after the previous one *finishes under the
policy being replayed*: a slower policy delays an agent's later turns, as it would
have live. A seed draws a bootstrap resample of the sessions (with replacement, each
drawn session a distinct agent), so that figures over several seeds carry the
uncertainty of having logged these sessions and not others.

The sessions file (``sessions.json``) is what ``dualpath decisions replay`` and
``dualpath train --from-log`` write from a log; :func:`read_sessions` checks it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.request import Request
from runtime.slo import CLASSES

FORMAT = "dualpath-sessions"
VERSION = 1
#: Request ids of agent ``a`` start at ``a * ID_STRIDE`` (a session has fewer turns).
ID_STRIDE = 1_000_000


@dataclass(frozen=True, slots=True)
class Turn:
    """One logged turn: its tokens, class, and the wait after the previous turn's finish
    (0 for a session's first turn)."""

    hit_tokens: int
    appended_tokens: int
    gen_tokens: int
    slo_class: str
    think_s: float

    def __post_init__(self) -> None:
        if min(self.hit_tokens, self.appended_tokens) < 0 or self.gen_tokens < 1:
            raise ValueError(f"turn {self}: token counts must be >= 0 (gen_tokens >= 1)")
        if self.hit_tokens + self.appended_tokens < 1:
            raise ValueError(f"turn {self}: empty prompt")
        if self.slo_class not in CLASSES:
            raise ValueError(f"turn {self}: unknown class {self.slo_class!r}")
        if not (math.isfinite(self.think_s) and self.think_s >= 0):
            raise ValueError(f"turn {self}: think_s must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    start_s: float  # first arrival, relative to the log's first
    turns: tuple[Turn, ...]

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError(f"session {self.session_id!r} has no turns")
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"session {self.session_id!r}: start_s must be finite and >= 0")
        if len(self.turns) >= ID_STRIDE:
            raise ValueError(f"session {self.session_id!r}: {len(self.turns)} turns; at most "
                             f"{ID_STRIDE - 1}")


@dataclass(frozen=True, slots=True)
class LoggedTurn:
    """A request as a log records it: what :func:`build_sessions` needs."""

    session_id: str
    arrival_s: float
    hit_tokens: int
    appended_tokens: int
    gen_tokens: int
    slo_class: str
    latency_s: float | None  # arrival to last token; None: no outcome was logged


@dataclass(frozen=True)
class Rebuilt:
    sessions: list[Session]
    turns: int
    without_outcome: int  # turns followed by another whose think time could not be known


def build_sessions(logged: Sequence[LoggedTurn]) -> Rebuilt:
    """Sessions of ``logged`` (any order): turns by arrival within a session, each turn's
    think time the gap between the previous turn's finish (its arrival plus latency) and
    its arrival, floored at 0; where the previous turn has no outcome, 0. Sessions start
    relative to the first arrival, in order of their start."""
    if not logged:
        raise ValueError("no turns to rebuild sessions from")
    first = min(t.arrival_s for t in logged)
    by_session: dict[str, list[LoggedTurn]] = {}
    for t in logged:
        by_session.setdefault(t.session_id, []).append(t)
    sessions, unknown = [], 0
    for sid, turns in by_session.items():
        turns.sort(key=lambda t: t.arrival_s)
        built = []
        for prev, t in zip([None, *turns[:-1]], turns, strict=True):
            think = 0.0
            if prev is not None and prev.latency_s is None:
                unknown += 1
            elif prev is not None:
                think = max(0.0, t.arrival_s - prev.arrival_s - float(prev.latency_s or 0.0))
            built.append(Turn(t.hit_tokens, t.appended_tokens, t.gen_tokens, t.slo_class,
                              think))
        sessions.append(Session(sid, turns[0].arrival_s - first, tuple(built)))
    sessions.sort(key=lambda s: (s.start_s, s.session_id))
    return Rebuilt(sessions, len(logged), unknown)


class ReplayWorkload:
    """``sessions`` as a :class:`~runtime.workload.base.Workload`; ``seed`` None replays
    them as logged, an integer replays that seed's bootstrap resample."""

    def __init__(self, sessions: Sequence[Session], seed: int | None = None,
                 name: str = "replay") -> None:
        if not sessions:
            raise ValueError("a replay needs at least one session")
        chosen = list(sessions)
        if seed is not None:
            picks = np.random.default_rng(seed).integers(0, len(chosen), len(chosen))
            chosen = [chosen[int(i)] for i in picks]
        self.sessions = chosen
        self.name = name if seed is None else f"{name}-resample{seed}"

    def initial_requests(self) -> list[Request]:
        return [self._request(agent, 0, s.start_s) for agent, s in enumerate(self.sessions)]

    def on_complete(self, request: Request, finish_s: float) -> list[Request]:
        turns = self.sessions[request.agent_id].turns
        k = request.turn + 1
        if k >= len(turns):
            return []
        return [self._request(request.agent_id, k, finish_s + turns[k].think_s)]

    def _request(self, agent: int, k: int, arrival_s: float) -> Request:
        t = self.sessions[agent].turns[k]
        return Request(agent * ID_STRIDE + k, agent, k, t.hit_tokens, t.appended_tokens,
                       t.gen_tokens, arrival_s, slo_class=t.slo_class)

    @property
    def requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)


# -- the sessions file ----------------------------------------------------------------

def write_sessions(path: Path, sessions: Sequence[Session], **about: Any) -> None:
    """Write ``sessions`` with ``about`` (the log, its cluster, the window) as JSON."""
    payload = {"format": FORMAT, "version": VERSION, **about,
               "sessions": [{"id": s.session_id, "start_s": s.start_s,
                             "turns": [[t.hit_tokens, t.appended_tokens, t.gen_tokens,
                                        t.slo_class, t.think_s] for t in s.turns]}
                            for s in sessions]}
    path.write_text(json.dumps(payload, indent=None, separators=(",", ":")) + "\n")


def read_sessions(path: Path) -> tuple[list[Session], dict[str, Any]]:
    """The sessions of a sessions file and its other keys; ValueError naming the file and
    what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read a sessions file: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: sessions format version {data.get('version')!r}; this "
                         f"code reads version {VERSION}")
    try:
        sessions = [Session(str(s["id"]), float(s["start_s"]),
                            tuple(Turn(int(h), int(a), int(g), str(c), float(w))
                                  for h, a, g, c, w in s["turns"]))
                    for s in data["sessions"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed session: {err}") from None
    if not sessions:
        raise ValueError(f"{path}: no sessions")
    return sessions, {k: v for k, v in data.items() if k != "sessions"}
