"""The document and artefact half of the Elasticsearch store: runs, model versions, events,
heartbeats and champion pointers as documents (one index per collection), pickled models as
artefacts (one index, keyed by their sha256), with the compare-and-set of the contract.

:class:`EsDocuments` is a mixin of
:class:`~pipeline.store.elasticsearch.ElasticsearchStore`
(it reads the store's client, index names and scan helper); the contract's semantics are in
the docstrings of :class:`pipeline.store.base.Store`.
"""
from __future__ import annotations

import base64
from typing import Any

from elasticsearch import ConflictError, NotFoundError, SerializationError

from pipeline.store.base import check_limit, now_ms
from pipeline.store.es_connection import at_edge
from pipeline.store.es_schema import ARTEFACTS, _DOC_PAGE, _canonical, _check_collection, wrap_doc


class EsDocuments:
    """Documents and artefacts in Elasticsearch (a mixin: no state of its own). Called from
    any thread, like the store it belongs to."""

    # ---- generic documents ---------------------------------------------------------------
    @at_edge
    def put_doc(self, collection: str, doc_id: str, doc: dict[str, Any]) -> None:
        """Index one document with ``refresh=true``: collections are written a few times a
        minute (runs, heartbeats), and a run saved by the model lab must be in the very next
        ``list_runs``."""
        _check_collection(collection)
        self._ensure()
        wrapped = wrap_doc(doc_id, doc)
        try:
            self._client.index(index=self.index_name(collection), id=doc_id, document=wrapped,
                               refresh=True)
        except SerializationError:
            raise ValueError(f"document {doc_id!r} is not plain JSON (NaN, infinity or an "
                             "unsupported type); pass it through pipeline.contracts.jsonsafe.json_safe first") from None

    @at_edge
    def get_doc(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        _check_collection(collection)
        self._ensure()
        try:
            resp = self._client.get(index=self.index_name(collection), id=doc_id)
        except NotFoundError:
            return None
        return resp["_source"]["body"]

    @at_edge
    def list_docs(self, collection, where=None, limit=1000) -> list[dict[str, Any]]:
        """The contract's equality on top-level scalars, as term queries on ``eq``."""
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
                          check_limit(limit), page_size=min(self.page_size, _DOC_PAGE))
        return [s["body"] for s in hits]

    @at_edge
    def delete_doc(self, collection: str, doc_id: str) -> bool:
        _check_collection(collection)
        self._ensure()
        try:
            resp = self._client.delete(index=self.index_name(collection), id=doc_id,
                                       refresh=True)
        except NotFoundError:
            return False
        return resp.get("result") == "deleted"

    @at_edge
    def replace_doc_if(self, collection, doc_id, doc, expected) -> bool:
        """Read the document with its sequence number, compare, then write with
        ``if_seq_no``/``if_primary_term`` (or ``_create`` when ``expected`` is None): a
        concurrent writer makes the write fail with 409, never overwrite."""
        _check_collection(collection)
        self._ensure()
        index = self.index_name(collection)
        wrapped = wrap_doc(doc_id, doc)
        try:
            if expected is None:
                self._client.create(index=index, id=doc_id, document=wrapped, refresh=True)
                return True
            try:
                current = self._client.get(index=index, id=doc_id)
            except NotFoundError:
                return False
            if current["_source"].get("body") != expected:
                return False
            self._client.index(index=index, id=doc_id, document=wrapped, refresh=True,
                               if_seq_no=current["_seq_no"],
                               if_primary_term=current["_primary_term"])
            return True
        except ConflictError:
            return False

    @at_edge
    def _write_artefact(self, digest: str, data: bytes) -> None:
        self._ensure()
        doc = {"created_ms": now_ms(), "size": len(data),
               "data": base64.b64encode(data).decode("ascii")}
        try:
            self._client.create(index=self.index_name(ARTEFACTS), id=digest, document=doc,
                                refresh=True)
        except ConflictError:
            pass  # the same content is already there

    @at_edge
    def _read_artefact(self, digest: str) -> bytes | None:
        self._ensure()
        try:
            resp = self._client.get(index=self.index_name(ARTEFACTS), id=digest)
        except NotFoundError:
            return None
        return base64.b64decode(resp["_source"]["data"])
