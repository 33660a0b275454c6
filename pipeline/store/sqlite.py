"""Embedded store: one SQLite file in WAL mode behind the store contract.

Bars and predictions are tables keyed by their deterministic IDs' parts (so an upsert is an
``INSERT .. ON CONFLICT DO UPDATE`` and a replay never duplicates). Downsampling runs in SQL.
Each thread gets its own connection; writes are serialised by SQLite's own lock with a generous
busy timeout so the indexer, scorer and dashboard can share the file. Within one process the
writers first queue on a Python lock per file (:func:`writer_lock`): SQLite's busy handler
polls with sleeps that grow to 100 ms, so two threads contending for the write lock (the indexer
and the scorer of the dashboard) would each wait up to a sleep step longer than the other's
transaction; a lock wakes the next writer the moment the last one commits.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from pipeline.contracts.fundamentals import FUNDAMENTALS_COLUMNS, FundamentalsSnapshot
from pipeline.contracts.news import NEWS_COLUMNS, NewsItem
from pipeline.contracts.schema import Bar, Prediction, prediction_values
from pipeline.store.sqlite_identity import FileIdentity, sqlite_uri as _uri
from pipeline.store.sqlite_file import (
    BACKSTOP_CHECKPOINT_PAGES, BAR_ROW, BAR_UPSERT, BUSY_TIMEOUT_S, DOC_UPSERT,
    FUNDAMENTALS_UPSERT, NEWS_UPSERT, PRED_UPSERT, SCHEMA, check_collection, series_where, start_checkpointer,
    where_clause, why_unwritable, writer_lock,
)
from pipeline.store.sqlite_file import CHECKPOINT_EVERY_S  # noqa: F401 (read by tools as before)
from pipeline.store.base import (
    BAR_COLUMNS, OHLC_COLUMNS, PREDICTION_COLUMNS, Store, StoreUnavailable,
    UpsertResult, bars_frame, check_limit, fundamentals_frame, news_frame, now_ms,
)

log = logging.getLogger(__name__)


class SqliteStore(Store):
    """The store contract on one SQLite file (:class:`pipeline.store.base.Store`). Owns one
    connection per thread (closed when the thread has ended) and shares the file's writer
    lock and checkpoint thread with every store of the process on the same file
    (:mod:`pipeline.store.sqlite_file`); pickles as its path."""

    backend = "sqlite"

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"Cannot create the data directory {self.path.parent} ({exc.strerror}); "
                "set KAPPALAB_DATA_DIR to a writable folder."
            ) from None
        self._local = threading.local()
        self._all: dict[threading.Thread, sqlite3.Connection] = {}
        self._lock = threading.Lock()
        self._wal_set = False
        self._writer = writer_lock(self.path)
        #: the file this store writes to, and a counter bumped when it adopts another file
        #: at the path (threads then reopen their connections)
        self._identity: FileIdentity | None = None
        self._generation = 0
        self._conn(create=True).executescript(SCHEMA)
        self._identity = FileIdentity(self.path)
        start_checkpointer(self)

    @classmethod
    def from_config(cls, config: Any) -> "SqliteStore":
        """The embedded store: ``kappalab.sqlite`` in the data dir (``KAPPALAB_DATA_DIR``)."""
        return cls(config.sqlite_path)

    @staticmethod
    def identity(config: Any) -> tuple:
        return ("sqlite", str(config.sqlite_path))

    def __reduce__(self):
        """Pickled as its file: unpickling (in a spawned child, e.g. the scorer's retrain
        process) opens the same database with connections of its own."""
        return type(self), (str(self.path),)

    # ---- connections ---------------------------------------------------------------------
    def _conn(self, create: bool = False) -> sqlite3.Connection:
        """This thread's connection. Streamlit runs every script run in a fresh thread, so
        connections of threads that have ended are closed here rather than leaked. Only the
        constructor may create the file (``create``): a connection opened later never brings
        back a file deleted under the store."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if getattr(self._local, "generation", 0) == self._generation:
                return conn
            self._drop_thread_conn(conn)  # the store adopted another file at the path
        last_exc: Exception | None = None
        for attempt in range(5):
            try:
                conn = sqlite3.connect(_uri(self.path, "rwc" if create else "rw"), uri=True,
                                       timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                                       isolation_level=None)
                if not self._wal_set:
                    conn.execute("PRAGMA journal_mode=WAL")  # persistent in the file
                    self._wal_set = True
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
                # Checkpoints run in this process's checkpoint thread (below), not inside the
                # commit that happens to fill the log; this threshold is only the backstop.
                conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
                break
            except sqlite3.Error as exc:  # e.g. a racing first open of the -shm file
                last_exc = exc
                time.sleep(0.05 * (attempt + 1))
        else:
            raise StoreUnavailable(
                f"Cannot open the SQLite store at {self.path} ({why_unwritable(self.path, last_exc)}); "
                "set KAPPALAB_DATA_DIR to a writable folder."
            ) from None
        self._local.conn, self._local.generation = conn, self._generation
        with self._lock:
            self._all[threading.current_thread()] = conn
            dead = [t for t in self._all if not t.is_alive()]
            for t in dead:
                _close_quietly(self._all.pop(t))
        return conn

    class _Tx:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an exception), holding this
        process's writer lock for the file throughout."""

        def __init__(self, conn: sqlite3.Connection, writer: threading.RLock, path=None):
            self.conn, self.writer, self.path = conn, writer, path

        def __enter__(self) -> sqlite3.Connection:
            self.writer.acquire()
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.writer.release()
                raise
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            try:
                self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.writer.release()
            if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
                raise StoreUnavailable(
                    f"The SQLite file {self.path} has lost its tables ({exc}); nothing is "
                    "written until a KappaLab store is back at that path.") from exc

    def _write(self) -> "_Tx":
        self._check_identity()
        return self._Tx(self._conn(), self._writer, self.path)

    def _drop_thread_conn(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            self._all.pop(threading.current_thread(), None)
        _close_quietly(conn)
        self._local.conn = None

    def _check_identity(self) -> None:
        """Before every write: the file at the path must be the one this store opened (see
        :class:`~pipeline.store.sqlite_identity.FileIdentity`); threads reopen their
        connections when it adopted a restored store."""
        if self._identity is not None and self._identity.check():
            with self._lock:
                self._generation += 1
    def describe(self) -> str:
        return f"embedded SQLite at {self.path}"

    @staticmethod
    def outage(exc: BaseException) -> bool:
        # locked, busy, read-only, disk full, I/O error, not a database: the store's fault.
        return isinstance(exc, sqlite3.Error) and not isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError,
                  sqlite3.ProgrammingError))

    def check(self) -> None:
        self._check_identity()
        try:
            self._conn().execute("SELECT 1 FROM bars LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"The SQLite store at {self.path} is unusable ({exc}).") from None

    def close(self) -> None:
        with self._lock:
            for conn in self._all.values():
                _close_quietly(conn)
            self._all.clear()
        self._local = threading.local()

    # ---- bars ----------------------------------------------------------------------------
    def upsert_bars(self, bars: Sequence[Bar]) -> UpsertResult:
        if not bars:
            return UpsertResult()
        rows = list(map(BAR_ROW, bars))
        with self._write() as conn:
            conn.executemany(BAR_UPSERT, rows)
        return UpsertResult(accepted=len(rows))

    def query_bars(self, symbol, interval, start_ms=None, end_ms=None, limit=None) -> pd.DataFrame:
        where, params = series_where(symbol, interval, start_ms, end_ms)
        return bars_frame(self._latest_or_all("bars", BAR_COLUMNS, where, params, limit))

    def latest_bars(self, symbols, interval, per_symbol, start_ms=None, end_ms=None
                    ) -> pd.DataFrame:
        # One indexed query per symbol on one connection and one frame for all: the base
        # class builds a frame per symbol, ~1 ms each, which at 500 symbols paused the
        # scorer's time rule for half a second whenever it re-read its series (bar_rules).
        rows: list[tuple] = []
        for symbol in symbols:
            where, params = series_where(symbol, interval, start_ms, end_ms)
            rows += self._latest_or_all("bars", BAR_COLUMNS, where, params, per_symbol)
        return bars_frame(rows)

    def ohlc_buckets(self, symbol, interval, bucket_ms, start_ms=None, end_ms=None,
                     limit=None) -> pd.DataFrame:
        bucket_ms = int(bucket_ms)
        if bucket_ms <= 0:
            raise ValueError("bucket_ms must be positive")
        if limit is not None and int(limit) >= 0 and start_ms is None and end_ms is None:
            return self.ohlc_latest(symbol, interval, bucket_ms, limit)  # visible range only
        where, params = series_where(symbol, interval, start_ms, end_ms)
        limit_sql = ""
        if limit is not None:
            limit_sql = "ORDER BY bucket DESC LIMIT ?"
        sql = f"""
        WITH agg AS (
            SELECT (ts / {bucket_ms}) * {bucket_ms} AS bucket, MIN(ts) AS t0, MAX(ts) AS t1,
                   MAX(high) AS high, MIN(low) AS low, SUM(volume) AS volume, COUNT(*) AS n
            FROM bars WHERE {where} GROUP BY bucket {limit_sql}
        )
        SELECT agg.bucket, o.open, agg.high, agg.low, c.close, agg.volume, agg.n
        FROM agg
        JOIN bars o ON o.symbol = ? AND o.interval = ? AND o.ts = agg.t0
        JOIN bars c ON c.symbol = ? AND c.interval = ? AND c.ts = agg.t1
        ORDER BY agg.bucket
        """
        if limit is not None:
            params.append(int(limit))
        params += [symbol, interval, symbol, interval]
        rows = self._conn().execute(sql, params).fetchall()
        df = pd.DataFrame(rows, columns=OHLC_COLUMNS)
        return df.astype({"ts": "int64", "open": "float64", "high": "float64", "low": "float64",
                          "close": "float64", "volume": "float64", "n": "int64"})

    def count_bars(self, symbol=None, interval=None) -> int:
        return self._count("bars", *where_clause(symbol=symbol, interval=interval))

    def list_symbols(self, interval=None) -> list[str]:
        return sorted(self._distinct("symbol", interval=interval))

    def list_intervals(self, symbol=None) -> list[str]:
        from pipeline.contracts.schema import INTERVALS

        found = self._distinct("interval", symbol=symbol)
        return [i for i in INTERVALS if i in found]

    def _distinct(self, column: str, **equal: Any) -> set[str]:
        where, params = where_clause(**equal)
        rows = self._conn().execute(f"SELECT DISTINCT {column} FROM bars WHERE {where}", params)
        return {r[0] for r in rows.fetchall()}

    def last_bar_ts(self, symbol, interval):
        row = self._conn().execute("SELECT MAX(ts) FROM bars WHERE symbol = ? AND interval = ?",
                                   (symbol, interval)).fetchone()
        return None if row[0] is None else int(row[0])

    def bar_time_range(self, symbol, interval):
        # Two subqueries: each is one index seek; MIN and MAX together would scan the series.
        row = self._conn().execute(
            "SELECT (SELECT MIN(ts) FROM bars WHERE symbol = ?1 AND interval = ?2), "
            "(SELECT MAX(ts) FROM bars WHERE symbol = ?1 AND interval = ?2)",
            (symbol, interval)).fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    # ---- predictions ---------------------------------------------------------------------
    def upsert_predictions(self, predictions: Sequence[Prediction]) -> UpsertResult:
        if not predictions:
            return UpsertResult()
        # Rows read straight from the fields, in PREDICTION_COLUMNS order (no to_dict each: the
        # scorer writes ~1,000 a second at 500 symbols).
        rows = list(map(prediction_values, predictions))
        with self._write() as conn:
            conn.executemany(PRED_UPSERT, rows)
        return UpsertResult(accepted=len(rows))

    def query_predictions(self, symbol=None, interval=None, model_id=None, start_ms=None,
                          end_ms=None, limit=None) -> pd.DataFrame:
        where, params = where_clause(start_ms, end_ms, symbol=symbol, interval=interval,
                               model_id=model_id)
        rows = self._latest_or_all("predictions", PREDICTION_COLUMNS, where, params, limit)
        return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)

    def count_predictions(self, symbol=None, model_id=None) -> int:
        return self._count("predictions", *where_clause(symbol=symbol, model_id=model_id))

    def _latest_or_all(self, table: str, columns: Sequence[str], where: str,
                       params: list[Any], limit: int | None) -> list[tuple]:
        """Rows in ts order; with ``limit``, the latest ``limit`` of them."""
        limit = check_limit(limit)
        cols = ", ".join(columns)
        if limit is None:
            sql = f"SELECT {cols} FROM {table} WHERE {where} ORDER BY ts"
        else:
            sql = (f"SELECT * FROM (SELECT {cols} FROM {table} WHERE {where} "
                   f"ORDER BY ts DESC LIMIT ?) ORDER BY ts")
            params = [*params, limit]
        return self._conn().execute(sql, params).fetchall()

    def _count(self, table: str, where: str, params: list[Any]) -> int:
        sql = f"SELECT COUNT(*) FROM {table} WHERE {where}"
        return int(self._conn().execute(sql, params).fetchone()[0])

    # ---- news ----------------------------------------------------------------------------
    def upsert_news(self, items: Sequence[NewsItem]) -> UpsertResult:
        if not items:
            return UpsertResult()
        rows = [(n.doc_id, n.symbol, int(n.ts), n.source, n.title, n.url, n.sentiment_score,
                 n.relevance) for n in items]
        with self._write() as conn:
            conn.executemany(NEWS_UPSERT, rows)
        return UpsertResult(accepted=len(rows))

    def query_news(self, symbol, start_ms=None, end_ms=None, limit=None) -> pd.DataFrame:
        where, params = where_clause(start_ms, end_ms, symbol=symbol)
        cols = ", ".join(NEWS_COLUMNS)
        if limit is not None:
            sql = (f"SELECT {cols} FROM (SELECT id, {cols} FROM news WHERE {where} "
                   "ORDER BY ts DESC, id DESC LIMIT ?) ORDER BY ts, id")
            params.append(int(limit))
        else:
            sql = f"SELECT {cols} FROM news WHERE {where} ORDER BY ts, id"
        return news_frame(self._conn().execute(sql, params).fetchall())

    def count_news(self, symbol=None) -> int:
        if symbol is None:
            row = self._conn().execute("SELECT COUNT(*) FROM news").fetchone()
        else:
            row = self._conn().execute("SELECT COUNT(*) FROM news WHERE symbol = ?",
                                       (symbol,)).fetchone()
        return int(row[0])

    # ---- fundamentals --------------------------------------------------------------------
    def upsert_fundamentals(self, snapshots: Sequence[FundamentalsSnapshot]) -> UpsertResult:
        if not snapshots:
            return UpsertResult()
        rows = [(s.doc_id, *s.to_row()) for s in snapshots]
        with self._write() as conn:
            conn.executemany(FUNDAMENTALS_UPSERT, rows)
        return UpsertResult(accepted=len(rows))

    def query_fundamentals(self, symbol, start_ms=None, end_ms=None, limit=None) -> pd.DataFrame:
        where, params = where_clause(start_ms, end_ms, symbol=symbol)
        cols = ", ".join(FUNDAMENTALS_COLUMNS)
        limit = check_limit(limit)
        if limit is not None:
            sql = (f"SELECT {cols} FROM (SELECT {cols} FROM fundamentals WHERE {where} "
                   "ORDER BY ts DESC, source DESC LIMIT ?) ORDER BY ts, source")
            params.append(limit)
        else:
            sql = f"SELECT {cols} FROM fundamentals WHERE {where} ORDER BY ts, source"
        return fundamentals_frame(self._conn().execute(sql, params).fetchall())

    def count_fundamentals(self, symbol=None) -> int:
        return self._count("fundamentals", *where_clause(symbol=symbol))

    # ---- documents -----------------------------------------------------------------------
    def put_doc(self, collection: str, doc_id: str, doc: dict[str, Any]) -> None:
        check_collection(collection)
        body = json.dumps(doc, allow_nan=False)
        with self._write() as conn:
            conn.execute(DOC_UPSERT, (collection, doc_id, int(doc.get("created_ms", 0)), body))

    def get_doc(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        check_collection(collection)
        row = self._conn().execute(
            "SELECT body FROM docs WHERE collection = ? AND id = ?", (collection, doc_id)).fetchone()
        return None if row is None else json.loads(row[0])

    def list_docs(self, collection, where=None, limit=1000) -> list[dict[str, Any]]:
        check_collection(collection)
        limit = check_limit(limit)
        if limit is None:
            limit = -1  # SQLite: no limit
        clauses, params = ["collection = ?"], [collection]
        for key, value in (where or {}).items():
            clauses.append("json_extract(body, ?) = ?")
            params += [f"$.{key}", value]
        params.append(int(limit))
        rows = self._conn().execute(
            f"SELECT body FROM docs WHERE {' AND '.join(clauses)} "
            "ORDER BY created_ms DESC, id LIMIT ?", params).fetchall()
        return [json.loads(r[0]) for r in rows]

    def replace_doc_if(self, collection, doc_id, doc, expected) -> bool:
        check_collection(collection)
        body = json.dumps(doc, allow_nan=False)
        with self._write() as conn:  # BEGIN IMMEDIATE: no other writer until COMMIT
            row = conn.execute("SELECT body FROM docs WHERE collection = ? AND id = ?",
                               (collection, doc_id)).fetchone()
            current = None if row is None else json.loads(row[0])
            if current != expected:
                return False
            conn.execute(DOC_UPSERT, (collection, doc_id, int(doc.get("created_ms", 0)), body))
        return True

    def delete_doc(self, collection: str, doc_id: str) -> bool:
        check_collection(collection)
        with self._write() as conn:
            cur = conn.execute("DELETE FROM docs WHERE collection = ? AND id = ?",
                               (collection, doc_id))
        return cur.rowcount > 0

    def reset(self) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM bars")
            conn.execute("DELETE FROM predictions")
            conn.execute("DELETE FROM docs")
            conn.execute("DELETE FROM news")
            conn.execute("DELETE FROM fundamentals")
            conn.execute("DELETE FROM artefacts")
        self._forget_artefacts()

    # ---- artefacts -----------------------------------------------------------------------
    def _write_artefact(self, digest: str, data: bytes) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO artefacts (digest, size, created_ms, data) "
                         "VALUES (?, ?, ?, ?)", (digest, len(data), now_ms(), data))

    def _read_artefact(self, digest: str) -> bytes | None:
        row = self._conn().execute("SELECT data FROM artefacts WHERE digest = ?",
                                   (digest,)).fetchone()
        return None if row is None else bytes(row[0])


def _close_quietly(conn: sqlite3.Connection) -> None:
    """Close a connection that is being dropped: an error closing it changes nothing (its
    work is committed or rolled back already), so it is logged, not raised."""
    try:
        conn.close()
    except sqlite3.Error as exc:
        log.debug("closing a SQLite connection: %s", exc)
