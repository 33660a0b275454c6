"""Elasticsearch backend of the store contract (used when ``ELASTICSEARCH_URL`` is set).

One index per kind of record, all named from one prefix so several classrooms can share a
cluster: ``{prefix}-bars``, ``{prefix}-predictions`` and one index per document collection
(``{prefix}-runs``, ``{prefix}-model_versions``, ``{prefix}-events``, ``{prefix}-workers``).
Their mappings come from composable index templates put on first use, so an index that is
auto-created by a write (for example by another process right after :meth:`reset`) still gets
the right mapping.

Semantics match :class:`~pipeline.store.sqlite.SqliteStore` exactly (same frames, dtypes,
ordering, half-open ranges, "latest N" limits, null-preserving prediction updates); the
contract suite in ``tests/test_store_contract.py`` runs both.

Writes go through :func:`elasticsearch.helpers.streaming_bulk` with deterministic ``_id``
(replays overwrite, never duplicate), chunks bounded by count and bytes, and per-item retries
with exponential backoff on 429/503; anything the cluster still refuses is returned per item
in :attr:`UpsertResult.rejected`. Reads page with ``search_after`` on a unique sort key, never
``from``/``size``.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import re
import threading
import time
import urllib.parse
from collections import defaultdict, deque
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pandas as pd
from elasticsearch import (
    ApiError, AuthenticationException, AuthorizationException, ConnectionError,
    ConnectionTimeout, Elasticsearch, NotFoundError, SerializationError, SSLError,
    TransportError, UnsupportedProductError, helpers,
)
from elasticsearch.serializer import JsonSerializer

from pipeline.news import NEWS_COLUMNS, NewsItem
from pipeline.schema import INTERVALS, Bar, Prediction
from pipeline.store.base import (
    COLLECTIONS, OHLC_COLUMNS, PREDICTION_COLUMNS, Store, StoreUnavailable, UpsertResult,
    bars_frame, news_frame,
)

log = logging.getLogger(__name__)

BARS = "bars"
PREDICTIONS = "predictions"
NEWS = "news"

#: Statuses worth retrying: per bulk item (helpers) and per whole request (transport).
ITEM_RETRY_STATUSES = (429, 503)
REQUEST_RETRY_STATUSES = (429, 502, 503, 504)

_EPOCH_MS = {"type": "date", "format": "epoch_millis"}
_DOUBLE = {"type": "double"}
_KEYWORD = {"type": "keyword"}

_BAR_MAPPING = {
    "dynamic": "strict",
    "properties": {
        "symbol": _KEYWORD, "interval": _KEYWORD, "ts": _EPOCH_MS, "open": _DOUBLE,
        "high": _DOUBLE, "low": _DOUBLE, "close": _DOUBLE, "volume": _DOUBLE,
        "source": _KEYWORD,
    },
}
_PREDICTION_MAPPING = {
    "dynamic": "strict",
    "properties": {
        "model_id": _KEYWORD, "symbol": _KEYWORD, "interval": _KEYWORD, "ts": _EPOCH_MS,
        "base_ts": _EPOCH_MS, "target": _KEYWORD, "predicted": _DOUBLE, "base_close": _DOUBLE,
        "actual": _DOUBLE, "error": _DOUBLE, "produced_ms": _EPOCH_MS, "stored_ms": _EPOCH_MS,
        "latency_ms": _DOUBLE,
    },
}
_NEWS_MAPPING = {
    "dynamic": "strict",
    "properties": {
        "id": _KEYWORD, "symbol": _KEYWORD, "ts": _EPOCH_MS, "source": _KEYWORD,
        "title": {"type": "text"}, "url": {"type": "keyword", "index": False},
        "sentiment_score": _DOUBLE, "relevance": _DOUBLE,
    },
}
# A collection document is stored as {created_ms, doc_id, body, eq}: ``body`` is the caller's
# JSON kept verbatim in _source and never indexed (model versions carry a large base64 blob);
# ``eq`` holds one canonical keyword per top-level scalar so ``list_docs(where=...)`` is a
# term query. ``flattened`` indexes those keywords without adding a mapping field per key.
_DOC_MAPPING = {
    "dynamic": False,
    "properties": {
        "created_ms": _EPOCH_MS,
        "doc_id": _KEYWORD,
        "body": {"type": "object", "enabled": False},
        "eq": {"type": "flattened", "ignore_above": 256},
    },
}
_INDEX_SETTINGS = {"number_of_shards": 1, "auto_expand_replicas": "0-1"}
_TEMPLATE_PRIORITY = 500  # above the built-in logs-*/metrics-* templates (100)

_REQUIRED_PREDICTION_FIELDS = PREDICTION_COLUMNS[:8]  # NOT NULL columns in SQLite
_INT_PREDICTION_FIELDS = {"ts", "base_ts", "produced_ms", "stored_ms"}
_FLOAT_PREDICTION_FIELDS = {"predicted", "base_close", "actual", "error", "latency_ms"}
_PREDICTION_SORT = [{"ts": "asc"}, {"model_id": "asc"}, {"symbol": "asc"}, {"interval": "asc"}]
_LONG_STRING = 200  # longer where-values are compared by digest, not indexed verbatim
_DOC_PAGE = 100  # collection documents can be large (model versions carry their blob)

T = TypeVar("T")


def _at_edge(method: Callable[..., T]) -> Callable[..., T]:
    """Turn transport and access failures into :class:`StoreUnavailable` with one sentence."""

    @functools.wraps(method)
    def wrapper(self: "ElasticsearchStore", *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (TransportError, ApiError) as exc:
            sentence = self._explain(exc)
            if sentence is None:
                raise
        raise StoreUnavailable(sentence)  # outside the except: no chained traceback

    return wrapper


class ElasticsearchStore(Store):
    """The store contract on an Elasticsearch 9.x cluster.

    :param url: cluster address, ``http(s)://host:port``; credentials in the URL are moved
        into basic auth and never shown by :meth:`describe`.
    :param api_key: API key (encoded form); wins over username/password.
    :param username: basic-auth user.
    :param password: basic-auth password.
    :param ca_certs: CA bundle to verify the cluster's certificate (e.g. ``http_ca.crt``).
    :param verify_certs: verify TLS certificates (on by default; off only for throwaway
        local clusters).
    :param index_prefix: prefix of every index and template this store owns.
    :param request_timeout: seconds per HTTP request.
    :param max_retries: transport retries of a whole request on connection errors and on
        statuses :data:`REQUEST_RETRY_STATUSES`, with jittered exponential backoff.
    :param chunk_size: most documents per bulk request.
    :param max_chunk_bytes: most bytes per bulk request.
    :param bulk_max_retries: retries of bulk items answered 429/503 (only those items are
        resent); items still refused after that fail the call with :class:`StoreUnavailable`
        rather than being reported as rejected (they are not malformed).
    :param initial_backoff: seconds before the first bulk item retry, doubled each retry.
    :param max_backoff: cap of the bulk item retry wait.
    :param page_size: hits per search page (``search_after`` paging); at most the index's
        ``max_result_window`` (10,000 by default).
    :param refresh_after_write: make every write searchable before the write call returns
        (see :meth:`upsert_bars`); turn off only for bulk loads that read nothing back.

    Nothing touches the network until the first call; :meth:`check` is the health probe.
    """

    backend = "elasticsearch"

    def __init__(
        self,
        url: str,
        *,
        api_key: Any = None,
        username: str | None = None,
        password: Any = None,
        ca_certs: str | None = None,
        verify_certs: bool = True,
        index_prefix: str = "kappalab",
        request_timeout: float = 30.0,
        max_retries: int = 3,
        chunk_size: int = 1000,
        max_chunk_bytes: int = 5 * 1024 * 1024,
        bulk_max_retries: int = 5,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        page_size: int = 5000,
        refresh_after_write: bool = True,
    ):
        self.url = _redact_url(url)
        self.index_prefix = _valid_prefix(index_prefix)
        self.chunk_size = int(chunk_size)
        self.max_chunk_bytes = int(max_chunk_bytes)
        self.bulk_max_retries = int(bulk_max_retries)
        self.initial_backoff = float(initial_backoff)
        self.max_backoff = float(max_backoff)
        self.max_retries = int(max_retries)
        self.request_timeout = float(request_timeout)
        self.page_size = max(1, min(int(page_size), 10_000))
        self.refresh_after_write = bool(refresh_after_write)
        url_has_user = "@" in urllib.parse.urlsplit(url).netloc
        self._auth = ("API key" if api_key else f"user {username}" if username else
                      "credentials from the URL" if url_has_user else "no credentials")
        self._has_credentials = bool(api_key or username or url_has_user)
        self._ready = False
        self._lock = threading.Lock()

        kwargs: dict[str, Any] = dict(
            request_timeout=request_timeout,
            max_retries=self.max_retries,
            retry_on_status=REQUEST_RETRY_STATUSES,
            retry_on_timeout=True,
            retry_backoff_base=0.5,  # 9.x transport; dropped below for older clients
            retry_backoff_cap=10.0,
            serializer=_StrictJsonSerializer(),
        )
        if api_key:
            kwargs["api_key"] = _reveal(api_key)
        elif username:
            kwargs["basic_auth"] = (username, _reveal(password) or "")
        if url.lower().startswith("https:"):
            kwargs["verify_certs"] = bool(verify_certs)
            if ca_certs:
                kwargs["ca_certs"] = ca_certs
            if not verify_certs:
                kwargs["ssl_show_warn"] = False
                log.warning("TLS certificate verification is OFF for %s "
                            "(ELASTICSEARCH_VERIFY_CERTS=false)", self.url)
        try:
            self._client = Elasticsearch(url, **_supported(Elasticsearch.__init__, kwargs))
            return
        except ValueError:  # the message may quote the URL with its password
            pass
        raise StoreUnavailable(
            f"ELASTICSEARCH_URL {self.url!r} is not a usable address; set it to the form "
            "http://host:9200 or https://host:9200 (scheme, host and port).")

    @classmethod
    def from_config(cls, config: Any) -> "ElasticsearchStore":
        """Build from :class:`pipeline.config.Config` (``ELASTICSEARCH_*`` variables)."""
        return cls(
            config.es_url,
            api_key=config.es_api_key,
            username=config.es_username,
            password=config.es_password,
            ca_certs=config.es_ca_certs,
            verify_certs=config.es_verify_certs,
            index_prefix=config.es_index_prefix,
        )

    def __repr__(self) -> str:
        return f"ElasticsearchStore({self.describe()!r})"

    # ---- identity and health -------------------------------------------------------------
    def index_name(self, kind: str) -> str:
        """Index of ``bars``, ``predictions`` or a document collection."""
        return f"{self.index_prefix}-{kind}"

    @property
    def indices(self) -> list[str]:
        return [self.index_name(k) for k in (BARS, PREDICTIONS, NEWS, *COLLECTIONS)]

    def describe(self) -> str:
        return f"Elasticsearch at {self.url} (indices {self.index_prefix}-*, {self._auth})"

    @_at_edge
    def check(self) -> None:
        """Probe the cluster (``GET /``, short timeout, one retry: a black-holed address fails
        in seconds, not minutes) and make sure the templates and indices exist, so a missing
        privilege shows up here rather than at the first write."""
        probe = self._client.options(request_timeout=min(self.request_timeout, 10.0),
                                     max_retries=min(self.max_retries, 1))
        answer = None  # what answered instead, e.g. a proxy or a web server on that port
        try:
            probe.info()
        except SerializationError:
            answer = "a body that is not JSON"
        except ApiError as exc:
            if self._explain(exc) is not None:
                raise
            answer = f"HTTP {exc.status_code}"
        if answer is not None:
            raise StoreUnavailable(
                f"The server at {self.url} answered GET / with {answer} instead of "
                "Elasticsearch's cluster info; set ELASTICSEARCH_URL to an Elasticsearch 9.x "
                "cluster.")
        self._ensure()

    def close(self) -> None:
        self._client.close()

    # ---- bars ----------------------------------------------------------------------------
    @_at_edge
    def upsert_bars(self, bars: Sequence[Bar]) -> UpsertResult:
        """Index bars by ``bar.doc_id`` (replays overwrite, never duplicate).

        Refresh: chunks are sent without ``refresh`` and, once the batch is in, the bars index
        is refreshed once. The contract promises read-your-writes (the dashboard and the tests
        query right after a write), which rules out the default of "visible within a
        second". ``refresh=true`` on every chunk would cut one tiny segment per chunk;
        ``refresh=wait_for`` on every chunk would park each chunk up to ``refresh_interval``
        (1 s), i.e. minutes for a 100k-bar backfill. One explicit refresh per batch costs
        one segment per batch, and the indexer batches by size and time.
        """
        self._ensure()
        index = self.index_name(BARS)
        actions: list[tuple[dict[str, Any], Bar]] = []
        result = UpsertResult()
        for bar in bars:
            problem = _bar_problem(bar)
            if problem:
                result.rejected.append((bar, problem))
                continue
            doc = {"symbol": bar.symbol, "interval": bar.interval, "ts": int(bar.ts),
                   "open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close,
                   "volume": bar.volume, "source": bar.source}
            actions.append(({"_index": index, "_id": bar.doc_id, "_source": doc}, bar))
        return self._bulk(index, actions, result, lambda b: b.ts)

    @_at_edge
    def query_bars(self, symbol, interval, start_ms=None, end_ms=None, limit=None) -> pd.DataFrame:
        query = _series_query(symbol, interval, start_ms, end_ms)
        rows = [
            (s["symbol"], s["interval"], int(s["ts"]), s["open"], s["high"], s["low"],
             s["close"], s["volume"], s["source"])
            for s in self._latest_or_all(self.index_name(BARS), query, [{"ts": "asc"}], limit)
        ]
        return bars_frame(rows)

    @_at_edge
    def ohlc_buckets(self, symbol, interval, bucket_ms, start_ms=None, end_ms=None,
                     limit=None) -> pd.DataFrame:
        """``date_histogram`` with ``fixed_interval`` of ``bucket_ms`` milliseconds (epoch
        aligned in UTC, like ``ts // bucket_ms * bucket_ms``); open/close are the
        ``top_metrics`` of the first/last bar by ts. The cluster's ``search.max_buckets``
        (65,536 by default) bounds the number of non-empty buckets in the range."""
        bucket_ms = int(bucket_ms)
        if bucket_ms <= 0:
            raise ValueError("bucket_ms must be positive")
        limit = _sqlite_limit(limit)
        empty = pd.DataFrame([], columns=OHLC_COLUMNS)
        if limit == 0:
            return _ohlc_frame(empty)
        self._ensure()
        sub_aggs: dict[str, Any] = {
            "high": {"max": {"field": "high"}},
            "low": {"min": {"field": "low"}},
            "volume": {"sum": {"field": "volume"}},
            "open": {"top_metrics": {"metrics": {"field": "open"}, "sort": {"ts": "asc"}}},
            "close": {"top_metrics": {"metrics": {"field": "close"}, "sort": {"ts": "desc"}}},
        }
        if limit is not None:
            sub_aggs["latest"] = {"bucket_sort": {"sort": [{"_key": {"order": "desc"}}],
                                                  "size": limit}}
        aggs = {"buckets": {
            "date_histogram": {"field": "ts", "fixed_interval": f"{bucket_ms}ms",
                               "min_doc_count": 1},
            "aggs": sub_aggs,
        }}
        resp = self._search(self.index_name(BARS), query=_series_query(
            symbol, interval, start_ms, end_ms), aggs=aggs, size=0)
        if resp is None:
            return _ohlc_frame(empty)
        rows = [
            (int(b["key"]), b["open"]["top"][0]["metrics"]["open"], b["high"]["value"],
             b["low"]["value"], b["close"]["top"][0]["metrics"]["close"], b["volume"]["value"],
             int(b["doc_count"]))
            for b in resp["aggregations"]["buckets"]["buckets"]
        ]
        rows.sort(key=lambda r: r[0])
        return _ohlc_frame(pd.DataFrame(rows, columns=OHLC_COLUMNS))

    @_at_edge
    def count_bars(self, symbol=None, interval=None) -> int:
        return self._count(self.index_name(BARS), _terms_query(symbol=symbol, interval=interval))

    @_at_edge
    def list_symbols(self, interval=None) -> list[str]:
        return sorted(self._distinct(self.index_name(BARS), "symbol",
                                     _terms_query(interval=interval)))

    @_at_edge
    def list_intervals(self, symbol=None) -> list[str]:
        found = set(self._distinct(self.index_name(BARS), "interval",
                                   _terms_query(symbol=symbol)))
        return [i for i in INTERVALS if i in found]

    @_at_edge
    def bar_time_range(self, symbol, interval):
        self._ensure()
        resp = self._search(self.index_name(BARS), query=_series_query(symbol, interval),
                            size=0, aggs={"first": {"min": {"field": "ts"}},
                                          "last": {"max": {"field": "ts"}}})
        if resp is None or resp["aggregations"]["first"]["value"] is None:
            return None
        aggs = resp["aggregations"]
        return int(aggs["first"]["value"]), int(aggs["last"]["value"])

    # ---- predictions ---------------------------------------------------------------------
    @_at_edge
    def upsert_predictions(self, predictions: Sequence[Prediction]) -> UpsertResult:
        """Partial ``update`` with ``doc_as_upsert`` and the ``None`` fields left out, so a
        later write without ``actual`` keeps the stored one (SQLite's ``COALESCE``).
        Refreshed once per batch, as :meth:`upsert_bars` explains."""
        self._ensure()
        index = self.index_name(PREDICTIONS)
        actions: list[tuple[dict[str, Any], Prediction]] = []
        result = UpsertResult()
        for pred in predictions:
            doc = {k: v for k, v in _prediction_doc(pred).items() if v is not None}
            missing = [f for f in _REQUIRED_PREDICTION_FIELDS if f not in doc]
            if missing:
                result.rejected.append(
                    (pred, f"required field(s) {', '.join(missing)} missing or not finite"))
                continue
            actions.append(({"_op_type": "update", "_index": index, "_id": pred.doc_id,
                             "retry_on_conflict": 3, "doc": doc, "doc_as_upsert": True}, pred))
        return self._bulk(index, actions, result, lambda p: p.ts)

    @_at_edge
    def query_predictions(self, symbol=None, interval=None, model_id=None, start_ms=None,
                          end_ms=None, limit=None) -> pd.DataFrame:
        query = _terms_query(symbol=symbol, interval=interval, model_id=model_id)
        query["bool"]["filter"] += _range_filter(start_ms, end_ms)
        rows = [tuple(_prediction_value(c, s.get(c)) for c in PREDICTION_COLUMNS)
                for s in self._latest_or_all(self.index_name(PREDICTIONS), query,
                                             _PREDICTION_SORT, limit)]
        return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)

    @_at_edge
    def count_predictions(self, symbol=None, model_id=None) -> int:
        return self._count(self.index_name(PREDICTIONS),
                           _terms_query(symbol=symbol, model_id=model_id))

    # ---- news ----------------------------------------------------------------------------
    @_at_edge
    def upsert_news(self, items: Sequence[NewsItem]) -> UpsertResult:
        """Index news items by ``item.doc_id``; refreshed once per batch like bars."""
        self._ensure()
        index = self.index_name(NEWS)
        actions = [({"_index": index, "_id": n.doc_id, "_source": {"id": n.doc_id, **n.to_dict()}},
                    n) for n in items]
        return self._bulk(index, actions, UpsertResult(), lambda n: n.ts)

    @_at_edge
    def query_news(self, symbol, start_ms=None, end_ms=None, limit=None) -> pd.DataFrame:
        query = _terms_query(symbol=symbol)
        query["bool"]["filter"] += _range_filter(start_ms, end_ms)
        hits = self._latest_or_all(self.index_name(NEWS), query,
                                   [{"ts": "asc"}, {"id": "asc"}], limit)
        return news_frame([tuple(h[c] for c in NEWS_COLUMNS) for h in hits])

    @_at_edge
    def count_news(self, symbol=None) -> int:
        return self._count(self.index_name(NEWS), _terms_query(symbol=symbol))

    # ---- generic documents ---------------------------------------------------------------
    @_at_edge
    def put_doc(self, collection: str, doc_id: str, doc: dict[str, Any]) -> None:
        """Index one document with ``refresh=true``: collections are written a few times a
        minute (runs, heartbeats), and a run saved by the model lab must be in the very next
        ``list_runs``."""
        _check_collection(collection)
        self._ensure()
        wrapped = {"created_ms": int(doc.get("created_ms", 0)), "doc_id": doc_id, "body": doc,
                   "eq": _eq_fields(doc)}
        try:
            self._client.index(index=self.index_name(collection), id=doc_id, document=wrapped,
                               refresh=True)
        except SerializationError:
            raise ValueError(f"document {doc_id!r} is not plain JSON (NaN, infinity or an "
                             "unsupported type); pass it through base._jsonable first") from None

    @_at_edge
    def get_doc(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        _check_collection(collection)
        self._ensure()
        try:
            resp = self._client.get(index=self.index_name(collection), id=doc_id)
        except NotFoundError:
            return None
        return resp["_source"]["body"]

    @_at_edge
    def list_docs(self, collection, where=None, limit=1000) -> list[dict[str, Any]]:
        """Top-level scalar equality as in SQLite's ``json_extract(body, '$.key') = value``:
        numbers compare by value (``1 == 1.0``, ``True == 1``), strings only to strings, and
        ``None`` matches nothing."""
        _check_collection(collection)
        filters: list[dict[str, Any]] = []
        for key, value in (where or {}).items():
            if isinstance(value, (dict, list, tuple, set)):
                raise ValueError(f"where[{key!r}] must be a scalar, got {type(value).__name__}")
            canonical = _canonical(value)
            if canonical is None:
                return []
            filters.append({"term": {f"eq.{key}": canonical}})
        sort = [{"created_ms": "desc"}, {"doc_id": "asc"}]
        hits = self._scan(self.index_name(collection), {"bool": {"filter": filters}}, sort,
                          _sqlite_limit(limit), page_size=min(self.page_size, _DOC_PAGE))
        return [s["body"] for s in hits]

    @_at_edge
    def delete_doc(self, collection: str, doc_id: str) -> bool:
        _check_collection(collection)
        self._ensure()
        try:
            resp = self._client.delete(index=self.index_name(collection), id=doc_id,
                                       refresh=True)
        except NotFoundError:
            return False
        return resp.get("result") == "deleted"

    @_at_edge
    def reset(self) -> None:
        """Delete this prefix's indices (cheaper than deleting their documents); the templates
        stay, so the next write, from this or any other process, recreates them with the
        right mappings."""
        with self._lock:
            for index in self.indices:
                self._client.options(ignore_status=404).indices.delete(index=index)
            self._ready = False

    @_at_edge
    def drop(self) -> None:
        """:meth:`reset` plus removal of this prefix's index templates (test clean-up)."""
        self.reset()
        for name in self._templates():
            self._client.options(ignore_status=404).indices.delete_index_template(name=name)

    # ---- writing -------------------------------------------------------------------------
    def _bulk(self, index: str, actions: list[tuple[dict[str, Any], T]], result: UpsertResult,
              ts_of: Callable[[T], int]) -> UpsertResult:
        """Stream ``actions`` through the bulk helper; map every per-item answer back to its
        item by ``_id`` (retried items come back out of order)."""
        if not actions:
            return result
        started = time.perf_counter()
        pending: dict[str, deque[T]] = defaultdict(deque)

        def stream() -> Iterator[dict[str, Any]]:
            for action, item in actions:
                pending[action["_id"]].append(item)
                yield action

        bulk_kwargs = _supported(helpers.streaming_bulk, dict(
            chunk_size=self.chunk_size, max_chunk_bytes=self.max_chunk_bytes,
            raise_on_error=False,  # per-item failures come back as (False, info)
            raise_on_exception=True,  # a failed request (cluster down) is not an item's fault
            max_retries=self.bulk_max_retries, initial_backoff=self.initial_backoff,
            max_backoff=self.max_backoff, retry_on_status=ITEM_RETRY_STATUSES,
        ))
        overloaded = 0
        for ok, info in helpers.streaming_bulk(self._client, stream(), **bulk_kwargs):
            answer = next(iter(info.values()))
            item = pending[answer["_id"]].popleft()
            if ok:
                result.accepted += 1
            elif answer.get("status") in ITEM_RETRY_STATUSES:
                overloaded += 1
            else:
                result.rejected.append((item, self._item_reason(answer)))
        if result.accepted and self.refresh_after_write:
            self._client.indices.refresh(index=index)
        ts = [ts_of(item) for _, item in actions]
        log.info("%s: %d accepted, %d rejected, %d refused as overloaded, ts %d..%d, %.3fs",
                 index, result.accepted, len(result.rejected), overloaded, min(ts), max(ts),
                 time.perf_counter() - started)
        if overloaded:
            # Not the documents' fault: reporting them as rejected would send valid bars to
            # the dead-letter topic. Failing the call makes the caller retry the batch later
            # (the indexer does, with backoff); the accepted part is simply overwritten.
            raise StoreUnavailable(
                f"Elasticsearch at {self.url} is overloaded: {overloaded} of {len(actions)} "
                f"documents were still refused with HTTP 429/503 after {self.bulk_max_retries} "
                "retries, so the batch must be retried later.")
        return result

    def _item_reason(self, answer: dict[str, Any]) -> str:
        status = answer.get("status")
        error = answer.get("error")
        if isinstance(error, dict):
            text = f"{error.get('type', 'error')}: {error.get('reason', '')}".strip()
        else:
            text = str(error)
        return f"{text} (HTTP {status})"

    # ---- reading -------------------------------------------------------------------------
    def _latest_or_all(self, index: str, query: dict[str, Any], sort: list[dict[str, str]],
                       limit: int | None) -> list[dict[str, Any]]:
        """Hits of ``query`` in ``sort`` order (ascending); with ``limit``, the last ``limit``
        of them, fetched newest first and turned around."""
        limit = _sqlite_limit(limit)
        if limit is None:
            return self._scan(index, query, sort, None)
        descending = [{k: ("desc" if v == "asc" else "asc") for k, v in s.items()} for s in sort]
        return self._scan(index, query, descending, limit)[::-1]

    def _scan(self, index: str, query: dict[str, Any], sort: list[dict[str, str]],
              limit: int | None, page_size: int | None = None) -> list[dict[str, Any]]:
        """Page through all hits with ``search_after``. ``sort`` must be unique per document
        (bars: ts within one series; predictions: ts+model+series; docs: created_ms+id), so
        paging neither skips nor repeats a document that existed when the read started."""
        self._ensure()
        page = page_size or self.page_size
        out: list[dict[str, Any]] = []
        after: list[Any] | None = None
        while limit is None or len(out) < limit:
            size = page if limit is None else min(page, limit - len(out))
            body: dict[str, Any] = {"query": query, "sort": sort, "size": size,
                                    "track_total_hits": False}
            if after is not None:
                body["search_after"] = after
            resp = self._search(index, **body)
            hits = [] if resp is None else resp["hits"]["hits"]
            out.extend(h["_source"] for h in hits)
            if len(hits) < size:
                break
            after = hits[-1]["sort"]
        return out

    def _search(self, index: str, **body: Any) -> dict[str, Any] | None:
        """One search; ``None`` if the index is gone (reset by another process)."""
        try:
            return self._client.search(index=index, **body).body
        except NotFoundError:
            return None

    def _count(self, index: str, query: dict[str, Any]) -> int:
        self._ensure()
        try:
            return int(self._client.count(index=index, query=query)["count"])
        except NotFoundError:
            return 0

    def _distinct(self, index: str, field: str, query: dict[str, Any]) -> list[str]:
        """All values of a keyword field: a ``composite`` ``terms`` aggregation paged by
        ``after_key``, so the answer is complete however many values there are."""
        self._ensure()
        values: list[str] = []
        after: dict[str, Any] | None = None
        page = 1000
        while True:
            composite: dict[str, Any] = {"size": page,
                                         "sources": [{"v": {"terms": {"field": field}}}]}
            if after:
                composite["after"] = after
            resp = self._search(index, query=query, size=0,
                                aggs={"values": {"composite": composite}})
            if resp is None:
                return values
            agg = resp["aggregations"]["values"]
            values += [b["key"]["v"] for b in agg["buckets"]]
            after = agg.get("after_key")
            if len(agg["buckets"]) < page or not after:
                return values

    # ---- setup ---------------------------------------------------------------------------
    def _templates(self) -> dict[str, tuple[list[str], dict[str, Any]]]:
        docs = [self.index_name(c) for c in COLLECTIONS]
        return {
            self.index_name(BARS): ([self.index_name(BARS)], _BAR_MAPPING),
            self.index_name(PREDICTIONS): ([self.index_name(PREDICTIONS)], _PREDICTION_MAPPING),
            self.index_name(NEWS): ([self.index_name(NEWS)], _NEWS_MAPPING),
            self.index_name("docs"): (docs, _DOC_MAPPING),
        }

    def _ensure(self) -> None:
        """Put the index templates and create missing indices, once per process (again after
        :meth:`reset`). Creating explicitly also works where ``action.auto_create_index`` is
        off."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            for name, (patterns, mappings) in self._templates().items():
                self._client.indices.put_index_template(
                    name=name, index_patterns=patterns, priority=_TEMPLATE_PRIORITY,
                    template={"settings": _INDEX_SETTINGS, "mappings": mappings},
                    meta={"managed_by": "kappalab", "schema_version": 1},
                )
            for index in self.indices:
                try:
                    self._client.indices.create(index=index)
                except ApiError as exc:
                    if exc.status_code != 400 or "already_exists" not in str(exc.message):
                        raise
            self._ready = True

    # ---- errors --------------------------------------------------------------------------
    def _explain(self, exc: Exception) -> str | None:
        """One sentence for failures a user can fix; ``None`` for anything else (a bug)."""
        url = self.url
        if isinstance(exc, SSLError):
            text = str(exc)
            why = ("the certificate is not trusted" if "CERTIFICATE_VERIFY_FAILED" in text
                   or "certificate verify failed" in text else
                   "the server does not speak TLS" if "WRONG_VERSION_NUMBER" in text
                   or "wrong version number" in text else "TLS error")
            return (f"TLS handshake with Elasticsearch at {url} failed ({why}); set "
                    "ELASTICSEARCH_CA_CERTS to the cluster's CA certificate (http_ca.crt), "
                    "or use an http:// ELASTICSEARCH_URL if the cluster has TLS off.")
        if isinstance(exc, (ConnectionError, ConnectionTimeout)):
            text = str(exc)
            why = ("timed out" if isinstance(exc, ConnectionTimeout) or "timed out" in text
                   else "connection refused" if "refused" in text.lower()
                   else "host name not found" if "resolution" in text or "not known" in text
                   or "getaddrinfo" in text or "nodename" in text
                   else "connection failed")
            return (f"Elasticsearch at {url} is unreachable ({why}); start the cluster or set "
                    "ELASTICSEARCH_URL to its address (unset it to use the embedded SQLite "
                    "store).")
        if isinstance(exc, UnsupportedProductError):
            return (f"The server at {url} is not Elasticsearch; set ELASTICSEARCH_URL to an "
                    "Elasticsearch 9.x cluster.")
        if isinstance(exc, AuthenticationException):
            sent = "" if self._has_credentials else ": no credentials were sent"
            return (f"Elasticsearch at {url} refused the credentials (401 unauthorised{sent}); "
                    "set ELASTICSEARCH_API_KEY, or ELASTICSEARCH_USERNAME and "
                    "ELASTICSEARCH_PASSWORD, to valid credentials.")
        if isinstance(exc, AuthorizationException):
            return (f"Elasticsearch at {url} denied access (403 forbidden); give the user of "
                    "ELASTICSEARCH_API_KEY or ELASTICSEARCH_USERNAME the cluster privileges "
                    "monitor and manage_index_templates and all privileges on indices "
                    f"{self.index_prefix}-*, or set ELASTICSEARCH_INDEX_PREFIX to indices it "
                    "may use.")
        if isinstance(exc, ApiError):
            status = exc.status_code
            if status in (400, 406) and ("media_type" in str(exc.body) or
                                         "compatib" in str(exc.body).lower()):
                return (f"Elasticsearch at {url} rejected this 9.x client (HTTP {status}, the "
                        "server is probably 8.x or older); use a 9.x cluster, or for an 8.x "
                        "cluster install the matching client: pip install 'elasticsearch>=8,<9'.")
            if status == 429 or status >= 500:
                return (f"Elasticsearch at {url} is unavailable (HTTP {status} {exc.message}) "
                        f"after {self.max_retries} retries; check GET _cluster/health and try "
                        "again.")
        return None


# ---- module details -----------------------------------------------------------------------
class _StrictJsonSerializer(JsonSerializer):
    """Refuse NaN/infinity locally (Elasticsearch would reject the whole request)."""

    def json_dumps(self, data: Any) -> bytes:
        return json.dumps(data, default=self.default, ensure_ascii=False,
                          separators=(",", ":"), allow_nan=False).encode("utf-8", "surrogatepass")


def _supported(func: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop keyword arguments an older (8.x) client does not name (e.g. ``retry_on_status``
    of the bulk helper, ``retry_backoff_base`` of the client)."""
    params = inspect.signature(func).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _reveal(secret: Any) -> str | None:
    """Plain value of a :class:`pipeline.config.Secret` or string."""
    if secret is None:
        return None
    return secret.get() if hasattr(secret, "get") else str(secret)


def _redact_url(url: str) -> str:
    """The URL without user info (``https://user:pw@host:9200`` -> ``https://host:9200``),
    also when the URL is malformed (``user:pw@host:9200`` without a scheme)."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@", r"\1", url.strip())
    if "://" not in url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def _valid_prefix(prefix: str) -> str:
    bad = set('\\/*?"<>|, #:') | {c for c in prefix if c.isupper()}
    if not prefix or prefix[0] in "-_+." or any(c in bad for c in prefix) or len(prefix) > 200:
        raise StoreUnavailable(
            f"ELASTICSEARCH_INDEX_PREFIX {prefix!r} is not a valid index name prefix; use "
            "lowercase letters, digits, '-' and '_' (e.g. kappalab or class-3b).")
    return prefix


def _check_collection(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")


def _sqlite_limit(limit: int | None) -> int | None:
    """SQLite's LIMIT: a negative limit means no limit."""
    if limit is None:
        return None
    limit = int(limit)
    return None if limit < 0 else limit


def _range_filter(start_ms: int | None, end_ms: int | None) -> list[dict[str, Any]]:
    bounds: dict[str, Any] = {}
    if start_ms is not None:
        bounds["gte"] = int(start_ms)
    if end_ms is not None:
        bounds["lt"] = int(end_ms)
    if not bounds:
        return []
    return [{"range": {"ts": {**bounds, "format": "epoch_millis"}}}]


def _terms_query(**equal: Any) -> dict[str, Any]:
    return {"bool": {"filter": [{"term": {k: v}} for k, v in equal.items() if v is not None]}}


def _series_query(symbol: str, interval: str, start_ms: int | None = None,
                  end_ms: int | None = None) -> dict[str, Any]:
    query = _terms_query(symbol=symbol, interval=interval)
    query["bool"]["filter"] += _range_filter(start_ms, end_ms)
    return query


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _bar_problem(bar: Bar) -> str | None:
    """Why a bar cannot be stored as it is (SQLite refuses the same: NOT NULL columns)."""
    try:  # fast path: the sum is finite only if every number is
        if (math.isfinite(bar.open + bar.high + bar.low + bar.close + bar.volume + bar.ts)
                and None not in (bar.symbol, bar.interval, bar.ts, bar.source)):
            return None
    except TypeError:
        pass  # a non-number: let the mapping decide, below finds nothing else
    for name in ("symbol", "interval", "ts", "open", "high", "low", "close", "volume", "source"):
        value = getattr(bar, name)
        if value is None:
            return f"field {name} is missing"
        if isinstance(value, float) and not math.isfinite(value):
            return f"field {name} is not finite ({value})"
    return None


def _prediction_doc(pred: Prediction) -> dict[str, Any]:
    return {c: _finite_or_none(getattr(pred, c)) for c in PREDICTION_COLUMNS}


def _prediction_value(column: str, value: Any) -> Any:
    """The Python type SQLite would hand back for this column (REAL/INTEGER affinity)."""
    if value is None:
        return None
    if column in _FLOAT_PREDICTION_FIELDS and isinstance(value, (int, float)):
        return float(value)
    if column in _INT_PREDICTION_FIELDS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _canonical(value: Any) -> str | None:
    """One keyword per JSON scalar such that equal-in-SQLite values get equal keywords."""
    if isinstance(value, bool):
        return "n:1" if value else "n:0"
    if isinstance(value, int):
        return f"n:{value}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return f"n:{int(value)}" if value.is_integer() and abs(value) < 2**63 else f"n:{value!r}"
    if isinstance(value, str):
        if len(value) > _LONG_STRING:
            return "h:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return "s:" + value
    return None


def _eq_fields(doc: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in doc.items():
        if not key or "." in key or key == "blob_b64":
            continue
        canonical = _canonical(value)
        if canonical is not None:
            out[key] = canonical
    return out


def _ohlc_frame(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({"ts": "int64", "open": "float64", "high": "float64", "low": "float64",
                      "close": "float64", "volume": "float64", "n": "int64"})
