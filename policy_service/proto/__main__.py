"""Regenerate the Python modules of ``scheduler.proto``: ``python -m policy_service.proto``."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent.parent
PROTO = "policy_service/proto/scheduler.proto"
GENERATED = ("scheduler_pb2.py", "scheduler_pb2.pyi", "scheduler_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules into ``out_dir``; returns their paths."""
    from grpc_tools import protoc  # a dev dependency: serving needs only the output

    with tempfile.TemporaryDirectory() as tmp:
        # Proto paths relative to the repository root make the generated imports
        # absolute (``from policy_service.proto import scheduler_pb2``).
        code = protoc.main(["protoc", f"-I{ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                            f"--grpc_python_out={tmp}", str(ROOT / PROTO)])
        if code != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copyfile(Path(tmp) / "policy_service" / "proto" / name, target)
            written.append(target)
    return written


def main() -> int:
    for path in generate(PROTO_DIR):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
