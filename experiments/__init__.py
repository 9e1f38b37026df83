"""Experiments: the ``dualpath`` command and the work behind it.

Subpackages, each with one concern:

- :mod:`experiments.cli`: the ``dualpath`` command line (``experiments.cli:main``); one
  module per group of commands, each parses, calls one function of another subpackage and
  prints. Nothing outside it imports it.
- :mod:`experiments.evaluation`: one simulated run (``runner``), compare and the ablation,
  evaluation over a scenario's seeds, scenarios (``experiments/scenarios/*.toml``),
  statistics, tables, the agreement of a policy with the service's decision log, and the
  one fan-out of independent runs over processes or Ray (``fanout``).
- :mod:`experiments.training`: ``train`` (PPO, imitation warm start, several seeds) and
  ``promote``.
- :mod:`experiments.sweeps`: sweep files (``experiments/sweeps/*.toml``) and their runs,
  the online capacity search (``probe``, ``capacity``), sweep plots and HTML reports.
- :mod:`experiments.tracking`: MLflow runs and the model registry, comparison and
  learning-curve figures.
- :mod:`experiments.bench`: every benchmark (``bench sim``, ``env``, ``policy``,
  ``transport``, ``grpc``, ``soak``).
- :mod:`experiments.live`: live-cluster glue: live runs and ``fidelity``, ``stress``, and
  ``dualpath serve`` as a child process.

The packages below ``cli`` import one another without cycles (an import-linter contract).
"""
