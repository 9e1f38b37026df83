"""What scripts/bootstrap.sh leaves installed works together."""

from __future__ import annotations


def test_the_otel_protos_mlflow_needs_survive_xds_protos() -> None:
    """xds-protos ships an older copy of opentelemetry-proto's modules; the bootstrap puts
    the package's own back (MLflow's tracing imports what only it has)."""
    from envoy.service.ext_proc.v3 import external_processor_pb2  # noqa: F401
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData  # noqa: F401
