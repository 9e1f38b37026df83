"""Shipped trained policies: one artifact directory per name (``NAME/policy.json`` and
``NAME/policy.onnx``, see ``agents.learned``), resolved by ``pretrained:NAME``."""
