"""Image reference parsing: the distribution reference grammar with Docker Hub defaults."""

from __future__ import annotations

import pytest

from nydus_exporter.errors import ConfigError
from nydus_exporter.oci.reference import Reference, parse_reference

DIGEST = "sha256:" + "0123456789abcdef" * 4

VALID = [
    # text, registry, repository, tag, digest
    ("ubuntu", "docker.io", "library/ubuntu", None, None),
    ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
    ("library/ubuntu", "docker.io", "library/ubuntu", None, None),
    ("docker.io/ubuntu", "docker.io", "library/ubuntu", None, None),
    ("index.docker.io/foo/bar", "docker.io", "foo/bar", None, None),
    ("foo/bar", "docker.io", "foo/bar", None, None),
    ("foo/bar/baz:tag", "docker.io", "foo/bar/baz", "tag", None),
    ("localhost/foo:bar", "localhost", "foo", "bar", None),
    ("localhost:5000/foo/bar:v1", "localhost:5000", "foo/bar", "v1", None),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", None, None),
    ("[::1]:5000/foo", "[::1]:5000", "foo", None, None),
    ("example.com/a/b/c:v1.0-rc_1", "example.com", "a/b/c", "v1.0-rc_1", None),
    ("Registry/foo", "Registry", "foo", None, None),  # upper case => a host name
    ("ghcr.io/o/r@" + DIGEST, "ghcr.io", "o/r", None, DIGEST),
    ("ghcr.io/o/r:t@" + DIGEST, "ghcr.io", "o/r", "t", DIGEST),
    ("a.b/x__y/z--w.q", "a.b", "x__y/z--w.q", None, None),
]


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"), VALID, ids=[v[0] for v in VALID]
)
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert ref == Reference(registry, repository, tag, digest)
    assert parse_reference(str(ref)) == ref  # the normalised form parses to itself


INVALID = [
    ("", "empty"),
    ("UPPER", "lowercase"),
    ("docker.io/Ubuntu", "lowercase"),
    ("foo:", "tag"),
    (":tag", "repository"),
    ("foo@sha256:abc", "digest"),
    ("foo@" + DIGEST[:-40], "digest"),
    ("foo@sha256:" + "a" * 32, "digest"),  # grammar allows >= 32 hex; sha256 needs 64
    ("foo@md5:" + "a" * 32, "digest"),
    ("0123456789abcdef" * 4, "64-hex"),
    ("foo//bar", "repository"),
    ("-foo", "repository"),
    ("foo/bar:" + "x" * 129, "tag"),
    ("foo/bar:-x", "tag"),
    ("exa_mple.com/foo", "registry"),
    ("example.com:port/foo", "registry"),
    ("example.com/" + "a" * 250, "longer"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[v[0][:30] or "empty" for v in INVALID])
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_reference(text)


def test_helpers() -> None:
    ref = parse_reference("ubuntu")
    assert ref.name == "docker.io/library/ubuntu"
    assert ref.api_host == "registry-1.docker.io"
    assert ref.object == "latest"
    assert str(ref.with_default_tag()) == "docker.io/library/ubuntu:latest"
    pinned = ref.with_digest(DIGEST)
    assert pinned.object == DIGEST and pinned.with_default_tag() == pinned
    local = parse_reference("localhost:5000/x:t")
    assert local.api_host == "localhost:5000" and local.object == "t"
    assert str(local.with_tag("u")) == "localhost:5000/x:u"
    with pytest.raises(ConfigError):
        local.with_tag("bad tag")
