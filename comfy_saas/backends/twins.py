"""Local twins of modal.Dict and modal.Queue, backed by one SQLite file.

Same method names and semantics as Modal's for what the project uses, safe across threads and processes
(WAL, one connection per thread and process). Values must be JSON-compatible: the same rule the job store
follows on Modal, where values are pickled.

Two profiles: `local` answers at SQLite speed and keeps everything; `modal` behaves the way Modal does
(see modal/dict.py, modal/queue.py and Modal's Dicts and Queues guide): every call costs a network round
trip, a Dict entry expires 7 days after its last read or write, a queue partition is cleared 24 h after
its last put, and oversized values, items and partitions are refused as Modal refuses them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_NO_DEFAULT = object()
QUEUE_PARTITION_CAPACITY = 5_000  # Modal's per-partition item limit
_POLL_S = 0.005  # how often a blocked get/put looks for another process's commit (this one's wake it at once)
_MIB = 1024 * 1024


class RequestSizeError(Exception):
    """Raised, like modal.exception.RequestSizeError, for a request Modal refuses as too large (HTTP 413)."""


@dataclass(frozen=True)
class Profile:
    """How much like Modal the twins behave; `Profile()` is plain local SQLite."""

    name: str = "local"
    rpc_s: float = 0.0
    entry_ttl_s: float | None = None
    partition_ttl_s: float | None = None
    max_value_bytes: int | None = None
    max_update_entries: int | None = None
    max_dict_bytes: int | None = None
    max_item_bytes: int | None = None
    max_partition_bytes: int | None = None
    max_partitions: int | None = None
    clock: Callable[[], float] = field(default=time.time, compare=False)

    @classmethod
    def modal(cls, rpc_ms: float = 25.0, clock: Callable[[], float] = time.time, **limits: Any) -> Profile:
        """Modal's latency, expiry and limits; `limits` overrides any of them (tests use small ones)."""
        values = {"entry_ttl_s": 7 * 86_400.0, "partition_ttl_s": 86_400.0, "max_value_bytes": 100 * _MIB,
                  "max_update_entries": 10_000, "max_dict_bytes": 10 * 1024 * _MIB, "max_item_bytes": _MIB,
                  "max_partition_bytes": 64 * _MIB, "max_partitions": 100_000, **limits}
        return cls(name="modal", rpc_s=rpc_ms / 1000, clock=clock, **values)

    @property
    def round_trips(self) -> bool:
        """Whether a call costs a network round trip (the Modal profile), so batches should run concurrently."""
        return self.rpc_s > 0

    def round_trip(self, call: Callable[[], Any]) -> Any:
        """Run one call as a network round trip: half the latency out, the call, half back."""
        if self.rpc_s:
            time.sleep(self.rpc_s / 2)
        result = call()
        if self.rpc_s:
            time.sleep(self.rpc_s / 2)
        return result


LOCAL = Profile()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dict_entries (
    name TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, touched REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dict_sizes (name TEXT PRIMARY KEY, bytes INTEGER NOT NULL DEFAULT 0);
CREATE TRIGGER IF NOT EXISTS dict_size_insert AFTER INSERT ON dict_entries BEGIN
    INSERT INTO dict_sizes (name, bytes) VALUES (NEW.name, length(NEW.value))
    ON CONFLICT (name) DO UPDATE SET bytes = bytes + length(NEW.value);
END;
CREATE TRIGGER IF NOT EXISTS dict_size_delete AFTER DELETE ON dict_entries BEGIN
    UPDATE dict_sizes SET bytes = bytes - length(OLD.value) WHERE name = OLD.name;
END;
CREATE TRIGGER IF NOT EXISTS dict_size_update AFTER UPDATE OF value ON dict_entries BEGIN
    UPDATE dict_sizes SET bytes = bytes - length(OLD.value) + length(NEW.value) WHERE name = NEW.name;
END;
CREATE TABLE IF NOT EXISTS queue_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, partition TEXT NOT NULL, value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_items_by_partition ON queue_items (name, partition, id);
CREATE TABLE IF NOT EXISTS queue_partitions (
    name TEXT NOT NULL, partition TEXT NOT NULL, last_put REAL NOT NULL, PRIMARY KEY (name, partition)
) WITHOUT ROWID;
"""


class Database:
    """One SQLite file; hands each thread (and each forked process) its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Commits by this process's threads wake its waiters at once; another process's are seen by polling.
        self._changed = threading.Condition()
        self._generation = 0
        # This process's writers queue here for microseconds, rather than meet SQLite's busy handler, which
        # sleeps a millisecond or more (another process's writer still does); the event loop writes too.
        self.writing = threading.RLock()
        conn = self.conn()
        _add_missing_columns(conn)
        conn.executescript(_SCHEMA)
        _count_queue_sizes(conn)

    def conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            local.conn.execute("PRAGMA journal_mode=WAL")
            local.conn.execute("PRAGMA synchronous=NORMAL")
            local.pid = os.getpid()
        return local.conn

    def transaction(self) -> _Transaction:
        """BEGIN IMMEDIATE ... COMMIT: a write lock for read-check-write sequences."""
        return _Transaction(self.conn(), self.writing)

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap; used to wake blocked waiters)."""
        return self.conn().execute("PRAGMA data_version").fetchone()[0]

    def generation(self) -> int:
        """How many changes this process announced (read before looking, then passed to wait_for_change)."""
        return self._generation

    def announce(self) -> None:
        """Wake this process's waiters: a thread of it committed something they may be waiting for."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def wait_for_change(self, since: int, deadline: float | None, generation: int | None = None) -> bool:
        """Block until a commit by another connection after version `since` (or, with `generation`, an
        announcement by this process after it); False at the deadline."""
        while self.data_version() == since:
            left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            if left <= 0:
                return False
            if generation is None:
                time.sleep(left)
                continue
            with self._changed:
                if self._changed.wait_for(lambda: self._generation != generation, left):
                    return True
        return True


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Data directories made before entries expired had no `touched` column."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(dict_entries)")}
    if columns and "touched" not in columns:
        conn.execute("ALTER TABLE dict_entries ADD COLUMN touched REAL NOT NULL DEFAULT 0")
        conn.execute("UPDATE dict_entries SET touched=?", (time.time(),))


_QUEUE_SIZES = (
    """CREATE TABLE queue_sizes (
        name TEXT NOT NULL, partition TEXT NOT NULL, items INTEGER NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (name, partition)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER queue_size_insert AFTER INSERT ON queue_items BEGIN
        INSERT INTO queue_sizes (name, partition, items, bytes) VALUES (NEW.name, NEW.partition, 1, length(NEW.value))
        ON CONFLICT (name, partition) DO UPDATE SET items = items + 1, bytes = bytes + length(NEW.value);
    END""",
    """CREATE TRIGGER queue_size_delete AFTER DELETE ON queue_items BEGIN
        UPDATE queue_sizes SET items = items - 1, bytes = bytes - length(OLD.value)
        WHERE name = OLD.name AND partition = OLD.partition;
    END""",
    "INSERT INTO queue_sizes SELECT name, partition, COUNT(*), SUM(length(value)) FROM queue_items "
    "GROUP BY name, partition",
)


def _count_queue_sizes(conn: sqlite3.Connection) -> None:
    """Each partition's item count and bytes, kept by triggers, so a put reads one row rather than its whole
    partition (which made a put into a backlog of 4,000 take 4 ms, holding the write lock). A data directory
    made before them has them counted once, by whichever process opens it first."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='queue_sizes'").fetchone() is None:
            for statement in _QUEUE_SIZES:
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class _Transaction:
    def __init__(self, conn: sqlite3.Connection, writing: Any) -> None:
        self.conn, self.writing = conn, writing

    def __enter__(self) -> sqlite3.Connection:
        with contextlib.ExitStack() as undo:
            self.writing.acquire()
            undo.callback(self.writing.release)
            self.conn.execute("BEGIN IMMEDIATE")
            undo.pop_all()
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.writing.release()


_databases: dict[str, Database] = {}
_databases_lock = threading.Lock()


def database(path: str | Path) -> Database:
    """The process-wide Database for a file path."""
    key = os.path.abspath(path)
    with _databases_lock:
        if key not in _databases:
            _databases[key] = Database(key)
        return _databases[key]


def _dump(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"twin values must be JSON-compatible: {exc}") from None


class LocalDict:
    """modal.Dict's interface over SQLite."""

    def __init__(self, path: str | Path, name: str = "jobs", profile: Profile = LOCAL) -> None:
        self._db = database(path)
        self.name = name
        self.profile = profile
        self.round_trips = profile.round_trips

    # --- expiry: an entry lives entry_ttl_s after its last read or write --------------------------

    def _cutoff(self) -> float:
        ttl = self.profile.entry_ttl_s
        return float("-inf") if ttl is None else self.profile.clock() - ttl

    def _live(self, key: str) -> str | None:
        row = self._db.conn().execute("SELECT value, touched FROM dict_entries WHERE name=? AND key=?",
                                      (self.name, key)).fetchone()
        if row is None:
            return None
        if row[1] < self._cutoff():
            with self._db.writing:
                self._db.conn().execute("DELETE FROM dict_entries WHERE name=? AND key=? AND touched=?",
                                        (self.name, key, row[1]))
            return None
        if self.profile.entry_ttl_s is not None:  # a read keeps the entry alive
            with self._db.writing:
                self._db.conn().execute("UPDATE dict_entries SET touched=? WHERE name=? AND key=?",
                                        (self.profile.clock(), self.name, key))
        return row[0]

    def _expire_all(self) -> None:
        if self.profile.entry_ttl_s is not None:
            with self._db.writing:
                self._db.conn().execute("DELETE FROM dict_entries WHERE name=? AND touched<?",
                                        (self.name, self._cutoff()))

    # --- reads ---------------------------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        raw = self.profile.round_trip(lambda: self._live(_dump(key)))
        return default if raw is None else json.loads(raw)

    def contains(self, key: Any) -> bool:
        return self.profile.round_trip(lambda: self._live(_dump(key))) is not None

    __contains__ = contains

    def __getitem__(self, key: Any) -> Any:
        raw = self.profile.round_trip(lambda: self._live(_dump(key)))
        if raw is None:
            raise KeyError(key)
        return json.loads(raw)

    # --- writes --------------------------------------------------------------------------------

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        """Write key; with skip_if_exists, only if absent. True when this call wrote the value."""
        row = (self.name, _dump(key), self._checked(_dump(value)))
        return self.profile.round_trip(lambda: self._write([row], skip_if_exists))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def update(self, other: Mapping[Any, Any] | None = None, /, **kwargs: Any) -> None:
        entries = {**(other or {}), **kwargs}
        limit = self.profile.max_update_entries
        if limit is not None and len(entries) > limit:
            raise RequestSizeError(f"Dict.update request is too large ({len(entries)} entries; at most {limit})")
        rows = [(self.name, _dump(k), self._checked(_dump(v))) for k, v in entries.items()]
        self.profile.round_trip(lambda: self._write(rows, False))

    def _checked(self, raw: str) -> str:
        limit = self.profile.max_value_bytes
        if limit is not None and len(raw) > limit:
            raise RequestSizeError(f"Dict.put request is too large ({len(raw)} bytes; at most {limit})")
        return raw

    def _write(self, rows: list[tuple[str, str, str]], skip_if_exists: bool) -> bool:
        if self.profile.entry_ttl_s is None and self.profile.max_dict_bytes is None and len(rows) == 1:
            with self._db.writing:  # one statement is atomic on its own
                return self._insert(self._db.conn(), rows, skip_if_exists)
        with self._db.transaction() as conn:
            self._expire_keys(conn, [r[1] for r in rows])
            self._check_total(conn, rows)
            return self._insert(conn, rows, skip_if_exists)

    def _insert(self, conn: sqlite3.Connection, rows: list[tuple[str, str, str]], skip_if_exists: bool) -> bool:
        now = self.profile.clock()
        if skip_if_exists:
            cur = conn.execute("INSERT OR IGNORE INTO dict_entries (name, key, value, touched) VALUES (?,?,?,?)",
                               (*rows[0], now))
            return cur.rowcount == 1
        conn.executemany("INSERT INTO dict_entries (name, key, value, touched) VALUES (?,?,?,?) "
                         "ON CONFLICT (name, key) DO UPDATE SET value=excluded.value, touched=excluded.touched",
                         [(*r, now) for r in rows])
        return True

    def _expire_keys(self, conn: sqlite3.Connection, keys: list[str]) -> None:
        if self.profile.entry_ttl_s is not None:
            conn.executemany("DELETE FROM dict_entries WHERE name=? AND key=? AND touched<?",
                             [(self.name, k, self._cutoff()) for k in keys])

    def _check_total(self, conn: sqlite3.Connection, rows: list[tuple[str, str, str]]) -> None:
        limit = self.profile.max_dict_bytes
        if limit is None:
            return
        (used,) = conn.execute("SELECT COALESCE(MAX(bytes), 0) FROM dict_sizes WHERE name=?", (self.name,)).fetchone()
        if used + sum(len(r[2]) for r in rows) > limit:
            raise RequestSizeError(f"the Dict is full ({used} bytes stored; at most {limit})")

    def pop(self, key: Any, default: Any = _NO_DEFAULT) -> Any:
        raw = self.profile.round_trip(lambda: self._pop(_dump(key)))
        if raw is not None:
            return json.loads(raw)
        if default is _NO_DEFAULT:
            raise KeyError(key)
        return default

    def _pop(self, key: str) -> str | None:
        with self._db.writing:
            row = self._db.conn().execute("DELETE FROM dict_entries WHERE name=? AND key=? RETURNING value, touched",
                                          (self.name, key)).fetchone()
        return None if row is None or row[1] < self._cutoff() else row[0]

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    # --- whole-Dict operations (scans: never on a hot path) ---------------------------------------

    def _rows(self, columns: str) -> list[tuple[str, ...]]:
        self._expire_all()
        return self._db.conn().execute(f"SELECT {columns} FROM dict_entries WHERE name=?", (self.name,)).fetchall()

    def keys(self) -> Iterator[Any]:
        return (json.loads(k) for (k,) in self.profile.round_trip(lambda: self._rows("key")))

    def values(self) -> Iterator[Any]:
        return (json.loads(v) for (v,) in self.profile.round_trip(lambda: self._rows("value")))

    def items(self) -> Iterator[tuple[Any, Any]]:
        return ((json.loads(k), json.loads(v)) for k, v in self.profile.round_trip(lambda: self._rows("key, value")))

    def len(self) -> int:
        return len(self.profile.round_trip(lambda: self._rows("1")))

    def clear(self) -> None:
        self.profile.round_trip(self._clear)

    def _clear(self) -> None:
        with self._db.writing:
            self._db.conn().execute("DELETE FROM dict_entries WHERE name=?", (self.name,))


def _partition_key(partition: str | None) -> str:
    if partition is None:
        return ""
    if not 1 <= len(partition.encode()) <= 64:
        raise ValueError("Queue partition key must be between 1 and 64 characters.")
    return partition


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class LocalQueue:
    """modal.Queue's interface over SQLite: FIFO partitions of up to 5,000 items."""

    def __init__(self, path: str | Path, name: str = "work", capacity: int = QUEUE_PARTITION_CAPACITY,
                 profile: Profile = LOCAL) -> None:
        self._db = database(path)
        self.name = name
        self.capacity = capacity
        self.profile = profile
        self.round_trips = profile.round_trips

    def put(self, v: Any, block: bool = True, timeout: float | None = None, *,
            partition: str | None = None, partition_ttl: int = 24 * 3600) -> None:
        self.put_many([v], block, timeout, partition=partition, partition_ttl=partition_ttl)

    def put_many(self, vs: list[Any], block: bool = True, timeout: float | None = None, *,
                 partition: str | None = None, partition_ttl: int = 24 * 3600) -> None:
        """Append all of vs at once; raise queue.Full when there is no room (after timeout if blocking)."""
        part, rows = _partition_key(partition), [self._checked(_dump(v)) for v in vs]
        self.profile.round_trip(lambda: self._put_blocking(part, rows, block, _deadline(timeout)))

    def _checked(self, raw: str) -> str:
        limit = self.profile.max_item_bytes
        if limit is not None and len(raw) > limit:
            raise RequestSizeError(f"Queue.put request is too large ({len(raw)} bytes; at most {limit})")
        return raw

    def _put_blocking(self, part: str, rows: list[str], block: bool, deadline: float | None) -> None:
        while True:
            seen, generation = self._db.data_version(), self._db.generation()
            if self._try_append(part, rows):
                self._db.announce()
                return
            if not block or not self._db.wait_for_change(seen, deadline, generation):
                raise queue.Full(f"queue partition {part or '(default)'!r} is full ({self.capacity} items)")

    def _try_append(self, part: str, rows: list[str]) -> bool:
        with self._db.transaction() as conn:
            self._expire_partition(conn, part)
            count, size = conn.execute("SELECT items, bytes FROM queue_sizes WHERE name=? AND partition=?",
                                       (self.name, part)).fetchone() or (0, 0)
            max_bytes = self.profile.max_partition_bytes
            if count + len(rows) > self.capacity or (max_bytes and size + sum(map(len, rows)) > max_bytes):
                return False
            self._check_partition_count(conn, part)
            conn.executemany("INSERT INTO queue_items (name, partition, value) VALUES (?, ?, ?)",
                             [(self.name, part, r) for r in rows])
            conn.execute("INSERT INTO queue_partitions (name, partition, last_put) VALUES (?, ?, ?) "
                         "ON CONFLICT (name, partition) DO UPDATE SET last_put=excluded.last_put",
                         (self.name, part, self.profile.clock()))
            return True

    def _check_partition_count(self, conn: sqlite3.Connection, part: str) -> None:
        limit = self.profile.max_partitions
        if limit is None:
            return
        known = conn.execute("SELECT 1 FROM queue_partitions WHERE name=? AND partition=?",
                             (self.name, part)).fetchone()
        (count,) = conn.execute("SELECT COUNT(*) FROM queue_partitions WHERE name=?", (self.name,)).fetchone()
        if known is None and count >= limit:
            raise RequestSizeError(f"the Queue has {count} partitions; at most {limit}")

    def _expire_partition(self, conn: sqlite3.Connection, part: str | None) -> None:
        """A partition is cleared partition_ttl_s after its last put (all of them when part is None)."""
        ttl = self.profile.partition_ttl_s
        if ttl is None:
            return
        cutoff = self.profile.clock() - ttl
        where, args = ("name=? AND last_put<?", (self.name, cutoff)) if part is None else \
            ("name=? AND partition=? AND last_put<?", (self.name, part, cutoff))
        for (gone,) in conn.execute(f"SELECT partition FROM queue_partitions WHERE {where}", args).fetchall():
            conn.execute("DELETE FROM queue_items WHERE name=? AND partition=?", (self.name, gone))
            conn.execute("DELETE FROM queue_partitions WHERE name=? AND partition=?", (self.name, gone))

    def get(self, block: bool = True, timeout: float | None = None, *, partition: str | None = None) -> Any:
        """Remove and return the oldest item; None if empty and not blocking; queue.Empty on timeout."""
        items = self.profile.round_trip(lambda: self._take(1, block, timeout, partition))
        return items[0] if items else None

    def get_many(self, n_values: int, block: bool = True, timeout: float | None = None, *,
                 partition: str | None = None) -> list[Any]:
        return self.profile.round_trip(lambda: self._take(n_values, block, timeout, partition))

    def _take(self, n: int, block: bool, timeout: float | None, partition: str | None) -> list[Any]:
        part, deadline = _partition_key(partition), _deadline(timeout)
        while True:
            seen, generation = self._db.data_version(), self._db.generation()
            items = self._pop(n, part)
            if items:
                self._db.announce()  # room for a put blocked on a full partition
                return items
            if not block:
                return items
            if not self._db.wait_for_change(seen, deadline, generation):
                raise queue.Empty()

    def _pop(self, n: int, part: str) -> list[Any]:
        # No ack, as on Modal: an item is gone the moment it is taken.
        with self._db.transaction() as conn:
            self._expire_partition(conn, part)
            rows = conn.execute(
                "DELETE FROM queue_items WHERE id IN (SELECT id FROM queue_items WHERE name=? AND partition=? "
                "ORDER BY id LIMIT ?) RETURNING id, value", (self.name, part, n)).fetchall()
        return [json.loads(v) for _, v in sorted(rows)]

    def len(self, *, partition: str | None = None, total: bool = False) -> int:
        return self.profile.round_trip(lambda: self._len(partition, total))

    def _len(self, partition: str | None, total: bool) -> int:
        with self._db.transaction() as conn:
            self._expire_partition(conn, None if total else _partition_key(partition))
            if total:
                sql, args = "SELECT COALESCE(SUM(items), 0) FROM queue_sizes WHERE name=?", (self.name,)
            else:
                sql = "SELECT COALESCE(SUM(items), 0) FROM queue_sizes WHERE name=? AND partition=?"
                args = (self.name, _partition_key(partition))
            return conn.execute(sql, args).fetchone()[0]

    def clear(self, *, partition: str | None = None, all: bool = False) -> None:
        self.profile.round_trip(lambda: self._clear(partition, all))

    def _clear(self, partition: str | None, all: bool) -> None:
        with self._db.writing:
            self._delete_items(partition, all)

    def _delete_items(self, partition: str | None, all: bool) -> None:
        if all:
            self._db.conn().execute("DELETE FROM queue_items WHERE name=?", (self.name,))
        else:
            self._db.conn().execute("DELETE FROM queue_items WHERE name=? AND partition=?",
                                    (self.name, _partition_key(partition)))


def profile_for(settings: Any, clock: Callable[[], float] = time.time) -> Profile:
    """The profile the settings name (COMFY_TWIN_PROFILE, COMFY_TWIN_RPC_MS)."""
    if settings.twin.profile == "modal":
        return Profile.modal(settings.twin.rpc_ms, clock)
    return LOCAL
