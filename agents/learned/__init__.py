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


from agents.learned.artifact import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    ONNX_FILE,
    PRETRAINED_ROOT,
    Artifact,
    load_artifact,
    load_pretrained,
    pretrained_names,
)
from agents.learned.export import export_artifact
from agents.learned.fallback import fallback_policy, make_tunable
from agents.learned.policies import LearnedRouter, TunedHeuristic, policy_from_artifact

__all__ = [
    "FORMAT", "FORMAT_VERSION", "META_FILE", "ONNX_FILE", "PRETRAINED_ROOT", "Artifact",
    "LearnedRouter", "TunedHeuristic", "export_artifact", "fallback_policy", "load_artifact",
    "load_pretrained", "make_tunable", "policy_from_artifact",
    "pretrained_names",
]
