"""Regenerate the committed gRPC modules of ``nydus_exporter/api/`` from ``proto/``.

A development tool, not part of the package: ``grpcio-tools`` and ``mypy-protobuf`` are
development dependencies only (the ``test`` extra). ``python scripts/gen_proto.py`` runs
``grpc_tools.protoc`` (plus mypy-protobuf's ``protoc-gen-mypy`` / ``protoc-gen-mypy_grpc`` for
the ``.pyi`` stubs) on ``proto/nydus/exporter/v1/exporter.proto`` and writes
``exporter_pb2.py``, ``exporter_pb2.pyi``, ``exporter_pb2_grpc.py`` and
``exporter_pb2_grpc.pyi`` into ``nydus_exporter/api/``. The modules are committed (the Docker
build and ``pip install`` need no protoc); ``tests/service/test_units.py`` regenerates them
into a temporary directory and compares byte for byte, so the proto and the modules cannot
drift.

protoc names modules after the proto path (``nydus.exporter.v1.exporter_pb2``); the one
import that says so is rewritten to this package's path. The proto keeps its standard path
so that reflection and the descriptor pool know it as ``nydus/exporter/v1/exporter.proto``.
"""

from __future__ import annotations

import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_RELATIVE = Path("nydus/exporter/v1/exporter.proto")
GENERATED = ("exporter_pb2.py", "exporter_pb2.pyi", "exporter_pb2_grpc.py", "exporter_pb2_grpc.pyi")
_PROTO_MODULE = "nydus.exporter.v1.exporter_pb2"
_PACKAGE_MODULE = "nydus_exporter.api.exporter_pb2"


class GenerationError(RuntimeError):
    """protoc (or a plugin) failed or is missing."""


def _plugin(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise GenerationError(f"{name} not found (pip install mypy-protobuf)")
    return found


def generate(proto_root: Path, out_dir: Path) -> list[Path]:
    """Generate the four modules from ``proto_root`` into ``out_dir``; returns their paths."""
    from grpc_tools import protoc

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory(prefix="nydus-protoc-") as tmp:
        argv = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            str(proto_root / PROTO_RELATIVE),
        ]
        if protoc.main(argv) != 0:
            raise GenerationError(f"protoc failed on {proto_root / PROTO_RELATIVE}")
        src = Path(tmp) / PROTO_RELATIVE.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = (src / name).read_text()
            text = text.replace("from nydus.exporter.v1 import", "from nydus_exporter.api import")
            text = text.replace(_PROTO_MODULE, _PACKAGE_MODULE)
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


def main() -> int:
    repo = Path(__file__).resolve().parents[1]
    for path in generate(repo / "proto", repo / "nydus_exporter" / "api"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
