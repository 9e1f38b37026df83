"""The decode engine's closed-form continuous batching."""

from __future__ import annotations

import pytest

from runtime.cost import CostModel
from runtime.execution.decode import DecodeEngine
from runtime.execution.job import Job
from runtime.request import Request
from tests.builders import make_spec


def _job(rid: int, gen: int, prompt: int = 100) -> Job:
    return Job(Request(rid, rid, 0, hit_tokens=0, appended_tokens=prompt, gen_tokens=gen,
                       arrival_s=0.0))


def test_iteration_time_follows_the_batch_as_members_join_and_leave():
    # 20 ms + 1 ms per sequence: 21 ms alone, 22 ms together.
    spec = make_spec(decode_base_s=0.02, decode_per_seq_s=0.001, decode_per_ctx_token_s=0.0)
    de = DecodeEngine(2, 1, CostModel(spec))
    a, b = _job(1, gen=11), _job(2, gen=6)  # 10 and 5 tokens to decode
    assert de.join(a, 0.0) == pytest.approx(10 * 0.021)
    # B joins at 0.1 s, after 0.1/0.021 iterations of A alone; B finishes first.
    assert de.join(b, 0.1) == pytest.approx(0.1 + 5 * 0.022)
    done, at = de.finish_due(0.1 + 5 * 0.022)
    assert done == [b]
    a_left = 10 - 0.1 / 0.021 - 5
    assert at == pytest.approx(0.21 + a_left * 0.021)
    done, at = de.finish_due(at)
    assert done == [a] and at is None


def test_context_in_the_batch_grows_one_token_per_iteration():
    spec = make_spec(decode_base_s=0.01, decode_per_seq_s=0.0, decode_per_ctx_token_s=1e-5)
    de = DecodeEngine(2, 1, CostModel(spec))
    de.join(_job(1, gen=101, prompt=999), 0.0)  # context 1,000 at the first iteration
    assert de.iter_s == pytest.approx(0.01 + 1e-5 * 1000)
    de.join(_job(2, gen=101, prompt=499), 0.2)  # after 10 iterations: 1,010 + 500
    assert de.iters == pytest.approx(10)
    assert de.iter_s == pytest.approx(0.01 + 1e-5 * 1510)
