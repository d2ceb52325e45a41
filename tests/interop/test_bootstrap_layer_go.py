"""The bootstrap layer's tar is byte-identical to the one the real converter writes with Go's
archive/tar (nydus-snapshotter ``packToTar``: a directory header, then each file with mode
0444), so its ``diff_id`` matches the real toolchain's. The reference is a small Go program
(tests/interop/gotar/main.go, standard library only) built with the machine's Go toolchain.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import shutil
import subprocess
from pathlib import Path

from nydus_exporter.oci.bootstrap_layer import write_bootstrap_layer
from tests.conftest import require

GOTAR = Path(__file__).with_name("gotar") / "main.go"


def go_tar(tmp_path: Path, files: list[tuple[str, bytes]]) -> bytes:
    go = shutil.which("go")
    require(go is not None, "needs the Go toolchain (go) for the archive/tar reference")
    assert go is not None
    exe = tmp_path / "gotar"
    subprocess.run([go, "build", "-o", str(exe), str(GOTAR)], check=True, capture_output=True, cwd=tmp_path)
    args = []
    for i, (name, data) in enumerate(files):
        path = tmp_path / f"file{i}"
        path.write_bytes(data)
        args.append(f"{name}={path}")
    return subprocess.run([str(exe), *args], check=True, capture_output=True).stdout


def test_tar_bytes_equal_go_archive_tar(tmp_path: Path) -> None:
    rng = random.Random(5)
    bootstrap = rng.randbytes(3 * 4096 + 100)  # not a block multiple: padding included
    metas = [("a" * 64, rng.randbytes(8192)), ("sha256:" + "b" * 64, rng.randbytes(4096))]
    out = io.BytesIO()
    info = write_bootstrap_layer(out, bootstrap, metas)
    ours = gzip.decompress(out.getvalue())
    reference = go_tar(
        tmp_path,
        [
            ("image/image.boot", bootstrap),
            (f"image/{'a' * 64}.blob.meta", metas[0][1]),
            (f"image/{'b' * 64}.blob.meta", metas[1][1]),
        ],
    )
    assert ours == reference
    assert info.diff_id == "sha256:" + hashlib.sha256(reference).hexdigest()
