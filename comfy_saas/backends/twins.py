"""Local twins of modal.Dict and modal.Queue, backed by one SQLite file.

Same method names and semantics as Modal's for what the project uses, safe across threads and
processes (WAL, one connection per thread and process). Values must be JSON-compatible: the same
rule the job store follows on Modal, where values are pickled.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_NO_DEFAULT = object()
QUEUE_PARTITION_CAPACITY = 5_000  # Modal's per-partition item limit
_POLL_S = 0.005  # how often a blocked get/put looks for another process's commit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dict_entries (
    name TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (name, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, partition TEXT NOT NULL, value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_items_by_partition ON queue_items (name, partition, id);
"""


class Database:
    """One SQLite file; hands each thread (and each forked process) its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.conn().executescript(_SCHEMA)

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
        return _Transaction(self.conn())

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap; used to wake blocked waiters)."""
        return self.conn().execute("PRAGMA data_version").fetchone()[0]

    def wait_for_change(self, since: int, deadline: float | None) -> bool:
        """Block until a commit by another connection after version `since`; False at the deadline."""
        while self.data_version() == since:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


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

    def __init__(self, path: str | Path, name: str = "jobs") -> None:
        self._db = database(path)
        self.name = name

    def _one(self, sql: str, *args: Any) -> Any:
        return self._db.conn().execute(sql, (self.name, *args)).fetchone()

    def get(self, key: Any, default: Any = None) -> Any:
        row = self._one("SELECT value FROM dict_entries WHERE name=? AND key=?", _dump(key))
        return default if row is None else json.loads(row[0])

    def contains(self, key: Any) -> bool:
        return self._one("SELECT 1 FROM dict_entries WHERE name=? AND key=?", _dump(key)) is not None

    __contains__ = contains

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        """Write key; with skip_if_exists, only if absent. True when this call wrote the value."""
        verb = "INSERT OR IGNORE" if skip_if_exists else "INSERT OR REPLACE"
        cur = self._db.conn().execute(
            f"{verb} INTO dict_entries (name, key, value) VALUES (?, ?, ?)", (self.name, _dump(key), _dump(value))
        )
        return cur.rowcount == 1

    def __getitem__(self, key: Any) -> Any:
        row = self._one("SELECT value FROM dict_entries WHERE name=? AND key=?", _dump(key))
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def pop(self, key: Any, default: Any = _NO_DEFAULT) -> Any:
        row = self._one("DELETE FROM dict_entries WHERE name=? AND key=? RETURNING value", _dump(key))
        if row is not None:
            return json.loads(row[0])
        if default is _NO_DEFAULT:
            raise KeyError(key)
        return default

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    def update(self, other: Mapping[Any, Any] | None = None, /, **kwargs: Any) -> None:
        rows = [(self.name, _dump(k), _dump(v)) for k, v in {**(other or {}), **kwargs}.items()]
        with self._db.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO dict_entries (name, key, value) VALUES (?, ?, ?)", rows)

    def _rows(self, columns: str) -> list[tuple[str, ...]]:
        return self._db.conn().execute(f"SELECT {columns} FROM dict_entries WHERE name=?", (self.name,)).fetchall()

    def keys(self) -> Iterator[Any]:
        return (json.loads(k) for (k,) in self._rows("key"))

    def values(self) -> Iterator[Any]:
        return (json.loads(v) for (v,) in self._rows("value"))

    def items(self) -> Iterator[tuple[Any, Any]]:
        return ((json.loads(k), json.loads(v)) for k, v in self._rows("key, value"))

    def len(self) -> int:
        return self._one("SELECT COUNT(*) FROM dict_entries WHERE name=?")[0]

    def clear(self) -> None:
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

    def __init__(self, path: str | Path, name: str = "work", capacity: int = QUEUE_PARTITION_CAPACITY) -> None:
        self._db = database(path)
        self.name = name
        self.capacity = capacity

    def put(self, v: Any, block: bool = True, timeout: float | None = None, *,
            partition: str | None = None, partition_ttl: int = 24 * 3600) -> None:
        self.put_many([v], block, timeout, partition=partition, partition_ttl=partition_ttl)

    def put_many(self, vs: list[Any], block: bool = True, timeout: float | None = None, *,
                 partition: str | None = None, partition_ttl: int = 24 * 3600) -> None:
        """Append all of vs at once; raise queue.Full when there is no room (after timeout if blocking)."""
        part, rows = _partition_key(partition), [_dump(v) for v in vs]
        deadline = _deadline(timeout)
        while True:
            seen = self._db.data_version()
            if self._try_append(part, rows):
                return
            if not block or not self._db.wait_for_change(seen, deadline):
                raise queue.Full(f"queue partition {part or '(default)'!r} is full ({self.capacity} items)")

    def _try_append(self, part: str, rows: list[str]) -> bool:
        with self._db.transaction() as conn:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM queue_items WHERE name=? AND partition=?", (self.name, part)
            ).fetchone()
            if count + len(rows) > self.capacity:
                return False
            conn.executemany("INSERT INTO queue_items (name, partition, value) VALUES (?, ?, ?)",
                             [(self.name, part, r) for r in rows])
            return True

    def get(self, block: bool = True, timeout: float | None = None, *, partition: str | None = None) -> Any:
        """Remove and return the oldest item; None if empty and not blocking; queue.Empty on timeout."""
        items = self._take(1, block, timeout, partition)
        return items[0] if items else None

    def get_many(self, n_values: int, block: bool = True, timeout: float | None = None, *,
                 partition: str | None = None) -> list[Any]:
        return self._take(n_values, block, timeout, partition)

    def _take(self, n: int, block: bool, timeout: float | None, partition: str | None) -> list[Any]:
        part, deadline = _partition_key(partition), _deadline(timeout)
        while True:
            seen = self._db.data_version()
            items = self._pop(n, part)
            if items or not block:
                return items
            if not self._db.wait_for_change(seen, deadline):
                raise queue.Empty()

    def _pop(self, n: int, part: str) -> list[Any]:
        rows = self._db.conn().execute(
            "DELETE FROM queue_items WHERE id IN (SELECT id FROM queue_items WHERE name=? AND partition=? "
            "ORDER BY id LIMIT ?) RETURNING id, value", (self.name, part, n)
        ).fetchall()
        return [json.loads(v) for _, v in sorted(rows)]

    def len(self, *, partition: str | None = None, total: bool = False) -> int:
        if total:
            sql, args = "SELECT COUNT(*) FROM queue_items WHERE name=?", (self.name,)
        else:
            sql = "SELECT COUNT(*) FROM queue_items WHERE name=? AND partition=?"
            args = (self.name, _partition_key(partition))
        return self._db.conn().execute(sql, args).fetchone()[0]

    def clear(self, *, partition: str | None = None, all: bool = False) -> None:
        if all:
            self._db.conn().execute("DELETE FROM queue_items WHERE name=?", (self.name,))
        else:
            self._db.conn().execute("DELETE FROM queue_items WHERE name=? AND partition=?",
                                    (self.name, _partition_key(partition)))
