"""The one table of output keys: the CLI and the daemon read it alike, once."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from nydus_exporter.errors import ConfigError, UnsupportedError
from nydus_exporter.oci.platform import Platform
from nydus_exporter.pipeline.options import KEYS, DaemonPolicy, parse_output, parse_output_text
from nydus_exporter.rafs import layout

BASE = {"push": "false", "oci-layout": "/srv/out"}


def test_every_key_and_alias_is_named_once() -> None:
    names = [k.name for k in KEYS] + [alias for k in KEYS for alias in k.aliases]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("merge-manifest-mode", "fancy"),
        ("chunk-size", "0x3000"),
        ("chunk-size", "big"),
        ("digester", "md5"),
        ("push", "maybe"),
        ("parallel-layers", "0"),
        ("source-date-epoch", "-1"),
    ],
)
def test_a_bad_value_reads_the_same_in_process_and_over_the_daemon(key: str, value: str) -> None:
    messages = []
    for daemon in (False, True):
        with pytest.raises(ConfigError) as info:
            parse_output({**BASE, key: value}, daemon=daemon)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{key}={value!r}")


def test_chunk_size_limits_are_the_format_s() -> None:
    for size in (layout.MIN_CHUNK_SIZE, layout.MAX_CHUNK_SIZE):
        assert parse_output({**BASE, "chunk-size": hex(size)}).options.pack.chunk_size == size
    for size in (layout.MIN_CHUNK_SIZE // 2, layout.MAX_CHUNK_SIZE * 2):
        with pytest.raises(ConfigError, match="power of two"):
            parse_output({**BASE, "chunk-size": hex(size)})


def test_daemon_policies() -> None:
    refused = [k.name for k in KEYS if k.daemon is DaemonPolicy.REFUSED]
    assert refused == ["chunk-dict"]
    assert parse_output({**BASE, "chunk-dict": "a.io/dict:1"}).options.chunk_dict == "docker://a.io/dict:1"
    with pytest.raises(UnsupportedError, match="chunk-dict"):
        parse_output({**BASE, "chunk-dict": "a.io/dict:1"}, daemon=True)
    fixed = parse_output({**BASE, "threads": "3"}, daemon=True)
    assert fixed.options.pack.threads == parse_output(BASE).options.pack.threads  # the default
    assert any("the daemon chooses threads" in w for w in fixed.warnings)
    assert parse_output({**BASE, "threads": "3"}).options.pack.threads == 3


def test_host_paths_over_the_daemon() -> None:
    with pytest.raises(ConfigError, match="must be an absolute path"):
        parse_output({"push": "false", "oci-layout": "out"}, daemon=True)
    seen: list[tuple[str, Path]] = []
    parse_output(BASE, daemon=True, check_host_path=lambda key, path: seen.append((key, path)))
    assert seen == [("oci-layout", Path("/srv/out"))]
    assert parse_output({"push": "false", "oci-layout": "out"}).options.oci_layout == Path("out")


def test_the_options_survive_the_trip_to_the_worker_as_they_are() -> None:
    parsed = parse_output(
        parse_output_text(
            'name=a.io/x:1,"platform=linux/amd64,linux/arm64/v8",chunk-size=0x200000,'
            "source-date-epoch=1700000000,annotation.org.example=v,oci-mediatypes=true"
        )
    )
    options = parsed.options
    assert options.platforms == (Platform("linux", "amd64"), Platform("linux", "arm64", "v8"))
    assert pickle.loads(pickle.dumps(options)) == options
    assert parsed.normalized["chunk-size"] == "0x200000"
    assert parsed.normalized["source-date-epoch"] == "1700000000"


def test_a_missing_ca_file_is_refused_when_the_keys_are_read(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(
        ConfigError, match=re.escape(f"registry.ca-file='{missing}' cannot be read: No such file")
    ):
        parse_output({"name": "registry.example/app:1", "registry.ca-file": str(missing)})
