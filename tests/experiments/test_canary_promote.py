"""The promotion rule on a canary's window, and ``dualpath canary`` / ``dualpath promote
--canary`` against a real server."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from experiments.cli import main
from experiments.evaluation.stats import MIN_JCT_GAIN, canary_promote_decision
from policy_service.proto import scheduler_pb2 as pb
from policy_service.server import ServeConfig
from tests.policy_service.conftest import TOKEN, Client, RunningServer
from tests.policy_service.test_canary import Traffic


def _sample(mean: float, sd: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [max(0.01, rng.gauss(mean, sd)) for _ in range(n)]


TTFT = _sample(0.3, 0.03, 400, 9)


def test_a_clearly_better_challenger_passes():
    ok, reason = canary_promote_decision(_sample(2.0, 0.2, 200, 1), _sample(2.5, 0.2, 400, 2),
                                         TTFT[:200], TTFT[200:])
    assert ok, reason
    gain = re.match(r"promoted: JCT improvement ([\d.]+)% ± ([\d.]+)%", reason)
    assert gain is not None and 15 < float(gain[1]) < 25 and float(gain[2]) < 5
    assert "(95% CI, 200 vs 400 requests)" in reason


def test_a_worse_challenger_is_refused_naming_each_failed_part():
    ok, reason = canary_promote_decision(_sample(2.6, 0.2, 200, 1), _sample(2.5, 0.2, 400, 2),
                                         [t * 1.5 for t in TTFT[:200]], TTFT[200:])
    assert not ok
    assert f"is below the {100 * MIN_JCT_GAIN:.2f}% bar" in reason
    assert "does not exclude zero" in reason
    assert "p99 TTFT regresses by" in reason


def test_a_noisy_gain_is_refused_for_its_interval_only():
    # A 10% mean gain on a few very spread requests: the interval spans zero.
    ok, reason = canary_promote_decision(_sample(2.25, 1.5, 8, 3), _sample(2.5, 1.5, 8, 4),
                                         TTFT[:8], TTFT[:8])
    assert not ok
    assert reason.startswith("refused: the 95% interval [")  # the only failed part
    assert reason.count("; ") == 0 and "does not exclude zero" in reason


def test_the_rule_needs_values_and_a_positive_champion_mean():
    with pytest.raises(ValueError, match="champion JCT: no values"):
        canary_promote_decision([1.0], [], [0.1], [0.1])
    with pytest.raises(ValueError, match="champion's mean"):
        canary_promote_decision([1.0, 2.0], [0.0, 0.0], [0.1], [0.1])
    ok, reason = canary_promote_decision([1.0], [2.0, 2.1], [0.1], [0.1])
    assert not ok and "inf%" in reason  # one value: no interval


# -- the command line against a real server ------------------------------------------------


@pytest.fixture
def service(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    server = RunningServer(ServeConfig(port=0, db=f"sqlite:///{tmp_path / 'decisions.db'}",
                                       admin_token_file=str(token), log_flush_s=0.05))
    yield server, str(token)
    server.stop()


def _run(capsys: Any, *argv: str) -> dict[str, Any]:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _better_canary(version: str, rng: random.Random) -> tuple[float, float]:
    """The canary's JCT 20% shorter, the same TTFT."""
    ttft = 0.3 * rng.uniform(0.9, 1.1)
    return ttft, (2.0 if ":least_tokens" in version else 2.5) * rng.uniform(0.9, 1.1)


def _slightly_worse_canary(version: str, rng: random.Random) -> tuple[float, float]:
    ttft = 0.3 * rng.uniform(0.9, 1.1)
    return ttft, (2.55 if ":least_tokens" in version else 2.5) * rng.uniform(0.9, 1.1)


def test_promote_canary_promotes_a_better_challenger(service, capsys):
    server, token = service
    target = server.target
    set_ = _run(capsys, "canary", "set", "--target", target, "--spec", "least_tokens",
                "--share", "0.5", "--admin-token-file", token)
    assert set_["state"] == "running" and set_["challenger"]["spec"] == "least_tokens"
    traffic = Traffic(target, "cli", outcome=_better_canary)
    for _ in range(300):
        traffic.one()
    seen = _run(capsys, "canary", "status", "--target", target)
    assert seen["state"] == "running" and seen["challenger"]["completions"] > 50
    assert "ttft_s" not in seen["challenger"]  # samples only when asked
    payload = _run(capsys, "promote", "--canary", target, "--admin-token-file", token)
    assert payload["promoted"] and payload["state"] == "promoted", payload
    assert payload["reason"].startswith("promoted: JCT improvement")
    info = Client(target).GetPolicy(pb.GetPolicyRequest(), timeout=5)
    assert (info.spec, info.previous_spec) == ("least_tokens", "dualpath")
    assert main(["canary", "status", "--target", target]) == 0
    assert "canary promoted" in capsys.readouterr().out
    traffic.close()


def test_promote_canary_refuses_a_worse_challenger_and_leaves_it_running(service, capsys):
    server, token = service
    target = server.target
    _run(capsys, "canary", "set", "--target", target, "--spec", "least_tokens", "--share",
         "0.5", "--admin-token-file", token)
    traffic = Traffic(target, "cli", outcome=_slightly_worse_canary)
    for _ in range(200):
        traffic.one()
    payload = _run(capsys, "promote", "--canary", target, "--admin-token-file", token)
    assert not payload["promoted"]
    assert payload["reason"].startswith("refused: mean JCT improvement -")
    assert _run(capsys, "canary", "status", "--target", target)["state"] == "running"
    cleared = _run(capsys, "canary", "clear", "--target", target, "--admin-token-file", token)
    assert cleared["state"] == "ended"
    # Nothing is running now: promote says so and fails.
    assert main(["promote", "--canary", target, "--admin-token-file", token]) == 2
    assert "no canary is running" in capsys.readouterr().err
    traffic.close()


def test_promote_takes_exactly_one_source_and_the_canary_needs_a_token(service, capsys):
    server, _token = service
    with pytest.raises(SystemExit):
        main(["promote", "--scenario", "paper-offline", "--canary", server.target])
    with pytest.raises(SystemExit):
        main(["promote"])
    assert main(["promote", "--canary", server.target]) == 2
    assert "--admin-token-file is required" in capsys.readouterr().err
    assert main(["canary", "set", "--target", server.target, "--spec", "pe_only", "--share",
                 "1.5", "--admin-token-file", _token]) == 2
    assert "share must lie in the open interval (0, 1), got 1.5" in capsys.readouterr().err
