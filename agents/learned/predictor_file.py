"""The shipped form of a predictive picker: ``predictor.json`` (see ``predictive``).

One JSON file: ``format`` (``"dualpath-predictor"``), ``format_version`` (1), ``name``,
``features`` (the names of :data:`~agents.learned.predictive.FEATURES`, checked against
this code's), ``weights``, ``knobs`` and a free ``train`` block (the command that
reproduces it, the data it was fitted on, the training time, the selection).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agents.learned.predictive import FEATURES, Knobs, PredictivePicker, Predictor

PREDICTOR_FILE = "predictor.json"
PREDICTOR_FORMAT = "dualpath-predictor"
PREDICTOR_VERSION = 1


def save_predictor(folder: Path, name: str, predictor: Predictor, knobs: Knobs,
                   train: dict[str, Any]) -> Path:
    """Write ``folder/predictor.json``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PREDICTOR_FILE
    body = {"format": PREDICTOR_FORMAT, "format_version": PREDICTOR_VERSION, "name": name,
            "features": list(FEATURES), "weights": list(predictor.weights),
            "knobs": knobs.to_json(), "train": train}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def load_predictor(path: Path) -> tuple[PredictivePicker, dict[str, Any]]:
    """The picker that ``path`` (a ``predictor.json`` or its folder) describes, and the
    file's content; ValueError naming the file and what is wrong."""
    path = path / PREDICTOR_FILE if path.is_dir() else path
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read a predictor: {err}") from err
    if not isinstance(body, dict) or body.get("format") != PREDICTOR_FORMAT:
        raise ValueError(f"{path}: not a {PREDICTOR_FORMAT} file")
    if body.get("format_version") != PREDICTOR_VERSION:
        raise ValueError(f"{path}: format_version {body.get('format_version')!r}; this code "
                         f"reads {PREDICTOR_VERSION}")
    if body.get("features") != list(FEATURES):
        raise ValueError(f"{path}: features {body.get('features')!r} are not this code's "
                         f"{list(FEATURES)}")
    try:
        knobs = Knobs(**body["knobs"])
        predictor = Predictor(tuple(body["weights"]))
        name = str(body["name"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
    return PredictivePicker(predictor, knobs, name=f"learned:{name}"), body


def is_predictor(path: Path) -> bool:
    """``path`` is a predictor file, or a folder holding one."""
    return (path / PREDICTOR_FILE).is_file() if path.is_dir() else path.name == PREDICTOR_FILE
