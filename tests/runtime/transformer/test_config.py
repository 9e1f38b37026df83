"""TransformerConfig: validation, the named sizes, the fit check."""

from __future__ import annotations

import math

import pytest
import torch

from runtime.transformer.config import (
    FIT_MARGIN,
    SIZES,
    TransformerConfig,
    check_fits,
    config_for,
    device_memory_bytes,
    size_name,
)
from runtime.transformer.weights import weight_shapes

GOOD = {"dim": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn_dim": 176, "max_context": 128}


@pytest.mark.parametrize(("change", "names"), [
    ({"dim": 0}, ["dim", "0"]),
    ({"layers": -1}, ["layers", "-1"]),
    ({"dim": 66}, ["dim", "66", "heads", "4"]),
    ({"kv_heads": 3}, ["heads", "4", "kv_heads", "3"]),
    ({"dim": 12, "heads": 4, "kv_heads": 1}, ["head_dim", "3"]),
    ({"ffn_dim": 2.5}, ["ffn_dim", "2.5"]),
    ({"max_context": True}, ["max_context", "True"]),
    ({"vocab": 0}, ["vocab", "0"]),
    ({"rope_theta": 1.0}, ["rope_theta", "1.0"]),
    ({"norm_eps": 0.0}, ["norm_eps", "0.0"]),
    ({"seed": -3}, ["seed", "-3"]),
    ({"dtype": "int8"}, ["dtype", "int8", "float32"]),
])
def test_bad_values_are_refused_naming_field_and_value(change: dict, names: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        TransformerConfig(**{**GOOD, **change})
    for name in names:
        assert name in str(err.value)


def test_fields_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        TransformerConfig(256, 64, 2, 4, 2, 176, 128)
    config = TransformerConfig(**GOOD)
    with pytest.raises(AttributeError):
        config.dim = 128


def test_derived_sizes() -> None:
    config = TransformerConfig(**GOOD, dtype="bfloat16")
    assert config.vocab == 256 and config.head_dim == 16
    assert config.torch_dtype == torch.bfloat16 and config.itemsize == 2
    assert config.layer_kv_bytes_per_token == 2 * 2 * 16 * 2
    assert config.kv_bytes_per_token == 2 * config.layer_kv_bytes_per_token
    assert config.weight_bytes == 2 * config.params


@pytest.mark.parametrize("size", list(SIZES))
def test_params_count_every_weight(size: str) -> None:
    config = config_for(size)
    assert config.params == sum(math.prod(s) for s in weight_shapes(config).values())


def test_named_sizes() -> None:
    tiny = config_for("tiny")
    assert (tiny.dim, tiny.layers, tiny.heads, tiny.kv_heads, tiny.ffn_dim,
            tiny.max_context) == (64, 2, 4, 2, 176, 65536)
    small = config_for("small")
    assert (small.dim, small.layers, small.heads, small.kv_heads, small.ffn_dim) == \
        (256, 4, 8, 2, 688)
    assert 100e6 <= config_for("base").params <= 150e6
    one_b = config_for("1b")
    assert (one_b.dim, one_b.layers, one_b.heads, one_b.kv_heads, one_b.ffn_dim,
            one_b.max_context) == (2048, 16, 32, 8, 8192, 131072)
    assert 0.9e9 <= one_b.params <= 1.3e9
    assert one_b.weight_bytes == 4 * one_b.params


def test_config_for_overrides_and_errors() -> None:
    config = config_for("tiny", dtype="float16", seed=7, max_context=512)
    assert (config.dtype, config.seed, config.max_context, config.dim) == \
        ("float16", 7, 512, 64)
    with pytest.raises(ValueError, match=r"unknown model size 'huge'.*tiny, small, base, 1b"):
        config_for("huge")
    with pytest.raises(ValueError, match="unknown TransformerConfig field.*'depth'"):
        config_for("tiny", depth=3)
    with pytest.raises(ValueError, match="dtype"):
        config_for("tiny", dtype="float8")


def test_size_name() -> None:
    assert size_name(config_for("1b", dtype="bfloat16", max_context=4096)) == "1b"
    assert size_name(TransformerConfig(**GOOD | {"dim": 32})) == "dim 32 x 2 layers"


def test_check_fits_message() -> None:
    one_b = config_for("1b")
    with pytest.raises(ValueError) as err:
        check_fits(one_b, 2 * 10**9, where="the GPU cuda:0")
    message = str(err.value)
    assert message.startswith("model size '1b' needs 3.9 GB of weights in float32")
    assert message.endswith("but the GPU cuda:0 has 2.0 GB")
    check_fits(one_b, math.ceil(one_b.weight_bytes * FIT_MARGIN), where="x")
    with pytest.raises(ValueError, match="margin"):
        check_fits(one_b, one_b.weight_bytes + 1, where="x")
    check_fits(config_for("tiny"), 10**9, where="a small host")


def test_device_memory_bytes() -> None:
    assert device_memory_bytes("cpu") > 2**28
    assert device_memory_bytes(torch.device("cpu")) == device_memory_bytes("cpu")
    with pytest.raises(ValueError, match="meta"):
        device_memory_bytes("meta")
