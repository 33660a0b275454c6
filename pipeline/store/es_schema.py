"""How the store's records become Elasticsearch documents, mappings and queries.

Index mappings (explicit, strict where the record has a fixed shape), the canonical keywords
that make the contract's document equality a term query, and the small query builders the
backend composes.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import pandas as pd

from pipeline.contracts.fundamentals import FUNDAMENTAL_VALUES
from pipeline.contracts.schema import Bar, Prediction
from pipeline.store.base import BAR_COLUMNS, BAR_DTYPES, COLLECTIONS, PREDICTION_COLUMNS

BARS = "bars"
PREDICTIONS = "predictions"
ARTEFACTS = "artefacts"
NEWS = "news"
FUNDAMENTALS = "fundamentals"

#: Statuses worth retrying: per bulk item (helpers) and per whole request (transport).
ITEM_RETRY_STATUSES = (429, 503)
REQUEST_RETRY_STATUSES = (429, 502, 503, 504)

_EPOCH_MS = {"type": "date", "format": "epoch_millis"}
_DOUBLE = {"type": "double"}
_KEYWORD = {"type": "keyword"}

_BAR_MAPPING = {
    "dynamic": "strict",
    "properties": {c: (_EPOCH_MS if c == "ts" else _KEYWORD if c in ("symbol", "interval", "source")
                       else _DOUBLE) for c in BAR_COLUMNS},
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
# A collection document is stored as {created_ms, doc_id, body, eq}: ``body`` is the caller's
# JSON kept verbatim in _source and never indexed (documents are schemaless: a mapping field
# per key would grow without bound); ``eq`` holds one canonical keyword per top-level scalar
# (numbers by value, see _canonical) so the contract's ``list_docs(where=...)`` equality is a
# term query. ``flattened`` indexes those keywords without a mapping field per key.
_DOC_MAPPING = {
    "dynamic": False,
    "properties": {
        "created_ms": _EPOCH_MS,
        "doc_id": _KEYWORD,
        "body": {"type": "object", "enabled": False},
        "eq": {"type": "flattened", "ignore_above": 256},
    },
}
# Artefacts: one document per content hash; the bytes ride in a ``binary`` field (base64 in
# _source, not indexed), apart from the small, searchable model-version documents.
_NEWS_MAPPING = {
    "dynamic": "strict",
    "properties": {
        "id": {"type": "keyword"}, "symbol": {"type": "keyword"},
        "ts": {"type": "date", "format": "epoch_millis"}, "source": {"type": "keyword"},
        "title": {"type": "text"}, "url": {"type": "keyword", "index": False},
        "sentiment_score": {"type": "double"}, "relevance": {"type": "double"},
    },
}
_FUNDAMENTALS_MAPPING = {
    "dynamic": "strict",
    "properties": {
        "id": {"type": "keyword"}, "symbol": {"type": "keyword"},
        "ts": {"type": "date", "format": "epoch_millis"}, "source": {"type": "keyword"},
        "latest_quarter": {"type": "keyword"},
        **{v: {"type": "double"} for v in FUNDAMENTAL_VALUES},
    },
}
_ARTEFACT_MAPPING = {
    "dynamic": "strict",
    "properties": {"created_ms": _EPOCH_MS, "size": {"type": "long"},
                   "data": {"type": "binary"}},
}
_INDEX_SETTINGS = {"number_of_shards": 1, "auto_expand_replicas": "0-1"}
_TEMPLATE_PRIORITY = 500  # above the built-in logs-*/metrics-* templates (100)

_REQUIRED_PREDICTION_FIELDS = PREDICTION_COLUMNS[:8]  # required by the store contract
_INT_PREDICTION_FIELDS = {"ts", "base_ts", "produced_ms", "stored_ms"}
_FLOAT_PREDICTION_FIELDS = {"predicted", "base_close", "actual", "error", "latency_ms"}
_PREDICTION_SORT = [{"ts": "asc"}, {"model_id": "asc"}, {"symbol": "asc"}, {"interval": "asc"}]
_LONG_STRING = 200  # longer where-values are compared by digest, not indexed verbatim
_DOC_PAGE = 100  # collection documents can be large (a lab run carries its whole table)


def wrap_doc(doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A collection document as indexed: see the comment on ``_DOC_MAPPING``."""
    return {"created_ms": int(doc.get("created_ms", 0)), "doc_id": doc_id, "body": doc,
            "eq": _eq_fields(doc)}


def _check_collection(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")


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
    """Why a bar cannot be stored as it is (the contract: every field present and finite)."""
    try:  # fast path: the sum is finite only if every number is
        if (math.isfinite(bar.open + bar.high + bar.low + bar.close + bar.volume + bar.ts)
                and None not in (bar.symbol, bar.interval, bar.ts, bar.source)):
            return None
    except TypeError:
        pass  # a non-number: let the mapping decide, below finds nothing else
    for name in BAR_COLUMNS:
        value = getattr(bar, name)
        if value is None:
            return f"field {name} is missing"
        if isinstance(value, float) and not math.isfinite(value):
            return f"field {name} is not finite ({value})"
    return None


def _prediction_doc(pred: Prediction) -> dict[str, Any]:
    return {c: _finite_or_none(getattr(pred, c)) for c in PREDICTION_COLUMNS}


def _prediction_value(column: str, value: Any) -> Any:
    """The contract's Python type for this column (floats for prices, ints for times)."""
    if value is None:
        return None
    if column in _FLOAT_PREDICTION_FIELDS and isinstance(value, (int, float)):
        return float(value)
    if column in _INT_PREDICTION_FIELDS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _canonical(value: Any) -> str | None:
    """One keyword per JSON scalar such that values equal under the contract (numbers by
    value, ``True == 1``) get equal keywords."""
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
        if not key or "." in key or key == "blob_b64":  # blob_b64: versions stored before artefacts
            continue
        canonical = _canonical(value)
        if canonical is not None:
            out[key] = canonical
    return out


def _ohlc_frame(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({**BAR_DTYPES, "n": "int64"})
