"""The artifact format: its constants, the loaded :class:`Artifact`, and its loader with
every check (the format is described in :mod:`agents.learned`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.learned.fallback import fallback_policy
from env.encoding import Encoding, Tuning

FORMAT = "dualpath-policy"
FORMAT_VERSION = 1
META_FILE = "policy.json"
ONNX_FILE = "policy.onnx"
MODES = ("route", "tune")
ALGOS = ("MaskablePPO", "PPO")
#: Where ``pretrained:NAME`` looks: one artifact directory per name.
PRETRAINED_ROOT = Path(__file__).resolve().parents[1] / "pretrained"

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


class Actor:
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
        #: The probability of the last action under the network's (masked) distribution:
        #: what off-policy estimates from the decision log need of a greedy policy.
        self.action_prob = 1.0

    def __call__(self, obs: np.ndarray, mask: np.ndarray | None = None) -> list[int]:
        self._obs[0] = obs
        self._session.run_with_iobinding(self._binding)
        logits = self._out[0]
        if mask is not None:
            np.copyto(self._masked, self._floor)
            np.copyto(self._masked, logits, where=mask)
            logits = self._masked
        action = [int(logits[s].argmax()) for s in self._slices]
        self.action_prob = _greedy_prob(logits, self._slices, action)
        return action


def _greedy_prob(logits: np.ndarray, slices: Sequence[slice], action: Sequence[int]) -> float:
    """The product over parts of softmax(part's logits)[chosen]: the probability the
    sampling policy the network was trained as gives the action taken."""
    prob = 1.0
    for part, a in zip(slices, action, strict=True):
        values = logits[part]
        top = values[a]
        prob /= float(np.exp(values - top).sum())
    return prob


# -- export -----------------------------------------------------------------------

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
    session = onnx_session(data, onnx_path)
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
        if not encoding.routes_fully and meta["fallback"] is None:
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


def onnx_session(data: bytes, path: Path) -> Any:
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
    """The shipped policies ``pretrained:NAME`` can name (network artifacts and
    predictive pickers, whose folder holds ``predictor.json``), sorted."""
    if not PRETRAINED_ROOT.is_dir():
        return []
    return sorted(d.name for d in PRETRAINED_ROOT.iterdir()
                  if (d / META_FILE).is_file() or (d / "predictor.json").is_file())


def load_pretrained(name: str) -> Artifact:
    """The shipped artifact ``name``; ValueError listing the available ones if unknown."""
    names = pretrained_names()
    if name not in names:
        have = ", ".join(names) if names else "none are installed"
        raise ValueError(f"no pretrained policy {name!r}; available: {have}")
    return load_artifact(PRETRAINED_ROOT / name)


