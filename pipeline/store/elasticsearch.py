"""Elasticsearch backend of the store contract (used when ``ELASTICSEARCH_URL`` is set).

One index per kind of record, all named from one prefix so several classrooms can share a
cluster: ``{prefix}-bars``, ``{prefix}-predictions`` and one index per document collection
(``{prefix}-runs``, ``{prefix}-model_versions``, ``{prefix}-events``, ``{prefix}-workers``).
Their mappings come from composable index templates put on first use, so an index that is
auto-created by a write (for example by another process right after :meth:`reset`) still gets
the right mapping.

Semantics are the contract written in :mod:`pipeline.store.base` (frames, dtypes, ordering,
half-open ranges, "latest N" limits, null-preserving prediction updates, compare-and-set);
the contract suite in ``tests/test_store_contract.py`` runs both backends.

Writes go through :func:`elasticsearch.helpers.streaming_bulk` with deterministic ``_id``
(replays overwrite, never duplicate), chunks bounded by count and bytes, and per-item retries
with exponential backoff on 429/503; anything the cluster still refuses is returned per item
in :attr:`UpsertResult.rejected`. Reads page with ``search_after`` on a unique sort key, never
``from``/``size``.
"""
from __future__ import annotations

import logging
import threading
import urllib.parse
from typing import Any, Sequence

import pandas as pd
from elasticsearch import ApiError, Elasticsearch, SerializationError

from pipeline.contracts.fundamentals import FUNDAMENTALS_COLUMNS, FundamentalsSnapshot
from pipeline.contracts.news import NEWS_COLUMNS, NewsItem
from pipeline.contracts.schema import INTERVALS, Bar, Prediction
from pipeline.store.base import (
    BAR_COLUMNS, OHLC_COLUMNS, PREDICTION_COLUMNS, Store, StoreUnavailable, UpsertResult,
    bars_frame, check_limit, news_frame,
)
from pipeline.store.base import fundamentals_frame
from pipeline.store.es_connection import (
    _redact_url, _reveal, _StrictJsonSerializer, _supported, _valid_prefix, at_edge, explain,
)
from pipeline.store.es_docs import EsDocuments
from pipeline.store.es_io import EsIndexIO
from pipeline.store.es_schema import FUNDAMENTALS
from pipeline.store.es_schema import (
    _PREDICTION_SORT, _REQUIRED_PREDICTION_FIELDS, BARS, NEWS, PREDICTIONS,
    REQUEST_RETRY_STATUSES, _bar_problem, _ohlc_frame, _prediction_doc, _prediction_value,
    _range_filter, _series_query, _terms_query,
)

log = logging.getLogger(__name__)

class ElasticsearchStore(EsDocuments, EsIndexIO, Store):
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
        super().__init__()
        # What reopens this store in another process (see __reduce__), credentials included:
        # it only ever travels through a pipe to a child process of ours (never argv or logs).
        self._reopen = (url, dict(
            api_key=api_key, username=username, password=password, ca_certs=ca_certs,
            verify_certs=verify_certs, index_prefix=index_prefix, request_timeout=request_timeout,
            max_retries=max_retries, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes,
            bulk_max_retries=bulk_max_retries, initial_backoff=initial_backoff,
            max_backoff=max_backoff, page_size=page_size, refresh_after_write=refresh_after_write))
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
        """Build from :class:`pipeline.contracts.config.Config` (``ELASTICSEARCH_*`` variables)."""
        return cls(
            config.es_url,
            api_key=config.es_api_key,
            username=config.es_username,
            password=config.es_password,
            ca_certs=config.es_ca_certs,
            verify_certs=config.es_verify_certs,
            index_prefix=config.es_index_prefix,
        )

    @staticmethod
    def identity(config: Any) -> tuple:
        return ("elasticsearch", config.es_url, config.es_index_prefix)

    def __repr__(self) -> str:
        return f"ElasticsearchStore({self.describe()!r})"

    def __reduce__(self):
        """Pickled as the way to reach it: unpickling (in a spawned child, e.g. the scorer's
        retrain process) opens a new client on the same cluster and indices."""
        url, kwargs = self._reopen
        return _reopen_store, (url, kwargs)

    # ---- identity and health -------------------------------------------------------------
    def describe(self) -> str:
        return f"Elasticsearch at {self.url} (indices {self.index_prefix}-*, {self._auth})"

    @staticmethod
    def outage(exc: BaseException) -> bool:
        """Transport failures, timeouts, throttling and server errors."""
        from elastic_transport import TransportError

        if isinstance(exc, TransportError):
            return True
        return isinstance(exc, ApiError) and (exc.meta.status in (408, 429)
                                               or exc.meta.status >= 500)

    @at_edge
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
            if self.explain_failure(exc) is not None:
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

    def explain_failure(self, exc: Exception) -> str | None:
        """One sentence for a failure the user can fix (:func:`es_connection.explain`)."""
        return explain(exc, url=self.url, index_prefix=self.index_prefix,
                       has_credentials=self._has_credentials, max_retries=self.max_retries)

    # ---- bars ----------------------------------------------------------------------------
    @at_edge
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
            doc = bar.to_dict()
            doc["ts"] = int(bar.ts)
            actions.append(({"_index": index, "_id": bar.doc_id, "_source": doc}, bar))
        return self._bulk(index, actions, result, lambda b: b.ts)

    @at_edge
    def query_bars(self, symbol, interval, start_ms=None, end_ms=None, limit=None) -> pd.DataFrame:
        query = _series_query(symbol, interval, start_ms, end_ms)
        hits = self._latest_or_all(self.index_name(BARS), query, [{"ts": "asc"}], limit)
        return bars_frame([tuple(h[c] for c in BAR_COLUMNS) for h in hits])

    @at_edge
    def ohlc_buckets(self, symbol, interval, bucket_ms, start_ms=None, end_ms=None,
                     limit=None) -> pd.DataFrame:
        """``date_histogram`` with ``fixed_interval`` of ``bucket_ms`` milliseconds (epoch
        aligned in UTC, like ``ts // bucket_ms * bucket_ms``); open/close are the
        ``top_metrics`` of the first/last bar by ts. The cluster's ``search.max_buckets``
        (65,536 by default) bounds the number of non-empty buckets in the range."""
        bucket_ms = int(bucket_ms)
        if bucket_ms <= 0:
            raise ValueError("bucket_ms must be positive")
        limit = check_limit(limit)
        empty = pd.DataFrame([], columns=OHLC_COLUMNS)
        if limit == 0:
            return _ohlc_frame(empty)
        if limit is not None and start_ms is None and end_ms is None:
            # date_histogram over the visible range only, not the whole series
            return self.ohlc_latest(symbol, interval, bucket_ms, limit)
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

    @at_edge
    def count_bars(self, symbol=None, interval=None) -> int:
        return self._count(self.index_name(BARS), _terms_query(symbol=symbol, interval=interval))

    @at_edge
    def list_symbols(self, interval=None) -> list[str]:
        return sorted(self._distinct(self.index_name(BARS), "symbol",
                                     _terms_query(interval=interval)))

    @at_edge
    def list_intervals(self, symbol=None) -> list[str]:
        found = set(self._distinct(self.index_name(BARS), "interval",
                                   _terms_query(symbol=symbol)))
        return [i for i in INTERVALS if i in found]

    @at_edge
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
    @at_edge
    def upsert_predictions(self, predictions: Sequence[Prediction]) -> UpsertResult:
        """Partial ``update`` with ``doc_as_upsert`` and the ``None`` fields left out, so a
        later write without ``actual`` keeps the stored one (the contract's null-preserving update).
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

    @at_edge
    def query_predictions(self, symbol=None, interval=None, model_id=None, start_ms=None,
                          end_ms=None, limit=None) -> pd.DataFrame:
        query = _terms_query(symbol=symbol, interval=interval, model_id=model_id)
        query["bool"]["filter"] += _range_filter(start_ms, end_ms)
        rows = [tuple(_prediction_value(c, s.get(c)) for c in PREDICTION_COLUMNS)
                for s in self._latest_or_all(self.index_name(PREDICTIONS), query,
                                             _PREDICTION_SORT, limit)]
        return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)

    @at_edge
    def count_predictions(self, symbol=None, model_id=None) -> int:
        return self._count(self.index_name(PREDICTIONS),
                           _terms_query(symbol=symbol, model_id=model_id))

    # ---- news ----------------------------------------------------------------------------
    @at_edge
    def upsert_news(self, items: Sequence[NewsItem]) -> UpsertResult:
        """Index news items by ``item.doc_id``; refreshed once per batch like bars."""
        self._ensure()
        index = self.index_name(NEWS)
        actions = [({"_index": index, "_id": n.doc_id, "_source": {"id": n.doc_id, **n.to_dict()}},
                    n) for n in items]
        return self._bulk(index, actions, UpsertResult(), lambda n: n.ts)

    @at_edge
    def query_news(self, symbol, start_ms=None, end_ms=None, limit=None) -> pd.DataFrame:
        query = _terms_query(symbol=symbol)
        query["bool"]["filter"] += _range_filter(start_ms, end_ms)
        hits = self._latest_or_all(self.index_name(NEWS), query,
                                   [{"ts": "asc"}, {"id": "asc"}], limit)
        return news_frame([tuple(h[c] for c in NEWS_COLUMNS) for h in hits])

    @at_edge
    def count_news(self, symbol=None) -> int:
        return self._count(self.index_name(NEWS), _terms_query(symbol=symbol))

    # ---- fundamentals --------------------------------------------------------------------
    @at_edge
    def upsert_fundamentals(self, snapshots: Sequence[FundamentalsSnapshot]) -> UpsertResult:
        """Index snapshots by ``doc_id``; a missing value is left out of the document."""
        self._ensure()
        index = self.index_name(FUNDAMENTALS)
        actions = []
        for snap in snapshots:
            row = dict(zip(FUNDAMENTALS_COLUMNS, snap.to_row()))
            doc = {"id": snap.doc_id, **{k: v for k, v in row.items() if v is not None}}
            actions.append(({"_index": index, "_id": snap.doc_id, "_source": doc}, snap))
        return self._bulk(index, actions, UpsertResult(), lambda s: s.ts)

    @at_edge
    def query_fundamentals(self, symbol, start_ms=None, end_ms=None, limit=None) -> pd.DataFrame:
        query = _terms_query(symbol=symbol)
        query["bool"]["filter"] += _range_filter(start_ms, end_ms)
        hits = self._latest_or_all(self.index_name(FUNDAMENTALS), query,
                                   [{"ts": "asc"}, {"id": "asc"}], limit)
        return fundamentals_frame([tuple(h.get(c) for c in FUNDAMENTALS_COLUMNS) for h in hits])

    @at_edge
    def count_fundamentals(self, symbol=None) -> int:
        return self._count(self.index_name(FUNDAMENTALS), _terms_query(symbol=symbol))

    @at_edge
    def reset(self) -> None:
        """Delete this prefix's indices (cheaper than deleting their documents); the templates
        stay, so the next write, from this or any other process, recreates them with the
        right mappings."""
        with self._lock:
            for index in self.indices:
                self._client.options(ignore_status=404).indices.delete(index=index)
            self._ready = False
        self._forget_artefacts()

    @at_edge
    def drop(self) -> None:
        """:meth:`reset` plus removal of this prefix's index templates (test clean-up)."""
        self.reset()
        for name in self._templates():
            self._client.options(ignore_status=404).indices.delete_index_template(name=name)


def _reopen_store(url: str, kwargs: dict[str, Any]) -> ElasticsearchStore:
    return ElasticsearchStore(url, **kwargs)
