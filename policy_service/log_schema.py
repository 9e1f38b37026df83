"""The decision log's layout: its tables, its schema version, and a decision as a row.

Shared by the writer process (:mod:`policy_service.log_writer`), the server's side
(:mod:`policy_service.decision_log`) and the readers (:mod:`policy_service.log_reader`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from policy_service.codec import path_of
from runtime.decision import Decision, Defer, WaitFor
from runtime.request import Request

#: Outcome keys with their own column: arrival to first token, per output token after
#: it, arrival to last token, and the finish time (the reporter's clock).
OUTCOME_COLUMNS = ("ttft_s", "tpot_s", "latency_s", "finish_s")


#: The decisions table's layout. 2: session, class, blocks, action probability, arm and
#: the outcome's columns (TTFT, TPOT, latency, finish) were added, and the canary_events
#: table; 1 had no meta table.
SCHEMA_VERSION = 2

META = sa.MetaData()
LOG_META = sa.Table(
    "log_meta", META,
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("value", sa.Text, nullable=False))
VIEWS = sa.Table(
    "views", META,
    sa.Column("view_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String(64), nullable=False, unique=True),
    sa.Column("cluster", sa.Text, nullable=False),
    sa.Column("time_s", sa.Float, nullable=False),
    sa.Column("snapshot", sa.LargeBinary, nullable=False),  # a serialized pb.ClusterSnapshot
    sa.Column("recorded_at", sa.Float, nullable=False))
DECISIONS = sa.Table(
    "decisions", META,
    sa.Column("decision_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("view_id", sa.Integer, sa.ForeignKey("views.view_id"), nullable=False),
    sa.Column("batch_index", sa.Integer, nullable=False),
    sa.Column("client_id", sa.Text, nullable=False),
    *(sa.Column(name, sa.BigInteger, nullable=False) for name in (
        "request_id", "agent_id", "turn", "hit_tokens", "appended_tokens", "gen_tokens")),
    sa.Column("arrival_s", sa.Float, nullable=False),
    sa.Column("session_id", sa.Text, nullable=False),  # the session the request is a turn of
    sa.Column("slo_class", sa.String(16), nullable=False),
    sa.Column("block_count", sa.Integer),  # the prompt's blocks named by hashes (null: none)
    sa.Column("block_digest", sa.String(16)),  # the last chained hash: names the whole chain
    sa.Column("policy_spec", sa.Text, nullable=False),
    sa.Column("policy_version", sa.Text, nullable=False),
    sa.Column("defer", sa.Boolean, nullable=False),
    sa.Column("prefill_engine", sa.Integer),  # null for a defer, as is what follows
    sa.Column("decode_engine", sa.Integer),
    sa.Column("decode_share", sa.Float),
    sa.Column("wait_for", sa.Integer),  # null unless a defer
    sa.Column("path", sa.String(8), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("scores", sa.Text),  # JSON list of candidate scores, where the policy has them
    sa.Column("action_prob", sa.Float),  # the policy's probability of its answer (learned)
    sa.Column("arm", sa.String(16), nullable=False),  # "champion", or "canary" for a canary's
    sa.Column("shadow_spec", sa.Text),  # shadow_*: null when no shadow was set
    sa.Column("shadow_version", sa.Text),
    sa.Column("shadow_defer", sa.Boolean),
    sa.Column("shadow_prefill_engine", sa.Integer),
    sa.Column("shadow_decode_engine", sa.Integer),
    sa.Column("shadow_decode_share", sa.Float),
    sa.Column("shadow_reason", sa.Text),
    sa.Column("latency_us", sa.Float, nullable=False),
    sa.Column("decided_at", sa.Float, nullable=False),
    sa.Column("outcome", sa.Text),  # JSON {name: float}
    *(sa.Column(name, sa.Float) for name in OUTCOME_COLUMNS),  # from the outcome, if given
    sa.Column("completed_at", sa.Float),
    sa.Index("ix_decisions_client_request", "client_id", "request_id"))
CANARY_EVENTS = sa.Table(  # each change of the canary, in order with the decisions
    "canary_events", META,
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),  # time.time()
    sa.Column("event", sa.String(16), nullable=False),  # set, rolled_back, ended, promoted
    sa.Column("spec", sa.Text, nullable=False),  # the challenger's
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False))


Answer = Decision | Defer | None


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One decision of a call, as the log records it."""

    request: Request
    answer: Answer  # what the serving policy answered
    policy_spec: str
    policy_version: str
    latency_us: float
    decided_at: float  # time.time()
    client_id: str = ""
    shadow: Answer = None
    shadow_spec: str | None = None  # None: no shadow was set
    shadow_version: str | None = None
    scores: tuple[float, ...] | None = None
    session_id: str = ""  # "": the agent id names the session
    action_prob: float | None = None
    arm: str = "champion"


def _answer_columns(answer: Answer) -> tuple[Any, ...]:
    """(defer, prefill_engine, decode_engine, decode_share, reason)."""
    if isinstance(answer, Decision):
        return (False, answer.prefill_engine, answer.decode_engine, answer.decode_share,
                answer.reason)
    return (True, None, None, None, answer.reason if answer is not None else "")


_NO_SHADOW = (None,) * 5


def decision_row(index: int, row: LoggedDecision) -> tuple[Any, ...]:
    """A decisions row in :data:`DECISION_COLUMNS` order, but the leading view id."""
    r, answer = row.request, row.answer
    shadow = _answer_columns(row.shadow) if row.shadow_spec is not None else _NO_SHADOW
    wait_for = (None if isinstance(answer, Decision)
                else int(answer.wait_for if answer is not None else WaitFor.ANY))
    scores = None if row.scores is None else json.dumps([float(s) for s in row.scores])
    hashes = r.block_hashes
    return (index, row.client_id, r.request_id, r.agent_id, r.turn, r.hit_tokens,
            r.appended_tokens, r.gen_tokens, r.arrival_s, row.session_id or str(r.agent_id),
            r.slo_class, len(hashes) if hashes else None,
            f"{hashes[-1]:016x}" if hashes else None, row.policy_spec, row.policy_version,
            *_answer_columns(answer), wait_for, path_of(answer), scores, row.action_prob,
            row.arm, row.shadow_spec, row.shadow_version, *shadow, row.latency_us,
            row.decided_at)


def make_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers (export) never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this safe against a kill
            cursor.close()
    return engine


def schema_version(conn: sa.Connection) -> int | None:
    """The log's schema version: None where it holds no log, 1 for a log written before
    versions were recorded."""
    tables = set(sa.inspect(conn).get_table_names())
    if "decisions" not in tables:
        return None
    if "log_meta" not in tables:
        return 1
    value = conn.execute(sa.select(LOG_META.c.value)
                         .where(LOG_META.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 1


def check_schema(version: int | None, url: str) -> None:
    """ValueError unless ``version`` is this code's (None, no log yet, passes)."""
    if version is not None and version != SCHEMA_VERSION:
        raise ValueError(f"decision log {url!r} has schema version {version}; this version "
                         f"of dualpath reads and writes version {SCHEMA_VERSION} (columns "
                         "for sessions, classes, blocks, action probabilities, canary arms "
                         "and outcomes were added): record a new log to a new file")


def create_log(url: str) -> None:
    """Make the log's tables at ``url`` (ValueError for an existing log of another schema:
    rows of two layouts must not mix)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            version = schema_version(conn)
            check_schema(version, url)
            META.create_all(conn)
            if version is None:
                conn.execute(LOG_META.insert().values(key="schema_version",
                                                      value=str(SCHEMA_VERSION)))
    finally:
        engine.dispose()


def is_memory(url: str) -> bool:
    parsed = sa.make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


VIEW_COLUMNS = ("call_id", "cluster", "time_s", "snapshot", "recorded_at")
DECISION_COLUMNS = (
    "view_id", "batch_index", "client_id", "request_id", "agent_id", "turn", "hit_tokens",
    "appended_tokens", "gen_tokens", "arrival_s", "session_id", "slo_class", "block_count",
    "block_digest", "policy_spec", "policy_version", "defer", "prefill_engine",
    "decode_engine", "decode_share", "reason", "wait_for", "path", "scores", "action_prob",
    "arm", "shadow_spec", "shadow_version", "shadow_defer", "shadow_prefill_engine",
    "shadow_decode_engine", "shadow_decode_share", "shadow_reason", "latency_us", "decided_at")
