"""Image references ``[registry/]repository[:tag][@digest]`` (distribution reference grammar).

Follows ``github.com/distribution/reference`` ``ParseNormalizedNamed``, the parser BuildKit
applies to an exporter's ``name=`` option::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [domain "/"] path
    domain           := host [":" port]        host: domain-name | IPv4 | "[" IPv6 "]"
    domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    path             := path-component ("/" path-component)*
    path-component   := [a-z0-9]+ (([_.]|__|[-]+) [a-z0-9]+)*
    tag              := [\\w][\\w.-]{0,127}
    digest           := algorithm ":" hex{32,}

Normalisation: the first path element is a registry only if it contains ``.`` or ``:``, is
``localhost`` or has an upper-case letter; otherwise the registry is ``docker.io``
(``index.docker.io`` is an alias), and single-element Docker Hub names get ``library/``.
A bad reference is a bad option: :class:`~nydus_exporter.errors.ConfigError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nydus_exporter.errors import ConfigError, FormatError, excerpt
from nydus_exporter.oci.descriptor import validate_digest

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_DOCKER_HUB_API_HOST = "registry-1.docker.io"  # docker.io is not the API endpoint
_LEGACY_DEFAULT_REGISTRY = "index.docker.io"
_OFFICIAL_REPO_PREFIX = "library/"
_NAME_TOTAL_LENGTH_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[(?:[a-fA-F0-9:]+)\])"
_DOMAIN_RE = re.compile(rf"^{_HOST}(?::[0-9]+)?$")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[_.]|__|[-]+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
_ANCHORED_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference. ``tag`` and ``digest`` may both be set (or neither)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository`` (the fully qualified name, without tag or digest)."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """Host[:port] to talk the distribution API to (Docker Hub's differs from its name)."""
        return _DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag (default latest)."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_default_tag(self) -> Reference:
        """``latest`` when neither a tag nor a digest was given (BuildKit's TagNameOnly)."""
        if self.tag or self.digest:
            return self
        return Reference(self.registry, self.repository, DEFAULT_TAG, None)

    def with_tag(self, tag: str) -> Reference:
        _check_tag(tag, tag)
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        _check_digest(digest, digest)
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse and normalise ``text`` (see the module docstring); raises :class:`ConfigError`."""
    if not text:
        raise ConfigError("image reference is empty")
    if _ANCHORED_IDENTIFIER_RE.match(text):
        raise ConfigError(
            f"invalid reference {excerpt(text)}: cannot use a 64-hex identifier as a repository name"
        )
    remainder, at, digest = text.partition("@")
    if at:
        _check_digest(digest, text)
    # A tag is a ':' after the last '/' (a ':' before it belongs to the registry port).
    name, tag = remainder, None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        name, tag = remainder[:colon], remainder[colon + 1 :]
        _check_tag(tag, text)
    registry, path = _split_domain(name, text)
    if not path or not _PATH_RE.match(path):
        if path.lower() != path:
            raise ConfigError(f"invalid reference {excerpt(text)}: repository name must be lowercase")
        raise ConfigError(f"invalid reference {excerpt(text)}: bad repository name {excerpt(path)}")
    if len(registry) + 1 + len(path) > _NAME_TOTAL_LENGTH_MAX:
        raise ConfigError(
            f"invalid reference {excerpt(text)}: name longer than {_NAME_TOTAL_LENGTH_MAX} characters"
        )
    return Reference(registry, path, tag, digest or None)


def _split_domain(name: str, text: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    looks_like_domain = "." in first or ":" in first or first == "localhost" or first.lower() != first
    if not slash or not looks_like_domain:
        registry, path = DEFAULT_REGISTRY, name
    else:
        if not _DOMAIN_RE.match(first):
            raise ConfigError(f"invalid reference {excerpt(text)}: bad registry {excerpt(first)}")
        registry, path = first, rest
    if registry == _LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = _OFFICIAL_REPO_PREFIX + path
    return registry, path


def _check_tag(tag: str, text: str) -> None:
    if not _TAG_RE.match(tag):
        raise ConfigError(f"invalid reference {excerpt(text)}: bad tag {excerpt(tag)}")


def _check_digest(digest: str, text: str) -> None:
    # The grammar, then what go-digest checks too: a known algorithm and the right length.
    valid = bool(_DIGEST_RE.match(digest))
    if valid:
        try:
            validate_digest(digest)
        except FormatError:
            valid = False
    if not valid:
        raise ConfigError(f"invalid reference {excerpt(text)}: bad digest {excerpt(digest)}")
