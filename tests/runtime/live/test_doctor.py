"""The doctor: a verdict for every transport and honest host facts."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from runtime.live import doctor as doctor_module
from runtime.live.doctor import NETNS_PREFIX, check_transport, doctor, format_doctor
from runtime.live.transport import TRANSPORTS, probe
from runtime.live.transport.pyverbs import rdma_devices


@pytest.fixture(scope="module")
def report() -> dict:
    return doctor()


def test_every_transport_gets_a_verdict_and_shm_works(report: dict) -> None:
    assert set(report["transports"]) == set(TRANSPORTS)
    for name, entry in report["transports"].items():
        assert isinstance(entry["works"], bool), name
        if entry["works"]:
            assert entry["reason"] is None, name
        else:
            assert isinstance(entry["reason"], str) and entry["reason"], name
    assert report["transports"]["shm"] == {"works": True, "reason": None}


def test_a_transport_that_probe_rules_out_does_not_work(report: dict) -> None:
    for name in TRANSPORTS:
        reason = probe(name)
        if reason is not None:
            assert report["transports"][name] == {"works": False, "reason": reason}


def test_a_failed_round_trip_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str) -> None:
        raise RuntimeError("bytes went missing")

    monkeypatch.setattr(doctor_module, "round_trip", broken)
    entry = check_transport("shm")
    assert entry["works"] is False
    assert "bytes went missing" in entry["reason"]


def test_netns_answer_is_honest_and_leaves_nothing_behind(report: dict) -> None:
    netns = report["host"]["netns"]
    assert isinstance(netns["usable"], bool)
    if shutil.which("ip") is None:
        assert not netns["usable"] and "not found" in netns["reason"]
        return
    if os.geteuid() != 0:
        assert not netns["usable"] and "root" in netns["reason"]
        return
    if not netns["usable"]:
        assert netns["reason"]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=False).stdout
    assert f"{NETNS_PREFIX}{os.getpid()}-" not in listed


def test_host_facts(report: dict) -> None:
    host = report["host"]
    assert host["rdma_devices"] == rdma_devices()
    assert host["root"] is (os.geteuid() == 0)
    assert isinstance(host["tc"]["usable"], bool) and isinstance(host["tc"]["netem"], bool)
    assert host["dev_shm_free_bytes"] is None or host["dev_shm_free_bytes"] >= 0
    cuda = host["cuda"]
    assert isinstance(cuda["available"], bool)
    assert cuda["available"] or cuda["reason"]


def test_format_doctor_names_every_transport_and_fact(report: dict) -> None:
    text = format_doctor(report)
    for word in (*TRANSPORTS, "netns", "tc netem", "/dev/shm free", "cuda", "rdma devices"):
        assert word in text
