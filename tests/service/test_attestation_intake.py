"""The daemon's side of attestation_contents / attestation_chunk ([contract §5.7])."""

from __future__ import annotations

from pathlib import Path

import pytest

from nydus_exporter.api import exporter_pb2 as pb
from nydus_exporter.oci.attestation import Subject
from nydus_exporter.service.attestations import AttestationHeader, AttestationIntake, unattached_warning
from nydus_exporter.service.errors import ProtocolError

PROVENANCE = "https://slsa.dev/provenance/v1"


def header(pid: str = "linux/amd64", predicate: bytes = b"{}", size: int | None = None) -> AttestationHeader:
    return AttestationHeader(
        pid, PROVENANCE, (Subject("x"),), False, predicate, len(predicate) if size is None else size
    )


def test_chunks_complete_the_predicate_and_each_platform_gets_its_own(tmp_path: Path) -> None:
    intake = AttestationIntake(
        tmp_path, [header(predicate=b'{"a":', size=9), header("linux/arm64")], ["linux/amd64", "linux/arm64"]
    )
    intake.chunk(0, 5, b"1")
    intake.chunk(0, 6, b"23}")
    amd64, arm64 = intake.per_platform(["linux/amd64", "linux/arm64"])
    assert [a.load().predicate for a in amd64] == [b'{"a":123}']
    assert [a.load().subjects for a in arm64] == [(Subject("x"),)]
    assert intake.per_platform(["linux/arm64"])[0][0].platform_id == "linux/arm64"  # a platform= selection


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([(0, 0, b"x")], "at offset 0, expected 2"),
        ([(1, 2, b"x")], "for attestation 1, the header has 1"),
        ([(0, 2, b"xxxxxxxxx")], "goes past its predicate_size 4"),
        ([(0, 2, b"x")], "attestation 0 has 3 of its 4 bytes"),
    ],
)
def test_bad_chunks_are_protocol_errors(
    tmp_path: Path, steps: list[tuple[int, int, bytes]], message: str
) -> None:
    intake = AttestationIntake(tmp_path, [header(predicate=b"{}", size=4)], ["linux/amd64"])
    with pytest.raises(ProtocolError, match=message):
        for index, offset, data in steps:
            intake.chunk(index, offset, data)
        intake.per_platform(["linux/amd64"])


def test_an_attestation_of_a_platform_not_in_the_header_is_a_protocol_error(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="names platform 'linux/s390x', not in the header"):
        AttestationIntake(tmp_path, [header("linux/s390x")], ["linux/amd64"])


def test_why_attestations_are_not_attached() -> None:
    content = pb.Attestation(platform_id="p", predicate_type=PROVENANCE, predicate=b"{}", predicate_size=2)
    summary = pb.AttestationSummary(platform_id="p", kind=PROVENANCE)
    both = pb.ExportHeader(attestations=[summary], attestation_contents=[content])
    assert unattached_warning(both, oci_mediatypes=True) is None
    assert "need oci-mediatypes=true" in (unattached_warning(both, oci_mediatypes=False) or "")
    summaries_only = pb.ExportHeader(attestations=[summary])
    assert unattached_warning(summaries_only, oci_mediatypes=True) == (
        "1 attestation(s) not attached: the client sent no content"
    )
    assert unattached_warning(pb.ExportHeader(), oci_mediatypes=False) is None
