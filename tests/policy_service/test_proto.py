"""The generated modules match scheduler.proto: regenerate and compare byte for byte."""

from __future__ import annotations

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) generates the code")

from policy_service.proto.__main__ import GENERATED, PROTO_DIR, generate  # noqa: E402


def test_generated_code_is_in_sync_with_the_proto(tmp_path):
    generate(tmp_path)
    for name in GENERATED:
        fresh = (tmp_path / name).read_text()
        kept = (PROTO_DIR / name).read_text()
        assert fresh == kept, (f"policy_service/proto/{name} is out of date: run "
                               "`python -m policy_service.proto`")


def test_the_api_has_the_documented_methods():
    from policy_service.proto import scheduler_pb2 as pb

    services = {s.name: [m.name for m in s.methods]
                for s in pb.DESCRIPTOR.services_by_name.values()}
    assert pb.DESCRIPTOR.package == "dualpath.v1"
    assert set(services["Scheduler"]) == {"Schedule", "ScheduleBatch", "ReportEngineState",
                                          "Complete", "GetPolicy", "Ping"}
    assert set(services["SchedulerAdmin"]) == {"SwapPolicy", "Rollback", "SetShadow"}
