"""The daemon's cache of converted layers (``<state>/layer-cache``), behind ``layer_wants``.

An entry is keyed by ``sha256(source blob digest ‖ pack options ‖ cache format)``: the source
blob digest is verified by the daemon while the layer streams in (``layer_end``), so an entry
can only be created from bytes whose digest we checked, and the conversion is deterministic
for given pack options (per-layer conversion is independent of the other layers, [contract §5.6]).

An entry directory holds ``blob`` (the converted Nydus blob) and ``entry.json`` (its digest
and size). Nothing else is needed: a blob is self-describing, and the :class:`BlobResult` the
pipeline merges with is re-derived from its bytes (:func:`~nydus_exporter.rafs.blob_reader.blob_result`),
so no serialised objects are ever loaded from disk. Entries are written to a temporary
directory and renamed into place, so a reader sees a whole entry or none. Verification on
use (:meth:`LayerCache.checkout`) re-hashes the blob and parses it; a bad entry is deleted and
reported as a miss. The cache directory is private to the daemon (mode 0700).

Storing is on the conversion's critical path, so an entry's blob is a hard link to the blob
the job just wrote (a copy only across filesystems): the cache never writes a blob in place,
and whatever happens to the job's (later published) file is caught by the re-hash on use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nydus_exporter import __version__
from nydus_exporter.errors import FormatError
from nydus_exporter.pipeline.pack import PackOptions
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.blob_reader import BlobReader, blob_result

CACHE_FORMAT = "nydus-exporter-layer-cache-1"
_READ = 1 << 20


def pack_fingerprint(options: PackOptions) -> str:
    """The pack options that change the output (``threads`` does not: builds are reproducible)."""
    return json.dumps(
        {"chunk_size": options.chunk_size, "compressor": options.compressor, "digester": options.digester},
        sort_keys=True,
    )


def cache_key(blob_digest: str, options: PackOptions) -> str:
    text = "\0".join((CACHE_FORMAT, __version__, blob_digest, pack_fingerprint(options)))
    return hashlib.sha256(text.encode()).hexdigest()


def load_result(blob: Path, digest: str) -> BlobResult:
    """The conversion result of the blob file ``blob`` whose verified digest is ``digest``."""
    with blob.open("rb") as f:
        fd = f.fileno()
        reader = BlobReader(lambda offset, length: os.pread(fd, length, offset), os.fstat(fd).st_size)
        return blob_result(reader, digest, native_id=False)


@dataclass(frozen=True)
class CachedLayer:
    """A verified entry, copied out of the cache for one job."""

    blob: Path
    result: BlobResult


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` and return the sha256 digest of what was copied.

    A checkout copies (the job verifies and then uses its own bytes: a change to the entry
    after the check cannot reach the image).
    """
    h = hashlib.sha256()
    with src.open("rb") as f, dst.open("wb") as out:
        while chunk := f.read(_READ):
            h.update(chunk)
            out.write(chunk)
    return "sha256:" + h.hexdigest()


class LayerCache:
    """Synchronous (call it from a worker thread or the worker process)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def root(self) -> Path:
        return self._root

    def _entry(self, key: str) -> Path:
        return self._root / key

    def contains(self, key: str) -> bool:
        return (self._entry(key) / "entry.json").is_file()

    def checkout(self, key: str, target: Path) -> CachedLayer | None:
        """Verify entry ``key`` while copying its blob to ``target``; None on a miss. The job
        works on its own copy, so a concurrent removal of the entry cannot pull it away."""
        entry = self._entry(key)
        try:
            meta = json.loads((entry / "entry.json").read_text())
            blob_path = entry / "blob"
            if blob_path.stat().st_size != meta["size"]:
                raise ValueError("blob does not match its entry")
            target.parent.mkdir(parents=True, exist_ok=True)
            if _copy_hashing(blob_path, target) != meta["digest"]:
                raise ValueError("blob does not match its entry")
            result = load_result(target, meta["digest"])
        except FileNotFoundError:
            target.unlink(missing_ok=True)
            return None
        except (OSError, ValueError, KeyError, TypeError, FormatError):
            target.unlink(missing_ok=True)
            shutil.rmtree(entry, ignore_errors=True)  # corrupt: drop it, convert again
            return None
        return CachedLayer(target, result)

    def store(self, key: str, blob: Path, result: BlobResult) -> None:
        """Add the converted ``blob`` (left in place); first writer wins."""
        if self.contains(key):
            return
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self._root))
        try:
            try:
                os.link(blob, tmp / "blob")
            except OSError:  # another filesystem (or no links): copy
                if _copy_hashing(blob, tmp / "blob") != result.digest:
                    return  # the blob changed under us: do not cache it
            if (tmp / "blob").stat().st_size != result.size:
                return
            (tmp / "entry.json").write_text(json.dumps({"digest": result.digest, "size": result.size}))
            with contextlib.suppress(OSError):  # another job stored the same key first: keep theirs
                os.rename(tmp, self._entry(key))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def clean_temporaries(self) -> None:
        """Remove half-written entries a killed worker left behind."""
        for child in self._root.glob(".tmp-*"):
            shutil.rmtree(child, ignore_errors=True)
