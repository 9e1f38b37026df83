"""Named cluster presets: TOML files in ``runtime/presets/``, loaded into a :class:`ClusterSpec`.

A preset file holds the top-level :class:`ClusterSpec` fields plus two tables,
``[node]`` (:class:`NodeSpec`) and ``[model]`` (:class:`ModelSpec`), whose keys
are exactly the dataclass fields. Overrides (``--set KEY=VALUE`` on the command
line) use dotted keys: ``prefill_nodes=3``, ``node.snic_gb_s=25``,
``model.layers=30``; the value is read as a TOML value, and a bare word that is
not valid TOML is taken as a string. A list of numbers (``snic_factors``, one
storage-NIC factor per node) is written as a TOML array in a file
(``snic_factors = [1.0, 0.25]``) and as an array or comma-separated numbers in
an override (``snic_factors=1,0.25``; an empty value means none).

Every problem is a :class:`ConfigError` whose message starts with where the bad
value came from (the file, or ``--set ...``) and names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runtime.cluster import CacheSpec, ClusterSpec
from runtime.errors import ConfigError
from runtime.model import ModelSpec
from runtime.node import NodeSpec

PRESET_DIR = Path(__file__).parent / "presets"
OVERRIDE_SOURCE = "--set"

_TABLES: dict[str, type] = {"node": NodeSpec, "model": ModelSpec, "cache": CacheSpec}
_NUMBERS = tuple[float, ...]  # the type of a field holding a list of numbers
_TOML_TYPE = {bool: "boolean", int: "integer", float: "float", str: "string",
              list: "array", dict: "table"}


def _init_fields(cls: type) -> dict[str, Any]:
    """Settable fields of a dataclass and their types; private and derived fields excluded."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if f.init and not f.name.startswith("_")}


def _required(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init
            and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


# section ("" for top level) -> field -> type
_SCHEMA: dict[str, dict[str, Any]] = {
    "": {k: t for k, t in _init_fields(ClusterSpec).items() if k not in _TABLES},
    **{section: _init_fields(cls) for section, cls in _TABLES.items()},
}
_REQUIRED: dict[str, set[str]] = {
    "": _required(ClusterSpec) - set(_TABLES),
    **{section: _required(cls) for section, cls in _TABLES.items()},
}
_ALL_KEYS = sorted(f"{s}.{k}" if s else k for s, keys in _SCHEMA.items() for k in keys)


# -- public API ---------------------------------------------------------------

def list_presets() -> list[str]:
    """Names of the shipped presets (files in ``runtime/presets/``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str, overrides: Sequence[str] = ()) -> ClusterSpec:
    """Load a preset by name, or a TOML file by path, and apply ``KEY=VALUE`` overrides.

    A name ending in ``.toml``, or one that is not a shipped preset but names an
    existing file, is read as a path. A shipped preset must have a ``name`` key;
    a file given by path defaults its name to the file's stem.
    """
    path, is_preset = _resolve(name_or_path)
    source = str(path)
    values = _flatten(_read_toml(path), source)
    if "name" not in values and not is_preset:
        values["name"] = path.stem
    override_origin: dict[str, str] = {}
    for raw in overrides:
        key, value = _parse_override(raw)
        values[key] = value
        override_origin[key] = f"{OVERRIDE_SOURCE} {raw}"
    if overrides:
        source = f"{source} (with {OVERRIDE_SOURCE} {', '.join(overrides)})"
    return _build(values, lambda key: override_origin.get(key, source))


# -- finding and reading the file ---------------------------------------------

def _resolve(name_or_path: str) -> tuple[Path, bool]:
    """The file to read, and whether it is a shipped preset."""
    known = list_presets()
    if not name_or_path.endswith(".toml"):
        if name_or_path in known:
            return PRESET_DIR / f"{name_or_path}.toml", True
        if not Path(name_or_path).is_file():
            close = difflib.get_close_matches(name_or_path, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{name_or_path}: unknown preset and no such file{hint} "
                              f"(known presets: {', '.join(known)})")
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"{path}: preset file not found")
    return path, False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read preset file: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}{_quote_line(text, str(exc))}") from exc


def _quote_line(text: str, message: str) -> str:
    """The offending line, so that the message shows the key it is about."""
    match = re.search(r"line (\d+)", message)
    lines = text.splitlines()
    if match is None or not 0 < int(match.group(1)) <= len(lines):
        return ""
    return f": {lines[int(match.group(1)) - 1].strip()!r}"


# -- keys -----------------------------------------------------------------------

def _flatten(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The file's values by dotted key (``node.gpus``), every key checked against the schema."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key}: must be a table [{key}], "
                                  f"got {_type_name(value)} {value!r}")
            for sub, sub_value in value.items():
                _check_key(key, sub, source)
                flat[f"{key}.{sub}"] = sub_value
        elif isinstance(value, dict):
            close = difflib.get_close_matches(key, list(_TABLES), n=1, cutoff=0.6)
            hint = f"; did you mean [{close[0]}]?" if close else ""
            raise ConfigError(f"{source}: {key}: unknown table [{key}]{hint} "
                              f"(tables: {', '.join(f'[{t}]' for t in _TABLES)})")
        else:
            _check_key("", key, source)
            flat[key] = value
    return flat


def _check_key(section: str, leaf: str, where: str) -> None:
    dotted = f"{section}.{leaf}" if section else leaf
    if leaf.startswith("_"):
        raise ConfigError(f"{where}: {dotted}: unknown key (keys starting with '_' are private)")
    if section == "" and leaf in _TABLES:
        raise ConfigError(f"{where}: {dotted}: is a table; set {leaf}.<field> instead")
    if section not in _SCHEMA or leaf not in _SCHEMA[section]:
        raise ConfigError(f"{where}: {dotted}: unknown key{_suggest(section, dotted)}")


def _suggest(section: str, dotted: str) -> str:
    leaf = dotted.rpartition(".")[2]
    prefix = f"{section}." if section else ""
    # the same field in another section, a near spelling within the section, or a near
    # dotted key (``nodegpus`` -> ``node.gpus``)
    candidates = [k for k in _ALL_KEYS if k.rpartition(".")[2] == leaf]
    if section in _SCHEMA:
        candidates += [prefix + k for k in
                       difflib.get_close_matches(leaf, list(_SCHEMA[section]), n=3, cutoff=0.6)]
    candidates += difflib.get_close_matches(dotted, _ALL_KEYS, n=3, cutoff=0.8)
    if candidates:
        return f"; did you mean {', '.join(dict.fromkeys(candidates))}?"
    if section in _SCHEMA:
        tables = [f"[{t}]" for t in _TABLES] if not section else []
        return f"; valid keys: {', '.join([prefix + k for k in _SCHEMA[section]] + tables)}"
    return f"; valid tables: {', '.join(_TABLES)}"


def _parse_override(raw: str) -> tuple[str, Any]:
    key, sep, text = raw.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{OVERRIDE_SOURCE}: malformed override {raw!r}: "
                          "expected KEY=VALUE, e.g. node.snic_gb_s=25")
    section, _, leaf = key.rpartition(".")
    _check_key(section, leaf, f"{OVERRIDE_SOURCE} {raw}")
    value = _parse_value(text.strip())
    if isinstance(value, str) and _SCHEMA[section][leaf] == _NUMBERS:
        value = _parse_number_list(value, f"{OVERRIDE_SOURCE} {raw}: {key}")
    return key, value


def _parse_number_list(text: str, where: str) -> list[Any]:
    """``1,0.25`` as ``[1, 0.25]`` (an empty text as ``[]``): a list without brackets."""
    if not text.strip():
        return []
    items = [_parse_value(item.strip()) for item in text.split(",")]
    for item in items:
        if type(item) not in (int, float):
            raise ConfigError(f"{where}: expected comma-separated numbers (e.g. 1,0.25), "
                              f"got {item!r}")
    return items


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# -- values ---------------------------------------------------------------------

def _type_name(value: Any) -> str:
    return next((name for t, name in _TOML_TYPE.items() if type(value) is t),
                type(value).__name__)


def _coerce(key: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field's type, or a ConfigError naming ``key``."""
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: expected {expected}, "
                           f"got {_type_name(value)} {value!r}")

    if hint in (bool, int, float, str):
        return _coerce_scalar(key, value, hint, where, wrong)
    if hint == _NUMBERS:  # snic_factors, compute_factors: one number per node
        if not (isinstance(value, list) and all(type(x) in (int, float) for x in value)):
            raise wrong("an array of numbers, e.g. [1.0, 0.25]")
        return tuple(float(x) for x in value)
    if typing.get_origin(hint) is tuple:  # prefill_efficiency: pairs of numbers
        pair_ok = (isinstance(value, list) and all(
            isinstance(p, list) and len(p) == 2 and all(type(x) in (int, float) for x in p)
            for p in value))
        if not pair_ok:
            raise wrong("an array of [batch_tokens, efficiency] pairs of numbers")
        return tuple((float(x), float(y)) for x, y in value)
    raise TypeError(f"no coercion for field {key} of type {hint!r}")  # a new field type


def _coerce_scalar(key: str, value: Any, hint: type, where: str,
                   wrong: Callable[[str], ConfigError]) -> Any:
    """``value`` as a bool, an int, a (finite) float or a str."""
    if hint is bool:
        if type(value) is not bool:
            raise wrong("true or false")
        return value
    if hint is int:
        if type(value) is not int:
            raise wrong("an integer")
        return value
    if hint is float:
        if type(value) not in (int, float):
            raise wrong("a number")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {key}: must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise wrong("a string")
    return value


def _build(values: dict[str, Any], where: Callable[[str], str]) -> ClusterSpec:
    kwargs: dict[str, dict[str, Any]] = {section: {} for section in _SCHEMA}
    for key, value in values.items():
        section, _, leaf = key.rpartition(".")
        kwargs[section][leaf] = _coerce(key, value, _SCHEMA[section][leaf], where(key))
    for section, required in _REQUIRED.items():
        for leaf in sorted(required - set(kwargs[section])):
            key = f"{section}.{leaf}" if section else leaf
            raise ConfigError(f"{where(key)}: {key}: missing required key")
    if not kwargs[""]["name"]:
        raise ConfigError(f"{where('name')}: name: must not be empty")
    try:
        node = NodeSpec(**kwargs["node"])
        model = ModelSpec(**kwargs["model"])
        cache = CacheSpec(**kwargs["cache"])
        return ClusterSpec(node=node, model=model, cache=cache, **kwargs[""])
    except ConfigError as exc:
        key = str(exc).partition(":")[0]
        raise ConfigError(f"{where(key)}: {exc}") from exc
