"""Trained policies: one artifact format, its exporter and loader, and the two policies
that serve it.

An artifact is a directory holding

- ``policy.onnx``: the policy network. Input ``obs``, float32 ``[batch, obs_size]``;
  output ``logits``, float32 ``[batch, sum(action_nvec)]``: the concatenated
  per-part action logits of the trained SB3 policy. The served action takes, in
  each part, the arg-max over the valid choices, which is what SB3's
  deterministic ``predict`` answers for the same observation and masks.
- ``policy.json``: ``format`` (``"dualpath-policy"``), ``format_version`` (1),
  ``name``, ``mode`` (``"route"``: the network decides each request; ``"tune"``:
  it sets a heuristic's parameters once per window), ``encoding`` and ``tuning``
  (the JSON of ``env.encoding``'s classes), ``fallback`` (the spec of the heuristic
  the env was given as its ``fallback`` in training, or null), ``obs_size``,
  ``action_nvec``, ``onnx_sha256``, ``algo`` (``"MaskablePPO"``/``"PPO"``),
  ``exporter`` and a free ``train`` block (config, scenario, steps...).

:func:`export_artifact` writes one from a trained model; :func:`load_artifact`
checks and loads one; :class:`LearnedRouter` (routing) and :class:`TunedHeuristic`
(tuning) serve it as a ``Policy``. Both do what ``DualPathEnv`` does around the
agent in training, so the served policy takes the decisions the trained agent took.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agents.heuristics import DualPath, DualPathSplit
from agents.registry import POLICIES
from agents.spec import resolve_policy
from env.encoding import PARTS, Encoder, Encoding, Tuning
from runtime.cluster import ClusterSpec
from runtime.decision import Decision, Defer, WaitFor
from runtime.policy import Policy
from runtime.request import Request
from runtime.view import ClusterView

FORMAT = "dualpath-policy"
FORMAT_VERSION = 1
META_FILE = "policy.json"
ONNX_FILE = "policy.onnx"
MODES = ("route", "tune")
ALGOS = ("MaskablePPO", "PPO")
#: Where ``pretrained:NAME`` looks: one artifact directory per name.
PRETRAINED_ROOT = Path(__file__).parent / "pretrained"

TunableFactory = Callable[[Mapping[str, float]], Policy]


# -- the tuned heuristic's family -------------------------------------------------

def make_tunable(params: Mapping[str, float]) -> Policy:
    """The heuristic the tuning mode sets: ``DualPathSplit`` when ``params["split"]`` ≥ 0.5,
    else ``DualPath``, with ``alpha_s``, ``beta_s`` and ``z_slack`` where ``params`` has them."""
    kwargs = {k: float(params[k]) for k in ("alpha_s", "beta_s", "z_slack") if k in params}
    cls = DualPathSplit if params.get("split", 0.0) >= 0.5 else DualPath
    return cls(**kwargs)


def fallback_policy(spec: str) -> Policy:
    """The heuristic a fallback spec names (``NAME[:key=value,...]``, no run switches)."""
    if not isinstance(spec, str) or spec.partition(":")[0].strip() not in POLICIES:
        raise ValueError(f"fallback {spec!r} is not a heuristic spec; expected one of "
                         f"{', '.join(sorted(POLICIES))} with optional parameters")
    resolved = resolve_policy(spec)
    if resolved.layerwise is not None or resolved.oracle is not None:
        raise ValueError(f"fallback {spec!r} sets run switches (layerwise/oracle); a fallback "
                         "only decides")
    return resolved.policy


# -- the loaded artifact ----------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Artifact:
    """A checked artifact with its network loaded (onnxruntime, one thread).

    ``source`` says where it was loaded from (a directory or a model URI);
    ``act``/``act_batch`` run the network and pick the actions.
    """

    meta: dict[str, Any]
    encoding: Encoding
    tuning: Tuning | None
    session: Any  # onnxruntime.InferenceSession
    source: str
    _slices: tuple[slice, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        bounds = np.cumsum((0, *self.action_nvec))
        object.__setattr__(self, "_slices", tuple(
            slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)))

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def mode(self) -> str:
        return str(self.meta["mode"])

    @property
    def fallback(self) -> str | None:
        return self.meta["fallback"]

    @property
    def obs_size(self) -> int:
        return int(self.meta["obs_size"])

    @property
    def action_nvec(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.meta["action_nvec"])

    def logits(self, obs: np.ndarray) -> np.ndarray:
        """The network's logits for a batch of observations ``[n, obs_size]``."""
        return self.session.run(("logits",), {"obs": obs})[0]

    def act(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The action (one choice per part) for one observation; ``mask`` (boolean,
        ``sum(action_nvec)``) marks the valid choices, ``None``: all are."""
        logits = self.logits(np.asarray(obs, dtype=np.float32).reshape(1, -1))[0]
        if mask is not None:
            logits[~mask] = -np.inf
        return np.array([logits[s].argmax() for s in self._slices], dtype=np.int64)

    def act_batch(self, obs: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Actions ``[n, parts]`` for observations ``[n, obs_size]``, masks ``[n, sum(nvec)]``."""
        logits = self.logits(np.asarray(obs, dtype=np.float32))
        if masks is not None:
            logits = np.where(masks, logits, -np.inf)
        return np.stack([logits[:, s].argmax(axis=1) for s in self._slices], axis=1)


class _Actor:
    """One-observation inference on preallocated buffers: the network reads and writes
    bound arrays (no per-call session arguments), masking reuses one scratch array.
    Not thread-safe; each serving policy owns one."""

    def __init__(self, artifact: Artifact) -> None:
        n = sum(artifact.action_nvec)
        self._session = artifact.session
        self._slices = artifact._slices
        self._obs = np.zeros((1, artifact.obs_size), dtype=np.float32)
        self._out = np.zeros((1, n), dtype=np.float32)
        self._masked = np.empty(n, dtype=np.float32)
        self._floor = np.full(n, -np.inf, dtype=np.float32)
        self._binding = artifact.session.io_binding()
        self._binding.bind_cpu_input("obs", self._obs)
        self._binding.bind_output("logits", "cpu", 0, np.float32, self._out.shape,
                                  self._out.ctypes.data)
        self.logits = self._out[0]  # the last call's logits (a view, overwritten each call)

    def __call__(self, obs: np.ndarray, mask: np.ndarray | None = None) -> list[int]:
        self._obs[0] = obs
        self._session.run_with_iobinding(self._binding)
        logits = self._out[0]
        if mask is not None:
            np.copyto(self._masked, self._floor)
            np.copyto(self._masked, logits, where=mask)
            logits = self._masked
        return [int(logits[s].argmax()) for s in self._slices]


# -- export -----------------------------------------------------------------------

def export_artifact(model: Any, out_dir: str | os.PathLike[str], *, mode: str,
                    encoding: Encoding, tuning: Tuning | None = None,
                    fallback: str | None = "dualpath", train_meta: Mapping[str, Any] | None = None,
                    name: str | None = None) -> Path:
    """Write ``model`` (an SB3 ``MaskablePPO`` or ``PPO`` on ``DualPathEnv``) as an artifact.

    ``mode``, ``encoding``, ``tuning`` (required in tuning mode) and ``fallback`` must
    be what the env was built with: ``fallback`` is the spec of the heuristic given to
    the env as its ``fallback`` (``None`` if it had none; in routing mode the served
    policy consults it exactly when the env did). ``train_meta`` is stored as the free
    ``train`` block (JSON values only); ``name`` defaults to the directory's name.
    Returns the directory. The exported network is checked against the model's on a
    sample batch in onnxruntime before anything is reported written.
    """
    out = Path(out_dir)
    nvec = _export_checks(model, mode, encoding, tuning, fallback)
    train = dict(train_meta or {})
    try:
        json.dumps(train, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"train_meta must hold JSON values only: {err}") from err
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_FILE
    exporter = _export_onnx(model.policy, encoding.obs_size, onnx_path)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name or out.resolve().name,
        "mode": mode, "algo": type(model).__name__, "encoding": encoding.to_json(),
        "tuning": tuning.to_json() if tuning is not None else None, "fallback": fallback,
        "obs_size": encoding.obs_size, "action_nvec": list(nvec),
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "exporter": exporter, "train": train,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _export_checks(model: Any, mode: str, encoding: Encoding, tuning: Tuning | None,
                   fallback: str | None) -> tuple[int, ...]:
    """The action sizes of the artifact; ValueError where the arguments disagree."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if type(model).__name__ not in ALGOS:
        raise ValueError(f"model must be one of {ALGOS}, got {type(model).__name__}")
    if mode == "tune" and tuning is None:
        raise ValueError("tuning mode needs tuning=<the env's Tuning>")
    if mode == "route" and len(encoding.control) < len(PARTS) and fallback is None:
        raise ValueError(f"the agent controls only {', '.join(encoding.control)}: the "
                         "artifact needs the fallback that decides the rest")
    if fallback is not None:
        fallback_policy(fallback)
    nvec = encoding.action_nvec if mode == "route" else tuning.action_nvec  # type: ignore[union-attr]
    got_nvec = tuple(int(n) for n in getattr(model.action_space, "nvec", ()))
    if got_nvec != nvec:
        raise ValueError(f"the model's action space {model.action_space} does not match the "
                         f"{mode} action sizes {nvec} of the given encoding/tuning")
    if tuple(model.observation_space.shape) != (encoding.obs_size,):
        raise ValueError(f"the model observes {model.observation_space.shape}; the encoding "
                         f"gives ({encoding.obs_size},)")
    return nvec


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporter's chatter (optional-dependency notices, upstream deprecations)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_onnx(policy: Any, obs_size: int, path: Path) -> dict[str, Any]:
    """Export the actor of ``policy`` (features → actor MLP → action head) to ``path``."""
    import torch  # lazily: serving needs only onnxruntime

    actor = _actor_module(policy)
    example = torch.zeros(2, obs_size)  # batch 2: a batch of 1 may be specialised away
    with _quiet_export():
        torch.onnx.export(actor, (example,), str(path), dynamo=True, input_names=["obs"],
                          output_names=["logits"], external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    _verify_export(actor, path, obs_size)
    return {"torch": torch.__version__, "exporter": "torch.onnx.export(dynamo=True)"}


def _actor_module(policy: Any) -> Any:
    """A CPU copy of the policy's action path as one module (the model is left untouched)."""
    import torch
    from stable_baselines3.common.preprocessing import preprocess_obs

    class ActorLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = copy.deepcopy(policy.pi_features_extractor).cpu()
            self.mlp = copy.deepcopy(policy.mlp_extractor).cpu()
            self.head = copy.deepcopy(policy.action_net).cpu()

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            # SB3 preprocesses before the extractor (a cast for a flat Box space).
            x = preprocess_obs(obs, policy.observation_space,
                               normalize_images=policy.normalize_images)
            return self.head(self.mlp.forward_actor(self.features(x)))

    return ActorLogits().eval()


def _verify_export(actor: Any, path: Path, obs_size: int) -> None:
    import torch

    sample = np.random.default_rng(0).uniform(0.0, 3.0, (5, obs_size)).astype(np.float32)
    with torch.no_grad():
        want = actor(torch.from_numpy(sample)).numpy()
    got = _session(path.read_bytes(), path).run(("logits",), {"obs": sample})[0]
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{path}: the exported network disagrees with the model "
                           f"(max difference {np.abs(got - want).max():.3g})")


# -- load -------------------------------------------------------------------------

def load_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Load and check the artifact at ``path`` (its directory, or its policy.json or
    policy.onnx). ValueError naming the file and the problem if it cannot be served
    by this code: missing or malformed files, another format or encoding version,
    features that changed size, a corrupt or mismatched network."""
    folder = _artifact_dir(Path(path))
    meta_path, onnx_path = folder / META_FILE, folder / ONNX_FILE
    meta = _read_meta(meta_path)
    encoding, tuning = _check_meta(meta, meta_path)
    if not onnx_path.is_file():
        raise ValueError(f"{onnx_path}: missing; an artifact directory holds {META_FILE} and "
                         f"{ONNX_FILE}")
    data = onnx_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["onnx_sha256"]:
        raise ValueError(f"{onnx_path}: sha256 {digest} does not match {META_FILE}'s "
                         f"onnx_sha256 {meta['onnx_sha256']}: the file is corrupt or replaced")
    session = _session(data, onnx_path)
    _check_io(session, meta, onnx_path)
    return Artifact(meta, encoding, tuning, session, str(folder))


def _artifact_dir(path: Path) -> Path:
    if path.is_dir():
        return path
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if path.name in (META_FILE, ONNX_FILE):
        return path.parent
    raise ValueError(f"{path}: not a trained-policy artifact; expected a directory holding "
                     f"{META_FILE} and {ONNX_FILE} (or the path of one of them), as "
                     "agents.learned.export_artifact writes")


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: missing; an artifact directory holds {META_FILE} and "
                         f"{ONNX_FILE}")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


_REQUIRED = ("format", "format_version", "name", "mode", "algo", "encoding", "tuning",
             "fallback", "obs_size", "action_nvec", "onnx_sha256")


def _check_meta(meta: dict[str, Any], path: Path) -> tuple[Encoding, Tuning | None]:
    """The encoding and tuning ``meta`` describes; ValueError naming ``path`` if unusable."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')!r} is not "
                         f"supported (this code reads version {FORMAT_VERSION})")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{path}: lacks {', '.join(missing)}")
    mode = meta["mode"]
    if mode not in MODES:
        raise ValueError(f"{path}: mode {mode!r} is not one of {MODES}")
    try:
        encoding = Encoding.from_json(_mapping(meta["encoding"], "encoding"))
        tuning = None if meta["tuning"] is None else Tuning.from_json(
            _mapping(meta["tuning"], "tuning"))
        _check_shapes(meta, encoding, tuning)
        if meta["fallback"] is not None:
            fallback_policy(meta["fallback"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from err
    return encoding, tuning


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {value!r}")
    return value


def _check_shapes(meta: dict[str, Any], encoding: Encoding, tuning: Tuning | None) -> None:
    if meta["obs_size"] != encoding.obs_size:
        raise ValueError(f"obs_size {meta['obs_size']!r} differs from this code's "
                         f"{encoding.obs_size} for the same encoding: the features changed "
                         "without an encoding version bump; retrain")
    if meta["mode"] == "route":
        nvec = encoding.action_nvec
        if len(encoding.control) < len(PARTS) and meta["fallback"] is None:
            raise ValueError(f"the agent controls only {', '.join(encoding.control)} and no "
                             "fallback is given for the rest")
    elif tuning is None:
        raise ValueError("a tuning-mode artifact needs its tuning block")
    else:
        nvec = tuning.action_nvec
    if list(meta["action_nvec"]) != list(nvec):
        raise ValueError(f"action_nvec {meta['action_nvec']!r} does not match the "
                         f"{meta['mode']} action sizes {list(nvec)}")
    if not isinstance(meta["onnx_sha256"], str):
        raise ValueError(f"onnx_sha256 must be a hex string, got {meta['onnx_sha256']!r}")


def _session(data: bytes, path: Path) -> Any:
    """An onnxruntime session on one thread: a decision is one small matrix product, and
    the executor runs many policies (and simulations) side by side."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types; any is a bad file
        raise ValueError(f"{path}: onnxruntime cannot load it ({err})") from err


def _check_io(session: Any, meta: dict[str, Any], path: Path) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    want_in = ("obs", meta["obs_size"])
    want_out = ("logits", sum(meta["action_nvec"]))
    for what, got, (name, size) in (("input", inputs, want_in), ("output", outputs, want_out)):
        ok = (len(got) == 1 and got[0].name == name and got[0].type == "tensor(float)"
              and len(got[0].shape) == 2 and not isinstance(got[0].shape[0], int)
              and got[0].shape[1] == size)
        if not ok:
            have = [(a.name, a.type, a.shape) for a in got]
            raise ValueError(f"{path}: expected one {what} {name!r} float32 [batch, {size}], "
                             f"found {have}")


# -- artifact sources -------------------------------------------------------------

def pretrained_names() -> list[str]:
    """The shipped artifacts ``pretrained:NAME`` can name, sorted."""
    if not PRETRAINED_ROOT.is_dir():
        return []
    return sorted(d.name for d in PRETRAINED_ROOT.iterdir() if (d / META_FILE).is_file())


def load_pretrained(name: str) -> Artifact:
    """The shipped artifact ``name``; ValueError listing the available ones if unknown."""
    names = pretrained_names()
    if name not in names:
        have = ", ".join(names) if names else "none are installed"
        raise ValueError(f"no pretrained policy {name!r}; available: {have}")
    return load_artifact(PRETRAINED_ROOT / name)


_MODEL_URI = re.compile(r"^models:/[^/@]+(@[^/@]+|/[^/@]+)$")


def load_registered(uri: str) -> Artifact:
    """The artifact an MLflow model URI names (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``),
    downloaded from the tracking server ``MLFLOW_TRACKING_URI`` names; ValueError naming
    ``uri`` if it cannot be found or holds no artifact."""
    if not _MODEL_URI.match(uri):
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    # As the project's tracking does (a user's own setting wins): no usage telemetry,
    # no progress bar for a download of two small files.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # lazily: seconds to import, and only registry users need it
    from mlflow.exceptions import MlflowException

    tmp = tempfile.mkdtemp(prefix="dualpath-policy-")
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except (MlflowException, OSError) as err:
            raise ValueError(f"{uri}: cannot download it ({_first_line(err)})") from err
        # The network is read into memory, so the download can go once loaded.
        return replace(load_artifact(_find_artifact(local, uri)), source=uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _find_artifact(root: Path, uri: str) -> Path:
    """The artifact directory in a download: ``root`` itself or one folder down."""
    if (root / META_FILE).is_file():
        return root
    found = [d for d in sorted(root.iterdir()) if d.is_dir() and (d / META_FILE).is_file()]
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise ValueError(f"{uri}: {what} {META_FILE} at its top or one folder down")
    return found[0]


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
        self._actor = _Actor(artifact)
        self.last_scores: tuple[float, ...] | None = None
        e = artifact.encoding
        at = e.max_prefill if "prefill" in e.control else 0
        self._decode = slice(at, at + e.max_decode) if "decode" in e.control else None
        self._rest = (f" (rest: {self.fallback.name})"
                      if len(e.control) < len(PARTS) and self.fallback is not None else "")
        # Every choice's words, built once: a reason costs a join, not formatting.
        pe = cluster.prefill_engines
        words = {"prefill": [f"pe={k}" for k in range(e.max_prefill)],
                 "decode": [f"de={pe + k}" for k in range(e.max_decode)],
                 "path": [f"share={s:g}" for s in e.share_levels]}
        self._words = tuple(words[part] for part in e.control)

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer | None:
        if view.spec is not self._spec_seen:
            self._check_spec(view.spec)
        hint = None
        self.last_scores = None
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
        complete = getattr(self.fallback, "complete", None)
        if callable(complete):
            complete(request_id, outcome)

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
        self._actor = _Actor(artifact)
        self._tunable = tunable
        self.policy: Policy | None = None
        self.params: dict[str, float] = {}
        self._end = -math.inf

    def decide(self, request: Request, view: ClusterView) -> Decision | Defer | None:
        if self.policy is None or view.time_s >= self._end:
            self._retune(view)
        return self.policy.decide(request, view)  # type: ignore[union-attr]

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The level index per parameter for one observation."""
        return np.array(self._actor(obs), dtype=np.int64)

    def _retune(self, view: ClusterView) -> None:
        if view.spec is not self.cluster and view.spec != self.cluster:
            raise ValueError(f"{self.name} was built for cluster {self.cluster.name!r}; the "
                             f"view's cluster {view.spec.name!r} differs from it")
        action = self._actor(self.encoder.observe(None, view))
        self.params = self.tuning.params(action)
        self.policy = self._tunable(self.params)
        self._end = view.time_s + self.tuning.window_s
