"""The single place that turns a ``ClusterView`` and a ``Request`` into arrays, and an
action back into a ``Decision``.

The env trains on it and the learned policy serves with it, so both see the same
features. Any change to the features or the action layout must bump
:data:`ENCODING_VERSION`: a trained artifact records the version it was trained
with and refuses to load against another.

Observation (one float32 vector, every block padded to the configured maxima):

- per prefill slot (``max_prefill`` × 7): present; unfinished prefill work as
  seconds of compute (``tok`` at the prefill rate of a 32k-token prompt), log1p;
  ``seq`` / 8; free HBM share; when this request's hits would finish reading on
  the engine's node if read there (queue + hits at the node's SNIC), log1p
  seconds; CNIC backlog seconds, log1p; the fallback's pick (1/0).
- per decode slot (``max_decode`` × 7): present; ``tok`` as a share of HBM;
  ``seq`` / max batch; has room for the request; read-finish seconds on its node
  as above, log1p; CNIC backlog seconds, log1p; the fallback's pick.
- per node (``max_nodes`` × 4): present; prefill node; read-queue drain seconds,
  log1p; SNIC bandwidth / the nominal one (a degraded NIC shows here).
- the request (5): hit read seconds at nominal SNIC bandwidth, log1p; appended
  prefill seconds, log1p; generated tokens / 1024, log1p; hit share of the
  prompt; context as a share of one decode engine's HBM.
- the queue and the fallback (3): waiting requests, log1p; waiting prompt tokens as
  seconds of SNIC reads, log1p; the fallback's decode share.

Version 2 appends, after all of the above (so a version-1 artifact reads the same
vector it was trained on, and this code still serves it):

- per node (``max_nodes`` × 3): DRAM cache occupancy as a share of its size; the
  share of the request's hit tokens its DRAM holds; its compute factor.
- per prefill slot (``max_prefill`` × 1): the share of the request's hit tokens its
  HBM cache holds.
- the request (2): batch class (1/0); seconds waited, log1p.
- the waiting requests the queue part may choose (``QUEUE_CHOICES`` × 4; the first
  is the request above): present; hit read seconds at nominal SNIC bandwidth,
  log1p; seconds waited, log1p; batch class.

Times are log1p-compressed seconds, so the same network reads a lightly and a
heavily loaded cluster. Absent slots are all zeros.

Action (routing): ``MultiDiscrete`` over the parts the agent controls, in the
order prefill slot, decode slot, share level, and (version 2, when controlled)
which of the first ``QUEUE_CHOICES`` waiting requests to place; masks say which
slots exist, which decode engines have room and how many requests wait.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import compress
from operator import is_not

import numpy as np

from env.layout import (
    DE_FEATURES,
    ENCODING_VERSION,
    NODE_FEATURES,
    PARTS,
    PE_FEATURES,
    QUEUE,
    REQUEST_FEATURES,
    ROUTING_PARTS,
    VERSIONS,
    Encoding,
)
from env.tail import QUEUE_CHOICES, write_tail

# The tuning mode's action (env.tuning), re-exported for its older importers.
from env.tuning import DEFAULT_TUNING_LEVELS as DEFAULT_TUNING_LEVELS
from env.tuning import Tuning as Tuning
from runtime.cluster import ClusterSpec
from runtime.cost import CostModel
from runtime.decision import Decision
from runtime.request import Request
from runtime.view import ClusterView, EngineView, NodeView

# Offsets in an engine's slot, the same for both roles.
_READ_DONE, _CNIC, _PICK = 4, 5, 6

__all__ = ["DEFAULT_TUNING_LEVELS", "ENCODING_VERSION", "PARTS", "QUEUE", "QUEUE_CHOICES",
           "ROUTING_PARTS", "VERSIONS", "Encoder", "Encoding", "Tuning"]


class Encoder:
    """An :class:`Encoding` bound to one cluster: precomputed constants, reused buffers.

    ``observe`` keeps the last observation in a buffer and rewrites only what can
    have changed: an engine's or a node's own features are rewritten when its view
    is a new object (the simulator rebuilds a view only when the engine or node
    changes), the rest every call. It returns a copy: callers keep observations.
    """

    def __init__(self, encoding: Encoding, spec: ClusterSpec) -> None:
        encoding.check_fits(spec)
        self.encoding = encoding
        self.spec = spec
        self.cost = CostModel(spec)
        self._kvb = spec.model.kv_bytes_per_token
        self._snic = spec.node.snic_bytes_s
        self._de_hbm = spec.node.de_hbm_kv_bytes
        self._pe_hbm = spec.node.pe_hbm_kv_bytes
        self._cnic = spec.node.cnic_kv_bytes_s
        self._cap = spec.decode_max_batch
        # Prefill work is measured in seconds at the rate of a 32k-token prompt: a fixed
        # yardstick keeps an engine's features a function of its own view alone.
        self._rate = self.cost.prefill_tokens_per_s(32768)
        e = encoding
        self._de_at = e.max_prefill * PE_FEATURES
        self._node_at = self._de_at + e.max_decode * DE_FEATURES
        self._req_at = self._node_at + e.max_nodes * NODE_FEATURES
        self._obs = np.zeros(e.obs_size, dtype=np.float32)
        # A float view over the same bytes (cast through bytes: ``ndarray.data`` is typed
        # as a plain memoryview, and a memoryview casts only to or from a byte format).
        self._mv = self._obs.data.cast("B").cast("f")
        # What ``_obs`` holds now: the engines' views whose own features are written,
        # the engines whose CNIC backlog is written > 0, the rooms and the fallback's
        # pick as written, and the time.
        self._engines_seen: tuple[EngineView | None, ...] = (None,) * spec.engines
        self._busy: set[int] = set()
        self._rooms_written: list[bool] = []
        self._hint_at: list[int] = []
        self._now = 0.0
        # Where each engine's features start (by engine id), and per node where its
        # engines' read-finish feature goes.
        pes = spec.prefill_engines
        self._slot = [k * PE_FEATURES if k < pes else self._de_at + (k - pes) * DE_FEATURES
                      for k in range(spec.engines)]
        self._seen_nodes: list[NodeView | None] = [None] * e.max_nodes
        # A node's engines are consecutive, of one role: their slots are evenly spaced.
        gpus = spec.node.gpus
        self._read_done_at = [
            slice(self._slot[n * gpus] + _READ_DONE,
                  self._slot[n * gpus + gpus - 1] + _READ_DONE + 1,
                  PE_FEATURES if n < spec.prefill_nodes else DE_FEATURES)
            for n in range(spec.nodes)]
        self._masks: dict[tuple[bool, tuple[bool, ...], int], np.ndarray] = {}
        self._rooms_of: tuple[Request | None, ClusterView | None, list[bool]] = (None, None, [])

    # -- observation ----------------------------------------------------------
    def observe(self, request: Request | None, view: ClusterView,
                hint: Decision | None = None,
                waiting: Sequence[Request] = ()) -> np.ndarray:
        """The observation for deciding ``request`` on ``view`` (``None``: no request,
        for the tuning mode); ``hint`` is the fallback policy's decision, if any;
        ``waiting`` the requests the queue part chooses among (``request`` first)."""
        if view.time_s < self._now:  # time went back (another run): rewrite every engine
            self._engines_seen = (None,) * self.spec.engines
        self._now = view.time_s
        self._write_read_done(request, view)
        self._write_engines(view)
        self._write_rooms(request, view)
        self._write_hints(view, hint)
        self._write_nodes(view)
        self._write_request(request, view, hint)
        if self.encoding.version >= 2:
            e = self.encoding
            write_tail(self._obs[e.base_size:], e.max_nodes, e.max_prefill, self.spec, request,
                       view, waiting)
        return self._obs.copy()

    # Single features go through ``_mv``, a memoryview of ``_obs``: storing a float
    # there costs about half a numpy item assignment (the same float32 rounding).
    def _write_read_done(self, request: Request | None, view: ClusterView) -> None:
        """Per engine, when the request's hits would be read on its node: one value per
        node, stored at once in its engines' slots (``_read_done_at``)."""
        obs, log1p, kvb = self._obs, math.log1p, self._kvb
        hit = request.hit_tokens if request is not None else 0
        for n, slots in zip(view.nodes, self._read_done_at, strict=False):
            obs[slots] = log1p((n.read_q_tokens + hit) * kvb / n.snic_bytes_s)

    def _write_engines(self, view: ClusterView) -> None:
        """Each engine's own features, rewritten when its view is a new object, and its
        CNIC backlog (log1p seconds), recomputed for those and for the engines whose
        backlog was > 0: an unchanged idle engine stays idle, as time only moves on."""
        engines = view.engines  # engine e's view is engines[e]
        seen = self._engines_seen
        # compress(map(is_not)): the identity test runs in C, not once per engine here.
        changed = [] if engines is seen else list(compress(engines, map(is_not, engines, seen)))
        self._engines_seen = engines
        busy = self._busy
        for e in changed:
            self._write_static(e)
            busy.add(e.engine_id)  # recompute its backlog below
        mv, slot, now = self._mv, self._slot, self._now
        for k in list(busy):
            backlog = engines[k].cnic_busy_until_s - now
            if backlog > 0.0:
                mv[slot[k] + _CNIC] = math.log1p(backlog)
            else:  # log1p(max(0, backlog)) = 0
                mv[slot[k] + _CNIC] = 0.0
                busy.discard(k)

    def _write_static(self, e: EngineView) -> None:
        mv, at = self._mv, self._slot[e.engine_id]
        mv[at] = 1.0
        if e.engine_id < self.spec.prefill_engines:
            mv[at + 1] = math.log1p(e.tok / self._rate)
            mv[at + 2] = e.seq / 8.0
            mv[at + 3] = e.free_hbm_bytes / self._pe_hbm
        else:
            mv[at + 1] = e.tok * self._kvb / self._de_hbm
            mv[at + 2] = e.seq / self._cap

    def _write_rooms(self, request: Request | None, view: ClusterView) -> None:
        rooms = self._rooms(request, view)
        if rooms != self._rooms_written:
            mv = self._mv
            at = self._de_at + 3  # a decode slot's room feature
            for room in rooms:
                mv[at] = 1.0 if room else 0.0
                at += DE_FEATURES
            self._rooms_written = rooms

    def _write_hints(self, view: ClusterView, hint: Decision | None) -> None:
        """The fallback's pick: 1 in the slots of its engines, 0 elsewhere. Only the
        slots set last time are cleared (engine ``e``'s view is ``view.engines[e]``)."""
        mv = self._mv
        for i in self._hint_at:
            mv[i] = 0.0
        at = []
        if hint is not None:
            pes = self.spec.prefill_engines
            k = hint.prefill_engine
            if 0 <= k < pes:
                at.append(self._slot[k] + _PICK)
            k = hint.decode_engine - pes
            if 0 <= k < len(view.engines) - pes:
                at.append(self._slot[pes + k] + _PICK)
        for i in at:
            mv[i] = 1.0
        self._hint_at = at

    def _write_nodes(self, view: ClusterView) -> None:
        """Each node's features, rewritten when its view is a new object."""
        mv, seen = self._mv, self._seen_nodes
        at = self._node_at
        for k, n in enumerate(view.nodes):
            if seen[k] is not n:
                seen[k] = n
                mv[at] = 1.0
                mv[at + 1] = 1.0 if n.node_id < self.spec.prefill_nodes else 0.0
                mv[at + 2] = math.log1p(n.read_q_tokens * self._kvb / n.snic_bytes_s)
                mv[at + 3] = n.snic_bytes_s / self._snic
            at += NODE_FEATURES

    def _write_request(self, request: Request | None, view: ClusterView,
                       hint: Decision | None) -> None:
        """The request block (zeros with no request) and the queue block."""
        log1p, kvb = math.log1p, self._kvb
        if request is None:
            req: tuple[float, ...] = (0.0,) * REQUEST_FEATURES
        else:
            hit = request.hit_tokens
            req = (log1p(hit * kvb / self._snic), log1p(request.appended_tokens / self._rate),
                   log1p(request.gen_tokens / 1024.0), hit / request.prompt_tokens,
                   request.total_tokens * kvb / self._de_hbm)
        mv, i = self._mv, self._req_at
        mv[i], mv[i + 1], mv[i + 2], mv[i + 3], mv[i + 4] = req
        i += REQUEST_FEATURES
        mv[i] = log1p(view.queue.requests)
        mv[i + 1] = log1p(view.queue.tokens * kvb / self._snic)
        mv[i + 2] = hint.decode_share if hint is not None else 0.0

    def _rooms(self, request: Request | None, view: ClusterView) -> list[bool]:
        """Per decode engine: it has HBM and a batch slot for ``request`` (with no
        request, a batch slot). The mask and the observation both need it: computed
        once per (request, view)."""
        last_request, last_view, rooms = self._rooms_of
        if request is last_request and view is last_view:
            return rooms
        need = request.total_tokens * self._kvb if request is not None else 0.0
        cap = self._cap
        rooms = [d.seq < cap and d.free_hbm_bytes >= need for d in view.decode_engines()]
        self._rooms_of = (request, view, rooms)
        return rooms

    # -- actions --------------------------------------------------------------
    def room_for(self, request: Request, view: ClusterView, decode_slot: int) -> bool:
        """Decode slot ``decode_slot`` exists and has room for ``request``."""
        rooms = self._rooms(request, view)
        return 0 <= decode_slot < len(rooms) and rooms[decode_slot]

    def any_room(self, request: Request, view: ClusterView) -> bool:
        """Some decode engine can take ``request`` (its decode mask is not empty)."""
        return any(self._rooms(request, view))

    def action_mask(self, request: Request, view: ClusterView) -> np.ndarray:
        """Valid choices per controlled part, concatenated (MaskablePPO's MultiDiscrete form)."""
        return self.shared_action_mask(request, view).copy()

    def shared_action_mask(self, request: Request, view: ClusterView,
                           choices: int = 1) -> np.ndarray:
        """:meth:`action_mask` as a read-only array shared between calls (no copy: the
        env copies it once, for its callers); ``choices``: waiting requests to choose
        among (the queue part)."""
        key = (request.hit_tokens > 0, tuple(self._rooms(request, view)),
               max(1, min(choices, QUEUE_CHOICES)))
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = self._build_mask(*key)
        return mask

    def _build_mask(self, has_hits: bool, rooms: tuple[bool, ...], choices: int) -> np.ndarray:
        e = self.encoding
        mask = np.zeros(sum(e.action_nvec), dtype=bool)
        at = 0
        for part in e.control:
            if part == "prefill":
                mask[at:at + self.spec.prefill_engines] = True
                at += e.max_prefill
            elif part == "decode":
                mask[at:at + len(rooms)] = rooms
                at += e.max_decode
            elif part == QUEUE:
                mask[at:at + choices] = True
                at += QUEUE_CHOICES
            else:
                n = len(e.share_levels)
                # With no hits the path is moot: only share 0 is offered.
                mask[at:at + (n if has_hits else 1)] = True
                at += n
        mask.setflags(write=False)
        return mask

    def project(self, action: Sequence[int] | np.ndarray, mask: np.ndarray) -> list[int]:
        """``action`` with each masked-out choice replaced by the next valid one
        (cyclically), so agents without masks and env checkers can act."""
        if isinstance(action, np.ndarray):
            action = action.tolist()  # Python ints: cheaper to iterate and index with
        out = []
        at = 0
        for a, n in zip(action, self.encoding.action_nvec, strict=True):
            a = int(a) % n
            if not mask[at + a]:
                valid = np.flatnonzero(np.roll(mask[at:at + n], -a))
                a = (a + int(valid[0])) % n if len(valid) else a
            out.append(a)
            at += n
        return out

    def action_of(self, decision: Decision) -> list[int]:
        """The action that stands for ``decision`` (its share rounded to the nearest level):
        how a heuristic's decisions become demonstrations for imitation."""
        chosen = {"prefill": decision.prefill_engine,
                  "decode": decision.decode_engine - self.spec.prefill_engines,
                  "path": int(np.argmin([abs(s - decision.decode_share)
                                         for s in self.encoding.share_levels])),
                  QUEUE: 0}
        return [chosen[p] for p in self.encoding.control]

    def queue_choice(self, action: Sequence[int] | np.ndarray) -> int:
        """Which waiting request the action places (0: the queue order's pick)."""
        e = self.encoding
        return int(action[e.control.index(QUEUE)]) if QUEUE in e.control else 0

    def decision(self, action: Sequence[int] | np.ndarray, hint: Decision | None = None,
                 reason: str = "learned") -> Decision:
        """The ``Decision`` an action stands for; parts the agent does not control come
        from ``hint`` (the fallback's decision), which is then required. The queue part,
        if any, is the env's (:meth:`queue_choice`)."""
        e = self.encoding
        full = e.control == ROUTING_PARTS
        if len(action) != len(e.control):
            raise ValueError(f"action has {len(action)} parts, the encoding controls "
                             f"{len(e.control)} ({', '.join(e.control)})")
        if full:
            pe, de, level = map(int, action)
            return Decision(pe, self.spec.prefill_engines + de, e.share_levels[level], reason)
        chosen = dict(zip(e.control, (int(a) for a in action), strict=True))
        if not e.routes_fully:
            if hint is None:
                raise ValueError(f"the agent controls only {', '.join(e.control)}: a "
                                 "fallback decision is needed for the rest")
            chosen = {"prefill": hint.prefill_engine,
                      "decode": hint.decode_engine - self.spec.prefill_engines,
                      "path": -1, **chosen}
        share = (e.share_levels[chosen["path"]] if chosen["path"] >= 0
                 else hint.decode_share)  # type: ignore[union-attr]
        return Decision(chosen["prefill"], self.spec.prefill_engines + chosen["decode"], share,
                        reason)
