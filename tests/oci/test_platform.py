"""Platform parsing, formatting, normalisation, matching and JSON."""

from __future__ import annotations

import pytest

from nydus_exporter.errors import ConfigError, FormatError
from nydus_exporter.oci.platform import Platform


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm/v7", Platform("linux", "arm", "v7")),
        ("windows/amd64", Platform("windows", "amd64")),
        (" linux/s390x ", Platform("linux", "s390x")),
    ],
)
def test_parse_and_format(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected
    assert Platform.parse(expected.format()) == expected
    assert str(expected) == text.strip()


@pytest.mark.parametrize("text", ["", "linux", "linux/", "/amd64", "linux/arm/v7/x", "linux/am d64"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="platform"):
        Platform.parse(text)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("linux/amd64", "linux/x86_64", True),
        ("linux/amd64", "linux/x86-64", True),
        ("linux/amd64", "linux/amd64/v1", True),
        ("linux/amd64", "linux/amd64/v3", False),
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64", "linux/aarch64", True),
        ("linux/aarch64/8", "linux/arm64", True),
        ("linux/arm", "linux/arm/v7", True),
        ("linux/armhf", "linux/arm/v7", True),
        ("linux/armel", "linux/arm/v6", True),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/amd64", "linux/arm64", False),
        ("linux/amd64", "windows/amd64", False),
        ("Linux/AMD64", "linux/amd64", True),
        ("linux/386", "linux/i386", True),
    ],
)
def test_matches(a: str, b: str, same: bool) -> None:
    assert Platform.parse(a).matches(Platform.parse(b)) is same
    assert Platform.parse(b).matches(Platform.parse(a)) is same


def test_os_features_and_version_in_matching() -> None:
    plain = Platform("linux", "amd64")
    nydus = plain.with_os_features(["nydus.remoteimage.v1"])
    assert nydus.os_features == ("nydus.remoteimage.v1",)
    assert nydus.with_os_features(["nydus.remoteimage.v1"]) == nydus  # no duplicates
    assert nydus.matches(plain)  # features are not part of the identity
    win_a = Platform("windows", "amd64", os_version="10.0.17763.1")
    win_b = Platform("windows", "amd64", os_version="10.0.20348.1")
    assert not win_a.matches(win_b)
    assert win_a.matches(Platform("windows", "amd64"))


def test_json_round_trip_and_order() -> None:
    p = Platform("windows", "amd64", None, "10.0.17763.1", ("win32k",))
    assert list(p.to_json()) == ["architecture", "os", "os.version", "os.features"]
    assert Platform.from_json(p.to_json()) == p
    assert Platform.from_json({"architecture": "arm64", "os": "linux", "variant": ""}) == Platform(
        "linux", "arm64"
    )


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"os": "linux"},
        {"architecture": "amd64", "os": ""},
        {"architecture": "amd64", "os": "linux", "variant": 8},
        {"architecture": "amd64", "os": "linux", "os.features": "x"},
    ],
)
def test_from_json_rejects(obj: object) -> None:
    with pytest.raises(FormatError, match="platform"):
        Platform.from_json(obj)
