"""The committed Go stubs (deploy/buildkit/nydusv1) are what the proto generates today.

``deploy/buildkit/generate.sh`` regenerates them into a temporary directory (grpc_tools'
protoc, the Go plugins pinned in deploy/buildkit/go.mod); they must match byte for byte, as
the Python modules must (tests/service/test_proto_generated.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT, require

BUILDKIT = PROJECT_ROOT / "deploy" / "buildkit"


def test_go_stubs_match_the_proto(tmp_path: Path) -> None:
    require(shutil.which("go") is not None, "Go >= 1.26 builds the protoc plugins")
    subprocess.run(
        [str(BUILDKIT / "generate.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    for name in ("exporter.pb.go", "exporter_grpc.pb.go"):
        assert (tmp_path / name).read_bytes() == (BUILDKIT / "nydusv1" / name).read_bytes(), (
            f"deploy/buildkit/nydusv1/{name} is stale: run deploy/buildkit/generate.sh"
        )
