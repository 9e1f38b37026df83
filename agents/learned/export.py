"""Writing an artifact from a trained SB3 model: ONNX export, checked against the model."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agents.learned.artifact import (
    ALGOS,
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    MODES,
    ONNX_FILE,
    onnx_session,
)
from agents.learned.fallback import fallback_policy
from env.encoding import Encoding, Tuning


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
    if mode == "route" and not encoding.routes_fully and fallback is None:
        raise ValueError(f"the agent controls only {', '.join(encoding.control)}: the "
                         "artifact needs the fallback that decides the rest")
    if fallback is not None:
        fallback_policy(fallback)
    nvec = tuning.action_nvec if mode == "tune" and tuning is not None else encoding.action_nvec
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
    got = onnx_session(path.read_bytes(), path).run(("logits",), {"obs": sample})[0]
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{path}: the exported network disagrees with the model "
                           f"(max difference {np.abs(got - want).max():.3g})")


# -- load -------------------------------------------------------------------------

