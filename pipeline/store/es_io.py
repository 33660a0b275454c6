"""Elasticsearch index I/O under the store: bulk writes with per-item outcomes, complete reads
(``search_after`` paging, composite aggregations), counts, and index setup from templates.

:class:`EsIndexIO` holds no contract semantics; :class:`~pipeline.store.elasticsearch.
ElasticsearchStore` builds the contract on it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from typing import Any, Callable, Iterator, TypeVar

from elasticsearch import ApiError, Elasticsearch, NotFoundError, helpers

from pipeline.store.base import COLLECTIONS, StoreUnavailable, UpsertResult, check_limit
from pipeline.store.es_connection import _supported
from pipeline.store.es_schema import (
    _ARTEFACT_MAPPING, _BAR_MAPPING, _DOC_MAPPING, _INDEX_SETTINGS, _NEWS_MAPPING,
    _PREDICTION_MAPPING, _TEMPLATE_PRIORITY, ARTEFACTS, BARS, ITEM_RETRY_STATUSES, NEWS,
    PREDICTIONS,
)
from pipeline.store.es_schema import _FUNDAMENTALS_MAPPING, FUNDAMENTALS

log = logging.getLogger("pipeline.store.elasticsearch")

T = TypeVar("T")


class EsIndexIO:
    """Set by the store: ``_client``, ``url``, ``index_prefix``, ``page_size``, ``chunk_size``,
    ``max_chunk_bytes``, ``bulk_max_retries``, ``initial_backoff``, ``max_backoff``,
    ``refresh_after_write``, ``_ready``, ``_lock``."""

    _client: Elasticsearch
    url: str
    index_prefix: str
    page_size: int
    _ready: bool
    _lock: threading.Lock

    def index_name(self, kind: str) -> str:
        """Index of ``bars``, ``predictions``, ``artefacts`` or a document collection."""
        return f"{self.index_prefix}-{kind}"

    @property
    def indices(self) -> list[str]:
        return [self.index_name(k) for k in (BARS, PREDICTIONS, ARTEFACTS, NEWS, FUNDAMENTALS,
                                              *COLLECTIONS)]

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
        limit = check_limit(limit)
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
            self.index_name(ARTEFACTS): ([self.index_name(ARTEFACTS)], _ARTEFACT_MAPPING),
            self.index_name(NEWS): ([self.index_name(NEWS)], _NEWS_MAPPING),
            self.index_name(FUNDAMENTALS): ([self.index_name(FUNDAMENTALS)],
                                            _FUNDAMENTALS_MAPPING),
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
