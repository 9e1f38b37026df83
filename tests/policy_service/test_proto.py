"""The generated modules match scheduler.proto: regenerate and compare byte for byte."""

from __future__ import annotations

from tests.requirements import require_module

require_module("grpc_tools", "grpcio-tools, a dev dependency, generates the proto code")

import subprocess  # noqa: E402
import sys  # noqa: E402

from policy_service.proto.__main__ import GENERATED, PROTO_DIR  # noqa: E402


def test_generated_code_is_in_sync_with_the_proto(tmp_path):
    # In a child process: protoc's bundled C++ libraries crash a process that has
    # already loaded NIXL/UCX (the live transport tests load them when nixl is installed).
    subprocess.run([sys.executable, "-c", "import sys, pathlib; from policy_service.proto."
                    "__main__ import generate; generate(pathlib.Path(sys.argv[1]))",
                    str(tmp_path)], check=True)
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
                                          "ReportCacheEvents", "Complete", "GetPolicy", "Ping",
                                          "GetCanary"}
    assert set(services["SchedulerAdmin"]) == {"SwapPolicy", "Rollback", "SetShadow",
                                               "SetCanary", "PromoteCanary"}
