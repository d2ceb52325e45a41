"""The persistent chunk store: which registry blob holds which chunk, across builds ([format §4.2]).

A build that pushed a blob to ``HOST/REPOSITORY`` records it here (its chunks, its merged
bootstrap blob-table entry, its blob.meta file); a later build for the same repository with
the same chunk size, digester and compressor gets all those chunks back as a
:class:`~nydus_exporter.rafs.chunkdict.ChunkDict` and references them instead of storing
them again. The blob itself stays in the registry: every blob is checked there (a ``HEAD``,
the caller's ``verify``) before it is used, and forgotten when it is gone.

Storage: one SQLite database, ``<state dir>/chunkstore.db``, in WAL mode, shared by any number
of threads and processes:

* every public method is one transaction (``BEGIN IMMEDIATE`` for writes) with a 30 s busy
  timeout, so concurrent daemons queue instead of failing with "database is locked";
* SQLite's journal makes each transaction all or nothing, so a process killed with SIGKILL
  at any point leaves every blob recorded completely or not at all; on top of that each blob
  record carries a SHA-256 of its content, checked on use, and a record that fails it (or no
  longer decodes) is dropped, never used;
* a file that is not a database of this schema (garbage, truncated, a foreign SQLite file,
  another schema version, failed ``PRAGMA quick_check``, or corruption met while running) is
  renamed to ``chunkstore.db.corrupt-<UTC time>`` and a fresh database is created: corruption
  costs the dedup history, never a build. Only problems the store cannot repair (permissions,
  disk full, a lock held for longer than the timeout) raise :class:`ChunkStoreError`;
* the number of blobs is bounded (``max_blobs``): recording beyond it evicts the least
  recently used blobs (recorded or returned by :meth:`ChunkStore.chunk_dict` the longest ago),
  as :meth:`ChunkStore.gc` does on demand.

Opening and moving aside happen under an ``flock`` on ``<state dir>/chunkstore.lock`` so two
processes never both rebuild the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nydus_exporter.chunkstore import DEFAULT_MAX_BLOBS, codec
from nydus_exporter.errors import ChunkStoreError
from nydus_exporter.rafs.chunkdict import ChunkDict
from nydus_exporter.rafs.model import BlobInfo, ChunkRef

DB_NAME = "chunkstore.db"
LOCK_NAME = "chunkstore.lock"
CORRUPT_INFIX = ".corrupt-"
SCHEMA_VERSION = 2  # PRAGMA user_version; anything else is moved aside (2: + layers)
APPLICATION_ID = 0x4E594443  # PRAGMA application_id, "NYDC": tells our file from foreign SQLite files
BUSY_TIMEOUT = 30.0  # seconds a transaction waits for another process's write
LOCK_TIMEOUT = 120.0  # seconds open() waits for another process checking/rebuilding the file
KEEP_CORRUPT = 3  # moved-aside databases kept for inspection; older ones are deleted

_BATCH = 500  # ids per "IN (...)" (SQLite limits the number of parameters)
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA = (
    """CREATE TABLE clock (id INTEGER PRIMARY KEY CHECK (id = 0), tick INTEGER NOT NULL)""",
    """INSERT INTO clock (id, tick) VALUES (0, 0)""",
    """CREATE TABLE blobs (
        id INTEGER PRIMARY KEY,
        location TEXT NOT NULL,          -- HOST/REPOSITORY the blob was pushed to
        digest TEXT NOT NULL,            -- sha256:<hex>, the OCI layer digest
        size INTEGER NOT NULL,           -- bytes of the blob layer
        chunk_size INTEGER NOT NULL,
        digester TEXT NOT NULL,
        compressor TEXT NOT NULL,
        info TEXT NOT NULL,              -- JSON of BlobInfo as a merged bootstrap names the blob
        blob_meta BLOB,                  -- the blob.meta cache file ([format §3.10]), if any
        chunk_count INTEGER NOT NULL,    -- rows in chunks
        checksum BLOB NOT NULL,          -- codec.record_checksum of all of the above + chunks
        recorded_at INTEGER NOT NULL,    -- unix seconds (informational)
        last_used INTEGER NOT NULL,      -- clock tick of the last record/use (LRU)
        UNIQUE (location, digest)
    )""",
    """CREATE INDEX blobs_kind ON blobs (location, chunk_size, digester, compressor)""",
    """CREATE INDEX blobs_lru ON blobs (last_used)""",
    """CREATE INDEX blobs_digest ON blobs (digest)""",
    """CREATE TABLE chunks (
        blob INTEGER NOT NULL,           -- blobs.id
        seq INTEGER NOT NULL,            -- position in the recorded order
        digest BLOB NOT NULL,
        blob_index INTEGER NOT NULL,
        ci_index INTEGER NOT NULL,
        compressed_offset INTEGER NOT NULL,
        compressed_size INTEGER NOT NULL,
        uncompressed_offset INTEGER NOT NULL,
        uncompressed_size INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        crc32 INTEGER NOT NULL,
        file_offset INTEGER NOT NULL,
        PRIMARY KEY (blob, seq)
    ) WITHOUT ROWID""",
    # The layer conversion cache: a source layer converted with given options is this blob
    # (at this location). Only used while the blob itself is recorded (and verified) there.
    """CREATE TABLE layers (
        location TEXT NOT NULL,
        source TEXT NOT NULL,            -- the source layer's digest (compressed, as pushed)
        options TEXT NOT NULL,           -- fingerprint of the conversion options
        blob TEXT NOT NULL,              -- sha256:<hex> of the Nydus blob layer
        PRIMARY KEY (location, source, options)
    ) WITHOUT ROWID""",
)
_BLOB_HEAD = "location, digest, size, chunk_size, digester, compressor"
_CHUNK_SELECT = f"SELECT {', '.join(codec.CHUNK_COLUMNS)} FROM chunks WHERE blob = ? ORDER BY seq"
_CHUNK_INSERT = (
    f"INSERT INTO chunks (blob, seq, {', '.join(codec.CHUNK_COLUMNS)}) "
    f"VALUES (?, ?, {', '.join('?' * len(codec.CHUNK_COLUMNS))})"
)

T = TypeVar("T")


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/nydus-exporter``, else ``~/.local/state/nydus-exporter`` (the XDG base
    directory spec ignores a relative ``XDG_STATE_HOME``)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "nydus-exporter"


@dataclass(frozen=True)
class StoredBlob:
    digest: str  # "sha256:<hex>", the blob layer digest
    size: int  # bytes of the blob layer
    info: BlobInfo  # as a merged bootstrap names it (blob_id = digest hex)
    blob_meta: bytes | None  # the blob.meta file ([format §3.10])


@dataclass
class StoredChunks:
    """What :meth:`ChunkStore.chunk_dict` found: the chunks, and the blobs they are in keyed by
    blob id (= digest hex, the key of :attr:`ChunkDict.blobs`)."""

    chunks: ChunkDict
    blobs: dict[str, StoredBlob]


@dataclass(frozen=True)
class GcReport:
    evicted_blobs: int  # least recently used blobs removed to get under the limit
    evicted_chunks: int  # their chunk rows
    dropped_blobs: int  # records that failed their checksum or did not decode (verify=True)
    orphan_chunks: int  # chunk rows of no blob (none unless the database was tampered with)
    blobs: int  # left afterwards
    chunks: int


@dataclass
class _Candidate:
    id: int
    digest: str
    size: int
    blob: StoredBlob | None  # None: the record failed its checksum or did not decode
    chunks: list[ChunkRef]


class ChunkStore:
    """See the module docstring. Create with :meth:`open`; use as a context manager or
    :meth:`close` it. Thread-safe (one connection behind a lock); any number of processes may
    open the same state directory."""

    def __init__(self, state_dir: Path, max_blobs: int) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self.max_blobs = max_blobs
        self.moved_aside: list[Path] = []  # databases this store renamed aside (for logging)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we have open
        self._pid = os.getpid()
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path, *, max_blobs: int = DEFAULT_MAX_BLOBS) -> ChunkStore:
        if max_blobs < 1:
            raise ChunkStoreError(f"chunk store: max_blobs must be at least 1, not {max_blobs}")
        state_dir = Path(state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ChunkStoreError(f"cannot create state directory {state_dir}: {exc.strerror}") from None
        store = cls(state_dir, max_blobs)
        with store._lock:
            store._reconnect()
        return store

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public operations ------------------------------------------------------------------

    def record_blob(
        self,
        location: str,
        blob_digest: str,
        size: int,
        info: BlobInfo,
        chunks: Iterable[ChunkRef],
        blob_meta: bytes | None,
        *,
        digester: str,
        compressor: str,
    ) -> None:
        """Remember that ``blob_digest`` (``size`` bytes) exists at ``location`` and holds
        ``chunks`` (the first chunk of a digest wins, as in :class:`ChunkDict`), made with
        ``info.chunk_size``, ``digester`` and ``compressor``. Replaces an earlier record of the
        same blob there. One transaction: all or nothing."""
        _check_location(location)
        hex_id = _check_digest(blob_digest)
        if info.blob_id != hex_id:
            raise ChunkStoreError(f"chunk store: blob info names {info.blob_id!r}, not {blob_digest}")
        if size < 0:
            raise ChunkStoreError(f"chunk store: negative size for blob {blob_digest}")
        rows: list[codec.ChunkRow] = []
        seen: set[bytes] = set()
        for chunk in chunks:
            if chunk.digest in seen:
                continue
            seen.add(chunk.digest)
            rows.append(codec.chunk_row(chunk))
        head = (location, blob_digest, size, info.chunk_size, digester, compressor)
        info_json = codec.info_to_json(info)
        checksum = codec.record_checksum(head, info_json, blob_meta, rows)

        def write(conn: sqlite3.Connection) -> None:
            _delete_blobs(conn, "location = ? AND digest = ?", (location, blob_digest))
            tick = _tick(conn)
            cursor = conn.execute(
                f"INSERT INTO blobs ({_BLOB_HEAD}, info, blob_meta, chunk_count, checksum, recorded_at,"
                " last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*head, info_json, blob_meta, len(rows), checksum, int(time.time()), tick),
            )
            blob_id = cursor.lastrowid
            conn.executemany(_CHUNK_INSERT, ((blob_id, seq, *row) for seq, row in enumerate(rows)))
            _evict(conn, self.max_blobs)

        self._call(f"record blob {blob_digest}", write, write=True)

    def record_layer(self, location: str, source_digest: str, options: str, blob_digest: str) -> None:
        """Remember that source layer ``source_digest`` converted with ``options`` is the blob
        ``blob_digest`` at ``location`` (record the blob itself with :meth:`record_blob`)."""
        _check_location(location)
        _check_digest(source_digest)
        _check_digest(blob_digest)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO layers (location, source, options, blob) VALUES (?, ?, ?, ?)",
                (location, source_digest, options, blob_digest),
            )

        self._call(f"record layer {source_digest}", write, write=True)

    def find_layer(self, location: str, source_digest: str, options: str) -> tuple[str, int] | None:
        """``(blob digest, size)`` of the conversion of ``source_digest`` with ``options`` at
        ``location``, if that blob is still recorded there (verify it exists before use)."""

        def read(conn: sqlite3.Connection) -> tuple[str, int] | None:
            row = conn.execute(
                "SELECT l.blob, b.size FROM layers l"
                " JOIN blobs b ON b.location = l.location AND b.digest = l.blob"
                " WHERE l.location = ? AND l.source = ? AND l.options = ?",
                (location, source_digest, options),
            ).fetchone()
            return (str(row[0]), int(row[1])) if row is not None else None

        return self._call(f"find layer {source_digest}", read, write=False)

    def chunk_dict(
        self,
        location: str,
        *,
        chunk_size: int,
        digester: str,
        compressor: str,
        verify: Callable[[str, int], bool],
    ) -> StoredChunks:
        """Every chunk of the blobs recorded at ``location`` with these parameters, in the order
        they were recorded (the first blob to hold a digest provides it).

        ``verify(blob_digest, size)`` is called once per blob whose record is intact, outside
        any transaction (it is a registry ``HEAD``); blobs it rejects and records that fail
        their checksum are forgotten. Blobs returned count as used (LRU). An exception from
        ``verify`` propagates and changes nothing. Blobs recorded without chunks (existence
        records) are neither verified nor returned.
        """
        _check_location(location)
        kind = (location, chunk_size, digester, compressor)

        def load(conn: sqlite3.Connection) -> list[_Candidate]:
            found = []
            for row in conn.execute(
                f"SELECT id, {_BLOB_HEAD}, info, blob_meta, chunk_count, checksum FROM blobs"
                " WHERE location = ? AND chunk_size = ? AND digester = ? AND compressor = ?"
                " AND chunk_count > 0 ORDER BY id",
                kind,
            ).fetchall():
                found.append(_load_candidate(conn, row))
            return found

        candidates = self._call(f"read blobs of {location}", load, write=False)
        keep: list[_Candidate] = []
        drop: list[int] = []
        for cand in candidates:
            if cand.blob is not None and verify(cand.digest, cand.size):
                keep.append(cand)
            else:
                drop.append(cand.id)

        def update(conn: sqlite3.Connection) -> None:
            _delete_ids(conn, drop)
            if keep:
                _touch_ids(conn, [c.id for c in keep])

        if drop or keep:
            self._call(f"update blobs of {location}", update, write=True)
        out = StoredChunks(ChunkDict(), {})
        for cand in keep:
            assert cand.blob is not None
            out.chunks.add_blob(cand.blob.info, cand.chunks)
            out.blobs[cand.blob.info.blob_id] = cand.blob
        return out

    def mark_used(self, location: str, blob_digests: Iterable[str]) -> None:
        """Count these blobs at ``location`` as just used (for callers that touch a blob without
        :meth:`chunk_dict`, e.g. one a build referenced)."""
        digests = list(blob_digests)
        if not digests:
            return

        def touch(conn: sqlite3.Connection) -> None:
            tick = _tick(conn)
            conn.executemany(
                "UPDATE blobs SET last_used = ? WHERE location = ? AND digest = ?",
                ((tick, location, d) for d in digests),
            )

        self._call("mark blobs used", touch, write=True)

    def forget_blob(self, location: str, blob_digest: str) -> None:
        """Drop the record of ``blob_digest`` at ``location`` (e.g. the registry lost it)."""
        self._call(
            f"forget blob {blob_digest}",
            lambda conn: _delete_blobs(conn, "location = ? AND digest = ?", (location, blob_digest)),
            write=True,
        )

    def locations_of(self, blob_digest: str) -> list[str]:
        """Every ``HOST/REPOSITORY`` the blob is recorded at (unverified: a cross-repository
        mount source candidate)."""
        return self._call(
            f"look up blob {blob_digest}",
            lambda conn: [
                str(r[0])
                for r in conn.execute(
                    "SELECT location FROM blobs WHERE digest = ? ORDER BY last_used DESC", (blob_digest,)
                )
            ],
            write=False,
        )

    def gc(self, *, max_blobs: int | None = None, verify: bool = False) -> GcReport:
        """Evict the least recently used blobs beyond ``max_blobs`` (default: the store's
        limit) and chunk rows of no blob; with ``verify``, also drop every record that fails
        its checksum (reads the whole database). Freed pages go back to the file system
        (incremental vacuum, no ``VACUUM``: other processes keep working meanwhile)."""
        limit = self.max_blobs if max_blobs is None else max_blobs
        if limit < 0:
            raise ChunkStoreError(f"chunk store: gc limit must not be negative, not {limit}")

        def collect(conn: sqlite3.Connection) -> GcReport:
            dropped = 0
            if verify:
                bad = []
                for row in conn.execute(
                    f"SELECT id, {_BLOB_HEAD}, info, blob_meta, chunk_count, checksum FROM blobs"
                ).fetchall():
                    if _load_candidate(conn, row).blob is None:
                        bad.append(int(row[0]))
                _delete_ids(conn, bad)
                dropped = len(bad)
            orphans = conn.execute("DELETE FROM chunks WHERE blob NOT IN (SELECT id FROM blobs)").rowcount
            evicted, evicted_chunks = _evict(conn, limit)
            blobs, chunks = _counts(conn)
            return GcReport(evicted, evicted_chunks, dropped, orphans, blobs, chunks)

        report = self._call("collect garbage", collect, write=True)
        with contextlib.suppress(ChunkStoreError):  # space reclamation is best effort
            # Its own autocommit statement run to completion (executescript): a single
            # execute() frees one page per call.
            self._call(
                "reclaim space", lambda conn: conn.executescript("PRAGMA incremental_vacuum;"), write=None
            )
        return report

    def stats(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            blobs, chunks = _counts(conn)
            locations = conn.execute("SELECT COUNT(DISTINCT location) FROM blobs").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            return {
                "blobs": blobs,
                "chunks": chunks,
                "locations": int(locations),
                "db_bytes": int(pages) * int(page_size),
                "free_bytes": int(free) * int(page_size),
                "max_blobs": self.max_blobs,
            }

        return self._call("read statistics", read, write=False)

    # -- transactions and recovery ----------------------------------------------------------

    def _call(self, what: str, fn: Callable[[sqlite3.Connection], T], *, write: bool | None) -> T:
        """``fn`` in one transaction (``write=None``: ``fn`` runs its own); corruption met on
        the way is repaired once (the file is moved aside and recreated) and ``fn`` retried on
        the fresh database."""
        for attempt in range(2):
            with self._lock:
                conn = self._connection()
                try:
                    if write is None:
                        return fn(conn)
                    return _in_transaction(conn, fn, write=write)
                except sqlite3.Error as exc:
                    if attempt == 0 and _is_corruption(exc):
                        self._recover(f"{what}: {exc}")
                        continue
                    raise ChunkStoreError(f"chunk store {self.path}: cannot {what}: {exc}") from None
                except OverflowError:
                    raise ChunkStoreError(
                        f"chunk store {self.path}: cannot {what}: a value exceeds 64 bits"
                    ) from None
        raise AssertionError("unreachable")

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise ChunkStoreError(f"chunk store {self.path} is closed")
        if self._conn is None or self._pid != os.getpid() or self._ident != _identity(self.path):
            # First use, a forked child (a connection must not cross fork), or another process
            # moved a corrupt file aside under us: open what is at the path now.
            self._reconnect()
        assert self._conn is not None
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn, self._ident = self._conn, None, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._pid = os.getpid()

    def _reconnect(self) -> None:
        self._drop_connection()
        with _file_lock(self.state_dir / LOCK_NAME):
            self._conn = self._open_checked()
            self._ident = _identity(self.path)

    def _recover(self, problem: str) -> None:
        ident = self._ident
        self._drop_connection()
        with _file_lock(self.state_dir / LOCK_NAME):
            if ident is not None and _identity(self.path) == ident:  # nobody replaced it yet
                self._move_aside(problem)
            self._conn = self._open_checked()
            self._ident = _identity(self.path)

    def _open_checked(self) -> sqlite3.Connection:
        """A connection to a checked database at :attr:`path`, moving a bad file aside once.
        Runs under the file lock."""
        for attempt in range(2):
            conn: sqlite3.Connection | None = None
            try:
                _create_private(self.path)
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
                )
                problem = _prepare(conn)
                if problem is None:
                    return conn
            except sqlite3.Error as exc:
                if not _is_corruption(exc):
                    _close_quietly(conn)
                    raise ChunkStoreError(f"chunk store {self.path}: cannot open: {exc}") from None
                problem = str(exc)
            except OSError as exc:
                _close_quietly(conn)
                raise ChunkStoreError(f"chunk store {self.path}: cannot open: {exc.strerror}") from None
            except BaseException:
                _close_quietly(conn)
                raise
            _close_quietly(conn)
            if attempt:
                raise ChunkStoreError(f"chunk store {self.path}: still unusable after rebuilding: {problem}")
            self._move_aside(problem)
        raise AssertionError("unreachable")

    def _move_aside(self, problem: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{DB_NAME}{CORRUPT_INFIX}{stamp}")
        try:
            # The WAL and shared-memory files belong to the old file: a WAL left next to a new
            # database would be replayed into it.
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            (aside.parent / f"{aside.name}.reason").write_text(problem + "\n")
        except OSError as exc:
            raise ChunkStoreError(
                f"chunk store {self.path} is unusable ({problem}) and cannot be moved aside: {exc.strerror}"
            ) from None
        self.moved_aside.append(aside)
        _prune_corrupt(self.path)


# -- helpers --------------------------------------------------------------------------------


def _check_location(location: str) -> None:
    host, _, repo = location.partition("/")
    if not host or not repo or any(c.isspace() for c in location):
        raise ChunkStoreError(f"chunk store: location must be HOST/REPOSITORY, not {location!r}")


def _check_digest(digest: str) -> str:
    hex_id = digest.removeprefix("sha256:")
    if not digest.startswith("sha256:") or len(hex_id) != 64 or hex_id.strip("0123456789abcdef"):
        raise ChunkStoreError(f"chunk store: not a sha256 blob digest: {digest!r}")
    return hex_id


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
    # IMMEDIATE takes the write lock up front (waiting up to the busy timeout): a deferred
    # transaction that later upgrades to a writer fails at once with SQLITE_BUSY in WAL mode.
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return type(exc) is sqlite3.DatabaseError
    return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _prepare(conn: sqlite3.Connection) -> str | None:
    """Configure a fresh connection and check (or create) the schema; a reason the file is
    not our database, or ``None``."""
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
    # Reading the header first: a file that is not a database fails here.
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    fresh = (app_id, version) == (0, 0)
    if fresh:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before WAL and the first table: gc frees pages
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise ChunkStoreError(f"the file system does not support SQLite WAL mode (journal mode {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: consistent after a crash
    conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate the WAL back to 64 MiB
    if fresh:
        _in_transaction(conn, _create_schema, write=True)
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id != APPLICATION_ID:
        return f"not a nydus-exporter chunk store (application_id {app_id:#x})"
    if version != SCHEMA_VERSION:
        return f"chunk store schema version {version}, this version reads {SCHEMA_VERSION}"
    check = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    if check != ["ok"]:
        return "quick_check: " + "; ".join(check[:5])
    return None


def _create_schema(conn: sqlite3.Connection) -> None:
    if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
        return  # a foreign database (application_id 0): reported by the caller
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _tick(conn: sqlite3.Connection) -> int:
    """The next value of the store-wide LRU clock (inside a write transaction: every process
    sees one strictly increasing sequence, unlike wall-clock time)."""
    conn.execute("UPDATE clock SET tick = tick + 1 WHERE id = 0")
    return int(conn.execute("SELECT tick FROM clock WHERE id = 0").fetchone()[0])


def _delete_ids(conn: sqlite3.Connection, ids: list[int]) -> None:
    for i in range(0, len(ids), _BATCH):
        batch = ids[i : i + _BATCH]
        _delete_blobs(conn, f"id IN ({', '.join('?' * len(batch))})", batch)


def _touch_ids(conn: sqlite3.Connection, ids: list[int]) -> None:
    tick = _tick(conn)
    for i in range(0, len(ids), _BATCH):
        batch = ids[i : i + _BATCH]
        conn.execute(
            f"UPDATE blobs SET last_used = ? WHERE id IN ({', '.join('?' * len(batch))})", (tick, *batch)
        )


def _delete_blobs(conn: sqlite3.Connection, where: str, params: Iterable[object]) -> tuple[int, int]:
    params = tuple(params)
    ids = [int(r[0]) for r in conn.execute(f"SELECT id FROM blobs WHERE {where}", params)]
    chunks = 0
    for blob_id in ids:
        chunks += conn.execute("DELETE FROM chunks WHERE blob = ?", (blob_id,)).rowcount
        conn.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
    return len(ids), chunks


def _evict(conn: sqlite3.Connection, limit: int) -> tuple[int, int]:
    count = int(conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0])
    if count <= limit:
        return 0, 0
    return _delete_blobs(
        conn, "id IN (SELECT id FROM blobs ORDER BY last_used, id LIMIT ?)", (count - limit,)
    )


def _counts(conn: sqlite3.Connection) -> tuple[int, int]:
    blobs = conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
    chunks = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    return int(blobs), int(chunks)


def _load_candidate(conn: sqlite3.Connection, row: tuple[object, ...]) -> _Candidate:
    blob_id, location, digest, size, chunk_size, digester, compressor = row[:7]
    info_json, blob_meta, chunk_count, checksum = row[7:]
    assert isinstance(blob_id, int)  # INTEGER PRIMARY KEY
    rows = conn.execute(_CHUNK_SELECT, (blob_id,)).fetchall()
    cand = _Candidate(blob_id, str(digest), size if isinstance(size, int) else -1, None, [])
    try:
        if (
            not isinstance(digest, str)
            or not isinstance(size, int)
            or not isinstance(info_json, str)
            or not (blob_meta is None or isinstance(blob_meta, bytes))
        ):
            raise ValueError("mistyped columns")
        chunks = [codec.chunk_from_row(r) for r in rows]
        head = (location, digest, size, chunk_size, digester, compressor)
        if chunk_count != len(rows) or checksum != codec.record_checksum(
            head, info_json, blob_meta, (codec.chunk_row(c) for c in chunks)
        ):
            raise ValueError("checksum mismatch")
        info = codec.info_from_json(info_json)
        if info.blob_id != digest.removeprefix("sha256:"):
            raise ValueError("blob info names another blob")
    except ValueError:
        return cand  # a record that does not read back as written: forgotten by the caller
    cand.blob = StoredBlob(digest, size, info, blob_meta)
    cand.chunks = chunks
    return cand


def _close_quietly(conn: sqlite3.Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _create_private(path: Path) -> None:
    """Create the database file 0600 (SQLite would use the umask; its -wal/-shm files copy the
    database file's mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ChunkStoreError(f"cannot open lock file {path}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ChunkStoreError(f"cannot lock {path}: {exc.strerror}") from None
                if time.monotonic() > deadline:
                    raise ChunkStoreError(
                        f"{path} stayed locked for {LOCK_TIMEOUT:.0f} s (another process opening the store)"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


def _prune_corrupt(path: Path) -> None:
    prefix = f"{path.name}{CORRUPT_INFIX}"
    stamps = sorted(
        {p.name[len(prefix) :].split("-")[0].removesuffix(".reason") for p in path.parent.glob(prefix + "*")}
    )
    for stamp in stamps[:-KEEP_CORRUPT]:
        for suffix in ("", "-wal", "-shm", ".reason"):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / f"{prefix}{stamp}{suffix}")
