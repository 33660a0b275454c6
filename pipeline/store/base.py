"""The store contract shared by the SQLite (embedded) and Elasticsearch backends.

Everything above the store (indexer, scorer, dashboard, model lab) talks only to this surface,
so switching ``ELASTICSEARCH_URL`` on or off changes no other code. The contract is written
here, method by method, and ``tests/test_store_contract.py`` runs the same suite on both
backends. Rules that hold for every method:

- **Ranges** are half-open: ``start_ms <= ts < end_ms``; ``None`` leaves that side open.
- **Ordering**: frames come sorted by ``ts`` ascending; document lists newest ``created_ms``
  first, ties by id.
- **limit**: ``None`` means all; a whole number ``n >= 0`` means at most ``n``, and for time
  series the *latest* ``n`` (still returned oldest first). A negative limit is a
  ``ValueError``.
- **Not found**: a getter returns ``None``, a query an empty frame with the usual columns and
  dtypes, a delete ``False``. Nothing raises for a missing series or document.
- **Idempotence**: every write is keyed by a deterministic id, so repeating it (a replay, a
  retried batch) leaves the same state.
- **Read-your-writes**: once a write method returns, every read in any process sees it.
- **Failure**: a store that cannot be reached or used raises :class:`StoreUnavailable` (one
  sentence with the fix); the caller backs off and retries. Items the store refuses for their
  own content are returned in :attr:`UpsertResult.rejected`, never dropped silently.

Backends implement the abstract primitives. Runs, model versions, events, worker heartbeats
and champion pointers are records built here on the generic document API, and model
artefacts (pickled estimators) are content-addressed blobs kept apart from the documents, so
both backends store them the same way.
"""
from __future__ import annotations

import abc
import base64
import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd

from pipeline.contracts.jsonsafe import json_safe
from pipeline.contracts.fundamentals import FUNDAMENTAL_VALUES, FUNDAMENTALS_COLUMNS, FundamentalsSnapshot
from pipeline.contracts.news import NEWS_COLUMNS, NewsItem
from pipeline.contracts.schema import BAR_FIELDS, PREDICTION_FIELDS, PRICE_FIELDS, Bar, Prediction

BAR_COLUMNS = list(BAR_FIELDS)
OHLC_COLUMNS = ["ts", *PRICE_FIELDS, "volume", "n"]
#: dtypes of the numeric bar columns in every frame the store returns
BAR_DTYPES = {"ts": "int64", **{f: "float64" for f in (*PRICE_FIELDS, "volume")}}
#: model_id, symbol, interval, ts, base_ts, target, predicted, base_close, actual, error,
#: produced_ms, stored_ms, latency_ms (the order of :func:`pipeline.contracts.schema.prediction_values`)
PREDICTION_COLUMNS = list(PREDICTION_FIELDS)

# Document collections (tables in SQLite, indices in Elasticsearch).
RUNS = "runs"
MODEL_VERSIONS = "model_versions"
EVENTS = "events"
WORKERS = "workers"
CHAMPIONS = "champions"  # one document per scope, changed only by replace_doc_if
REVISIONS = "bar_revisions"  # per series, the bars rewritten later (pipeline/store/revisions.py)
STOP_REQUESTS = "stop_requests"  # a dashboard asks a worker process to stop (id = worker id)
COLLECTIONS = (RUNS, MODEL_VERSIONS, EVENTS, WORKERS, CHAMPIONS, REVISIONS, STOP_REQUESTS)

#: Model artefacts kept in memory per store object, by content hash (they never change).
ARTEFACT_CACHE_ITEMS = 16


class StoreUnavailable(RuntimeError):
    """The store cannot be reached or used; the message is one sentence with the fix."""


@dataclass
class UpsertResult:
    """Outcome of a batch write: ``accepted`` documents are durable; ``rejected`` are
    ``(item, reason)`` pairs that the backend refused (never silently dropped)."""

    accepted: int = 0
    rejected: list[tuple[Any, str]] = field(default_factory=list)


def now_ms() -> int:
    return int(time.time() * 1000)


def check_limit(limit: int | None) -> int | None:
    """The contract's ``limit``: None or a whole number >= 0."""
    if limit is None:
        return None
    value = int(limit)
    if value < 0:
        raise ValueError(f"limit must be None or at least 0, got {limit!r}")
    return value


def artefact_digest(data: bytes) -> str:
    """The content hash that names an artefact (sha256, hex)."""
    return hashlib.sha256(data).hexdigest()


class Store(abc.ABC):
    """The store contract: series, documents, artefacts (suite: tests/test_store_contract.py).
    Owns its connections and artefact cache; every method is safe from any thread. A backend
    also has ``from_config``/``identity`` (its settings; what names its target), ``__reduce__``
    (what reopens it in the retrain child, never a connection) and ``outage`` (which errors
    of its client mean "retry later"); it is one row of ``pipeline/store: BACKENDS``."""

    backend: str = "abstract"

    def __init__(self) -> None:
        self._artefact_cache: OrderedDict[str, bytes] = OrderedDict()
        self._artefact_lock = threading.Lock()
        self.artefact_cache_hits = 0  # reads served without touching the backend

    # ---- identity and health -------------------------------------------------------------
    @abc.abstractmethod
    def describe(self) -> str:
        """Human-readable backend and address, never containing secrets."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreUnavailable` with one clear sentence if the store is unusable."""

    def close(self) -> None:  # pragma: no cover - backends override when they hold resources
        pass

    @staticmethod
    def outage(exc: BaseException) -> bool:
        """Whether ``exc`` of this backend's client means unreachable: retry (default: no)."""
        return False

    # ---- bars ----------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_bars(self, bars: Sequence[Bar]) -> UpsertResult:
        """Insert or overwrite bars by ``symbol|interval|ts``; the last write of an id wins,
        so replays never duplicate. A bar with a missing or non-finite field is rejected
        (per item); an empty batch is a no-op."""

    @abc.abstractmethod
    def query_bars(
        self,
        symbol: str,
        interval: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Bars of one series in the range, ts ascending, columns :data:`BAR_COLUMNS`
        (dtypes of :func:`bars_frame`); with ``limit``, the latest ``limit`` of the range."""

    def latest_bars(self, symbols: Iterable[str], interval: str, per_symbol: int,
                    start_ms: int | None = None, end_ms: int | None = None) -> pd.DataFrame:
        """The latest ``per_symbol`` bars of each symbol in the range, as one frame: symbols
        in the order given (those without bars left out), ts ascending within each, a fresh
        0..n-1 index. Columns and dtypes as :meth:`query_bars`."""
        parts = [self.query_bars(s, interval, start_ms, end_ms, limit=per_symbol)
                 for s in symbols]
        parts = [p for p in parts if len(p)]
        return pd.concat(parts, ignore_index=True) if parts else bars_frame()

    @abc.abstractmethod
    def ohlc_buckets(
        self,
        symbol: str,
        interval: str,
        bucket_ms: int,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Server-side downsampling: one row per ``bucket_ms`` bucket aligned to epoch
        (``ts // bucket_ms * bucket_ms``) that holds bars, columns :data:`OHLC_COLUMNS`:
        first open, max high, min low, last close, summed volume, bar count. Sorted by ts;
        with ``limit``, the latest ``limit`` buckets."""

    @abc.abstractmethod
    def count_bars(self, symbol: str | None = None, interval: str | None = None) -> int:
        """Number of stored bars, optionally of one symbol and/or interval (0 if none)."""

    @abc.abstractmethod
    def list_symbols(self, interval: str | None = None) -> list[str]:
        """Distinct symbols with at least one bar (of ``interval`` if given), sorted."""

    @abc.abstractmethod
    def list_intervals(self, symbol: str | None = None) -> list[str]:
        """Distinct intervals with at least one bar (of ``symbol`` if given), in the order
        of :data:`pipeline.contracts.schema.INTERVALS` (shortest first)."""

    @abc.abstractmethod
    def bar_time_range(self, symbol: str, interval: str) -> tuple[int, int] | None:
        """(first ts, last ts) stored for the series, or None if empty."""

    def last_bar_ts(self, symbol: str, interval: str) -> int | None:
        """The newest stored bar's ts of the series (a cheap "anything new?" check for
        refreshing pages), or None if empty."""
        span = self.bar_time_range(symbol, interval)
        return None if span is None else span[1]

    def ohlc_latest(self, symbol: str, interval: str, bucket_ms: int, n: int) -> pd.DataFrame:
        """The latest ``n`` buckets, as ``ohlc_buckets(..., limit=n)``, reading only the
        visible time range (through the (symbol, interval, ts) index / a range filter) instead
        of aggregating the whole series: the range is widened only where gaps (closed
        markets) leave fewer than ``n`` buckets in it."""
        bucket_ms, n = int(bucket_ms), int(n)
        span = self.bar_time_range(symbol, interval)
        if span is None or n <= 0:
            return self.ohlc_buckets(symbol, interval, bucket_ms, start_ms=0, end_ms=0)
        first, last = span
        last_bucket = last // bucket_ms * bucket_ms
        width = n
        while True:
            start = last_bucket - (width - 1) * bucket_ms  # bucket-aligned: whole buckets only
            if start <= first:
                frame = self.ohlc_buckets(symbol, interval, bucket_ms, start_ms=first)
                break
            frame = self.ohlc_buckets(symbol, interval, bucket_ms, start_ms=start)
            if len(frame) >= n:
                break
            width *= 4
        return frame.iloc[-n:].reset_index(drop=True)

    # ---- predictions ---------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_predictions(self, predictions: Sequence[Prediction]) -> UpsertResult:
        """Insert or update predictions by ``model_id|symbol|interval|ts``. An update keeps
        the stored value of every field the new one leaves ``None`` (a late replay of an
        unscored prediction does not erase its score). The first eight columns of
        :data:`PREDICTION_COLUMNS` are required: a prediction lacking one is rejected."""

    @abc.abstractmethod
    def query_predictions(
        self,
        symbol: str | None = None,
        interval: str | None = None,
        model_id: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Predictions sorted by ts ascending (latest ``limit`` if given), columns
        :data:`PREDICTION_COLUMNS`."""

    @abc.abstractmethod
    def count_predictions(self, symbol: str | None = None, model_id: str | None = None) -> int:
        """Number of stored predictions, optionally of one symbol and/or model."""

    # ---- news (the finance-news stream; docs/NEWS.md) -----------------------------------
    @abc.abstractmethod
    def upsert_news(self, items: Sequence[NewsItem]) -> UpsertResult:
        """Insert or overwrite news items by their deterministic ID (:func:`pipeline.contracts.news.news_id`)."""

    @abc.abstractmethod
    def query_news(self, symbol: str, start_ms: int | None = None, end_ms: int | None = None,
                   limit: int | None = None) -> pd.DataFrame:
        """The symbol's items with ``start_ms <= ts < end_ms`` sorted by ts ascending (ties by
        ID), columns :data:`NEWS_COLUMNS`. With ``limit``, the *latest* ``limit`` items."""

    @abc.abstractmethod
    def count_news(self, symbol: str | None = None) -> int:
        ...

    # ---- fundamentals (finance-fundamentals; docs/NEWS.md) ------------------------------
    @abc.abstractmethod
    def upsert_fundamentals(self, snapshots: Sequence[FundamentalsSnapshot]) -> UpsertResult:
        """Insert or overwrite snapshots by ``snapshot.doc_id`` (symbol|source|ts)."""

    @abc.abstractmethod
    def query_fundamentals(self, symbol: str, start_ms: int | None = None,
                           end_ms: int | None = None, limit: int | None = None) -> pd.DataFrame:
        """The symbol's snapshots with ``start_ms <= ts < end_ms`` (``ts`` = effective time)
        sorted by ts ascending (ties by source), columns :data:`FUNDAMENTALS_COLUMNS`, a
        missing value NaN. With ``limit``, the *latest* ``limit`` snapshots."""

    @abc.abstractmethod
    def count_fundamentals(self, symbol: str | None = None) -> int:
        ...

    # ---- generic documents (runs, model versions, events, worker heartbeats) -------------
    @abc.abstractmethod
    def put_doc(self, collection: str, doc_id: str, doc: dict[str, Any]) -> None:
        """Insert or replace (not merge) one plain-JSON document (see
        :func:`pipeline.contracts.jsonsafe.json_safe`); ``doc["created_ms"]`` orders listings. An
        unknown collection is a ``ValueError``."""

    @abc.abstractmethod
    def get_doc(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The document as it was put, or None."""

    @abc.abstractmethod
    def replace_doc_if(self, collection: str, doc_id: str, doc: dict[str, Any],
                       expected: dict[str, Any] | None) -> bool:
        """Atomically put ``doc`` only if the stored document equals ``expected`` (``None``:
        only if there is none). True when written; False when another writer got there
        first, so the caller re-reads and decides again. This compare-and-set is what makes a
        champion change atomic (a transaction in SQLite, a write conditional on the
        document's sequence number in Elasticsearch)."""

    @abc.abstractmethod
    def list_docs(
        self, collection: str, where: dict[str, Any] | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Documents whose top-level fields equal every ``where`` value, newest
        ``created_ms`` first (ties by id), at most ``limit``. Values are JSON scalars:
        numbers compare by value (``2 == 2.0``, ``True == 1``), strings only with strings,
        and ``None`` matches nothing."""

    @abc.abstractmethod
    def delete_doc(self, collection: str, doc_id: str) -> bool:
        """Delete one document; True if it existed."""

    # ---- artefacts (content-addressed blobs: pickled models) -----------------------------
    @abc.abstractmethod
    def _write_artefact(self, digest: str, data: bytes) -> None:
        """Keep ``data`` under its content hash; writing an existing digest is a no-op."""

    @abc.abstractmethod
    def _read_artefact(self, digest: str) -> bytes | None:
        """The bytes stored under ``digest``, or None."""

    def put_artefact(self, data: bytes) -> str:
        """Store a blob once, named by its sha256; returns the digest (idempotent)."""
        digest = artefact_digest(data)
        self._write_artefact(digest, bytes(data))
        self._remember(digest, bytes(data))
        return digest

    def get_artefact(self, digest: str) -> bytes | None:
        """The blob named ``digest`` (None if absent). Served from an in-process cache after
        the first read: content-addressed bytes never change, so the scorer's model refresh
        costs no blob transfer. Raises ``ValueError`` if the stored bytes do not hash to
        ``digest`` (corruption)."""
        with self._artefact_lock:
            cached = self._artefact_cache.get(digest)
            if cached is not None:
                self._artefact_cache.move_to_end(digest)
                self.artefact_cache_hits += 1
                return cached
        data = self._read_artefact(digest)
        if data is None:
            return None
        if artefact_digest(data) != digest:
            raise ValueError(f"artefact {digest[:12]}… is corrupt: its content hash differs")
        self._remember(digest, data)
        return data

    def _remember(self, digest: str, data: bytes) -> None:
        with self._artefact_lock:
            self._artefact_cache[digest] = data
            self._artefact_cache.move_to_end(digest)
            while len(self._artefact_cache) > ARTEFACT_CACHE_ITEMS:
                self._artefact_cache.popitem(last=False)

    def _forget_artefacts(self) -> None:
        with self._artefact_lock:
            self._artefact_cache.clear()

    @abc.abstractmethod
    def reset(self) -> None:
        """Delete everything this store holds (bars, predictions, all collections,
        artefacts); the store stays usable. Backends call :meth:`_forget_artefacts`."""

    # ---- records built on documents ------------------------------------------------------
    def save_run(self, run: dict[str, Any]) -> str:
        run = dict(run)
        run.setdefault("run_id", f"run-{uuid.uuid4().hex[:12]}")
        run.setdefault("created_ms", now_ms())
        self.put_doc(RUNS, run["run_id"], json_safe(run))
        return run["run_id"]

    def list_runs(self, limit: int = 200) -> list[dict[str, Any]]:
        return self.list_docs(RUNS, limit=limit)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.get_doc(RUNS, run_id)

    def delete_run(self, run_id: str) -> bool:
        return self.delete_doc(RUNS, run_id)

    def save_model_version(self, meta: dict[str, Any], blob: bytes) -> str:
        """Store a model version: ``meta`` (a document) plus the serialized model ``blob``
        (an artefact, named in ``meta["artefact"]``). Returns the version id."""
        meta = dict(meta)
        meta.setdefault("version_id", f"mv-{uuid.uuid4().hex[:12]}")
        meta.setdefault("created_ms", now_ms())
        meta["artefact"] = self.put_artefact(blob)
        self.put_doc(MODEL_VERSIONS, meta["version_id"], json_safe(meta))
        return meta["version_id"]

    def list_model_versions(self, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Version metadata (no blobs), newest first."""
        docs = self.list_docs(MODEL_VERSIONS, where=where)
        for d in docs:
            d.pop("blob_b64", None)  # stores written before artefacts kept the blob inline
        return docs

    def get_model_version(self, version_id: str) -> tuple[dict[str, Any], bytes] | None:
        """(metadata, blob) of one version, or None."""
        doc = self.get_doc(MODEL_VERSIONS, version_id)
        if doc is None:
            return None
        legacy = doc.pop("blob_b64", None)
        if legacy is not None:
            return doc, base64.b64decode(legacy)
        blob = self.get_artefact(doc["artefact"]) if doc.get("artefact") else None
        if blob is None:
            raise ValueError(f"model version {version_id} has lost its artefact "
                             f"{doc.get('artefact')!r}")
        return doc, blob

    def update_model_version(self, version_id: str, **changes: Any) -> None:
        doc = self.get_doc(MODEL_VERSIONS, version_id)
        if doc is None:
            raise KeyError(f"model version {version_id} not found")
        doc.update(changes)
        self.put_doc(MODEL_VERSIONS, version_id, json_safe(doc))

    def record_event(self, kind: str, **fields: Any) -> str:
        event_id = f"ev-{uuid.uuid4().hex[:12]}"
        doc = {"event_id": event_id, "kind": kind, "created_ms": now_ms(), **fields}
        self.put_doc(EVENTS, event_id, json_safe(doc))
        return event_id

    def list_events(self, kind: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return self.list_docs(EVENTS, where={"kind": kind} if kind else None, limit=limit)

    def heartbeat(self, worker_id: str, snapshot: dict[str, Any]) -> None:
        """Publish a worker's stats so dashboards in other processes can attach to it."""
        doc = dict(snapshot, worker_id=worker_id, created_ms=now_ms())
        self.put_doc(WORKERS, worker_id, json_safe(doc))

    def list_heartbeats(self, max_age_ms: int | None = None) -> list[dict[str, Any]]:
        docs = self.list_docs(WORKERS)
        if max_age_ms is not None:
            cutoff = now_ms() - max_age_ms
            docs = [d for d in docs if d.get("created_ms", 0) >= cutoff]
        return docs


def news_frame(rows: Iterable[Sequence[Any]] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(list(rows or []), columns=NEWS_COLUMNS)
    return df.astype({"ts": "int64", "sentiment_score": "float64", "relevance": "float64"})


def fundamentals_frame(rows: Iterable[Sequence[Any]] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(list(rows or []), columns=FUNDAMENTALS_COLUMNS)
    return df.astype({"ts": "int64", **{v: "float64" for v in FUNDAMENTAL_VALUES}})


def bars_frame(rows: Iterable[Sequence[Any]] | None = None) -> pd.DataFrame:
    return pd.DataFrame(list(rows or []), columns=BAR_COLUMNS).astype(BAR_DTYPES)
