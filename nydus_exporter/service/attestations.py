"""The attestations of an Export stream ([contract §5.7]): the header's ``attestation_contents``
and the ``attestation_chunk`` messages that carry the rest of large predicates (SBOMs).

Predicates are spooled to the job directory as they arrive (an SBOM can be tens of MiB), and
the worker reads them one at a time when it makes the statements. Attestations never fail a
build on their own account: the ones the image cannot carry are dropped with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nydus_exporter.api import exporter_pb2 as pb
from nydus_exporter.errors import excerpt
from nydus_exporter.oci.attestation import Attestation, Subject
from nydus_exporter.service.errors import ProtocolError

# BuildKit reads at most 40 MiB of one attestation (exporter/attestation maxAttestationBytes).
MAX_PREDICATE_BYTES = 64 << 20


@dataclass(frozen=True)
class AttestationHeader:
    """An ``Attestation`` message as plain values."""

    platform_id: str
    predicate_type: str
    subjects: tuple[Subject, ...]
    inline_only: bool
    predicate: bytes
    predicate_size: int


def attestation_headers(header: pb.ExportHeader) -> list[AttestationHeader]:
    return [
        AttestationHeader(
            platform_id=a.platform_id,
            predicate_type=a.predicate_type,
            subjects=tuple(Subject(s.name, dict(s.digest)) for s in a.subjects),
            inline_only=a.inline_only,
            predicate=a.predicate,
            predicate_size=a.predicate_size,
        )
        for a in header.attestation_contents
    ]


def unattached_warning(header: pb.ExportHeader, *, oci_mediatypes: bool) -> str | None:
    """Why the header's attestations are not attached (None: they are, or there are none)."""
    if header.attestation_contents and not oci_mediatypes:
        # BuildKit's image exporter refuses them with Docker media types; we never fail a build.
        return (
            f"{len(header.attestation_contents)} attestation(s) not attached: attestation "
            "manifests need oci-mediatypes=true (as with BuildKit's image exporter)"
        )
    if header.attestations and not header.attestation_contents:
        return f"{len(header.attestations)} attestation(s) not attached: the client sent no content"
    return None


@dataclass(frozen=True)
class SpooledAttestation:
    """An attestation whose predicate is in a file of the job directory (what the worker gets)."""

    platform_id: str
    predicate_type: str
    subjects: tuple[Subject, ...]
    inline_only: bool
    path: str

    def load(self) -> Attestation:
        return Attestation(
            self.platform_id,
            self.predicate_type,
            Path(self.path).read_bytes(),
            self.subjects,
            self.inline_only,
        )


class AttestationIntake:
    """Receives the predicates into ``workdir/attestations``; :meth:`per_platform` at commit."""

    def __init__(
        self, workdir: Path, headers: Sequence[AttestationHeader], platform_ids: Sequence[str]
    ) -> None:
        self._headers = tuple(headers)
        self._received: list[int] = []
        self._paths: list[Path] = []
        if not headers:
            return
        directory = workdir / "attestations"
        directory.mkdir(parents=True, exist_ok=True)
        known = set(platform_ids)
        for n, header in enumerate(headers):
            if header.platform_id not in known:
                raise ProtocolError(
                    f"attestation {n} names platform {excerpt(header.platform_id)}, not in the header"
                )
            size = max(header.predicate_size, len(header.predicate))
            if size > MAX_PREDICATE_BYTES:
                raise ProtocolError(f"attestation {n} is larger than {MAX_PREDICATE_BYTES} bytes")
            path = directory / f"{n}.json"
            path.write_bytes(header.predicate)
            self._paths.append(path)
            self._received.append(len(header.predicate))

    def chunk(self, index: int, offset: int, data: bytes) -> None:
        if not 0 <= index < len(self._headers):
            raise ProtocolError(
                f"attestation_chunk for attestation {index}, the header has {len(self._headers)}"
            )
        have = self._received[index]
        if offset != have:
            raise ProtocolError(
                f"attestation_chunk for attestation {index} at offset {offset}, expected {have}"
            )
        if have + len(data) > self._headers[index].predicate_size:
            raise ProtocolError(
                f"attestation_chunk for attestation {index} goes past its predicate_size "
                f"{self._headers[index].predicate_size}"
            )
        with self._paths[index].open("ab") as f:
            f.write(data)
        self._received[index] = have + len(data)

    def per_platform(self, platform_ids: Sequence[str]) -> tuple[tuple[SpooledAttestation, ...], ...]:
        """The attestations of each of ``platform_ids`` (the converted platforms, in order);
        raises when a predicate is missing chunks."""
        for n, header in enumerate(self._headers):
            if self._received[n] < header.predicate_size:
                raise ProtocolError(
                    f"commit: attestation {n} has {self._received[n]} of its {header.predicate_size} bytes"
                )
        by_platform: Mapping[str, list[SpooledAttestation]] = {pid: [] for pid in platform_ids}
        for header, path in zip(self._headers, self._paths, strict=True):
            if header.platform_id in by_platform:
                by_platform[header.platform_id].append(
                    SpooledAttestation(
                        header.platform_id,
                        header.predicate_type,
                        header.subjects,
                        header.inline_only,
                        str(path),
                    )
                )
        return tuple(tuple(by_platform[pid]) for pid in platform_ids)

    def __len__(self) -> int:
        return len(self._headers)
