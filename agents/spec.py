"""One syntax names every policy; :func:`resolve_policy` turns it into a policy.

``NAME[:key=value,...]`` names a heuristic with parameters, for example
``dualpath:alpha_s=2,beta_s=5``. Values read as ``true``/``false``, int, float,
else string. ``layerwise`` and ``oracle`` are run switches (layer-wise prefill,
zero-I/O oracle), not policy parameters: they are returned beside the policy.

Learned policies (see ``agents.learned`` for the artifact format) are named by
``pretrained:NAME`` (an artifact shipped in ``agents/pretrained/NAME/``), a path
to an artifact (its directory, policy.json or policy.onnx), or an MLflow model
URI, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (downloaded from the
tracking server ``MLFLOW_TRACKING_URI`` names). They need the ``cluster`` they
serve. ``grpc://HOST:PORT`` names the policy service; its client lives in a
higher layer (``policy_service``), which registers it with :func:`register_scheme`
when imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from agents.heuristics import HEURISTICS
from agents.parse import ResolvedPolicy, list_policies, parse_heuristic, suggest
from runtime.cluster import ClusterSpec
from runtime.policy import Policy

_LEARNED_PREFIXES = ("pretrained:", "models:/", "grpc://")
_ARTIFACT_SUFFIXES = (".onnx", ".pt", ".json", ".zip")

#: Spec prefixes resolved by higher layers: prefix → factory(spec, cluster).
SCHEMES: dict[str, Callable[[str, ClusterSpec | None], Policy]] = {}


def register_scheme(prefix: str, factory: Callable[[str, ClusterSpec | None], Policy]) -> None:
    """Let ``resolve_policy`` build the policies whose specs start with ``prefix``."""
    SCHEMES[prefix] = factory


def resolve_policy(spec: str, cluster: ClusterSpec | None = None) -> ResolvedPolicy:
    """Build the policy ``spec`` names; ValueError (naming the spec and the bad part) if invalid.

    ``cluster`` is for policies whose shape depends on the cluster (learned
    policies' encodings; ValueError if they get none); heuristics read the cluster
    from each view.
    """
    if not isinstance(spec, str):
        raise TypeError(f"policy spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise ValueError(f"policy spec {spec!r} is empty; expected NAME[:key=value,...] "
                         f"with NAME one of {', '.join(list_policies())}")
    heuristic = parse_heuristic(text)
    if heuristic is not None:
        return heuristic
    name = text.partition(":")[0].strip()
    if _is_learned(text):
        return _resolve_learned(text, cluster)
    if not name:
        raise ValueError(f"policy spec {text!r}: missing policy name before ':'")
    raise ValueError(f"policy spec {text!r}: unknown policy {name!r}{suggest(name, HEURISTICS)}; "
                     f"known policies: {', '.join(list_policies())}")


def _resolve_learned(text: str, cluster: ClusterSpec | None) -> ResolvedPolicy:
    for prefix, factory in SCHEMES.items():
        if text.startswith(prefix):
            return ResolvedPolicy(policy=factory(text, cluster), layerwise=None, oracle=None,
                                  spec=text)
    if text.startswith("grpc://"):
        raise ValueError(f"policy spec {text!r}: grpc:// specs are resolved by the "
                         "policy_service package; import it first")
    try:  # a predictive picker serves any cluster
        picker = _predictor(text)
    except ValueError as err:
        raise ValueError(f"policy spec {text!r}: {err}") from err
    if picker is not None:
        return ResolvedPolicy(policy=picker, layerwise=None, oracle=None, spec=text)
    if cluster is None:
        raise ValueError(f"policy spec {text!r}: a learned policy needs the cluster it serves "
                         "(its encoding is sized to it); pass cluster=")
    # Imported here: heuristic users should not pay for onnxruntime, nor MLflow.
    from agents import learned, model_registry

    try:
        if text.startswith("pretrained:"):
            artifact = learned.load_pretrained(text.removeprefix("pretrained:").strip())
        elif text.startswith("models:/"):
            artifact = model_registry.load_registered(text)
        else:
            artifact = learned.load_artifact(text)
        policy = learned.policy_from_artifact(artifact, cluster)
    except ValueError as err:
        raise ValueError(f"policy spec {text!r}: {err}") from err
    return ResolvedPolicy(policy=policy, layerwise=None, oracle=None, spec=text)


def _predictor(text: str) -> Policy | None:
    """The predictive picker ``text`` names (``pretrained:NAME`` whose folder holds a
    predictor, or a predictor file's path), else None."""
    from agents.learned import PRETRAINED_ROOT, predictor_file

    path = (PRETRAINED_ROOT / text.removeprefix("pretrained:").strip()
            if text.startswith("pretrained:") else Path(text))
    if text.startswith("models:/") or not predictor_file.is_predictor(path):
        return None
    return predictor_file.load_predictor(path)[0]


def _is_learned(text: str) -> bool:
    return (text.startswith(_LEARNED_PREFIXES) or text.lower().endswith(_ARTIFACT_SUFFIXES)
            or os.path.exists(text))


