"""Regenerates protos/ledger_pb2.py, .pyi and ledger_pb2_grpc.py from protos/ledger.proto.

    python -m protos.generate            # rewrites the checked-in files
    python -m protos.generate OUT_DIR    # writes OUT_DIR/protos/... (tests compare it with the checked-in copy)

protoc runs with the repository root as its only include path, on the relative name `protos/ledger.proto`, so
the generated gRPC module says `from protos import ledger_pb2` and imports as part of the `protos` package.
Output depends only on the .proto and the pinned grpcio-tools version.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ("protos/ledger.proto",)
GENERATED = ("protos/ledger_pb2.py", "protos/ledger_pb2.pyi", "protos/ledger_pb2_grpc.py")


def generate(out_root: str | Path = REPO_ROOT) -> list[Path]:
    out_root = Path(out_root)
    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", "-I", ".",
        f"--python_out={out_root}", f"--pyi_out={out_root}", f"--grpc_python_out={out_root}",
        *PROTO_FILES,
    ]  # fmt: skip
    # cwd is the repo root so the include path "." and the file names are the same on every machine.
    subprocess.run(cmd, cwd=REPO_ROOT, check=True)
    return [out_root / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(sys.argv[1] if len(sys.argv) > 1 else REPO_ROOT):
        print(path)
