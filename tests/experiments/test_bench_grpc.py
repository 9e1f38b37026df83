"""``dualpath bench grpc``: its options and the medians and targets it reports (the
measurement itself takes minutes, so only its fast parts run here)."""

from __future__ import annotations

import os

import pytest

from experiments.bench.service import median_rows, pin, targets_met
from experiments.cli import main


@pytest.mark.parametrize("argv, needle", [
    (["--runs", "0"], "--runs"),
    (["--runs", "51"], "--runs"),
    (["--calls", "10"], "--calls"),
])
def test_bad_options_fail_before_any_server_starts(capsys, argv, needle):
    assert main(["bench", "grpc", "--no-pin", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_targets_are_judged_on_the_figures():
    good = {"p99_ms": 1.9, "p99_over_empty_ms": 0.5, "batch_decisions_per_s": 20_000.0}
    assert all(targets_met(good).values())
    bad = {"p99_ms": 2.1, "p99_over_empty_ms": 0.6, "batch_decisions_per_s": 19_999.0}
    assert not any(targets_met(bad).values())


def test_rows_are_the_medians_of_the_runs():
    runs = [[{"measure": "Ping", "calls": 10, "p50_ms": p, "p99_ms": 2 * p, "mean_ms": p}]
            for p in (3.0, 1.0, 2.0, 9.0, 0.5)]
    (row,) = median_rows(runs)
    assert row == {"measure": "Ping", "runs": 5, "calls": 10, "p50_ms": 2.0, "p99_ms": 4.0,
                   "mean_ms": 2.0}


def test_pin_sets_every_thread_of_a_process():
    mine = os.sched_getaffinity(0)
    pin(os.getpid(), mine)  # the process's own cores: changes nothing, fails on nothing
    assert os.sched_getaffinity(0) == mine
