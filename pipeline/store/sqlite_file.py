"""One SQLite database file as the embedded store uses it: its schema and SQL statements, the
writer lock every store of this process on the file shares, the checkpoint thread, the query
conditions, and why a file cannot be opened. :class:`pipeline.store.sqlite.SqliteStore` is the
store contract on top of it.
"""
from __future__ import annotations

import logging
import operator
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from pipeline.contracts.fundamentals import FUNDAMENTAL_VALUES, FUNDAMENTALS_COLUMNS
from pipeline.contracts.news import NEWS_COLUMNS
from pipeline.store.base import BAR_COLUMNS, COLLECTIONS, PREDICTION_COLUMNS
from pipeline.store.sqlite_identity import sqlite_uri as _uri

log = logging.getLogger("pipeline.store.sqlite")

_WRITER_LOCKS: dict[str, threading.RLock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


def writer_lock(path: Path) -> threading.RLock:
    """One lock per database file for every :class:`~pipeline.store.sqlite.SqliteStore` of this process (stores
    opened twice on one file, as the dashboard and a worker may, share it)."""
    key = str(path.resolve())
    with _WRITER_LOCKS_GUARD:
        return _WRITER_LOCKS.setdefault(key, threading.RLock())


#: Pages in the write-ahead log before a commit checkpoints it itself. SQLite's default put a
#: checkpoint inside some live commit every few seconds (figures: docs/DESIGN_FIGURES.md);
#: the checkpoint thread keeps the log far below this, which only matters if it cannot.
BACKSTOP_CHECKPOINT_PAGES = 20_000
CHECKPOINT_EVERY_S = 1.0
_CHECKPOINTERS: dict[str, tuple[threading.Thread, "weakref.WeakSet"]] = {}


def start_checkpointer(store) -> None:
    """One daemon thread per database file and process: a PASSIVE checkpoint every second
    (it never waits for, nor blocks, readers and writers; SQLite releases the interpreter lock
    while it copies pages). It ends once no store of this process uses the file."""
    key = str(store.path.resolve())
    with _WRITER_LOCKS_GUARD:
        entry = _CHECKPOINTERS.get(key)
        if entry is not None and entry[0].is_alive():
            entry[1].add(store)
            return
        users: weakref.WeakSet = weakref.WeakSet([store])

        def run() -> None:
            while True:
                time.sleep(CHECKPOINT_EVERY_S)
                with _WRITER_LOCKS_GUARD:
                    if not users:  # the last store on the file is gone
                        _CHECKPOINTERS.pop(key, None)
                        return
                # A connection per checkpoint (~0.2 ms): an open one would keep the file
                # open between checkpoints (e.g. a read-only remount of its disk fails).
                conn = None
                try:  # mode=rw: a file deleted under the store is never created again here
                    conn = sqlite3.connect(_uri(key, "rw"), uri=True, timeout=1.0,
                                           isolation_level=None)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # e.g. busy, or the file was removed
                    log.debug("checkpoint of %s failed: %s", key, exc)
                finally:
                    if conn is not None:
                        conn.close()

        thread = threading.Thread(target=run, daemon=True, name="kappalab-sqlite-checkpoint")
        _CHECKPOINTERS[key] = (thread, users)
        thread.start()


SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    symbol TEXT NOT NULL, interval TEXT NOT NULL, ts INTEGER NOT NULL,
    open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL,
    volume REAL NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (symbol, interval, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS predictions (
    model_id TEXT NOT NULL, symbol TEXT NOT NULL, interval TEXT NOT NULL, ts INTEGER NOT NULL,
    base_ts INTEGER NOT NULL, target TEXT NOT NULL, predicted REAL NOT NULL,
    base_close REAL NOT NULL, actual REAL, error REAL, produced_ms INTEGER, stored_ms INTEGER,
    latency_ms REAL,
    PRIMARY KEY (model_id, symbol, interval, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS predictions_by_series ON predictions (symbol, interval, ts);
CREATE TABLE IF NOT EXISTS docs (
    collection TEXT NOT NULL, id TEXT NOT NULL, created_ms INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS docs_by_time ON docs (collection, created_ms);
CREATE TABLE IF NOT EXISTS news (
    id TEXT NOT NULL PRIMARY KEY, symbol TEXT NOT NULL, ts INTEGER NOT NULL,
    source TEXT NOT NULL, title TEXT NOT NULL, url TEXT NOT NULL,
    sentiment_score REAL NOT NULL, relevance REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS news_by_symbol ON news (symbol, ts);
CREATE TABLE IF NOT EXISTS fundamentals (
    id TEXT NOT NULL PRIMARY KEY, symbol TEXT NOT NULL, ts INTEGER NOT NULL,
    source TEXT NOT NULL, latest_quarter TEXT NOT NULL,
    """ + ", ".join(f"{v} REAL" for v in FUNDAMENTAL_VALUES) + """
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fundamentals_by_symbol ON fundamentals (symbol, ts);
CREATE TABLE IF NOT EXISTS artefacts (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""

#: How long a write waits for another writer's lock before it fails. Writers hold the lock for
#: milliseconds; a longer wait means an outage, which the indexer reports (``stalled``) and
#: retries with backoff rather than blocking silently.
BUSY_TIMEOUT_S = 5.0

BAR_UPSERT = f"""
INSERT INTO bars ({', '.join(BAR_COLUMNS)})
VALUES ({', '.join('?' * len(BAR_COLUMNS))})
ON CONFLICT (symbol, interval, ts) DO UPDATE SET
    {', '.join(f'{c}=excluded.{c}' for c in BAR_COLUMNS[3:])}
"""

#: A bar's row for ``BAR_UPSERT``, read in C (a generator of getattr calls per bar was ~10% of
#: the indexer's time in a backfill).
BAR_ROW = operator.attrgetter(*BAR_COLUMNS)

PRED_UPSERT = f"""
INSERT INTO predictions ({', '.join(PREDICTION_COLUMNS)})
VALUES ({', '.join('?' * len(PREDICTION_COLUMNS))})
ON CONFLICT (model_id, symbol, interval, ts) DO UPDATE SET
    {', '.join(f'{c}=COALESCE(excluded.{c}, predictions.{c})' for c in PREDICTION_COLUMNS[4:])}
"""


NEWS_UPSERT = f"""
INSERT INTO news (id, {', '.join(NEWS_COLUMNS)}) VALUES ({', '.join('?' * (len(NEWS_COLUMNS) + 1))})
ON CONFLICT (id) DO UPDATE SET
    {', '.join(f'{c}=excluded.{c}' for c in NEWS_COLUMNS)}
"""


FUNDAMENTALS_UPSERT = f"""
INSERT INTO fundamentals (id, {', '.join(FUNDAMENTALS_COLUMNS)})
VALUES ({', '.join('?' * (len(FUNDAMENTALS_COLUMNS) + 1))})
ON CONFLICT (id) DO UPDATE SET
    {', '.join(f'{c}=excluded.{c}' for c in FUNDAMENTALS_COLUMNS)}
"""

#: A document written whole (put_doc, and replace_doc_if once its compare has passed).
DOC_UPSERT = ("INSERT INTO docs (collection, id, created_ms, body) VALUES (?, ?, ?, ?) "
              "ON CONFLICT (collection, id) DO UPDATE SET created_ms=excluded.created_ms, "
              "body=excluded.body")


def series_where(symbol, interval, start_ms, end_ms) -> tuple[str, list[Any]]:
    return where_clause(start_ms, end_ms, symbol=symbol, interval=interval)


def where_clause(start_ms: int | None = None, end_ms: int | None = None,
           **equal: Any) -> tuple[str, list[Any]]:
    """SQL condition and parameters: each non-None ``equal`` column, then the half-open range."""
    clauses, params = ["1=1"], []
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if start_ms is not None:
        clauses.append("ts >= ?")
        params.append(int(start_ms))
    if end_ms is not None:
        clauses.append("ts < ?")
        params.append(int(end_ms))
    return " AND ".join(clauses), params


def check_collection(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")


def why_unwritable(path: Path, exc: Exception | None) -> str:
    """SQLite says "unable to open database file"; say what is actually wrong if we can."""
    import os

    try:
        read_only = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:  # the folder itself is gone or unreadable: the checks below say which
        read_only = False
    if read_only:
        return "the file system is mounted read-only"
    if not os.access(path.parent, os.W_OK):
        return f"no permission to write in {path.parent}"
    return str(exc)
