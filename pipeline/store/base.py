"""The store contract shared by the SQLite (embedded) and Elasticsearch backends.

Everything above the store (indexer, scorer, dashboard, model lab) talks only to this surface,
so switching ``ELASTICSEARCH_URL`` on or off changes no other code.

Backends implement the abstract primitives; run, model-version, event and worker-heartbeat
records are built here on top of one generic document collection API so both backends store
them the same way.
"""
from __future__ import annotations

import abc
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd

from pipeline.news import NEWS_COLUMNS, NewsItem
from pipeline.schema import Bar, Prediction

BAR_COLUMNS = ["symbol", "interval", "ts", "open", "high", "low", "close", "volume", "source"]
OHLC_COLUMNS = ["ts", "open", "high", "low", "close", "volume", "n"]
PREDICTION_COLUMNS = [
    "model_id", "symbol", "interval", "ts", "base_ts", "target", "predicted", "base_close",
    "actual", "error", "produced_ms", "stored_ms", "latency_ms",
]

# Document collections (tables in SQLite, indices in Elasticsearch).
RUNS = "runs"
MODEL_VERSIONS = "model_versions"
EVENTS = "events"
WORKERS = "workers"
COLLECTIONS = (RUNS, MODEL_VERSIONS, EVENTS, WORKERS)


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


class Store(abc.ABC):
    backend: str = "abstract"

    # ---- identity and health -------------------------------------------------------------
    @abc.abstractmethod
    def describe(self) -> str:
        """Human-readable backend and address, never containing secrets."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreUnavailable` with one clear sentence if the store is unusable."""

    def close(self) -> None:  # pragma: no cover - backends override when they hold resources
        pass

    # ---- bars ----------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_bars(self, bars: Sequence[Bar]) -> UpsertResult:
        """Insert or overwrite bars by their deterministic ID (replays never duplicate)."""

    @abc.abstractmethod
    def query_bars(
        self,
        symbol: str,
        interval: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Bars with ``start_ms <= ts < end_ms`` sorted by ts ascending, columns
        :data:`BAR_COLUMNS`. With ``limit``, the *latest* ``limit`` bars of that range."""

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
        ...

    @abc.abstractmethod
    def list_symbols(self, interval: str | None = None) -> list[str]:
        ...

    @abc.abstractmethod
    def list_intervals(self, symbol: str | None = None) -> list[str]:
        ...

    @abc.abstractmethod
    def bar_time_range(self, symbol: str, interval: str) -> tuple[int, int] | None:
        """(first ts, last ts) stored for the series, or None if empty."""

    # ---- predictions ---------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_predictions(self, predictions: Sequence[Prediction]) -> UpsertResult:
        ...

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
        ...

    # ---- news (the finance-news stream; docs/NEWS.md) -----------------------------------
    @abc.abstractmethod
    def upsert_news(self, items: Sequence[NewsItem]) -> UpsertResult:
        """Insert or overwrite news items by their deterministic ID (:func:`pipeline.news.news_id`)."""

    @abc.abstractmethod
    def query_news(self, symbol: str, start_ms: int | None = None, end_ms: int | None = None,
                   limit: int | None = None) -> pd.DataFrame:
        """The symbol's items with ``start_ms <= ts < end_ms`` sorted by ts ascending (ties by
        ID), columns :data:`NEWS_COLUMNS`. With ``limit``, the *latest* ``limit`` items."""

    @abc.abstractmethod
    def count_news(self, symbol: str | None = None) -> int:
        ...

    # ---- generic documents (runs, model versions, events, worker heartbeats) -------------
    @abc.abstractmethod
    def put_doc(self, collection: str, doc_id: str, doc: dict[str, Any]) -> None:
        """Insert or replace one JSON document. ``doc`` must carry ``created_ms``."""

    @abc.abstractmethod
    def get_doc(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        ...

    @abc.abstractmethod
    def list_docs(
        self, collection: str, where: dict[str, Any] | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Documents whose top-level fields equal ``where``'s values, newest
        ``created_ms`` first."""

    @abc.abstractmethod
    def delete_doc(self, collection: str, doc_id: str) -> bool:
        ...

    @abc.abstractmethod
    def reset(self) -> None:
        """Delete everything this store holds (bars, predictions, all collections)."""

    # ---- records built on documents ------------------------------------------------------
    def save_run(self, run: dict[str, Any]) -> str:
        run = dict(run)
        run.setdefault("run_id", f"run-{uuid.uuid4().hex[:12]}")
        run.setdefault("created_ms", now_ms())
        self.put_doc(RUNS, run["run_id"], _jsonable(run))
        return run["run_id"]

    def list_runs(self, limit: int = 200) -> list[dict[str, Any]]:
        return self.list_docs(RUNS, limit=limit)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.get_doc(RUNS, run_id)

    def delete_run(self, run_id: str) -> bool:
        return self.delete_doc(RUNS, run_id)

    def save_model_version(self, meta: dict[str, Any], blob: bytes) -> str:
        """Store a model version: ``meta`` (JSON) plus the serialized model ``blob``."""
        import base64

        meta = dict(meta)
        meta.setdefault("version_id", f"mv-{uuid.uuid4().hex[:12]}")
        meta.setdefault("created_ms", now_ms())
        meta["blob_b64"] = base64.b64encode(blob).decode("ascii")
        self.put_doc(MODEL_VERSIONS, meta["version_id"], _jsonable(meta))
        return meta["version_id"]

    def list_model_versions(self, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        docs = self.list_docs(MODEL_VERSIONS, where=where)
        for d in docs:
            d.pop("blob_b64", None)
        return docs

    def get_model_version(self, version_id: str) -> tuple[dict[str, Any], bytes] | None:
        import base64

        doc = self.get_doc(MODEL_VERSIONS, version_id)
        if doc is None:
            return None
        blob = base64.b64decode(doc.pop("blob_b64", "") or b"")
        return doc, blob

    def update_model_version(self, version_id: str, **changes: Any) -> None:
        doc = self.get_doc(MODEL_VERSIONS, version_id)
        if doc is None:
            raise KeyError(f"model version {version_id} not found")
        doc.update(changes)
        self.put_doc(MODEL_VERSIONS, version_id, _jsonable(doc))

    def record_event(self, kind: str, **fields: Any) -> str:
        event_id = f"ev-{uuid.uuid4().hex[:12]}"
        doc = {"event_id": event_id, "kind": kind, "created_ms": now_ms(), **fields}
        self.put_doc(EVENTS, event_id, _jsonable(doc))
        return event_id

    def list_events(self, kind: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return self.list_docs(EVENTS, where={"kind": kind} if kind else None, limit=limit)

    def heartbeat(self, worker_id: str, snapshot: dict[str, Any]) -> None:
        """Publish a worker's stats so dashboards in other processes can attach to it."""
        doc = dict(snapshot)
        doc["worker_id"] = worker_id
        doc["created_ms"] = now_ms()
        self.put_doc(WORKERS, worker_id, _jsonable(doc))

    def list_heartbeats(self, max_age_ms: int | None = None) -> list[dict[str, Any]]:
        docs = self.list_docs(WORKERS)
        if max_age_ms is not None:
            cutoff = now_ms() - max_age_ms
            docs = [d for d in docs if d.get("created_ms", 0) >= cutoff]
        return docs


def _jsonable(obj: Any) -> Any:
    """Plain-JSON copy: numpy scalars/arrays become Python values, NaN/inf become None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def news_frame(rows: Iterable[Sequence[Any]] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(list(rows or []), columns=NEWS_COLUMNS)
    return df.astype({"ts": "int64", "sentiment_score": "float64", "relevance": "float64"})


def bars_frame(rows: Iterable[Sequence[Any]] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(list(rows or []), columns=BAR_COLUMNS)
    return df.astype({"ts": "int64", "open": "float64", "high": "float64", "low": "float64",
                      "close": "float64", "volume": "float64"})
