"""Cluster presets: every shipped file loads with the numbers it documents; overrides and errors."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from runtime import preset
from runtime.cost import Chunk, CostModel
from runtime.errors import ConfigError
from runtime.preset import PRESET_DIR, list_presets, load_preset

SHIPPED = ["ds27b-1p1d", "ds27b-1p2d", "ds27b-2p1d", "ds660b-2p4d", "qwen32b-1p2d", "tiny"]

# A small valid cluster, as a dict; tests mutate copies of it and write them as TOML.
BASE: dict[str, Any] = {
    "name": "base",
    "prefill_nodes": 1,
    "decode_nodes": 1,
    "node": {"gpus": 2, "snic_gb_s": 1.0},
    "model": {"name": "m", "layers": 2, "kv_bytes_per_token": 512,
              "dense_flops_per_token": 1e8, "attn_flops_per_ctx_token": 100.0,
              "prefill_efficiency": [[100, 0.2], [1000, 0.5]]},
}


def toml_text(data: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    top = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
              for k, v in data.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def write(tmp_path: Path, data: dict[str, Any], filename: str = "cluster.toml") -> Path:
    path = tmp_path / filename
    path.write_text(toml_text(data))
    return path


def with_value(dotted: str, v: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    *section, leaf = dotted.split(".")
    (data.setdefault(section[0], {}) if section else data)[leaf] = v
    return data


def config_error(*args: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_preset(*args)
    assert isinstance(info.value, ValueError)
    return str(info.value)


# -- shipped presets ------------------------------------------------------------

def test_list_presets_names_every_shipped_file() -> None:
    assert list_presets() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_preset_loads_under_its_own_name(name: str) -> None:
    spec = load_preset(name)
    assert spec.name == name
    assert spec.prefill_engines > 0 and spec.decode_engines > 0


KEY_NUMBERS = {
    # name: (P, D, gpus, snic, host buffer, layers, kv bytes/token, dense FLOP/token, TFLOP/s)
    "ds660b-2p4d": (2, 4, 8, 50.0, 80.0, 61, 48_068, 74e9, 1350.0),
    "ds27b-1p1d": (1, 1, 8, 50.0, 80.0, 30, 19_700, 8.2e9, 1350.0),
    "ds27b-2p1d": (2, 1, 8, 50.0, 80.0, 30, 19_700, 8.2e9, 1350.0),
    "ds27b-1p2d": (1, 2, 8, 50.0, 80.0, 30, 19_700, 8.2e9, 1350.0),
    "qwen32b-1p2d": (1, 2, 8, 50.0, 320.0, 64, 262_144, 62e9, 990.0),
    "tiny": (1, 1, 2, 1.0, 1.0, 4, 1_024, 2e8, 10.0),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_preset_key_numbers(name: str) -> None:
    s = load_preset(name)
    got = (s.prefill_nodes, s.decode_nodes, s.node.gpus, s.node.snic_gb_s, s.node.host_buffer_gb,
           s.model.layers, s.model.kv_bytes_per_token, s.model.dense_flops_per_token,
           s.node.gpu_tflops)
    assert got == KEY_NUMBERS[name]
    assert (s.slo_ttft_s, s.slo_tpot_s) == (4.0, 0.05)


def test_ds660b_matches_the_papers_derived_costs() -> None:
    s = load_preset("ds660b-2p4d")
    assert s.prefill_quota_s == 0.3
    assert s.model.attn_window_tokens == 2048
    # facts: ~125 / 141 / 174 GFLOP per new token at 16k / 32.7k / 64k context
    for context, gflop in ((16_000, 125), (32_700, 141), (64_000, 174)):
        assert s.model.prefill_flops_per_token(context) / 1e9 == pytest.approx(gflop, rel=0.015)
    # relative prefill throughput 1.0 / 2.6 / 2.9 / 3.0 at 300 / 1500 / 3000 / 6000 tokens
    effs = [s.model.efficiency(t) for t in (300, 1500, 3000, 6000)]
    assert [e / effs[0] for e in effs] == pytest.approx([1.0, 2.6, 2.9, 3.0], rel=0.01)
    # TPOT 36-39 ms at the decode batches the offline runs have (5-10 requests of ~33k
    # context per engine: `dualpath calibrate paper` fits the step to the runs' TPOT)
    tpots = [s.model.decode_iteration_s(b, b * 33_000) for b in (5, 8, 10)]
    assert 0.036 <= tpots[0] < tpots[1] < tpots[2] <= 0.039


@pytest.mark.parametrize(("name", "low", "high"), [
    ("ds660b-2p4d", 13, 36), ("qwen32b-1p2d", 117, 267)])
def test_cache_compute_ratio_within_the_papers_range(name: str, low: float, high: float) -> None:
    """GB of KV loaded per PFLOP of prefill for an average 64K-set turn (32.7k context, 429 new)."""
    model = load_preset(name).model
    context, new = 32_721, 429
    gb = context * model.kv_bytes_per_token / 1e9
    pflop = new * model.prefill_flops_per_token(context) / 1e15
    assert low <= gb / pflop <= high


@pytest.mark.parametrize("name", SHIPPED)
def test_largest_agent_context_fits_decode_and_prefill_hbm(name: str) -> None:
    s = load_preset(name)
    largest = 64_000 * s.model.kv_bytes_per_token  # the 64K set's longest trajectory
    assert largest < s.node.de_hbm_kv_bytes
    assert largest < s.node.pe_hbm_kv_bytes
    assert largest < s.node.host_buffer_bytes


@pytest.mark.parametrize("name", SHIPPED)
def test_decode_stays_within_tpot_slo_at_the_hbm_limit(name: str) -> None:
    s = load_preset(name)
    hbm_tokens = s.node.de_hbm_kv_bytes / s.model.kv_bytes_per_token
    batch = min(s.decode_max_batch, int(hbm_tokens // 33_000))
    assert batch >= 1
    assert s.model.decode_iteration_s(batch, hbm_tokens) <= s.slo_tpot_s


def test_tiny_makes_storage_and_compute_comparable() -> None:
    s = load_preset("tiny")
    cost = CostModel(s)
    read_s = cost.kv_bytes(30_000) / cost.snic_bytes_s
    prefill_s = cost.prefill_s([Chunk(tokens=500, context=30_000)])
    assert 0.5 <= read_s / prefill_s <= 2.0


def test_ds27b_layouts_share_hardware_and_model() -> None:
    specs = [load_preset(n) for n in ("ds27b-1p1d", "ds27b-2p1d", "ds27b-1p2d")]
    assert specs[0].node == specs[1].node == specs[2].node
    assert specs[0].model == specs[1].model == specs[2].model
    assert [(s.prefill_nodes, s.decode_nodes) for s in specs] == [(1, 1), (2, 1), (1, 2)]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_preset_value_has_a_sourcing_comment(name: str) -> None:
    lines = (PRESET_DIR / f"{name}.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"\s*([A-Za-z_]+)\s*=", line)
        if key is None or key.group(1) == "name":
            continue
        above = lines[i - 1].strip()
        # paper: a figure of the paper; chosen: ours, with the reason; fitted: by a
        # calibration command, named in the comment
        assert re.match(r"# (paper|chosen): \S|# fitted \(.*\) by `dualpath calibrate ",
                        above), f"{name}.toml:{i + 1} {line!r}"


# -- overrides and paths ----------------------------------------------------------

def test_overrides_at_all_three_levels() -> None:
    s = load_preset("ds660b-2p4d", [
        "prefill_nodes=4", "prefill_quota_s=0.2", "name=mine",
        "node.snic_gb_s=25", "node.gpus=4",
        "model.layers=30", "model.name=small-model",
        "model.prefill_efficiency=[[300, 0.1], [6000, 0.4]]",
    ])
    assert (s.prefill_nodes, s.prefill_quota_s, s.name) == (4, 0.2, "mine")
    assert (s.node.snic_gb_s, s.node.gpus) == (25.0, 4)
    assert isinstance(s.node.snic_gb_s, float)
    assert (s.model.layers, s.model.name) == (30, "small-model")
    assert s.model.prefill_efficiency == ((300.0, 0.1), (6000.0, 0.4))
    # untouched values keep the file's
    assert s.decode_nodes == 4 and s.model.kv_bytes_per_token == 48_068


def test_snic_factors_default_to_nominal_bandwidth() -> None:
    spec = load_preset("tiny")
    assert spec.snic_factors == ()
    assert [spec.snic_bytes_s_of(n) for n in range(spec.nodes)] == [1e9, 1e9]


def test_snic_factors_from_a_file(tmp_path: Path) -> None:
    spec = load_preset(str(write(tmp_path, with_value("snic_factors", [1, 0.25]))))
    assert spec.snic_factors == (1.0, 0.25)
    assert all(isinstance(f, float) for f in spec.snic_factors)
    assert [spec.snic_bytes_s_of(n) for n in range(2)] == [1e9, 0.25e9]


@pytest.mark.parametrize("text", ["1,0.25", "1, 0.25", "[1, 0.25]", "[1.0,0.25]"])
def test_snic_factors_override_as_list_or_commas(text: str) -> None:
    spec = load_preset("tiny", [f"snic_factors={text}"])
    assert spec.snic_factors == (1.0, 0.25)
    assert spec.snic_bytes_s_of(1) == pytest.approx(0.25e9)


@pytest.mark.parametrize("text", ["", "[]"])
def test_empty_snic_factors_override_means_nominal(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, with_value("snic_factors", [0.5, 0.5]))
    assert load_preset(str(path), [f"snic_factors={text}"]).snic_factors == ()


def test_later_override_wins() -> None:
    assert load_preset("tiny", ["node.gpus=3", "node.gpus=5"]).node.gpus == 5


def test_a_path_to_a_toml_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, BASE, "mine.toml")
    s = load_preset(str(path), ["decode_nodes=2"])
    assert (s.name, s.prefill_nodes, s.decode_nodes, s.node.gpus) == ("base", 1, 2, 2)
    assert s.model.prefill_efficiency == ((100.0, 0.2), (1000.0, 0.5))


def test_a_path_without_a_name_is_named_after_its_stem(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    del data["name"]
    assert load_preset(str(write(tmp_path, data, "my-cluster.toml"))).name == "my-cluster"


def test_an_existing_file_without_toml_suffix_is_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, BASE, "cluster.conf")
    assert load_preset(str(path)).name == "base"


def test_a_shipped_preset_must_have_a_name(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data = copy.deepcopy(BASE)
    del data["name"]
    path = write(tmp_path, data, "nameless.toml")
    monkeypatch.setattr(preset, "PRESET_DIR", tmp_path)
    assert list_presets() == ["nameless"]
    message = config_error("nameless")
    assert "name" in message and str(path) in message


# -- errors: each names the key and the file (or --set) ------------------------------

FILE_ERRORS = [
    # (dotted key, bad value, words the message must contain besides the file)
    ("node.snic_gb_s", -1.0, ["node.snic_gb_s", "> 0"]),
    ("node.gpus", 0, ["node.gpus", "engines"]),
    ("prefill_nodes", 0, ["prefill_nodes", "zero engines"]),
    ("decode_nodes", 0, ["decode_nodes"]),
    ("prefill_group_nodes", 2, ["prefill_group_nodes", "divide"]),
    ("node.snic_gbs", 50.0, ["node.snic_gbs", "unknown key", "node.snic_gb_s"]),
    ("snic_gb_s", 50.0, ["snic_gb_s", "unknown key", "node.snic_gb_s"]),
    ("model._eff_x", 1, ["model._eff_x", "private"]),
    ("prefill_nodes", "two", ["prefill_nodes", "integer", "two"]),
    ("prefill_nodes", 1.5, ["prefill_nodes", "integer"]),
    ("node.snic_gb_s", True, ["node.snic_gb_s", "number", "boolean"]),
    ("model.prefill_efficiency", [[100, 1.5]], ["model.prefill_efficiency", "(0, 1]"]),
    ("model.prefill_efficiency", [100, 0.5], ["model.prefill_efficiency", "pairs"]),
    ("model.layers", -3, ["model.layers", "> 0"]),
    ("node.cnic_kv_share", 1.5, ["node.cnic_kv_share"]),
    ("snic_factors", [1.0, 0.0], ["snic_factors", "node 1", "(0, 1]", "0.0"]),
    ("snic_factors", [1.0, 1.5], ["snic_factors", "node 1", "(0, 1]", "1.5"]),
    ("snic_factors", [1.0], ["snic_factors", "one factor per node", "got 1"]),
    ("snic_factors", "1,0.5", ["snic_factors", "array of numbers", "'1,0.5'"]),
    ("snic_factors", [1.0, "x"], ["snic_factors", "array of numbers"]),
    ("snic_factors", 0.5, ["snic_factors", "array of numbers"]),
    ("node.dram_cache_gb", -8.0, ["node.dram_cache_gb", ">= 0", "-8.0"]),
    ("node.hbm_cache_gb", "lots", ["node.hbm_cache_gb", "number", "lots"]),
    ("compute_factors", [1.0], ["compute_factors", "one factor per node", "got 1"]),
    ("compute_factors", [1.0, 0.0], ["compute_factors", "node 1", "(0, inf)"]),
    ("cache.eviction", "random", ["cache.eviction", "lru, fifo", "random"]),
    ("cache.peer_fetch", 1, ["cache.peer_fetch", "true or false"]),
]


@pytest.mark.parametrize(("key", "value", "words"), FILE_ERRORS)
def test_bad_value_in_a_file_names_key_and_file(tmp_path: Path, key: str, value: Any,
                                                 words: list[str]) -> None:
    path = write(tmp_path, with_value(key, value), "bad-cluster.toml")
    message = config_error(str(path))
    for word in [*words, "bad-cluster.toml"]:
        assert word in message, message


OVERRIDE_ERRORS = [
    # (override, words the message must contain besides "--set")
    ("node.snic_gb_s=-1", ["node.snic_gb_s", "> 0"]),
    ("node.dram_cache_gb=-1", ["node.dram_cache_gb", ">= 0"]),
    ("node.dram_cache_gb=eighty", ["node.dram_cache_gb", "number", "eighty"]),
    ("compute_factors=1,2,3", ["compute_factors", "one factor per node"]),
    ("node.gpus=0", ["node.gpus"]),
    ("prefill_nodes=0", ["prefill_nodes"]),
    ("node.snci_gb_s=25", ["node.snci_gb_s", "unknown key", "node.snic_gb_s"]),
    ("nodes.gpus=8", ["nodes.gpus", "unknown key", "node.gpus"]),
    ("model.layers=thirty", ["model.layers", "integer", "thirty"]),
    ("node.snic_gb_s=inf", ["node.snic_gb_s", "finite"]),
    ("node=3", ["node", "table"]),
    ("model._eff_x=1", ["model._eff_x", "private"]),
    ("node.snic_gb_s", ["node.snic_gb_s", "malformed", "KEY=VALUE"]),
    ("=3", ["malformed"]),
    ("snic_factors=1,0.5", ["snic_factors", "one factor per node", "6", "got 2"]),
    ("snic_factors=1,1,1,1,1,x", ["snic_factors", "comma-separated numbers", "'x'"]),
    ("snic_factors=1,1,1,1,1,2", ["snic_factors", "node 5", "(0, 1]"]),
    ("snic_factors=0.5", ["snic_factors", "array of numbers"]),
]


@pytest.mark.parametrize(("override", "words"), OVERRIDE_ERRORS)
def test_bad_override_names_key_and_set(override: str, words: list[str]) -> None:
    message = config_error("ds660b-2p4d", ["node.gpus=4", override])
    assert message.startswith("--set"), message  # blamed on the override, not the file
    assert "ds660b-2p4d.toml" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(("override", "key"), [
    ("decode_nodes=3", "decode_group_nodes"), ("prefill_nodes=3", "prefill_group_nodes")])
def test_a_file_value_broken_by_an_override_names_both(override: str, key: str) -> None:
    # the file's group size stops dividing the node count once --set changes it
    message = config_error("ds660b-2p4d", ["node.gpus=4", override])
    assert message.startswith(str(PRESET_DIR / "ds660b-2p4d.toml"))
    assert key in message and "divide" in message and f"--set node.gpus=4, {override}" in message


def test_unknown_preset_lists_the_known_ones() -> None:
    message = config_error("ds660b-2p5d")
    assert "ds660b-2p5d" in message and "unknown preset" in message
    assert all(name in message for name in SHIPPED)
    assert "did you mean ds660b-2p4d" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = config_error(str(path))
    assert str(path) in message and "not found" in message


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(toml_text(BASE).replace("prefill_nodes = 1", "prefill_nodes 1"))
    message = config_error(str(path))
    assert "broken.toml" in message and "syntax" in message
    assert "prefill_nodes 1" in message


def test_node_must_be_a_table_in_a_file(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["node"] = 3
    message = config_error(str(write(tmp_path, data, "flat.toml")))
    assert "node" in message and "table" in message and "flat.toml" in message


def test_unknown_table_in_a_file(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["nodes"] = {"gpus": 8}
    message = config_error(str(write(tmp_path, data, "typo.toml")))
    assert "nodes" in message and "unknown table" in message and "typo.toml" in message
    assert "did you mean [node]" in message


@pytest.mark.parametrize("key", ["prefill_nodes", "model.layers", "model.name"])
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    data = copy.deepcopy(BASE)
    *section, leaf = key.split(".")
    del (data[section[0]] if section else data)[leaf]
    message = config_error(str(write(tmp_path, data, "partial.toml")))
    assert key in message and "missing" in message and "partial.toml" in message


def test_bare_word_override_is_a_string() -> None:
    assert load_preset("tiny", ["model.name=my-model"]).model.name == "my-model"
    assert load_preset("tiny", ['model.name="quoted name"']).model.name == "quoted name"
