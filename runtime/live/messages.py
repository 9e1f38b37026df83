"""The live runtime's control messages: one frozen dataclass per kind, encoded in one place.

A message travels (by :class:`runtime.live.wire.Channel`) as a JSON object whose
``"t"`` key names its :class:`Kind` and whose other keys are the dataclass's fields.
Senders build a dataclass and receivers dispatch on the decoded type, so a field
added, renamed or dropped shows up at every sender and receiver under mypy.

Router → node: :class:`Setup`, :class:`Go`, :class:`Place`, :class:`Cancel`, :class:`Stop`,
:class:`Reject`.
Node → router: :class:`Hello`, :class:`Ready`, :class:`State`, :class:`Batch`,
:class:`Free`, :class:`Loaded`, :class:`Rdma`, :class:`First`, :class:`Fin`,
:class:`Cached`, :class:`Stats`, :class:`Error`, :class:`Submit`.
Node → node (about one attempt of one request): :class:`DeReady`, :class:`DeLoaded`,
:class:`Push`, :class:`Fetch`, :class:`Layer`, :class:`KvIn`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class Kind(StrEnum):
    """Every message kind, as its ``"t"`` on the wire."""

    HELLO = "hello"
    SETUP = "setup"
    READY = "ready"
    GO = "go"
    PLACE = "place"
    CANCEL = "cancel"
    STOP = "stop"
    STATE = "state"
    BATCH = "batch"
    FREE = "free"
    LOADED = "loaded"
    RDMA = "rdma"
    FIRST = "first"
    FIN = "fin"
    CACHED = "cached"
    STATS = "stats"
    ERROR = "error"
    DE_READY = "de_ready"
    DE_LOADED = "de_loaded"
    PUSH = "push"
    FETCH = "fetch"
    LAYER = "layer"
    KV_IN = "kv_in"
    SUBMIT = "submit"
    REJECT = "reject"


class MessageError(ValueError):
    """A frame that is not a message of a known kind with that kind's fields."""


# -- router ↔ node: set-up ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """A node came up: its id, its peer server's ``[host, port]``, its engines' buffers."""

    kind: ClassVar[Kind] = Kind.HELLO
    node: int
    peer: list[Any]
    regions: dict[str, dict[str, Any]]  # engine id (as text) → transport descriptor
    pid: int = 0


@dataclass(frozen=True, slots=True)
class Setup:
    """Every node's buffers and peer address, and model time 0 (the router's clock)."""

    kind: ClassVar[Kind] = Kind.SETUP
    t0: float
    regions: dict[str, dict[str, Any]]
    peers: dict[str, list[Any]]  # node id (as text) → [host, port]


@dataclass(frozen=True, slots=True)
class Ready:
    kind: ClassVar[Kind] = Kind.READY
    node: int


@dataclass(frozen=True, slots=True)
class Go:
    kind: ClassVar[Kind] = Kind.GO


# -- router → node: work -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    """Attempt ``attempt`` of a request on engines ``pe`` and ``de``: the request itself,
    the tokens each side reads from storage, the hit blocks' names (leading blocks
    served by caches, then the prefill side's reads, then the last ``nde`` read by the
    decode side), the blocks each side writes back, and ``seq``, the node's count of
    placements it was sent (acknowledged in its :class:`State`). With caches: the
    prompt's block ``hashes`` and the load ``plan`` (:class:`runtime.placement.plan.
    LoadPlan`'s fields in order: HBM, local DRAM and peer DRAM tokens, the peer node,
    storage tokens). With the model engine: ``tokens``, the prompt's token ids when the
    prefill engine cannot derive them (served requests; an agent's are seeded)."""

    kind: ClassVar[Kind] = Kind.PLACE
    rid: int
    attempt: int
    agent: int
    turn: int
    hit: int
    app: int
    gen: int
    arrival: float
    pe: int
    de: int
    pe_tokens: int
    de_tokens: int
    names: list[str]
    nde: int
    pe_writes: list[str]
    de_writes: list[str]
    seq: int = 0
    hashes: list[int] = field(default_factory=list)
    plan: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Cancel:
    kind: ClassVar[Kind] = Kind.CANCEL
    rid: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Stop:
    kind: ClassVar[Kind] = Kind.STOP


# -- node → router ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class State:
    """A node's state: placements it took (``ack``), its storage read queue and free host
    buffer, and when each of its engines' CNICs is free (engine id as text → time)."""

    kind: ClassVar[Kind] = Kind.STATE
    node: int
    ack: int
    read_q: float
    free_buffer: float
    busy: dict[str, float]


@dataclass(frozen=True, slots=True)
class Batch:
    """Prefill engine ``engine`` computed (or dropped) ``tokens`` tokens."""

    kind: ClassVar[Kind] = Kind.BATCH
    engine: int
    tokens: int


@dataclass(frozen=True, slots=True)
class Free:
    """Prefill engine ``engine`` ended a batch."""

    kind: ClassVar[Kind] = Kind.FREE
    engine: int


@dataclass(frozen=True, slots=True)
class Loaded:
    """The request's KV is loaded: it waits for a prefill batch."""

    kind: ClassVar[Kind] = Kind.LOADED
    rid: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Rdma:
    """The decode side read its blocks; they go to the prefill engine over RDMA."""

    kind: ClassVar[Kind] = Kind.RDMA
    rid: int
    attempt: int


@dataclass(frozen=True, slots=True)
class First:
    """The request's prefill ended (its first token) at model time ``at``."""

    kind: ClassVar[Kind] = Kind.FIRST
    rid: int
    attempt: int
    at: float


@dataclass(frozen=True, slots=True)
class Fin:
    """The request finished at model time ``at``; with the model engine, the ``tokens`` it
    generated."""

    kind: ClassVar[Kind] = Kind.FIN
    rid: int
    attempt: int
    at: float
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Cached:
    """Cache events of node ``node``, in order: ``[kind, engine, hashes, at]`` each
    (:class:`runtime.cache.index.CacheEvent`'s fields; engine -1: the node's DRAM)."""

    kind: ClassVar[Kind] = Kind.CACHED
    node: int
    events: list[list[Any]]


@dataclass(frozen=True, slots=True)
class Stats:
    """A stopping node's counters and its links' transfers (name → [bytes/s, starts,
    ends, sizes])."""

    kind: ClassVar[Kind] = Kind.STATS
    node: int
    counters: dict[str, int]
    links: dict[str, list[Any]]


@dataclass(frozen=True, slots=True)
class Error:
    """A fatal error on a node."""

    kind: ClassVar[Kind] = Kind.ERROR
    node: int
    message: str


# -- node → node -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeReady:
    """The decode engine's buffer for the request starts at ``offset``."""

    kind: ClassVar[Kind] = Kind.DE_READY
    rid: int
    attempt: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeLoaded:
    """The decode side read its blocks, which have these checksums."""

    kind: ClassVar[Kind] = Kind.DE_LOADED
    rid: int
    attempt: int
    checksums: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Push:
    """Write the decode side's blocks into prefill engine ``engine``'s buffer at
    ``offset``, one layer every ``stride`` bytes."""

    kind: ClassVar[Kind] = Kind.PUSH
    rid: int
    attempt: int
    engine: int
    offset: int
    stride: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """Write cached blocks ``hashes`` (storage names ``names``) from this node's DRAM into
    prefill engine ``engine``'s buffer at ``offset``, one layer every ``stride`` bytes,
    through local engine ``src`` (the peer on the prefill engine's rail)."""

    kind: ClassVar[Kind] = Kind.FETCH
    rid: int
    attempt: int
    engine: int
    src: int
    offset: int
    stride: int
    hashes: list[int]
    names: list[str]
    tokens: int  # the tokens they hold (what the CNICs account)


@dataclass(frozen=True, slots=True)
class Layer:
    """Layer ``layer`` of the decode side's blocks (``src`` "de") or of a peer's cached
    blocks (``src`` "peer", whose ``checksums`` come with layer 0) is in the prefill
    engine's buffer."""

    kind: ClassVar[Kind] = Kind.LAYER
    rid: int
    attempt: int
    layer: int
    src: str = "de"
    checksums: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class KvIn:
    """The P→D transfer of the prompt's KV ran from ``start`` to ``at`` (model time); with
    the model engine, ``token`` is the first generated token (from the prefill's logits)."""

    kind: ClassVar[Kind] = Kind.KV_IN
    rid: int
    attempt: int
    start: float
    at: float
    token: int = -1


# -- served requests: a node's HTTP front ↔ the router --------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """Decode engine ``de``'s HTTP front took request ``rid``: its ``prompt`` tokens (``hit``
    of them with KV in storage, -1: the router counts them; block ``hashes``),
    ``gen`` tokens to generate. ``pe`` >= 0 is the endpoint picker's decision (with
    ``share``) and is kept; -1: the router's policy chooses the prefill engine and path."""

    kind: ClassVar[Kind] = Kind.SUBMIT
    rid: int
    agent: int
    prompt: int
    hit: int
    gen: int
    hashes: list[int]
    de: int
    pe: int = -1
    share: float = 0.0
    slo_class: str = "interactive"
    tokens: list[int] = field(default_factory=list)  # the prompt's ids (model engine)


@dataclass(frozen=True, slots=True)
class Reject:
    """The router will not run submitted request ``rid``: an HTTP ``status`` and why."""

    kind: ClassVar[Kind] = Kind.REJECT
    rid: int
    status: int
    message: str


RouterMessage = Setup | Go | Place | Cancel | Stop | Reject
NodeReport = (Hello | Ready | State | Batch | Free | Loaded | Rdma | First | Fin | Cached | Stats
              | Error | Submit)
PeerMessage = DeReady | DeLoaded | Push | Fetch | Layer | KvIn
Message = RouterMessage | NodeReport | PeerMessage

_CLASSES: dict[str, type[Message]] = {cls.kind.value: cls for cls in (
    Hello, Setup, Ready, Go, Place, Cancel, Stop, State, Batch, Free, Loaded, Rdma, First,
    Fin, Cached, Stats, Error, DeReady, DeLoaded, Push, Fetch, Layer, KvIn, Submit, Reject)}
assert set(_CLASSES) == {k.value for k in Kind}, "a Kind without its message class"


def encode(msg: Message) -> dict[str, Any]:
    """``msg`` as the JSON object sent: ``{"t": kind, field: value, ...}``."""
    out: dict[str, Any] = {"t": msg.kind.value}
    for f in dataclasses.fields(msg):
        out[f.name] = getattr(msg, f.name)
    return out


def decode(obj: Any) -> Message:
    """The message a received JSON object holds; :class:`MessageError` if it holds none."""
    if not isinstance(obj, dict):
        raise MessageError(f"a message is a JSON object, got {type(obj).__name__}")
    fields = dict(obj)
    kind = fields.pop("t", None)
    cls = _CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown message kind {kind!r}")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise MessageError(f"bad {kind!r} message: {exc}") from None
