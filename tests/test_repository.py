"""The repository stands alone: no file points outside it, every doc reference resolves.

* No tracked file names a path of the development machine (its work directory) or of the
  reference checkout next to the repository (its shared docs and fixtures): a user's clone
  has neither, so such a reference is dead and a test reading it would silently skip.
* Every ``[format §n]``, ``[contract §n]``, ``[behaviour §n]`` and ``[pitfalls §n]`` names a
  section that exists in its document under ``docs/`` (docs/README.md defines the forms), so
  renumbering a document cannot leave references pointing at the wrong text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import NYDUS_FIXTURES, PROJECT_ROOT

# Spelled in pieces so that this file does not match itself.
_OUTSIDE = re.compile(
    rb"(?<![\w.\-/])/" + rb"work/"  # an absolute path on the development machine
    rb"|\.\./" + rb"shared\b"  # the sibling directory next to a checkout
    rb"|(?<![\w\-/])" + rb"shared/(?:docs|fixtures)\b"
)
_SKIPPED_DIRS = {".git", ".venv", ".state", ".mypy_cache", ".ruff_cache", ".pytest_cache", "build", "dist"}

DOCS = {
    "format": "docs/rafs-v6-format.md",
    "contract": "docs/exporter-contract.md",
    "behaviour": "docs/behaviour.md",
    "pitfalls": "docs/pitfalls.md",
}
_REFERENCE = re.compile(r"\[(format|contract|behaviour|pitfalls) (§[^\]]*)\]")
_SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
_HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)


@cache
def tracked_files() -> tuple[Path, ...]:
    """The files of the repository: ``git ls-files`` in a checkout, else a walk of the tree."""
    if (PROJECT_ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=PROJECT_ROOT, check=True, capture_output=True
        ).stdout
        paths = [PROJECT_ROOT / p.decode() for p in out.split(b"\0") if p]
    else:
        paths = [
            p
            for p in PROJECT_ROOT.rglob("*")
            if p.is_file()
            and not _SKIPPED_DIRS.intersection(p.relative_to(PROJECT_ROOT).parts)
            and not any(part.endswith(".egg-info") or part == "__pycache__" for part in p.parts)
        ]
    return tuple(sorted(p for p in paths if p.is_file()))


def text_files() -> list[tuple[Path, str]]:
    out = []
    for path in tracked_files():
        try:
            out.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # binary fixtures
    return out


def test_no_file_points_outside_the_repository() -> None:
    offenders = []
    for path in tracked_files():
        data = path.read_bytes()
        for match in _OUTSIDE.finditer(data):
            line = data.count(b"\n", 0, match.start()) + 1
            offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{line}: {match.group().decode()}")
    assert not offenders, "files referring outside the repository:\n" + "\n".join(offenders)


@cache
def sections(doc: str) -> frozenset[str]:
    """Section numbers of ``doc``: its numbered headings, and the numbered list items of a
    heading's own text (``§0.1`` = item 1 of section 0)."""
    text = (PROJECT_ROOT / doc).read_text(encoding="utf-8")
    found = set()
    headings = list(_HEADING.finditer(text))
    for i, heading in enumerate(headings):
        number = heading.group(1)
        found.add(number)
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        for item in re.finditer(r"^(\d+)\. ", text[heading.end() : end], re.MULTILINE):
            found.add(f"{number}.{item.group(1)}")
    return frozenset(found)


def test_documents_exist() -> None:
    for doc in DOCS.values():
        assert (PROJECT_ROOT / doc).is_file(), doc


def test_every_doc_reference_names_an_existing_section() -> None:
    dangling = []
    count = 0
    for path, text in text_files():
        for ref in _REFERENCE.finditer(text):
            doc = DOCS[ref.group(1)]
            for number in _SECTION.findall(ref.group(2)):
                count += 1
                if number not in sections(doc):
                    line = text.count("\n", 0, ref.start()) + 1
                    dangling.append(f"{path.relative_to(PROJECT_ROOT)}:{line}: {ref.group()} ({doc})")
    assert not dangling, "references to sections that do not exist:\n" + "\n".join(dangling)
    if count == 0:
        pytest.fail("no [format §n] reference found: has the syntax of docs/README.md changed?")


def test_golden_fixtures_are_inside_the_repository() -> None:
    assert NYDUS_FIXTURES.resolve().is_relative_to(PROJECT_ROOT / "tests")
    assert (NYDUS_FIXTURES.parent / "README.md").is_file(), "fixtures need their provenance README"
