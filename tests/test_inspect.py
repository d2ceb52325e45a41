"""`inspect` explains the placeholder blob id of a packed layer's own blob."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from nydus_exporter.cli import main as cli
from nydus_exporter.pipeline.pack import pack_layer_to_file
from nydus_exporter.rafs import layout


def _packed_layer(tmp_path: Path) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("etc/motd")
        data = b"hello\n" * 100
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    out = tmp_path / "layer.blob"
    pack_layer_to_file(buf, out)
    return out


def test_json_gives_the_real_id_of_the_placeholder_blob(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = _packed_layer(tmp_path)
    assert cli.main(["inspect", str(blob), "--json"]) == 0
    (own,) = json.loads(capsys.readouterr().out)["bootstrap"]["blobs"]
    assert own["blob_id"] == layout.INLINE_BLOB_ID_PLACEHOLDER
    assert own["placeholder"] is True
    # What a merged bootstrap and the manifest call the blob: its sha256 digest.
    assert own["real_blob_id"] == hashlib.sha256(blob.read_bytes()).hexdigest()


def test_text_output_explains_the_placeholder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = _packed_layer(tmp_path)
    assert cli.main(["inspect", str(blob)]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if "blob_id=xxxxxxxx" in line)
    assert "placeholder" in line
    assert hashlib.sha256(blob.read_bytes()).hexdigest() in line


def test_a_lone_bootstrap_says_the_real_id_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nydus_exporter.rafs.blob_reader import BlobReader

    blob = _packed_layer(tmp_path).read_bytes()
    boot = BlobReader(lambda offset, length: blob[offset : offset + length], len(blob)).bootstrap()
    assert boot is not None
    (tmp_path / "image.boot").write_bytes(boot)
    assert cli.main(["inspect", str(tmp_path / "image.boot"), "--json"]) == 0
    (own,) = json.loads(capsys.readouterr().out)["blobs"]
    assert own["placeholder"] is True
    assert "real_blob_id" not in own
    assert "does not know" in own["note"]
