"""``dualpath calibrate engine``: a cluster preset's timing values fitted to measurements of
a real model (the JSON file ``dualpath bench engine`` writes).

What is fitted, and from what:

- ``model.layers``, ``model.kv_bytes_per_token``: the measured model's own;
  ``model.dense_flops_per_token`` = 2 x its non-embedding (layer) parameters (the bench
  times the layers; the lm head runs once per request, not per token) and
  ``model.attn_flops_per_ctx_token`` = 4 x layers x heads x head_dim (QK^T and PV, 2 FLOPs
  per multiply-add), so that a prefill point's FLOPs are the cost model's own
  (:meth:`runtime.cost.CostModel.flops`);
- ``node.gpu_tflops`` = the best achieved prefill FLOP/s over all points, and
  ``model.prefill_efficiency`` = per batch size, the geometric mean over contexts of
  achieved / best (the least-squares fit of log time), so efficiencies lie in (0, 1];
- ``model.decode_base_s``, ``decode_per_seq_s``, ``decode_per_ctx_token_s``: non-negative
  least squares of relative error over the decode points (seconds = base + per_seq x batch
  + per_ctx x batch x context), with base > 0;
- ``node.h2d_copy_us``: the median CPU-side submission cost of one block-layer copy;
  ``node.pcie_gb_s``: the bytes/s of the largest copies (GB = 1e9 bytes, as
  :class:`runtime.node.NodeSpec` reads it).

The preset written is the base preset's text with those values (each under a one-line
reason naming the measurement), ``block_tokens`` the bench's and ``name`` the output
file's stem; it must load with :func:`runtime.preset.load_preset`. The fit quality is the
cost model of the written preset against every measurement.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.calibration.preset_file import set_value, write_checked
from experiments.evaluation.table import format_table
from runtime.cost import CostModel
from runtime.preset import PRESET_DIR, load_preset

SCHEMA = 1
#: Each list's fields; context may be 0, every other number must be > 0.
POINT_FIELDS = {
    "prefill": ("requests", "new_tokens", "context", "seconds"),
    "decode": ("batch", "context", "seconds"),
    "copy": ("copies", "bytes_per_copy", "submit_s_per_copy", "bytes_s"),
    "layerwise": ("context", "new_tokens", "compute_s", "copy_s", "serial_s", "overlapped_s"),
}
REQUIRED_POINTS = ("prefill", "decode", "copy")
MODEL_FIELDS = ("size", "dtype", "layers", "dim", "heads", "kv_heads", "ffn_dim", "vocab",
                "kv_bytes_per_token")
_MAY_BE_ZERO = {"context"}


class MeasurementError(ValueError):
    """The measurements file is missing or malformed; the message names the file and key."""


# -- reading ----------------------------------------------------------------------

def load_measurements(path: str | Path) -> dict[str, Any]:
    """The measurements at ``path``, checked: schema, model fields, every point's numbers."""
    path = Path(path)
    if not path.is_file():
        raise MeasurementError(f"{path}: measurements file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MeasurementError(f"{path}: not a JSON measurements file: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise MeasurementError(f"{path}: schema: expected {SCHEMA} (a file of "
                               f"'dualpath bench engine'), got {got!r}")
    check_measurements(data, str(path))
    return data


def check_measurements(data: dict[str, Any], where: str) -> None:
    """Raise :class:`MeasurementError` (prefixed ``where``) naming the first bad value."""
    model = data.get("model")
    if not isinstance(model, dict):
        raise MeasurementError(f"{where}: model: missing (the measured model's config)")
    for key in MODEL_FIELDS:
        if key not in model:
            raise MeasurementError(f"{where}: model.{key}: missing")
        if key not in ("size", "dtype"):
            _check_number(model[key], f"model.{key}", where, zero_ok=False)
    _check_number(data.get("block_tokens"), "block_tokens", where, zero_ok=False)
    for kind, fields in POINT_FIELDS.items():
        _check_points(data.get(kind, []), kind, fields, where)


def _check_points(points: Any, kind: str, fields: Sequence[str], where: str) -> None:
    if not isinstance(points, list):
        raise MeasurementError(f"{where}: {kind}: must be a list of points")
    if kind in REQUIRED_POINTS and not points:
        raise MeasurementError(f"{where}: {kind}: no {kind} points (nothing to fit to)")
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise MeasurementError(f"{where}: {kind}[{i}]: must be an object")
        for key in fields:
            _check_number(point.get(key), f"{kind}[{i}].{key}", where,
                          zero_ok=key in _MAY_BE_ZERO)


def _check_number(value: Any, key: str, where: str, zero_ok: bool) -> None:
    if value is None:
        raise MeasurementError(f"{where}: {key}: missing")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MeasurementError(f"{where}: {key}: must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise MeasurementError(f"{where}: {key}: must be {bound}, got {value!r}")


# -- the model's FLOPs ---------------------------------------------------------------

def layer_params(model: dict[str, Any]) -> int:
    """Weights of the transformer layers (Llama-style: q, k, v, o, gate/up/down, 2 norms)
    plus the final norm: every parameter but the embedding and the lm head."""
    dim, heads, kvh, layers = model["dim"], model["heads"], model["kv_heads"], model["layers"]
    head_dim = model.get("head_dim") or dim // heads
    attn = dim * heads * head_dim * 2 + dim * kvh * head_dim * 2
    return int(layers * (attn + 3 * dim * model["ffn_dim"] + 2 * dim) + dim)


def model_flops(model: dict[str, Any]) -> tuple[float, float]:
    """(dense FLOPs per token, attention FLOPs per new token per context token)."""
    head_dim = model.get("head_dim") or model["dim"] // model["heads"]
    return 2.0 * layer_params(model), 4.0 * model["layers"] * model["heads"] * head_dim


def prefill_flops(point: dict[str, Any], dense: float, attn: float) -> float:
    """FLOPs of a prefill point, as :meth:`runtime.cost.CostModel.flops` counts them."""
    n, c = point["new_tokens"], point["context"]
    return point["requests"] * n * (dense + attn * (c + n / 2))


# -- the fits -----------------------------------------------------------------------

def fit_prefill(points: Sequence[dict[str, Any]], dense: float, attn: float
                ) -> tuple[float, tuple[tuple[int, float], ...]]:
    """(best achieved FLOP/s, ((batch tokens, efficiency), ...) by increasing batch)."""
    achieved = [prefill_flops(p, dense, attn) / p["seconds"] for p in points]
    peak = max(achieved)
    by_batch: dict[int, list[float]] = {}
    for point, rate in zip(points, achieved, strict=True):
        tokens = int(point["requests"] * point["new_tokens"])
        by_batch.setdefault(tokens, []).append(math.log(rate / peak))
    table = tuple((tokens, min(1.0, math.exp(statistics.fmean(logs))))
                  for tokens, logs in sorted(by_batch.items()))
    return peak, table


def nnls_relative(features: Sequence[Sequence[float]], seconds: Sequence[float]
                  ) -> tuple[float, ...]:
    """Non-negative least squares of relative error, the first coefficient > 0: every
    subset of the other columns is solved unconstrained, and the feasible solution with
    the least residual wins (the true optimum lies on one of those faces)."""
    x = np.asarray(features, dtype=float) / np.asarray(seconds, dtype=float)[:, None]
    ones = np.ones(len(seconds))
    best: tuple[float, np.ndarray] | None = None
    k = x.shape[1]
    for mask in itertools.product((True, False), repeat=k - 1):
        cols = [0] + [j + 1 for j, on in enumerate(mask) if on]
        coef = np.linalg.lstsq(x[:, cols], ones, rcond=None)[0]
        if coef[0] <= 0 or (coef < 0).any():
            continue
        full = np.zeros(k)
        full[cols] = coef
        residual = float(np.linalg.norm(x @ full - ones))
        if best is None or residual < best[0] - 1e-15:
            best = (residual, full)
    assert best is not None  # the base alone always fits: its column is positive
    return tuple(float(v) for v in best[1])


def fit_decode(points: Sequence[dict[str, Any]]) -> tuple[float, float, float]:
    """(decode_base_s, decode_per_seq_s, decode_per_ctx_token_s)."""
    features = [(1.0, p["batch"], p["batch"] * p["context"]) for p in points]
    base, per_seq, per_ctx = nnls_relative(features, [p["seconds"] for p in points])
    return base, per_seq, per_ctx


def fit_copy(points: Sequence[dict[str, Any]], block_bytes: float
             ) -> tuple[float, float, float]:
    """(h2d_copy_us, pcie_gb_s, submission us): the link's rate is the bytes/s of the
    largest copies; a copy's extra time is what the copies nearest a block-layer slice in
    size took each beyond their bytes at that rate (the simulator holds the link
    ``bytes / rate + copies x h2d_copy_us``; a submission overlaps the transfers before
    it, so its own cost, also returned, would count twice)."""
    largest = max(p["bytes_per_copy"] for p in points)
    rate = statistics.median(p["bytes_s"] for p in points if p["bytes_per_copy"] == largest)
    nearest = min(abs(math.log(p["bytes_per_copy"] / block_bytes)) for p in points)
    near = [p for p in points
            if abs(math.log(p["bytes_per_copy"] / block_bytes)) <= nearest + 1e-9]
    extra = statistics.median(p["bytes_per_copy"] / p["bytes_s"] - p["bytes_per_copy"] / rate
                              for p in near)
    submit = statistics.median(p["submit_s_per_copy"] for p in near)
    return max(extra, 0.0) * 1e6, rate / 1e9, submit * 1e6


# -- the preset ------------------------------------------------------------------------

def _num(value: float) -> str:
    """A TOML float of 6 significant digits."""
    return repr(float(f"{value:.6g}"))


def fitted_values(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(SECTION.KEY or KEY, TOML value, reason)`` for every value the fit sets."""
    model = data["model"]
    src = (f"measured: dualpath bench engine on {data.get('device', '?')}, {model['size']} "
           f"{model['dtype']}, medians of up to {data.get('repeats', '?')} runs")
    dense, attn = model_flops(model)
    peak, table = fit_prefill(data["prefill"], dense, attn)
    base, per_seq, per_ctx = fit_decode(data["decode"])
    block_bytes = data["block_tokens"] * model["kv_bytes_per_token"] / model["layers"]
    h2d_us, pcie, submit_us = fit_copy(data["copy"], block_bytes)
    decode_why = f"{src}: non-negative least squares over {len(data['decode'])} decode steps"
    eff = ", ".join(f"[{tokens}, {_num(e)}]" for tokens, e in table)
    return [
        ("block_tokens", str(int(data["block_tokens"])),
         f"{src}: the block size the copies were measured with"),
        ("node.gpu_tflops", _num(peak / 1e12),
         f"{src}: the best achieved prefill FLOP/s of {len(data['prefill'])} points"),
        ("node.pcie_gb_s", _num(pcie), f"{src}: bytes/s of the largest host-to-device copies"),
        ("node.h2d_copy_us", _num(h2d_us),
         f"{src}: time per {int(block_bytes):,}-byte block-layer copy beyond its bytes at "
         f"pcie_gb_s (its submission: {submit_us:.2f} us, overlapping earlier transfers)"),
        ("model.name", json.dumps(f"{model['size']}-{model['dtype']}"), "the measured model"),
        ("model.layers", str(int(model["layers"])), f"{src}: the model's layers"),
        ("model.kv_bytes_per_token", str(int(model["kv_bytes_per_token"])),
         f"{src}: K and V of every layer, {model['kv_heads']} KV heads, {model['dtype']}"),
        ("model.dense_flops_per_token", _num(dense),
         f"{src}: 2 x {layer_params(model):,} layer parameters (no embedding, no lm head)"),
        ("model.attn_flops_per_ctx_token", _num(attn),
         f"{src}: 4 x layers x heads x head_dim (QK^T and PV)"),
        ("model.attn_window_tokens", "0", f"{src}: dense attention over the whole context"),
        ("model.indexer_flops_per_ctx_token", "0.0", f"{src}: no indexer"),
        ("model.prefill_efficiency", f"[{eff}]",
         f"{src}: achieved / best FLOP/s per batch size, geometric mean over contexts"),
        ("model.decode_base_s", _num(base), decode_why),
        ("model.decode_per_seq_s", _num(per_seq), decode_why),
        ("model.decode_per_ctx_token_s", _num(per_ctx), decode_why),
    ]


def base_text(base: str) -> str:
    """The TOML text of the base preset (a shipped name or a path)."""
    path = PRESET_DIR / f"{base}.toml"
    if not path.is_file():
        path = Path(base)
    if not path.is_file():
        raise MeasurementError(f"--base {base}: no such preset or file")
    return path.read_text(encoding="utf-8")


def write_preset(out: Path, base: str, values: Sequence[tuple[str, str, str]]) -> None:
    """The base preset with ``values`` set and ``name`` = ``out``'s stem, written to
    ``out`` only if it loads."""
    text = (f"# Fitted by 'dualpath calibrate engine' (base {base}): the values under a "
            f"'measured' comment come from the bench; the rest are the base's.\n"
            + base_text(base))
    for key, value, reason in [("name", json.dumps(out.stem), "the output file's stem"),
                               *values]:
        text = set_value(text, key, value, reason)
    write_checked(out, text)


# -- the fit quality -----------------------------------------------------------------

def _row(point: dict[str, Any], keys: Sequence[str], measured: float,
         predicted: float) -> dict[str, Any]:
    return {**{k: point[k] for k in keys}, "measured_s": measured, "predicted_s": predicted,
            "error_pct": 100.0 * (predicted - measured) / measured}


def quality(data: dict[str, Any], cost: CostModel) -> dict[str, list[dict[str, Any]]]:
    """Every measurement beside what the cost model of the fitted preset predicts."""
    prefill = [_row(p, ("requests", "new_tokens", "context"), p["seconds"],
                    cost.batch_prefill_s([(p["new_tokens"], p["context"])] * p["requests"]))
               for p in data["prefill"]]
    decode = [_row(p, ("batch", "context"), p["seconds"],
                   cost.decode_iteration_s(p["batch"], p["batch"] * p["context"]))
              for p in data["decode"]]
    node = cost.spec.node
    copy = [_row(p, ("copies", "bytes_per_copy"), p["copies"] * p["bytes_per_copy"] / p["bytes_s"],
                 p["copies"] * (p["bytes_per_copy"] / node.pcie_bytes_s + node.h2d_copy_us * 1e-6))
            for p in data["copy"]]
    layers = cost.model.layers
    layerwise = []
    for p in data.get("layerwise", []):
        compute, copy_s = p["compute_s"], p["copy_s"]
        overlapped = max(copy_s / layers + compute, copy_s + compute / layers)
        layerwise.append({"context": p["context"], "new_tokens": p["new_tokens"],
                          "hidden_share": (p["serial_s"] - p["overlapped_s"]) / copy_s,
                          "model_share": (compute + copy_s - overlapped) / copy_s})
    return {"prefill": prefill, "decode": decode, "copy": copy, "layerwise": layerwise}


def error_summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    errors = [abs(r["error_pct"]) for r in rows]
    return {"mean_abs_pct": statistics.fmean(errors), "max_abs_pct": max(errors)}


def calibrate_engine(measurements: str | Path, out: str | Path, base: str = "tiny"
                     ) -> dict[str, Any]:
    """Fit, write ``out`` and report: the values, every point's error, the summaries."""
    data = load_measurements(measurements)
    out = Path(out)
    if out.suffix != ".toml":
        raise MeasurementError(f"--out {out}: must be a .toml file")
    values = fitted_values(data)
    write_preset(out, base, values)
    spec = load_preset(str(out))
    rows = quality(data, CostModel(spec))
    return {"measurements": str(measurements), "out": str(out), "base": base,
            "device": data.get("device"), "model": data["model"],
            "values": {key: value for key, value, _ in values}, **rows,
            "errors": {kind: error_summary(rows[kind]) for kind in ("prefill", "decode",
                                                                    "copy")}}


def render(payload: dict[str, Any]) -> str:
    """The fitted values and the fit's tables, for the terminal."""
    model = payload["model"]
    out = [f"calibration of {payload['out']} (base {payload['base']}) to "
           f"{payload['measurements']}: {model['size']} {model['dtype']} on "
           f"{payload['device']}",
           format_table([{"key": k, "value": v} for k, v in payload["values"].items()],
                        ["key", "value"]), ""]
    columns = {"prefill": ["requests", "new_tokens", "context"], "decode": ["batch", "context"],
               "copy": ["copies", "bytes_per_copy"]}
    for kind, keys in columns.items():
        err = payload["errors"][kind]
        rows = [{**r, "measured_ms": r["measured_s"] * 1e3, "predicted_ms": r["predicted_s"] * 1e3,
                 "error_pct": round(r["error_pct"], 2)} for r in payload[kind]]
        out += [format_table(rows, [*keys, "measured_ms", "predicted_ms", "error_pct"]),
                f"{kind}: mean |error| {err['mean_abs_pct']:.1f}%, "
                f"max {err['max_abs_pct']:.1f}%", ""]
    if payload["layerwise"]:
        out.append(format_table(payload["layerwise"], ["context", "new_tokens",
                                                       "hidden_share", "model_share"]))
    out.append(f"wrote {payload['out']}")
    return "\n".join(out)
