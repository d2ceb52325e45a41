"""The persistent chunk store: exact round trips of real packed blobs, registry verification on
use, LRU eviction, SIGKILL at random moments, several processes at once, corrupt files."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from nydus_exporter.chunkstore import ChunkStore, StoredBlob, StoredChunks, codec, default_state_dir
from nydus_exporter.chunkstore.store import DB_NAME
from nydus_exporter.cli.chunkstore import add_chunkstore_commands, run_chunkstore_command
from nydus_exporter.errors import ChunkStoreError
from nydus_exporter.pipeline.pack import PackOptions, pack_layer
from nydus_exporter.rafs import layout
from nydus_exporter.rafs.blob import BlobResult
from nydus_exporter.rafs.bootstrap_reader import read_bootstrap
from nydus_exporter.rafs.chunkdict import ChunkDict
from nydus_exporter.rafs.model import BlobInfo, ChunkRef
from tests.conftest import PROJECT_ROOT
from tests.helpers import tarbuild as tb

LOC = "127.0.0.1:5000/app"
CHUNK_SIZE, DIGESTER, COMPRESSOR = 64 << 10, "blake3", "zstd"


def always(digest: str, size: int) -> bool:
    return True


def lookup(
    store: ChunkStore,
    location: str = LOC,
    *,
    chunk_size: int = CHUNK_SIZE,
    digester: str = DIGESTER,
    compressor: str = COMPRESSOR,
    verify: Callable[[str, int], bool] = always,
) -> StoredChunks:
    return store.chunk_dict(
        location, chunk_size=chunk_size, digester=digester, compressor=compressor, verify=verify
    )


def asking(asked: list[str], answer: Callable[[str], bool] = lambda d: True) -> Callable[[str, int], bool]:
    """A verify callback that logs the digests it was asked about."""

    def verify(digest: str, size: int) -> bool:
        asked.append(digest)
        return answer(digest)

    return verify


# -- blobs to record ------------------------------------------------------------------------


def pack(
    seed: int, *, chunk_size: int = 64 << 10, digester: str = "blake3"
) -> tuple[BlobResult, list[ChunkRef]]:
    """A real packed layer (with a file stored twice) and the ChunkRefs of its own blob, read
    back from its embedded bootstrap's chunk table."""
    rnd = random.Random(seed)
    big = rnd.randbytes(5 * chunk_size + 1234)
    data = tb.tar_of(
        tb.dir("d"),
        tb.file("d/big", big),
        tb.file("d/copy", big),
        tb.file("small", rnd.randbytes(777)),
        tb.file("text", b"hello\n" * 20000),
    )
    out = io.BytesIO()
    options = PackOptions(chunk_size=chunk_size, compressor="zstd", digester=digester, threads=1)
    result = pack_layer(io.BytesIO(data), out.write, options)
    boot = read_bootstrap(result.bootstrap)
    own = next(i for i, b in enumerate(boot.blobs) if b.blob_id == layout.INLINE_BLOB_ID_PLACEHOLDER)
    assert own == next(i for i, b in enumerate(boot.blobs) if b.blob_id == "x" * 64)
    chunks = [c for c in boot.chunk_table if c.blob_index == own]
    assert result.blob_info is not None and result.blob_info.blob_id == result.digest.removeprefix("sha256:")
    return result, chunks


def record(
    store: ChunkStore,
    result: BlobResult,
    chunks: list[ChunkRef],
    location: str = LOC,
    *,
    chunk_size: int = CHUNK_SIZE,
    digester: str = DIGESTER,
    info: BlobInfo | None = None,
) -> None:
    info = info or result.blob_info
    assert info is not None
    store.record_blob(
        location, result.digest, result.size, info, chunks, result.blob_meta,
        digester=digester, compressor=COMPRESSOR,
    )  # fmt: skip


def synthetic(digest: str) -> tuple[int, BlobInfo, list[ChunkRef], bytes]:
    """A made-up blob whose whole content follows from its digest (so a checker can tell what
    a record must contain without knowing how it was written)."""
    rnd = random.Random(digest)
    n = rnd.randrange(50, 400)
    chunks, offset = [], 0
    for i in range(n):
        size = rnd.randrange(100, 65536)
        chunks.append(
            ChunkRef(
                rnd.randbytes(32), 0, i, offset, size, i * 65536, 65536, rnd.randrange(4), rnd.getrandbits(32)
            )
        )
        offset += size
    info = BlobInfo(
        digest.removeprefix("sha256:"), 65536, n, compressed_size=offset, uncompressed_size=n * 65536
    )
    return offset + 4096, info, chunks, rnd.randbytes(rnd.randrange(0, 2000))


def synthetic_digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def record_synthetic(store: ChunkStore, seed: str, location: str = LOC) -> str:
    digest = synthetic_digest(seed)
    size, info, chunks, meta = synthetic(digest)
    store.record_blob(
        location,
        digest,
        size,
        info,
        chunks,
        meta,
        digester=DIGESTER,
        compressor=COMPRESSOR,
    )
    return digest


def assert_complete(db: Path) -> int:
    """integrity_check passes and every blob has all its chunks (checked with plain sqlite3
    and against what the blob must contain); returns the number of blobs."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        blobs = conn.execute("SELECT id, digest, chunk_count FROM blobs").fetchall()
        for blob_id, digest, count in blobs:
            rows = conn.execute("SELECT COUNT(*) FROM chunks WHERE blob = ?", (blob_id,)).fetchone()[0]
            assert rows == count == len(synthetic(digest)[2]), digest
        assert conn.execute(
            "SELECT COUNT(*) FROM chunks WHERE blob NOT IN (SELECT id FROM blobs)"
        ).fetchone() == (0,)
    finally:
        conn.close()
    return len(blobs)


def assert_reads_back(store: ChunkStore, location: str = LOC) -> int:
    found = lookup(store, location)
    for hex_id, blob in found.blobs.items():
        size, info, chunks, meta = synthetic(blob.digest)
        assert blob == StoredBlob(blob.digest, size, info, meta)
        assert found.chunks.chunks_of(hex_id) == chunks
    return len(found.blobs)


# -- round trip -----------------------------------------------------------------------------


def test_round_trip_of_a_packed_blob(tmp_path: Path) -> None:
    result, chunks = pack(1)
    assert result.blob_info is not None
    # Repeated digests (a chunk referenced at other file offsets): the first one counts.
    repeats = [c.at_file_offset(c.file_offset + (7 << 20)) for c in chunks]
    with ChunkStore.open(tmp_path) as store:
        record(store, result, chunks + repeats)
    calls: list[tuple[str, int]] = []

    def verify(digest: str, size: int) -> bool:
        calls.append((digest, size))
        return True

    with ChunkStore.open(tmp_path) as store:  # persisted, read by another connection
        found = lookup(store, verify=verify)
    assert calls == [(result.digest, result.size)]
    hex_id = result.digest.removeprefix("sha256:")
    assert found.blobs == {hex_id: StoredBlob(result.digest, result.size, result.blob_info, result.blob_meta)}
    assert result.blob_meta and found.blobs[hex_id].blob_meta == result.blob_meta
    expected = ChunkDict()
    expected.add_layer(read_bootstrap(result.bootstrap), result.blob_info)
    assert len(found.chunks) == len(expected) == len({c.digest for c in chunks})
    assert [b.blob_id for b in found.chunks.blobs] == [hex_id]
    for chunk in chunks:
        hit = found.chunks.lookup(chunk.digest, chunk.uncompressed_size)
        assert hit is not None and hit == expected.lookup(chunk.digest, chunk.uncompressed_size)
        assert hit.blob == result.blob_info
        assert found.chunks.lookup(chunk.digest, chunk.uncompressed_size + 1) is None


def test_only_matching_location_and_parameters(tmp_path: Path) -> None:
    result, chunks = pack(2)
    with ChunkStore.open(tmp_path) as store:
        record(store, result, chunks)
        others = [
            lookup(store, "127.0.0.1:5000/other"),
            lookup(store, "127.0.0.1:5001/app"),
            lookup(store, chunk_size=128 << 10),
            lookup(store, digester="sha256"),
            lookup(store, compressor="lz4_block"),
        ]
        for i, found in enumerate(others):
            assert len(found.chunks) == 0 and found.blobs == {}, i
        assert len(lookup(store).chunks) > 0
        assert store.locations_of(result.digest) == [LOC]


def test_several_blobs_and_parameters_side_by_side(tmp_path: Path) -> None:
    a, a_chunks = pack(3)
    b, b_chunks = pack(4)
    c, c_chunks = pack(5, digester="sha256")
    with ChunkStore.open(tmp_path) as store:
        record(store, a, a_chunks)
        record(store, b, b_chunks)
        record(store, c, c_chunks, digester="sha256")
        record(store, a, a_chunks, location="127.0.0.1:5000/other")
        blake = lookup(store)
        sha = lookup(store, digester="sha256")
        assert set(blake.blobs) == {a.digest[7:], b.digest[7:]}
        assert set(sha.blobs) == {c.digest[7:]}
        for chunk in c_chunks:
            hit = sha.chunks.lookup(chunk.digest, chunk.uncompressed_size)
            assert hit is not None and hit.blob.blob_id == c.digest[7:]
        assert sorted(store.locations_of(a.digest)) == sorted([LOC, "127.0.0.1:5000/other"])
        assert store.stats()["blobs"] == 4 and store.stats()["locations"] == 2


def test_codec_covers_every_field() -> None:
    # A new ChunkRef/BlobInfo field must get a column / JSON key, or records would lose it.
    names = [f.name for f in dataclasses.fields(ChunkRef)]
    assert [("index" if c == "ci_index" else c) for c in codec.CHUNK_COLUMNS] == names
    rnd = random.Random(9)
    values: dict[str, object] = {}
    for f in dataclasses.fields(BlobInfo):
        values[f.name] = rnd.randbytes(32) if f.name.endswith("digest") else rnd.getrandbits(40)
    values["blob_id"] = "ab" * 32
    info = BlobInfo(**values)  # type: ignore[arg-type]
    assert codec.info_from_json(codec.info_to_json(info)) == info
    chunk = ChunkRef(rnd.randbytes(32), *(rnd.getrandbits(40) for _ in names[1:]))
    assert codec.chunk_from_row(codec.chunk_row(chunk)) == chunk


def test_bad_arguments_are_typed_errors(tmp_path: Path) -> None:
    result, chunks = pack(6)
    assert result.blob_info is not None
    with ChunkStore.open(tmp_path) as store:
        with pytest.raises(ChunkStoreError, match="HOST/REPOSITORY"):
            record(store, result, chunks, location="app")
        with pytest.raises(ChunkStoreError, match="sha256"):
            record(store, dataclasses.replace(result, digest="sha256:abc"), chunks)
        with pytest.raises(ChunkStoreError, match="names"):
            record(store, result, chunks, info=dataclasses.replace(result.blob_info, blob_id="0" * 64))
        assert store.stats()["blobs"] == 0
    with pytest.raises(ChunkStoreError, match="closed"):
        store.stats()
    (tmp_path / "file").write_text("")
    with pytest.raises(ChunkStoreError):
        ChunkStore.open(tmp_path / "file")


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert default_state_dir() == Path("/srv/state/nydus-exporter")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # ignored, as the XDG spec says
    assert default_state_dir() == tmp_path / ".local/state/nydus-exporter"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == tmp_path / ".local/state/nydus-exporter"


# -- verification on use --------------------------------------------------------------------


def test_blobs_failing_verification_are_forgotten(tmp_path: Path) -> None:
    a, a_chunks = pack(7)
    b, b_chunks = pack(8)
    with ChunkStore.open(tmp_path) as store:
        record(store, a, a_chunks)
        record(store, b, b_chunks)
        chunks_before = store.stats()["chunks"]

        def boom(digest: str, size: int) -> bool:
            raise RuntimeError("registry down")

        with pytest.raises(RuntimeError):  # an unanswered HEAD forgets nothing
            lookup(store, verify=boom)
        assert store.stats()["blobs"] == 2

        found = lookup(store, verify=lambda d, n: d != a.digest)
        assert set(found.blobs) == {b.digest[7:]}
        only_a = [c for c in a_chunks if c.digest not in {x.digest for x in b_chunks}]
        assert only_a and len(only_a) < len(a_chunks)  # the layers share a file
        for chunk in a_chunks:
            hit = found.chunks.lookup(chunk.digest, chunk.uncompressed_size)
            assert hit is None if chunk in only_a else hit is not None and hit.blob == b.blob_info
        stats = store.stats()
        assert stats["blobs"] == 1
        assert stats["chunks"] == chunks_before - len({c.digest for c in a_chunks})
        asked: list[str] = []
        again = lookup(store, verify=asking(asked))
        assert asked == [b.digest] and set(again.blobs) == {b.digest[7:]}
        assert store.locations_of(a.digest) == []


@pytest.mark.parametrize(
    "tamper",
    [
        "DELETE FROM chunks WHERE blob = :id AND seq = 3",  # a lost chunk row
        "UPDATE chunks SET compressed_offset = compressed_offset + 1 WHERE blob = :id AND seq = 2",
        "UPDATE chunks SET digest = x'00' WHERE blob = :id AND seq = 1",
        "UPDATE blobs SET info = replace(info, '\"chunk_count\":', '\"chunk_count\":1') WHERE id = :id",
        "UPDATE blobs SET info = 'not json' WHERE id = :id",
        "UPDATE blobs SET blob_meta = x'00' WHERE id = :id",
        "UPDATE blobs SET size = size + 1 WHERE id = :id",
        "UPDATE blobs SET size = 'big' WHERE id = :id",
    ],
)
def test_records_that_do_not_read_back_are_dropped(tmp_path: Path, tamper: str) -> None:
    with ChunkStore.open(tmp_path) as store:
        bad = record_synthetic(store, "bad")
        good = record_synthetic(store, "good")
    conn = sqlite3.connect(tmp_path / DB_NAME)
    with conn:
        (blob_id,) = conn.execute("SELECT id FROM blobs WHERE digest = ?", (bad,)).fetchone()
        assert conn.execute(tamper, {"id": blob_id}).rowcount == 1
    conn.close()
    asked: list[str] = []
    with ChunkStore.open(tmp_path) as store:
        found = lookup(store, verify=asking(asked))
        assert set(found.blobs) == {good[7:]} and asked == [good]  # the bad one: not even asked
        assert store.locations_of(bad) == []
        assert assert_reads_back(store) == 1


# -- LRU --------------------------------------------------------------------------------------


def blob_digests(store: ChunkStore) -> set[str]:
    out: set[str] = set()
    for loc in ("reg/hot", "reg/cold"):
        out |= {b.digest for b in lookup(store, loc).blobs.values()}
    return out


def test_gc_evicts_least_recently_used(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path, max_blobs=100) as store:
        locs = ["reg/hot", "reg/cold", "reg/cold", "reg/hot", "reg/cold"]
        digests = [record_synthetic(store, f"lru{i}", loc) for i, loc in enumerate(locs)]
        lookup(store, "reg/hot")  # uses 0 and 3
        store.mark_used("reg/cold", [digests[1]])  # then 1
        chunks_of = {d: len(synthetic(d)[2]) for d in digests}
        report = store.gc(max_blobs=3)
        assert (report.evicted_blobs, report.blobs) == (2, 3)
        assert report.evicted_chunks == chunks_of[digests[2]] + chunks_of[digests[4]]
        assert report.chunks == sum(chunks_of[digests[i]] for i in (0, 1, 3))
        assert blob_digests(store) == {digests[0], digests[1], digests[3]}
        assert store.gc(max_blobs=3).evicted_blobs == 0
        assert store.gc(max_blobs=0).blobs == 0
        stats = store.stats()
        assert stats["chunks"] == 0 and stats["free_bytes"] == 0  # pages went back to the file system
    assert_complete(tmp_path / DB_NAME)


def test_recording_beyond_the_limit_evicts(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path, max_blobs=3) as store:
        d = [record_synthetic(store, f"limit{i}", "reg/hot" if i == 0 else "reg/cold") for i in range(3)]
        lookup(store, "reg/hot")
        d += [record_synthetic(store, f"limit{i}", "reg/cold") for i in (3, 4)]
        assert store.stats()["blobs"] == 3
        assert blob_digests(store) == {d[0], d[3], d[4]}


def test_gc_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ChunkStore.open(tmp_path) as store:
        for i in range(4):
            record_synthetic(store, f"cli{i}")
    parser = argparse.ArgumentParser()
    add_chunkstore_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["gc", "--state-dir", str(tmp_path), "--max-blobs", "1", "--verify", "--json"])
    assert run_chunkstore_command(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["evicted_blobs"] == 3 and report["blobs"] == 1 and report["dropped_blobs"] == 0
    with ChunkStore.open(tmp_path) as store:
        assert store.stats()["blobs"] == 1
    assert run_chunkstore_command(parser.parse_args(["gc", "--state-dir", str(tmp_path)])) == 0
    assert "1 blobs" in capsys.readouterr().out


# -- crashes and concurrency ----------------------------------------------------------------

WORKER = """
import sys, random
from pathlib import Path
from tests.chunkstore.test_store import record_synthetic, LOC
from nydus_exporter.chunkstore import ChunkStore
state, name, count, gc_rate = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
wait_for_go = len(sys.argv) > 5
if wait_for_go:
    print("waiting", flush=True)
    sys.stdin.readline()
print("opening", flush=True)
with ChunkStore.open(state, max_blobs=60) as store:
    print("ready", flush=True)
    rnd = random.Random(name)
    for i in range(count):
        digest = record_synthetic(store, f"{name}-{i}")
        if rnd.random() < 0.1:
            store.forget_blob(LOC, digest)
        if rnd.random() < gc_rate:
            store.gc(max_blobs=40)
        if not wait_for_go:
            print(f"recorded {i}", flush=True)
print("done", flush=True)
"""


def worker(
    state: Path, name: str, count: int, gc_rate: float, *, wait_for_go: bool = False
) -> subprocess.Popen[str]:
    """A process recording synthetic blobs ``{name}-0``, ``{name}-1``, ...; forgets one in ten
    right away, runs a gc(max_blobs=40) after a fraction ``gc_rate`` of them. It prints
    "opening" before it opens the store, "ready" once open, "recorded N" after each blob
    (unless ``wait_for_go``) and "done"; with ``wait_for_go`` it first prints "waiting" and
    starts when a line arrives on its stdin."""
    argv = [sys.executable, "-c", WORKER, str(state), name, str(count), str(gc_rate)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen(
        argv + (["wait-for-go"] if wait_for_go else []),
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.PIPE if wait_for_go else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == expected + "\n", f"expected {expected!r} from the worker, got {line!r}"


@pytest.mark.slow
def test_sigkill_at_random_moments_never_tears_a_blob(tmp_path: Path) -> None:
    rnd = random.Random(1234)
    killed_while_recording = 0
    for round_ in range(10):
        proc = worker(tmp_path, f"kill{round_}", 100_000, 0.05)
        try:
            _read_line(proc, "opening")
            if round_ % 4 != 3:  # else while it opens (or even creates) the database
                _read_line(proc, "ready")
                for _ in range(rnd.randrange(1, 6)):  # then while it records, after some blobs
                    assert proc.stdout is not None and proc.stdout.readline().startswith("recorded ")
                killed_while_recording += 1
        finally:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()  # also closes the pipes
        assert proc.returncode == -signal.SIGKILL, err
        assert_complete(tmp_path / DB_NAME)
        with ChunkStore.open(tmp_path, max_blobs=60) as store:
            assert store.moved_aside == []
            assert assert_reads_back(store) == store.stats()["blobs"]
    assert killed_while_recording >= 5
    with ChunkStore.open(tmp_path) as store:
        assert store.stats()["blobs"] > 0  # the workers did record between kills


@pytest.mark.slow
def test_processes_record_at_once(tmp_path: Path) -> None:
    state = tmp_path / "state"  # the store does not exist yet: created in the race
    procs = [worker(state, f"proc{i}", 15, 0.0, wait_for_go=True) for i in range(4)]
    for proc in procs:  # every worker has started: let them go at once
        _read_line(proc, "waiting")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.splitlines() == ["opening", "ready", "done"] and "locked" not in err
    assert_complete(state / DB_NAME)
    with ChunkStore.open(state, max_blobs=60) as store:
        forgotten = 0
        for i in range(4):  # replay each worker's forget decisions (the same random sequence)
            rnd = random.Random(f"proc{i}")
            for _ in range(15):
                forgotten += rnd.random() < 0.1
                rnd.random()  # the gc decision (gc_rate 0: never)
        assert assert_reads_back(store) == store.stats()["blobs"] == 60 - forgotten


@pytest.mark.slow
def test_threads_share_one_store(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with ChunkStore.open(tmp_path) as store:

        def run(n: int) -> None:
            try:
                for i in range(10):
                    record_synthetic(store, f"thread{n}-{i}")
                    lookup(store)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert assert_reads_back(store) == 60
    assert_complete(tmp_path / DB_NAME)


# -- corrupt files --------------------------------------------------------------------------


def moved_aside(state: Path) -> list[Path]:
    """The databases moved aside (not their .reason, -wal and -shm companions)."""
    return sorted(
        p
        for p in state.iterdir()
        if p.name.startswith(f"{DB_NAME}.corrupt-") and not p.name.endswith((".reason", "-wal", "-shm"))
    )


def fill(state: Path, n: int = 30) -> None:
    with ChunkStore.open(state) as store:
        for i in range(n):
            record_synthetic(store, f"fill{i}")
    assert not (state / f"{DB_NAME}-wal").exists()  # checkpointed on close: the db file is all


def reopen_works(state: Path, *, expect_aside: int = 1) -> None:
    with ChunkStore.open(state) as store:
        assert len(store.moved_aside) == 1
        assert store.stats()["blobs"] == 0
        record_synthetic(store, "after")
        assert assert_reads_back(store) == 1
    assert len(moved_aside(state)) == expect_aside
    assert_complete(state / DB_NAME)


def corrupt_with(mutate: Callable[[Path], None]) -> Callable[[Path], bytes]:
    def run(state: Path) -> bytes:
        db = state / DB_NAME
        mutate(db)
        return db.read_bytes()

    return run


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda db: db.write_bytes(random.Random(1).randbytes(db.stat().st_size)), id="garbage"),
        pytest.param(lambda db: os.truncate(db, db.stat().st_size // 2), id="truncated-half"),
        pytest.param(lambda db: os.truncate(db, 50), id="truncated-header"),
        pytest.param(lambda db: db.write_bytes(b"SQLite format 3\x00" + bytes(4080)), id="bad-header"),
        pytest.param(
            lambda db: db.write_bytes(
                db.read_bytes()[:12288] + random.Random(2).randbytes(db.stat().st_size - 12288)
            ),
            id="garbage-pages",
        ),
    ],
)
def test_corrupt_file_is_moved_aside(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    fill(tmp_path)
    damaged = corrupt_with(damage)(tmp_path)
    reopen_works(tmp_path)
    (aside,) = moved_aside(tmp_path)
    assert aside.read_bytes() == damaged  # kept for inspection, byte for byte
    assert aside.with_name(aside.name + ".reason").read_text().strip()


def test_foreign_or_newer_database_is_moved_aside(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    reopen_works(tmp_path)
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("PRAGMA user_version = 99")  # a future schema
    conn.close()
    reopen_works(tmp_path, expect_aside=2)


def test_corruption_met_while_running_is_repaired(tmp_path: Path) -> None:
    fill(tmp_path)
    with ChunkStore.open(tmp_path) as store:
        assert store.stats()["blobs"] == 30
        # Another process (or the disk) destroys the chunk pages under the open store, then
        # writes, so the store's cached pages are stale and it reads the damage from disk.
        db = tmp_path / DB_NAME
        size = db.stat().st_size
        with open(db, "r+b") as f:
            f.seek(size // 2)
            f.write(random.Random(3).randbytes(size - size // 2))
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("UPDATE clock SET tick = tick + 1")
        other.close()
        found = lookup(store)
        assert found.blobs == {} and len(store.moved_aside) == 1
        record_synthetic(store, "after")
        assert assert_reads_back(store) == 1
    assert len(moved_aside(tmp_path)) == 1


def test_a_file_moved_aside_by_another_process_is_followed(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    with ChunkStore.open(tmp_path) as a:
        assert a.stats()["blobs"] == 3
        (tmp_path / "new").write_bytes(b"garbage" * 1000)
        os.replace(tmp_path / "new", tmp_path / DB_NAME)  # replaced by another file
        assert a.stats()["blobs"] == 0  # reopened what is there now: garbage, moved aside
        assert len(a.moved_aside) == 1


def test_old_corrupt_files_are_pruned(tmp_path: Path) -> None:
    for _ in range(5):
        (tmp_path / DB_NAME).write_bytes(b"not a database" * 100)
        with ChunkStore.open(tmp_path):
            pass
    assert len(moved_aside(tmp_path)) == 3
