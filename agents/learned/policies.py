"""The policies that serve an artifact: :class:`LearnedRouter` (routing) and
:class:`TunedHeuristic` (tuning), and the heuristics they build on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agents.learned.artifact import Actor, Artifact
from agents.learned.fallback import TunableFactory, fallback_policy, make_tunable
from env.encoding import QUEUE, Encoder
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.policy import Policy, as_learner
from runtime.request import Request
from runtime.view import ClusterView

# -- serving ----------------------------------------------------------------------

def policy_from_artifact(artifact: Artifact, cluster: ClusterSpec) -> Policy:
    """The serving policy for ``artifact``'s mode on ``cluster``."""
    if artifact.mode == "route":
        return LearnedRouter(artifact, cluster)
    return TunedHeuristic(artifact, cluster)


class LearnedRouter:
    """Decides each request with a routing artifact, as ``DualPathEnv`` lets its agent.

    Per request: the fallback (where the artifact has one, as the env had) decides
    first; if it defers, its answer is returned, else its decision is the hint the
    observation carries and supplies the parts the agent does not control. When the
    agent chooses the decode engine and none has room, the request is deferred until
    a decode engine frees. Otherwise each controlled part takes the network's best
    valid choice (masks from ``Encoder.action_mask``).

    One instance serves one caller at a time (it reuses its buffers); the artifact
    can be shared by several.
    """

    def __init__(self, artifact: Artifact, cluster: ClusterSpec) -> None:
        if artifact.mode != "route":
            raise ValueError(f"artifact {artifact.name!r} is a {artifact.mode}-mode artifact; "
                             "LearnedRouter serves routing artifacts")
        self.artifact = artifact
        self.encoder = Encoder(artifact.encoding, cluster)
        self.cluster = cluster
        self._spec_seen = cluster  # the last view spec found equal to ``cluster``
        self.fallback = fallback_policy(artifact.fallback) if artifact.fallback else None
        self.name = f"learned:{artifact.name}"
        self._actor = Actor(artifact)
        self.last_scores: tuple[float, ...] | None = None
        self.last_action_prob: float | None = None
        e = artifact.encoding
        at = e.max_prefill if "prefill" in e.control else 0
        self._decode = slice(at, at + e.max_decode) if "decode" in e.control else None
        self._rest = (f" (rest: {self.fallback.name})"
                      if not e.routes_fully and self.fallback is not None else "")
        # Every choice's words, built once: a reason costs a join, not formatting.
        pe = cluster.prefill_engines
        words = {"prefill": [f"pe={k}" for k in range(e.max_prefill)],
                 "decode": [f"de={pe + k}" for k in range(e.max_decode)],
                 "path": [f"share={s:g}" for s in e.share_levels],
                 QUEUE: [f"queue={k}" for k in range(e.action_nvec[-1])]}
        self._words = tuple(words[part] for part in e.control)

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer | None:
        if view.spec is not self._spec_seen:
            self._check_spec(view.spec)
        hint = None
        self.last_scores = self.last_action_prob = None
        if self.fallback is not None:
            answer = self.fallback.decide(request, view)
            if not isinstance(answer, Decision):
                return answer
            hint = answer
        mask = self.encoder.action_mask(request, view)
        if self._decode is not None and not mask[self._decode].any():
            return Defer("no decode engine has room", WaitFor.DECODE)
        action = self._actor(self.encoder.observe(request, view, hint), mask)
        # The network's raw logits per controlled part's choices (before masking),
        # for the service's decision log.
        self.last_scores = tuple(self._actor.logits.tolist())
        self.last_action_prob = self._actor.action_prob
        return self.encoder.decision(action, hint, self._reason(action))

    def _check_spec(self, spec: ClusterSpec) -> None:
        # The encoder's padding and constants are the cluster's: another one would be
        # encoded wrongly without a word.
        if spec != self.cluster:
            raise ValueError(f"{self.name} was built for cluster {self.cluster.name!r}; the "
                             f"view's cluster {spec.name!r} differs from it")
        self._spec_seen = spec

    def act(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The action (slot or level index per controlled part) for one observation."""
        return np.array(self._actor(obs, mask), dtype=np.int64)

    def act_batch(self, obs: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Actions ``[n, parts]`` for a batch of observations and masks."""
        return self.artifact.act_batch(obs, masks)

    def complete(self, request_id: int, outcome: dict[str, float]) -> None:
        """Passes outcomes on to a fallback that learns from them, as the env does."""
        if (learner := as_learner(self.fallback)) is not None:
            learner.complete(request_id, outcome)

    def _reason(self, action: Sequence[int]) -> str:
        words = self._words
        return "learned " + " ".join([words[i][a] for i, a in enumerate(action)]) + self._rest


class TunedHeuristic:
    """A heuristic whose parameters a tuning artifact sets once per window.

    As in ``DualPathEnv``'s tuning mode: a window starts at a decision (the first
    one, then the first at or after the previous window's end) and lasts
    ``tuning.window_s`` of cluster time; at its start the network reads the
    cluster (no request) and its best level per parameter builds a fresh heuristic
    with ``tunable`` (default :func:`make_tunable`), which decides until the end.
    """

    def __init__(self, artifact: Artifact, cluster: ClusterSpec,
                 tunable: TunableFactory = make_tunable) -> None:
        if artifact.mode != "tune" or artifact.tuning is None:
            raise ValueError(f"artifact {artifact.name!r} is a {artifact.mode}-mode artifact; "
                             "TunedHeuristic serves tuning artifacts")
        self.artifact = artifact
        self.tuning = artifact.tuning
        self.encoder = Encoder(artifact.encoding, cluster)
        self.cluster = cluster
        self.name = f"tuned:{artifact.name}"
        self._actor = Actor(artifact)
        self._tunable = tunable
        self.policy: Policy | None = None
        self.params: dict[str, float] = {}
        self._end = -math.inf

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer | None:
        policy = self.policy
        if policy is None or view.time_s >= self._end:
            policy = self._retune(view)
        return policy.decide(request, view)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The level index per parameter for one observation."""
        return np.array(self._actor(obs), dtype=np.int64)

    def _retune(self, view: ClusterView) -> Policy:
        if view.spec is not self.cluster and view.spec != self.cluster:
            raise ValueError(f"{self.name} was built for cluster {self.cluster.name!r}; the "
                             f"view's cluster {view.spec.name!r} differs from it")
        action = self._actor(self.encoder.observe(None, view))
        self.params = self.tuning.params(action)
        self.policy = self._tunable(self.params)
        self._end = view.time_s + self.tuning.window_s
        return self.policy
