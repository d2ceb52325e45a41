"""``nydus-exporter check``: verify a Nydus image end to end.

What is checked, in this order (every problem found is collected; a part that cannot be read
stops only the checks that depend on it):

1. manifest and config against their descriptors (done while opening, :mod:`.nydus_image_reader`),
   the manifest shape ([format §6.1, §6.2]: media types, ``nydus-blob`` / ``nydus-bootstrap`` /
   ``nydus-fs-version`` annotations);
2. every blob layer: the sha256 and size of the whole blob against its descriptor, the ToC
   and every ToC section digest ([format §3.7]), the ci header and array ([format §3.3, §3.4]), every chunk
   decompressed to its size and compared with its ``blob.digest`` entry ([format §3.5]), the embedded
   per-layer bootstrap parsed;
3. the bootstrap layer: its digest and size, ``image/image.boot`` present, one
   ``image/<hex>.blob.meta`` per blob of the merged blob table, equal to the blob's own ci
   data ([format §3.10]), no stray ones;
4. the config: ``rootfs.diff_ids`` = blob digests + the bootstrap tar's diff_id, the Nydus
   history entry last ([format §6.3]);
5. the merged bootstrap: it parses; its blob table names blob layers with chunks, each once;
   each entry equals what the blob itself says (its embedded bootstrap's entry with the layer
   digest as id, [format §5.3], and its ci header); the device table matches the blob table ([format §2.4]);
   every chunk an inode references is the chunk at that ci index of that blob, with the same
   offsets, sizes and digest, and the chunks of a file cover exactly its size ([format §2.11]);
6. with ``source=``: the merged tree equals the tree the source's layers give when applied
   with OCI overlay semantics. That reference is computed here from the source tars with the
   stdlib :mod:`tarfile` (never with the project's layer reader or merge), so both sides are
   independent: names, types, permission bits, uid/gid, sizes, sha256 of every regular file
   (the Nydus side read chunk by chunk through the blobs), symlink targets, xattrs, device
   numbers, mtime seconds and nanoseconds, and hardlink groups.

The reference tree and the comparison are in :mod:`.reference_tree`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nydus_exporter.errors import ExporterError, FormatError
from nydus_exporter.image.reader import FileContent, NydusImage, open_image
from nydus_exporter.oci import mediatypes as mt
from nydus_exporter.oci.descriptor import Descriptor
from nydus_exporter.oci.nydus_image import BOOTSTRAP_HISTORY_ENTRY
from nydus_exporter.oci.platform import Platform
from nydus_exporter.pipeline.sources import SourceImage, open_source
from nydus_exporter.rafs import codecs, layout
from nydus_exporter.rafs.blob_reader import BlobReader
from nydus_exporter.rafs.bootstrap_reader import Bootstrap, read_bootstrap
from nydus_exporter.rafs.chunkinfo import BlobMetaHeader, ChunkInfo
from nydus_exporter.rafs.model import BlobInfo, Inode, walk
from nydus_exporter.tools.reference_tree import (
    UNREADABLE,
    Tree,
    TreeEntry,
    apply_layers,
    diff_trees,
    kind_of,
    show_path,
)

if TYPE_CHECKING:
    from nydus_exporter.image.registry import RegistryOptions

_HASH_STEP = 1 << 20
_MAX_PER_BLOB = 20  # chunk problems listed per blob before summarising
_MAX_TREE_PROBLEMS = 200


@dataclass
class CheckReport:
    """The outcome of :func:`check_image`. ``ok`` when ``problems`` is empty; ``notes`` are
    facts worth knowing that are not errors."""

    image: str
    platform: str | None = None
    manifest: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "platform": self.platform,
            "manifest": self.manifest,
            "ok": self.ok,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "counts": dict(self.counts),
        }


@dataclass
class _BlobFacts:
    """What a blob says about itself, gathered while it is verified."""

    layer: Descriptor
    readable: bool = False  # the ToC parsed
    header: BlobMetaHeader | None = None
    infos: list[ChunkInfo] = field(default_factory=list)
    digests: list[bytes] | None = None
    blob_meta: bytes | None = None
    image_blob_usize: int | None = None
    embedded: BlobInfo | None = None  # blob 0 of the embedded per-layer bootstrap

    @property
    def has_chunks(self) -> bool:
        return bool(self.infos)


def check_image(
    spec: str,
    *,
    platform: Platform | str | None = None,
    source: str | None = None,
    source_config: Path | None = None,
    whiteouts: str = "oci",
    workdir: Path | None = None,
    registry: RegistryOptions | None = None,
) -> CheckReport:
    """Verify the Nydus image ``spec`` (``oci:DIR[:TAG]`` or ``docker://REF``); see the
    module docstring. ``registry``: how to reach a ``docker://`` image.

    Problems with the image end up in the report. A ``spec`` or ``source`` that cannot be
    opened at all raises (:class:`ConfigError` / :class:`FormatError` /
    :class:`~nydus_exporter.errors.RegistryError`). Blobs of a registry image are downloaded
    once each (streamed, into a temporary directory under ``workdir`` removed at the end):
    every byte is read anyway, several times.
    """
    report = CheckReport(image=spec)
    try:
        image = open_image(spec, platform, registry=registry)
    except FormatError as exc:
        report.problems.append(str(exc))
        return report
    with image:
        image.spool_if_remote(workdir)
        report.platform = str(image.platform) if image.platform else None
        report.manifest = image.manifest_descriptor.digest
        _Checker(image, report).run(source, source_config, whiteouts, workdir)
    return report


class _Checker:
    def __init__(self, image: NydusImage, report: CheckReport) -> None:
        self.image = image
        self.report = report
        self.facts: dict[str, _BlobFacts] = {}
        self.boot: Bootstrap | None = None
        self.bootstrap_diff_id: str | None = None

    def problem(self, message: str) -> None:
        self.report.problems.append(message)

    def note(self, message: str) -> None:
        self.report.notes.append(message)

    def run(
        self, source: str | None, source_config: Path | None, whiteouts: str, workdir: Path | None
    ) -> None:
        self.check_manifest()
        for layer in self.image.blob_layers:
            self.facts.setdefault(layer.digest, self.check_blob(layer))
        self.check_bootstrap_layer()
        self.check_config()
        self.check_merged_bootstrap()
        if source is not None:
            if self.boot is None:
                self.problem("--source: not compared, the merged bootstrap is unreadable")
            else:
                self.compare_source(source, source_config, whiteouts, workdir)

    # -- manifest and config ----------------------------------------------------------------

    def check_manifest(self) -> None:
        manifest = self.image.manifest
        oci = manifest.media_type == mt.MEDIA_TYPE_IMAGE_MANIFEST
        if not mt.is_config(manifest.config.media_type):
            self.problem(f"manifest config has media type {manifest.config.media_type}, not an image config")
        for layer in self.image.blob_layers:
            if layer.media_type != mt.MEDIA_TYPE_NYDUS_BLOB:
                self.problem(
                    f"blob layer {layer.digest} has media type {layer.media_type}, "
                    f"not {mt.MEDIA_TYPE_NYDUS_BLOB}"
                )
            if layer.annotation(mt.ANNOTATION_NYDUS_BLOB) != "true":
                self.problem(
                    f'blob layer {layer.digest} lacks the annotation {mt.ANNOTATION_NYDUS_BLOB}: "true"'
                )
        boot = self.image.bootstrap_layer
        want = mt.gzip_layer_media_type(oci=oci)
        if boot.media_type != want:
            self.problem(
                f"bootstrap layer {boot.digest} has media type {boot.media_type}, "
                f"expected {want} in this manifest"
            )
        fs_version = boot.annotation(mt.ANNOTATION_NYDUS_FS_VERSION)
        if fs_version != mt.NYDUS_FS_VERSION:
            self.problem(f"bootstrap layer {mt.ANNOTATION_NYDUS_FS_VERSION} is {fs_version!r}, expected '6'")
        self.report.count("layers", len(manifest.layers))

    def check_config(self) -> None:
        config = self.image.config
        rootfs = config.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list):
            self.problem("config has no rootfs.diff_ids list")
            return
        if isinstance(rootfs, dict) and rootfs.get("type") != "layers":
            self.problem(f"config rootfs.type is {rootfs.get('type')!r}, expected 'layers'")
        expected: list[tuple[str | None, str]] = [
            (d.digest, f"blob layer {i} digest") for i, d in enumerate(self.image.blob_layers)
        ]
        expected.append((self.bootstrap_diff_id, "the bootstrap layer's uncompressed tar digest"))
        if len(diff_ids) != len(expected):
            self.problem(
                f"config rootfs.diff_ids has {len(diff_ids)} entries, the manifest has {len(expected)} layers"
            )
        for i, (have, (want, what)) in enumerate(zip(diff_ids, expected, strict=False)):
            if want is not None and have != want:
                self.problem(f"config rootfs.diff_ids[{i}] is {have}, expected {want} ({what})")
        history = config.get("history")
        if not isinstance(history, list) or not history:
            self.problem("config has no history (the Nydus bootstrap entry is missing)")
            return
        last = history[-1]
        if not isinstance(last, dict) or any(last.get(k) != v for k, v in BOOTSTRAP_HISTORY_ENTRY.items()):
            self.problem(
                f"config history ends with {last!r}, "
                f"not the Nydus bootstrap entry {dict(BOOTSTRAP_HISTORY_ENTRY)!r}"
            )
        layered = [h for h in history if isinstance(h, dict) and not h.get("empty_layer")]
        if len(layered) != len(diff_ids):
            # History is optional in image configs and often incomplete in the source; the
            # converter appends its entry whatever it finds ([format §6.3]), so this is no defect.
            self.note(
                f"config history has {len(layered)} non-empty-layer entries for {len(diff_ids)} diff_ids"
            )

    # -- blob layers --------------------------------------------------------------------------

    def check_blob(self, layer: Descriptor) -> _BlobFacts:
        facts = _BlobFacts(layer)
        name = f"blob layer {layer.digest}"
        try:
            size = self.image.blob_size(layer)
        except FormatError as exc:
            self.problem(f"{name}: {exc}")
            return facts
        if size != layer.size:
            self.problem(f"{name}: the blob has {size} bytes, its descriptor says {layer.size}")
        reader = self.image.blob_reader(layer)
        actual = reader.file_digest()
        if actual != layer.digest:
            self.problem(f"{name}: the blob's sha256 is {actual}, not its descriptor digest")
        self.report.count("blobs")
        self.report.count("blob_bytes", size)
        try:
            reader.toc()
        except FormatError as exc:
            self.problem(f"{name}: ToC: {exc}")
            return facts
        facts.readable = True
        self._check_sections(reader, layer, name)
        self._embedded(reader, facts, name)
        try:
            infos = reader.chunk_infos()
            if infos:
                facts.header = reader.meta_header()
                facts.blob_meta = reader.blob_meta_file()
            facts.digests = reader.chunk_digests()
        except FormatError as exc:
            self.problem(f"{name}: chunk info: {exc}")
            return facts
        facts.infos = infos
        section = reader.section(layout.TOC_NAME_IMAGE_BLOB)
        facts.image_blob_usize = section.uncompressed_size if section is not None else None
        if infos and facts.digests is None:
            self.problem(f"{name}: the blob has {len(infos)} chunks but no blob.digest section")
        self._check_chunks(reader, facts, name)
        return facts

    def _check_sections(self, reader: BlobReader, layer: Descriptor, name: str) -> None:
        """Every ToC section against its digest ([format §3.7]); the chunk data one covers the
        chunks and H(image.blob)."""
        for entry in reader.toc():
            section = reader.section(entry.name)
            assert section is not None
            label = entry.name.decode(errors="replace")
            try:
                if entry.name == layout.TOC_NAME_IMAGE_BOOT:
                    reader.bootstrap()  # checks its own digest
                    continue
                if entry.name == layout.TOC_NAME_BLOB_META:
                    actual = hashlib.sha256(reader.ci_data()).digest()
                elif entry.name == layout.TOC_NAME_IMAGE_BLOB:
                    actual = self._hash_range(
                        layer, section.compressed_offset, section.compressed_size + layout.TAR_BLOCK_SIZE
                    )
                else:
                    actual = self._hash_range(layer, section.compressed_offset, section.compressed_size)
            except FormatError as exc:
                self.problem(f"{name}: ToC section {label}: {exc}")
                continue
            if actual != entry.uncompressed_digest:
                self.problem(f"{name}: ToC section {label} does not match its sha256 in the ToC")

    def _hash_range(self, layer: Descriptor, offset: int, length: int) -> bytes:
        h = hashlib.sha256()
        end = offset + length
        while offset < end:
            step = min(_HASH_STEP, end - offset)
            data = self.image.repository.read_at(layer.digest, offset, step)
            if len(data) != step:
                raise FormatError(f"short read at {offset}: the blob ends early")
            h.update(data)
            offset += step
        return h.digest()

    def _embedded(self, reader: BlobReader, facts: _BlobFacts, name: str) -> None:
        try:
            data = reader.bootstrap()
            if data is None:
                self.problem(f"{name}: no embedded bootstrap (image.boot)")
                return
            boot = read_bootstrap(data)
        except FormatError as exc:
            self.problem(f"{name}: embedded bootstrap: {exc}")
            return
        # Its own blob carries the inline placeholder id; the others are chunk-dictionary blobs
        # (chunk-dedup), which must be blob layers of this image (checked with the merge).
        own = [b for b in boot.blobs if b.blob_id == layout.INLINE_BLOB_ID_PLACEHOLDER]
        if len(own) > 1:
            self.problem(f"{name}: the embedded bootstrap names {len(own)} blobs with the placeholder id")
        facts.embedded = own[0] if own else None
        layer_ids = {layer.digest.removeprefix("sha256:") for layer in self.image.blob_layers}
        for other in boot.blobs:
            if other.blob_id != layout.INLINE_BLOB_ID_PLACEHOLDER and other.blob_id not in layer_ids:
                self.problem(f"{name}: the embedded bootstrap references blob {other.blob_id}, not a layer")

    def _check_chunks(self, reader: BlobReader, facts: _BlobFacts, name: str) -> None:
        digester = None
        if facts.embedded is not None:
            try:
                digester = codecs.digester_by_id(facts.embedded.digester)
            except FormatError as exc:
                self.problem(f"{name}: {exc}")
        found = 0
        for info in facts.infos:
            where = (
                f"{name}: chunk {info.index} (compressed {info.compressed_offset}+{info.compressed_size}, "
                f"uncompressed {info.uncompressed_offset}+{info.uncompressed_size})"
            )
            try:
                data = reader.read_chunk(info)
            except FormatError as exc:
                found += 1
                if found <= _MAX_PER_BLOB:
                    self.problem(f"{where}: {exc}")
                continue
            self.report.count("chunks")
            if digester is None or facts.digests is None:
                continue
            if digester.digest(data) != facts.digests[info.index]:
                found += 1
                if found <= _MAX_PER_BLOB:
                    self.problem(f"{where} does not match its {digester.name} digest in blob.digest")
        if found > _MAX_PER_BLOB:
            self.problem(f"{name}: {found - _MAX_PER_BLOB} more bad chunks")

    # -- bootstrap layer ----------------------------------------------------------------------

    def check_bootstrap_layer(self) -> None:
        layer = self.image.bootstrap_layer
        name = f"bootstrap layer {layer.digest}"
        try:
            contents = self.image.bootstrap_layer_contents()
        except FormatError as exc:
            self.problem(f"{name}: {exc}")
            return
        self.bootstrap_diff_id = contents.diff_id
        if contents.size != layer.size:
            self.problem(f"{name}: the layer has {contents.size} bytes, its descriptor says {layer.size}")
        if contents.digest != layer.digest:
            self.problem(f"{name}: the layer's sha256 is {contents.digest}, not its descriptor digest")
        try:
            self.boot = read_bootstrap(contents.bootstrap)
        except FormatError as exc:
            self.problem(f"merged bootstrap (image/image.boot): {exc}")
            return
        table = {b.blob_id for b in self.boot.blobs}
        by_hex = {d.hex: self.facts.get(d.digest) for d in self.image.blob_layers}
        for hex_id in sorted(table):
            facts = by_hex.get(hex_id)
            if facts is None or not facts.has_chunks:
                continue  # reported with the blob table
            meta = contents.blob_metas.get(hex_id)
            if meta is None:
                self.problem(f"{name}: no image/{hex_id}.blob.meta for blob layer sha256:{hex_id}")
            elif facts.blob_meta is not None and meta != facts.blob_meta:
                self.problem(
                    f"{name}: image/{hex_id}.blob.meta differs from the ci data "
                    f"of blob layer sha256:{hex_id} ([format §3.10])"
                )
        for hex_id in sorted(set(contents.blob_metas) - table):
            self.problem(f"{name}: image/{hex_id}.blob.meta names a blob the merged bootstrap does not use")

    # -- merged bootstrap ---------------------------------------------------------------------

    def check_merged_bootstrap(self) -> None:
        boot = self.boot
        if boot is None:
            return
        self.report.count("inodes", len(boot.records))
        chunked = {d.hex: f for d in self.image.blob_layers if (f := self.facts.get(d.digest)) is not None}
        seen: set[str] = set()
        for i, blob in enumerate(boot.blobs):
            where = f"merged bootstrap blob table entry {i} ({blob.blob_id})"
            if blob.blob_id in seen:
                self.problem(f"{where}: names the same blob twice")
            seen.add(blob.blob_id)
            facts = chunked.get(blob.blob_id)
            if facts is None:
                self.problem(f"{where}: no blob layer of the image has digest sha256:{blob.blob_id}")
                continue
            if not facts.readable:
                continue
            if not facts.has_chunks:
                self.problem(f"{where}: blob layer sha256:{blob.blob_id} has no chunks")
                continue
            self._compare_blob_entry(where, blob, facts)
            if i < len(boot.devices):
                device = boot.devices[i]
                if device.blob_id != blob.blob_id:
                    self.problem(f"{where}: device slot {i} names {device.blob_id!r}")
                if device.blocks != blob.uncompressed_size // boot.block_size:
                    self.problem(f"{where}: device slot {i} has {device.blocks} blocks, expected "
                                 f"{blob.uncompressed_size // boot.block_size}")  # fmt: skip
        for hex_id, facts in chunked.items():
            if facts.has_chunks and hex_id not in seen:
                self.report.notes.append(
                    f"blob layer sha256:{hex_id} has chunks the merged bootstrap does not use "
                    "(its files are all deleted or replaced by upper layers)"
                )
        self._check_inode_chunks(boot)

    def _compare_blob_entry(self, where: str, blob: BlobInfo, facts: _BlobFacts) -> None:
        header = facts.header
        assert header is not None
        checks = [
            ("chunk_count", blob.chunk_count, len(facts.infos)),
            ("chunk_count (ci header)", blob.chunk_count, header.ci_entries),
            ("ci_compressor", blob.ci_compressor, header.ci_compressor),
            ("ci_offset", blob.ci_offset, header.ci_offset),
            ("ci_compressed_size", blob.ci_compressed_size, header.ci_compressed_size),
            ("ci_uncompressed_size", blob.ci_uncompressed_size, header.ci_uncompressed_size),
        ]
        if facts.image_blob_usize is not None:
            checks.append(("uncompressed_size", blob.uncompressed_size, facts.image_blob_usize))
        for label, have, want in checks:
            if have != want:
                self.problem(f"{where}: {label} is {have}, the blob says {want}")
        if facts.embedded is not None:
            expected = dataclasses.replace(
                facts.embedded,
                blob_id=blob.blob_id,
                features=facts.embedded.features & ~layout.BLOB_FEATURE_INLINED_FS_META,
            )
            for f in dataclasses.fields(BlobInfo):
                have, want = getattr(blob, f.name), getattr(expected, f.name)
                if have != want and f.name not in {c[0] for c in checks}:
                    self.problem(
                        f"{where}: {f.name} is {have!r}, "
                        f"the blob's own bootstrap says {want!r} ([format §5.3])"
                    )

    def _check_inode_chunks(self, boot: Bootstrap) -> None:
        facts_by_index: list[_BlobFacts | None] = []
        for blob in boot.blobs:
            found = None
            for f in self.facts.values():
                if f.layer.hex == blob.blob_id:
                    found = f
            facts_by_index.append(found)
        done: set[int] = set()
        problems = 0
        for path, node in walk(boot.root):
            inode = node.inode
            if not inode.is_reg or id(inode) in done:
                continue
            done.add(id(inode))
            self.report.count("files")
            for message in self._file_chunk_problems(boot, inode, facts_by_index):
                problems += 1
                if problems <= _MAX_TREE_PROBLEMS:
                    self.problem(f"merged bootstrap {show_path(path)}: {message}")
        if problems > _MAX_TREE_PROBLEMS:
            self.problem(f"merged bootstrap: {problems - _MAX_TREE_PROBLEMS} more chunk reference problems")

    def _file_chunk_problems(
        self, boot: Bootstrap, inode: Inode, facts_by_index: list[_BlobFacts | None]
    ) -> Iterator[str]:
        chunk_size = boot.chunk_size
        count = -(-inode.size // chunk_size)
        if len(inode.chunks) != count:
            yield f"{len(inode.chunks)} chunks for {inode.size} bytes (expected {count})"
        for i, ref in enumerate(inode.chunks):
            want_size = min(chunk_size, inode.size - i * chunk_size)
            if ref.file_offset != i * chunk_size:
                yield f"chunk {i} has file offset {ref.file_offset}, expected {i * chunk_size}"
            if ref.uncompressed_size != want_size:
                yield f"chunk {i} has {ref.uncompressed_size} bytes, expected {want_size}"
            if ref.blob_index >= len(facts_by_index):
                yield f"chunk {i} names blob {ref.blob_index} of {len(facts_by_index)}"
                continue
            facts = facts_by_index[ref.blob_index]
            if facts is None or not facts.readable:
                continue  # the blob table / blob problem is reported already
            blob_name = f"blob sha256:{facts.layer.hex}"
            if ref.index >= len(facts.infos):
                yield f"chunk {i} is ci {ref.index} of {blob_name}, which has {len(facts.infos)} chunks"
                continue
            info = facts.infos[ref.index]
            for label, have, want in (
                ("compressed offset", ref.compressed_offset, info.compressed_offset),
                ("compressed size", ref.compressed_size, info.compressed_size),
                ("uncompressed offset", ref.uncompressed_offset, info.uncompressed_offset),
                ("uncompressed size", ref.uncompressed_size, info.uncompressed_size),
            ):
                if have != want:
                    yield f"chunk {i} (ci {ref.index} of {blob_name}): {label} {have}, blob ci says {want}"
            if facts.digests is not None and facts.digests[ref.index] != ref.digest:
                yield f"chunk {i} (ci {ref.index} of {blob_name}): digest differs from the blob's blob.digest"

    # -- source comparison --------------------------------------------------------------------

    def compare_source(
        self, source: str, source_config: Path | None, whiteouts: str, workdir: Path | None
    ) -> None:
        assert self.boot is not None
        tmp = Path(tempfile.mkdtemp(prefix="nydus-check-", dir=workdir))
        try:
            with open_source(source, workdir=tmp, config=source_config, whiteouts=whiteouts) as src:
                image = _pick_source_image(src.images, self.image.platform)
                expected = apply_layers(image.layers, self.problem)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        actual = nydus_tree(self.image, self.boot)
        self.report.count("source_entries", len(expected))
        for message in diff_trees(expected, actual)[:_MAX_TREE_PROBLEMS]:
            self.problem(f"--source: {message}")


def _pick_source_image(images: list[SourceImage], platform: Platform | None) -> SourceImage:
    if len(images) == 1:
        return images[0]
    if platform is not None:
        for image in images:
            if image.platform is not None and image.platform.matches(platform):
                return image
    raise FormatError(f"the source has {len(images)} images and none is for {platform}")


def nydus_tree(image: NydusImage, boot: Bootstrap) -> Tree:
    """The merged tree, regular files hashed by reading their chunks through the blobs."""
    content = FileContent(image, boot)
    by_inode: dict[int, TreeEntry] = {}
    tree: Tree = {}
    for path, node in walk(boot.root):
        inode = node.inode
        entry = by_inode.get(id(inode))
        if entry is None:
            kind = kind_of(inode.mode)
            entry = TreeEntry(
                kind=kind,
                mode=stat.S_IMODE(inode.mode),
                uid=inode.uid,
                gid=inode.gid,
                mtime=inode.mtime,
                mtime_nsec=inode.mtime_nsec,
                xattrs=dict(inode.xattrs),
            )
            if kind == "reg":
                entry.size = inode.size
                try:
                    entry.sha256 = content.sha256(inode)
                except ExporterError as exc:
                    entry.sha256 = f"{UNREADABLE}{exc}"
            elif kind == "symlink":
                entry.target = inode.symlink_target
            elif kind in ("chr", "blk"):
                entry.rdev = layout.decode_rdev(inode.rdev)
            by_inode[id(inode)] = entry
        tree[path] = entry
    return tree


# ---------------------------------------------------------------------------------------------
# The reference: source layers applied with OCI semantics (stdlib tarfile only)
