"""A canary: a share of the sessions decided by a challenger, rolled back when it regresses.

No gRPC here: the canary's configuration, its state, which arm serves a session,
each arm's window of outcomes and the rollback test. The policy registry
(:mod:`policy_service.hot_swap`) owns one :class:`CanaryMonitor` and calls it
under its lock; the scheduler core feeds it the outcomes ``Complete`` delivers.

Arms are assigned by session: a stable hash of the session id (blake2b, the same
on every process and every run) maps it to [0, 1), and a session whose point is
below the share is the canary's. Every turn of a session therefore stays on one
policy, and servers behind a load balancer agree on it.

The rollback test runs at looks: when the arm with fewer completions reaches
``min_completions``, then twice that, four times, ... up to ``window``, then after
every ``window`` more (each look on data the last one did not see). At a look, for
each measure both arms hold at least ``min_completions`` of (TTFT, and JCT: arrival
to last token): the regression ``r = mean_challenger / mean_champion - 1``, its
variance by the delta method for the ratio of two independent means,
``var(r) ≈ ratio² (s_c² / (n_c m_c²) + s_h² / (n_h m_h²))``, and its one-sided
lower bound ``r - z sqrt(var(r))`` (z = 1.645: 95%). The canary rolls back when
that bound exceeds ``max_regression`` for TTFT or for JCT: the service is
confident the challenger is worse by more than the bound. Every look is a chance of
a false rollback; looking at doubling sizes keeps the looks few (six up to a window
of 2,000 from 50), where looking after every completion made hundreds, and the
margin (the bound must clear ``max_regression``, not zero) keeps each look's chance
low for a challenger no worse than the champion. Heavy tails weaken the normal
approximation: see the README for the false-rollback rates measured on synthetic
A/A canaries.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import NamedTuple


class CanaryState(Enum):
    NONE = "none"  # never set
    RUNNING = "running"
    ROLLED_BACK = "rolled_back"  # the test found the challenger worse
    ENDED = "ended"  # cleared (or replaced) by SetCanary
    PROMOTED = "promoted"  # the challenger became the champion


class Arm(StrEnum):
    """The arm that decided a request, as the decision log's ``arm`` column names it."""

    CHAMPION = "champion"
    CANARY = "canary"


#: The outcome keys the test compares, and the name each measure goes by in reasons and
#: in the rollback metric's label.
MEASURES = (("ttft_s", "ttft"), ("latency_s", "jct"))


@dataclass(frozen=True)
class CanaryConfig:
    """The rollback test's settings (see the module docstring)."""

    max_regression: float = 0.10  # a share of the champion's mean
    min_completions: int = 50  # per arm and measure, before the test runs
    window: int = 2000  # the last completions each arm keeps
    z: float = 1.645  # the one-sided bound's quantile (1.645: 95%)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_regression) and self.max_regression >= 0):
            raise ValueError(f"canary max_regression must be a finite share >= 0, got "
                             f"{self.max_regression}")
        if not 2 <= self.window <= 1_000_000:
            raise ValueError(f"canary window must lie in 2..1000000, got {self.window}")
        if not 2 <= self.min_completions <= self.window:
            raise ValueError(f"canary min_completions must lie in 2..window ({self.window}), "
                             f"got {self.min_completions}")
        if not (math.isfinite(self.z) and self.z > 0):
            raise ValueError(f"canary z must be finite and > 0, got {self.z}")

    @property
    def level(self) -> float:
        """The one-sided bound's confidence level (0.95 for z = 1.645)."""
        return 0.5 * (1 + math.erf(self.z / math.sqrt(2)))


def check_share(share: float) -> float:
    """``share`` if it lies in the open interval (0, 1); ValueError naming it otherwise
    (NaN included)."""
    if not 0 < share < 1:
        raise ValueError(f"share must lie in the open interval (0, 1), got {share}")
    return share


def check_request(spec: str, share: float) -> None:
    """ValueError unless ``spec``/``share`` start a canary (a spec and a share in (0, 1))
    or end one (an empty spec and no share)."""
    if spec.strip():
        check_share(share)
    elif share != 0:  # NaN too
        raise ValueError(f"share {share} given with an empty spec: an empty spec ends the "
                         "canary; name the challenger's spec to start one")


def session_point(session: str) -> float:
    """Where ``session`` falls in [0, 1): the same on every process and run."""
    digest = hashlib.blake2b(session.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def in_canary(session: str, share: float) -> bool:
    return session_point(session) < share


class Moments(NamedTuple):
    n: int
    mean: float
    var: float  # the sample variance (n - 1 in the denominator)


class Series:
    """The last ``size`` values of one measure, with their mean and variance kept as
    running sums (a completion costs O(1), not a pass over the window)."""

    def __init__(self, size: int) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._size = size
        self.clear()

    def clear(self) -> None:
        self._values.clear()
        # Sums of (x - shift): with the shift near the mean, the squares do not cancel.
        self._shift = self._sum = self._sumsq = 0.0
        self._adds = 0

    def add(self, x: float) -> None:
        if len(self._values) == self._size:
            old = self._values[0] - self._shift
            self._sum -= old
            self._sumsq -= old * old
        self._values.append(x)
        d = x - self._shift
        self._sum += d
        self._sumsq += d * d
        self._adds += 1
        if self._adds >= self._size:  # rounding drifts with each removal: start afresh
            self._exact()

    def _exact(self) -> None:
        n = len(self._values)
        self._shift = math.fsum(self._values) / n
        self._sum = math.fsum(x - self._shift for x in self._values)
        self._sumsq = math.fsum((x - self._shift) ** 2 for x in self._values)
        self._adds = 0

    def moments(self) -> Moments:
        n = len(self._values)
        if n == 0:
            return Moments(0, math.nan, math.nan)
        mean = self._shift + self._sum / n
        var = max(0.0, (self._sumsq - self._sum**2 / n) / (n - 1)) if n > 1 else math.nan
        return Moments(n, mean, var)

    def values(self) -> tuple[float, ...]:
        return tuple(self._values)


@dataclass(frozen=True)
class Regression:
    """A measure's regression of the challenger over the champion, with its bound."""

    measure: str  # "ttft" or "jct"
    challenger: Moments
    champion: Moments
    change: float  # mean_challenger / mean_champion - 1 (0.2: 20% worse)
    lower: float  # its one-sided lower confidence bound

    def reason(self, config: CanaryConfig) -> str:
        c, h = self.challenger, self.champion
        return (f"{self.measure}: challenger mean {c.mean:.3g} s vs champion {h.mean:.3g} s, "
                f"regression {self.change:+.0%} (one-sided {config.level:.0%} lower bound "
                f"{self.lower:+.0%}) past the {config.max_regression:+.0%} bound, "
                f"{c.n}/{h.n} completions")


def ratio_regression(measure: str, challenger: Moments, champion: Moments,
                     z: float) -> Regression | None:
    """The challenger's regression and its lower bound (None where the champion's mean is
    not positive or an arm has fewer than two values)."""
    c, h = challenger, champion
    if c.n < 2 or h.n < 2 or not h.mean > 0:
        return None
    ratio = c.mean / h.mean
    # ratio² s_c² / (n_c m_c²) written as s_c² / (n_c m_h²): the same, and defined at m_c = 0.
    var = c.var / (c.n * h.mean**2) + ratio**2 * h.var / (h.n * h.mean**2)
    change = ratio - 1
    return Regression(measure, c, h, change, change - z * math.sqrt(var))


@dataclass(frozen=True)
class ArmReport:
    spec: str
    version: str
    completions: int
    ttft_mean_s: float  # NaN with no values
    latency_mean_s: float
    ttft_s: tuple[float, ...] = ()  # with samples
    latency_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class CanaryReport:
    """What GetCanary answers."""

    state: CanaryState
    share: float
    reason: str
    champion: ArmReport
    challenger: ArmReport
    config: CanaryConfig


@dataclass(frozen=True)
class CanaryEvent:
    """A change of the canary, as the decision log records it."""

    event: str  # set, rolled_back, ended or promoted
    spec: str  # the challenger's
    version: str
    share: float
    reason: str


class _Window:
    """One arm's policy names and its last outcomes of each measure."""

    def __init__(self, size: int) -> None:
        self.spec = self.version = ""
        self.series = {key: Series(size) for key, _ in MEASURES}

    def name(self, spec: str, version: str) -> None:
        self.spec, self.version = spec, version

    def clear(self) -> None:
        for series in self.series.values():
            series.clear()

    def report(self, samples: bool) -> ArmReport:
        ttft, latency = self.series["ttft_s"], self.series["latency_s"]
        return ArmReport(
            self.spec, self.version, max(ttft.moments().n, latency.moments().n),
            ttft.moments().mean, latency.moments().mean,
            ttft.values() if samples else (), latency.values() if samples else ())


class CanaryMonitor:
    """The canary's state, its arms' windows and the rollback test.

    Not locked: its owner (the policy registry) calls it under its own lock.
    """

    def __init__(self, config: CanaryConfig) -> None:
        self.config = config
        self.state = CanaryState.NONE
        self.share = 0.0
        self.reason = ""
        self._arms = {arm: _Window(config.window) for arm in Arm}
        self._seen = dict.fromkeys(Arm, 0)  # outcomes recorded per arm since the start
        self._next_look = config.min_completions

    def start(self, share: float, champion: tuple[str, str], challenger: tuple[str, str]) -> None:
        """A new canary: ``champion`` and ``challenger`` are (spec, version)."""
        self.state, self.share, self.reason = CanaryState.RUNNING, check_share(share), ""
        self._arms[Arm.CANARY].name(*challenger)
        self.new_champion(champion)

    def new_champion(self, champion: tuple[str, str]) -> None:
        """The champion changed: both windows start again (the comparison is with it)."""
        self._arms[Arm.CHAMPION].name(*champion)
        for window in self._arms.values():
            window.clear()
        self._seen = dict.fromkeys(Arm, 0)
        self._next_look = self.config.min_completions

    def finish(self, state: CanaryState, reason: str) -> None:
        self.state, self.reason = state, reason

    def record(self, arm: Arm, outcome: Mapping[str, float]) -> Regression | None:
        """Add ``outcome`` to ``arm``'s window, then test; the regression that calls for
        a rollback, if one does (the caller rolls back). Non-finite values are skipped:
        one would poison the running sums."""
        if self.state is not CanaryState.RUNNING:
            return None
        window = self._arms[arm].series
        for key, _ in MEASURES:
            value = outcome.get(key)
            if value is not None and math.isfinite(value):
                window[key].add(float(value))
        self._seen[arm] += 1
        return self._look()

    def _look(self) -> Regression | None:
        """The test, when the arm with fewer outcomes reaches the next look."""
        seen = min(self._seen.values())
        if seen < self._next_look:
            return None
        size = self.config.window
        self._next_look = 2 * seen if 2 * seen <= size else seen + size
        return self._test()

    def _test(self) -> Regression | None:
        cfg = self.config
        canary, champion = self._arms[Arm.CANARY].series, self._arms[Arm.CHAMPION].series
        for key, measure in MEASURES:
            c, h = canary[key].moments(), champion[key].moments()
            if min(c.n, h.n) < cfg.min_completions:
                continue
            found = ratio_regression(measure, c, h, cfg.z)
            if found is not None and found.lower > cfg.max_regression:
                return found
        return None

    def report(self, samples: bool = False) -> CanaryReport:
        """The state, the share the canary runs (or last ran) at, and each arm's window."""
        return CanaryReport(self.state, self.share, self.reason,
                            self._arms[Arm.CHAMPION].report(samples),
                            self._arms[Arm.CANARY].report(samples), self.config)
