"""A canary on a live cluster behind a real Envoy, driven by real HTTP clients: a bad
challenger is rolled back by the service itself and no request is lost."""

from __future__ import annotations

import pytest

from experiments.live.envoy import ENVOY_BIN
from experiments.training.canary_trial import TrialConfig, canary_trial, render_trial
from tests.requirements import require_tool


def test_trial_config_refuses_a_share_outside_0_1():
    for share in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="share must lie in"):
            TrialConfig(share=share)


@pytest.mark.slow
def test_a_bad_canary_is_rolled_back_and_loses_no_request(tmp_path):
    require_tool(ENVOY_BIN, "Envoy, unpacked by scripts/bootstrap.sh")
    # The prefill node's storage NIC at half speed: pe_only reads only there, so its
    # sessions wait far longer than the champion's, which reads where queues are short.
    cfg = TrialConfig(champion="dualpath", challenger="pe_only", share=0.2,
                      overrides=("snic_factors=0.5,1,1",))
    payload = canary_trial(cfg, tmp_path)
    status, client = payload["canary_at_end"], payload["client"]
    assert status["state"] == "rolled_back", render_trial(payload)
    assert status["reason"].startswith(("ttft:", "jct:")) and "past the +10% bound" in \
        status["reason"]
    assert client["errors"] == 0 and client["requests"] == client["planned_requests"]
    assert payload["live_requests"] == client["planned_requests"]
    assert sum(payload["rollbacks_metric"].values()) == 1
    events = [e["event"] for e in payload["events"]]
    assert events == ["set", "rolled_back"]
    arms = payload["decisions_by_arm"]
    assert arms.get("canary_before_end", 0) > 0 and "canary_after_end" not in arms
    assert payload["promote"] is None
