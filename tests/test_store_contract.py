"""One store contract, every backend.

Backends (the ``store`` fixture):

* ``sqlite``    -- the embedded reference backend on a real file in ``tmp_path``;
* ``es-double`` -- :class:`ElasticsearchStore` through the official client against
  :class:`tests.es_double.EsTestServer`, a loopback test double (NOT Elasticsearch);
* ``es-real``   -- :class:`ElasticsearchStore` against the cluster in ``ELASTICSEARCH_URL``
  (credentials from the usual ``ELASTICSEARCH_*`` variables), under a random index prefix that
  is dropped afterwards; skipped when the variable is unset. Run only these with::

    ELASTICSEARCH_URL=http://localhost:9200 python -m pytest tests/test_store_contract.py -m real_es

The tests after the contract section exercise Elasticsearch-only behaviour (partial bulk
failures, 429 retries, connection/auth errors) and need the double's failure knobs.
"""
from __future__ import annotations

import base64
import hashlib
import os
import random
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from pipeline.contracts.config import Config, Secret, load_config
from pipeline.contracts.schema import Bar, Prediction
from pipeline.store.base import (
    BAR_COLUMNS, CHAMPIONS, EVENTS, MODEL_VERSIONS, OHLC_COLUMNS, PREDICTION_COLUMNS, RUNS, WORKERS,
    StoreUnavailable, bars_frame, now_ms,
)
from pipeline.store.elasticsearch import ElasticsearchStore
from pipeline.store.sqlite import SqliteStore
from tests.es_double import EsTestServer

REAL_URL = os.environ.get("ELASTICSEARCH_URL")
T0 = 1_699_999_980_000  # a whole minute, not a whole 5 minutes or hour: buckets cut the series
MIN = 60_000
PAGE = 7  # tiny search page so every multi-page read exercises search_after

real_only = [pytest.mark.real_es,
             pytest.mark.skipif(not REAL_URL, reason="set ELASTICSEARCH_URL to a real cluster")]
BACKENDS = ["sqlite", "es-double", pytest.param("es-real", marks=real_only)]
ES_BACKENDS = ["es-double", pytest.param("es-real", marks=real_only)]


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def es_server():
    with EsTestServer() as server:
        yield server


@pytest.fixture
def server():
    """A fresh double for tests that turn failure knobs."""
    with EsTestServer() as srv:
        yield srv


def _open(kind: str, tmp_path, es_server):
    prefix = f"kappalab-test-{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return SqliteStore(tmp_path / "store.sqlite")
    if kind == "es-double":
        return ElasticsearchStore(es_server.url, index_prefix=prefix, page_size=PAGE,
                                  max_retries=1, initial_backoff=0.01)
    store = ElasticsearchStore.from_config(load_config(es_index_prefix=prefix))
    store.page_size = PAGE
    return store


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path, es_server):
    s = _open(request.param, tmp_path, es_server)
    yield s
    if request.param == "es-real":
        s.drop()
    s.close()


@pytest.fixture(params=ES_BACKENDS)
def es_store(request, tmp_path, es_server):
    s = _open(request.param, tmp_path, es_server)
    yield s
    if request.param == "es-real":
        s.drop()
    s.close()


# ---- data ----------------------------------------------------------------------------------
def make_bars(symbol="AAA", interval="1m", n=30, start=T0, step=MIN, seed=0, gaps=0.0,
              source="simulator") -> list[Bar]:
    rng = random.Random(f"{symbol}{interval}{seed}")
    bars, price = [], 100.0
    for i in range(n):
        if gaps and i and rng.random() < gaps:
            continue
        o = price
        c = max(1.0, o + rng.uniform(-1, 1))
        h = max(o, c) + rng.uniform(0, 0.5)
        lo = max(0.5, min(o, c) - rng.uniform(0, 0.5))
        bars.append(Bar(symbol, interval, start + i * step, o, h, lo, c,
                        round(rng.uniform(0, 1000), 3), source))
        price = c
    return bars


def frame(bars) -> pd.DataFrame:
    rows = sorted(((b.symbol, b.interval, b.ts, b.open, b.high, b.low, b.close, b.volume,
                    b.source) for b in bars), key=lambda r: r[2])
    return bars_frame(rows)


def reference_ohlc(bars, bucket_ms, start=None, end=None, limit=None) -> pd.DataFrame:
    df = frame(bars)
    if start is not None:
        df = df[df.ts >= start]
    if end is not None:
        df = df[df.ts < end]
    g = df.sort_values("ts").groupby(df.ts // bucket_ms * bucket_ms)
    out = pd.DataFrame({"open": g.open.first(), "high": g.high.max(), "low": g.low.min(),
                        "close": g.close.last(), "volume": g.volume.sum(),
                        "n": g.size().astype("int64")})
    out = out.rename_axis("ts").reset_index()[OHLC_COLUMNS].astype({"ts": "int64"})
    if limit is not None:
        out = out.tail(limit)
    return out.reset_index(drop=True)


def make_predictions() -> list[Prediction]:
    preds = []
    for model in ("m1", "m2"):
        for symbol in ("AAA", "BBB"):
            for i in range(6):
                ts = T0 + i * MIN
                preds.append(Prediction(model, symbol, "1m", ts, ts - MIN, "next_close",
                                        100.0 + i, 99.5 + i, produced_ms=ts - 5, stored_ms=ts,
                                        latency_ms=5.0))
    return preds


def prediction_frame(preds) -> pd.DataFrame:
    """What SQLite hands back: rows of plain values, pandas infers the dtypes."""
    rows = [tuple(p.to_dict()[c] for c in PREDICTION_COLUMNS) for p in preds]
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


def canon(df: pd.DataFrame) -> pd.DataFrame:
    """Order rows whose ts ties (several models/symbols) the same way for every backend."""
    return df.sort_values(["ts", "model_id", "symbol", "interval"]).reset_index(drop=True)


# ---- contract: bars ------------------------------------------------------------------------
def test_empty_store_returns_typed_empty_results(store):
    bars = store.query_bars("AAA", "1m")
    assert list(bars.columns) == BAR_COLUMNS and bars.empty
    assert bars.dtypes.to_dict() == bars_frame([]).dtypes.to_dict()
    ohlc = store.ohlc_buckets("AAA", "1m", 5 * MIN)
    assert list(ohlc.columns) == OHLC_COLUMNS and ohlc.empty
    assert ohlc.dtypes.astype(str).to_dict() == {
        "ts": "int64", "open": "float64", "high": "float64", "low": "float64",
        "close": "float64", "volume": "float64", "n": "int64"}
    preds = store.query_predictions()
    assert list(preds.columns) == PREDICTION_COLUMNS and preds.empty
    assert store.count_bars() == 0 and store.count_predictions() == 0
    assert store.list_symbols() == [] and store.list_intervals() == []
    assert store.bar_time_range("AAA", "1m") is None
    assert store.list_docs(RUNS) == [] and store.get_doc(RUNS, "x") is None
    assert store.delete_doc(RUNS, "x") is False
    assert store.get_model_version("nope") is None and store.list_heartbeats() == []


def test_bars_round_trip_field_by_field(store):
    series = [make_bars("AAA", "1m", 25), make_bars("AAA", "5m", 12, step=5 * MIN),
              make_bars("BBB", "1m", 9, source="csv")]
    for bars in series:
        result = store.upsert_bars(bars)
        assert (result.accepted, result.rejected) == (len(bars), [])
    assert store.upsert_bars([]).accepted == 0
    for bars in series:
        got = store.query_bars(bars[0].symbol, bars[0].interval)
        pd.testing.assert_frame_equal(got, frame(bars), check_exact=True)
    assert store.query_bars("AAA", "1h").empty and store.query_bars("ZZZ", "1m").empty


def test_replay_is_idempotent_and_overwrites(store):
    bars = make_bars(n=20)
    assert store.upsert_bars(bars).accepted == 20
    assert store.upsert_bars(bars).accepted == 20
    assert store.count_bars() == 20
    fixed = Bar(bars[4].symbol, bars[4].interval, bars[4].ts, bars[4].open, 500.0, 0.5,
                bars[4].close, 1.0, "backfill")
    store.upsert_bars([fixed])
    assert store.count_bars() == 20
    row = store.query_bars("AAA", "1m", start_ms=fixed.ts, end_ms=fixed.ts + 1).iloc[0]
    assert (row.high, row.low, row.volume, row.source) == (500.0, 0.5, 1.0, "backfill")


def test_range_is_half_open_and_limit_means_latest(store):
    bars = make_bars(n=30)
    store.upsert_bars(bars)
    ts = [b.ts for b in bars]

    def got(**kw):
        return store.query_bars("AAA", "1m", **kw).ts.tolist()

    assert got() == ts
    assert got(start_ms=ts[5], end_ms=ts[10]) == ts[5:10]  # start inclusive, end exclusive
    assert got(start_ms=ts[5] + 1, end_ms=ts[10] + 1) == ts[6:11]
    assert got(start_ms=ts[25]) == ts[25:]
    assert got(end_ms=ts[3]) == ts[:3]
    assert got(start_ms=ts[7], end_ms=ts[7]) == []
    assert got(limit=3) == ts[-3:]
    assert got(start_ms=ts[2], end_ms=ts[20], limit=8) == ts[12:20]
    assert got(limit=100) == ts
    empty = store.query_bars("AAA", "1m", limit=0)
    assert empty.empty and list(empty.columns) == BAR_COLUMNS
    pd.testing.assert_frame_equal(store.query_bars("AAA", "1m", limit=11),
                                  frame(bars[-11:]), check_exact=True)


@pytest.mark.parametrize("bucket_ms", [5 * MIN, 7 * MIN, 60 * MIN])
def test_ohlc_buckets_match_pandas_reference(store, bucket_ms):
    bars = make_bars(n=200, gaps=0.3, seed=3)
    store.upsert_bars(bars + make_bars("BBB", n=50))
    ts = [b.ts for b in bars]
    cases = [dict(), dict(start_ms=ts[10] + 1, end_ms=ts[-10]), dict(limit=3),
             dict(start_ms=ts[3], end_ms=ts[60], limit=2), dict(limit=10_000),
             dict(start_ms=ts[-1] + 1)]
    for kw in cases:
        got = store.ohlc_buckets("AAA", "1m", bucket_ms, **kw)
        ref = reference_ohlc(bars, bucket_ms, kw.get("start_ms"), kw.get("end_ms"),
                             kw.get("limit"))
        pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-9, obj=str(kw))
    # a bar exactly on a bucket edge opens that bucket, epoch aligned
    edge = next(b for b in bars if b.ts % bucket_ms == 0)
    row = store.ohlc_buckets("AAA", "1m", bucket_ms, start_ms=edge.ts - bucket_ms,
                             end_ms=edge.ts + 1).iloc[-1]
    assert (row.ts, row.open) == (edge.ts, edge.open)
    assert (store.ohlc_buckets("AAA", "1m", bucket_ms).ts % bucket_ms == 0).all()
    with pytest.raises(ValueError):
        store.ohlc_buckets("AAA", "1m", 0)


def test_counts_symbols_intervals_and_time_range(store):
    data = (make_bars("AAA", "1m", 10) + make_bars("AAA", "1h", 3, step=60 * MIN)
            + make_bars("BBB", "1m", 5) + make_bars("CCC", "1d", 2, step=1440 * MIN))
    store.upsert_bars(data)
    assert store.count_bars() == 20
    assert store.count_bars(symbol="AAA") == 13
    assert store.count_bars(interval="1m") == 15
    assert store.count_bars("AAA", "1m") == 10
    assert store.count_bars("ZZZ") == 0
    assert store.list_symbols() == ["AAA", "BBB", "CCC"]
    assert store.list_symbols("1m") == ["AAA", "BBB"]
    assert store.list_symbols("5m") == []
    assert store.list_intervals() == ["1m", "1h", "1d"]  # INTERVALS order, not alphabetical
    assert store.list_intervals("AAA") == ["1m", "1h"]
    assert store.bar_time_range("AAA", "1h") == (T0, T0 + 2 * 60 * MIN)
    assert store.bar_time_range("BBB", "1h") is None


# ---- contract: predictions -----------------------------------------------------------------
def test_predictions_upsert_query_count(store):
    preds = make_predictions()
    result = store.upsert_predictions(preds)
    assert (result.accepted, result.rejected) == (len(preds), [])
    assert store.upsert_predictions(preds).accepted == len(preds)  # replay: no duplicates
    assert store.count_predictions() == 24
    assert store.count_predictions(symbol="AAA") == 12
    assert store.count_predictions(model_id="m2") == 12
    assert store.count_predictions(symbol="BBB", model_id="m1") == 6

    pd.testing.assert_frame_equal(canon(store.query_predictions()), canon(prediction_frame(preds)))
    assert store.query_predictions().ts.is_monotonic_increasing
    sel = [p for p in preds if p.model_id == "m1" and p.symbol == "AAA"]
    got = store.query_predictions(symbol="AAA", interval="1m", model_id="m1")
    pd.testing.assert_frame_equal(got, prediction_frame(sel))
    got = store.query_predictions(model_id="m1", symbol="AAA", start_ms=sel[1].ts,
                                  end_ms=sel[4].ts)
    assert got.ts.tolist() == [p.ts for p in sel[1:4]]
    got = store.query_predictions(model_id="m1", symbol="AAA", limit=2)
    assert got.ts.tolist() == [p.ts for p in sel[-2:]]
    assert store.query_predictions(interval="5m").empty


def test_prediction_update_keeps_existing_non_null_fields(store):
    ts = T0 + 10 * MIN
    first = Prediction("m1", "AAA", "1m", ts, ts - MIN, "next_close", 101.0, 100.0,
                       produced_ms=ts - 7, latency_ms=3.5)
    store.upsert_predictions([first])
    scored = Prediction("m1", "AAA", "1m", ts, ts - MIN, "next_close", 102.0, 100.0,
                        actual=103.0, error=-1.0, stored_ms=ts + 1)
    store.upsert_predictions([scored])
    expected = Prediction("m1", "AAA", "1m", ts, ts - MIN, "next_close", 102.0, 100.0,
                          actual=103.0, error=-1.0, produced_ms=ts - 7, stored_ms=ts + 1,
                          latency_ms=3.5)
    pd.testing.assert_frame_equal(store.query_predictions(), prediction_frame([expected]))
    store.upsert_predictions([first])  # a late replay of the unscored prediction
    row = store.query_predictions().iloc[0]
    assert (row.predicted, row.actual, row.error, row.stored_ms) == (101.0, 103.0, -1.0, ts + 1)
    assert store.count_predictions() == 1


def test_prediction_values_come_back_bit_for_bit(store):
    """Every double round-trips exactly: tiny, huge, subnormal or with 17 significant digits
    (the live error and the lab's comparisons read these values back)."""
    import numpy as np

    rng = np.random.default_rng(3)
    values = [0.1, 1 / 3, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -0.0,
              9007199254740993.0, 1e23, *map(float, rng.normal(100, 30, 200)),
              *map(float, 10 ** rng.uniform(-300, 300, 200))]
    preds = [Prediction("bits", "AAA", "1m", T0 + i * MIN, T0 + (i - 1) * MIN, "next_close",
                        v, abs(v) or 1.0, actual=-v, error=v / 3, produced_ms=T0 + i,
                        latency_ms=v / 7) for i, v in enumerate(values)]
    store.upsert_predictions(preds)
    got = store.query_predictions(model_id="bits")
    assert len(got) == len(values)
    for col, want in (("predicted", values), ("actual", [-v for v in values]),
                      ("error", [v / 3 for v in values]),
                      ("latency_ms", [v / 7 for v in values])):
        assert got[col].astype(float).tolist() == want, col
    assert got["ts"].tolist() == [p.ts for p in preds]


# ---- contract: documents and the records built on them -------------------------------------
def test_docs_put_get_list_delete(store):
    docs = {
        "a": {"created_ms": 100, "kind": "fit", "n": 1, "flag": True, "score": 0.5,
              "nested": {"x": [1, 2]}, "text": "grüße"},
        "b": {"created_ms": 300, "kind": "fit", "n": 2, "flag": False, "score": 2.0},
        "c": {"created_ms": 200, "kind": "search", "n": 2, "flag": True},
        "d": {"created_ms": 200, "kind": "search", "n": 3},
    }
    for doc_id, doc in docs.items():
        store.put_doc(RUNS, doc_id, doc)
    assert store.get_doc(RUNS, "a") == docs["a"]

    def ids(where=None, limit=1000):
        return [next(k for k, v in docs.items() if v == d)
                for d in store.list_docs(RUNS, where=where, limit=limit)]

    assert ids() == ["b", "c", "d", "a"]  # newest created_ms first, ties by id
    assert ids(limit=2) == ["b", "c"]
    assert ids({"kind": "fit"}) == ["b", "a"]
    assert ids({"n": 2}) == ["b", "c"]
    assert ids({"n": 2.0}) == ["b", "c"]  # numbers compare by value, as in SQLite
    assert ids({"score": 2}) == ["b"]
    assert ids({"n": "2"}) == []  # a string is not a number
    assert ids({"flag": True}) == ["c", "a"]
    assert ids({"kind": "search", "n": 3}) == ["d"]
    assert ids({"kind": "nope"}) == [] and ids({"kind": None}) == []
    assert ids({"text": "grüße"}) == ["a"]
    assert store.list_docs(EVENTS) == []  # collections are separate

    store.put_doc(RUNS, "a", {"created_ms": 400, "kind": "refit"})  # replace, not merge
    assert store.get_doc(RUNS, "a") == {"created_ms": 400, "kind": "refit"}
    assert store.list_docs(RUNS)[0] == {"created_ms": 400, "kind": "refit"}
    assert len(store.list_docs(RUNS)) == 4
    assert store.delete_doc(RUNS, "a") is True
    assert store.get_doc(RUNS, "a") is None and store.delete_doc(RUNS, "a") is False
    assert len(store.list_docs(RUNS)) == 3
    with pytest.raises(ValueError):
        store.put_doc("bogus", "x", {"created_ms": 1})


def test_runs_model_versions_events_heartbeats(store):
    run_id = store.save_run({"model": "ridge", "r2": 0.25, "params": {"alpha": 1.0}})
    store.save_run({"model": "gbm", "created_ms": 1})
    assert store.get_run(run_id)["params"] == {"alpha": 1.0}
    assert [r["model"] for r in store.list_runs()] == ["ridge", "gbm"]
    assert store.delete_run(run_id) and store.get_run(run_id) is None

    blob = random.Random(7).randbytes(300_000)
    vid = store.save_model_version({"model": "ridge", "symbol": "AAA", "r2": 0.3}, blob)
    store.save_model_version({"model": "ridge", "symbol": "BBB"}, b"")
    meta, got = store.get_model_version(vid)
    assert got == blob and meta["symbol"] == "AAA" and "blob_b64" not in meta
    listed = store.list_model_versions(where={"symbol": "AAA"})
    assert [m["version_id"] for m in listed] == [vid] and "blob_b64" not in listed[0]
    store.update_model_version(vid, champion=True)
    assert [m["version_id"] for m in store.list_model_versions(where={"champion": True})] == [vid]
    assert store.get_model_version(vid)[1] == blob
    with pytest.raises(KeyError):
        store.update_model_version("mv-missing", champion=True)

    store.record_event("retrain", symbol="AAA", reason="drift")
    store.record_event("promote", version_id=vid)
    assert [e["reason"] for e in store.list_events("retrain")] == ["drift"]
    assert len(store.list_events()) == 2

    store.heartbeat("indexer-1", {"rate": 10.5, "total": 3})
    store.put_doc(WORKERS, "scorer-1", {"worker_id": "scorer-1", "created_ms": now_ms() - 600_000})
    assert {h["worker_id"] for h in store.list_heartbeats()} == {"indexer-1", "scorer-1"}
    fresh = store.list_heartbeats(max_age_ms=60_000)
    assert [h["worker_id"] for h in fresh] == ["indexer-1"] and fresh[0]["rate"] == 10.5


def test_reset_deletes_everything_and_store_stays_usable(store):
    store.upsert_bars(make_bars(n=5))
    store.upsert_predictions(make_predictions()[:3])
    store.save_run({"model": "x"})
    store.save_model_version({"model": "x"}, b"123")
    store.record_event("e")
    store.heartbeat("w", {})
    store.reset()
    assert store.count_bars() == 0 and store.count_predictions() == 0
    assert store.list_symbols() == [] and store.query_bars("AAA", "1m").empty
    for collection in (RUNS, MODEL_VERSIONS, EVENTS, WORKERS):
        assert store.list_docs(collection) == []
    assert store.upsert_bars(make_bars(n=3)).accepted == 3
    assert store.count_bars() == 3


def test_latest_bars_per_symbol(store):
    store.upsert_bars(make_bars("AAA", n=10) + make_bars("BBB", n=3) + make_bars("CCC", n=5))
    got = store.latest_bars(["CCC", "ZZZ", "AAA"], "1m", 4, end_ms=T0 + 9 * MIN)
    assert got["symbol"].tolist() == ["CCC"] * 4 + ["AAA"] * 4
    assert got["ts"].tolist() == [T0 + i * MIN for i in (1, 2, 3, 4, 5, 6, 7, 8)]
    assert list(got.index) == list(range(8))
    assert got.dtypes.to_dict() == store.query_bars("AAA", "1m").dtypes.to_dict()
    empty = store.latest_bars(["ZZZ"], "1m", 4)
    assert empty.empty and list(empty.columns) == BAR_COLUMNS


def test_replace_doc_if_is_a_compare_and_set(store):
    first = {"created_ms": 1, "scope": "global", "version_id": "mv-a"}
    second = {"created_ms": 2, "scope": "global", "version_id": "mv-b"}
    assert store.replace_doc_if(CHAMPIONS, "global", first, expected=None) is True
    assert store.replace_doc_if(CHAMPIONS, "global", second, expected=None) is False  # exists
    assert store.replace_doc_if(CHAMPIONS, "global", second,
                                expected={**first, "version_id": "mv-x"}) is False  # stale
    assert store.get_doc(CHAMPIONS, "global") == first
    assert store.replace_doc_if(CHAMPIONS, "global", second, expected=first) is True
    assert store.get_doc(CHAMPIONS, "global") == second
    assert store.replace_doc_if(CHAMPIONS, "AAA", second, expected=first) is False  # absent
    assert store.get_doc(CHAMPIONS, "AAA") is None


def test_concurrent_compare_and_set_lets_exactly_one_writer_win(store):
    """Eight threads race to move the same pointer from the same expected value."""
    start = {"created_ms": 1, "version_id": "mv-0"}
    store.replace_doc_if(CHAMPIONS, "global", start, expected=None)
    go = threading.Barrier(8)
    wins: list[int] = []

    def contend(i: int) -> None:
        go.wait()
        if store.replace_doc_if(CHAMPIONS, "global", {"created_ms": 2, "version_id": f"mv-{i + 1}"},
                                expected=start):
            wins.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get_doc(CHAMPIONS, "global")["version_id"] == f"mv-{wins[0] + 1}"


def test_artefacts_are_content_addressed_kept_apart_and_cached(store):
    blob = random.Random(3).randbytes(50_000)
    digest = store.put_artefact(blob)
    assert digest == hashlib.sha256(blob).hexdigest()
    assert store.put_artefact(blob) == digest  # idempotent
    assert store.get_artefact(digest) == blob and store.get_artefact("0" * 64) is None
    vid = store.save_model_version({"model": "ridge"}, blob)
    doc = store.get_doc(MODEL_VERSIONS, vid)
    assert doc["artefact"] == digest and "blob_b64" not in doc  # the blob is not in the doc
    hits = store.artefact_cache_hits
    assert store.get_model_version(vid)[1] == blob
    assert store.artefact_cache_hits == hits + 1  # served from the cache, not re-read
    store.reset()
    assert store.get_artefact(digest) is None


def test_versions_stored_before_artefacts_still_load(store):
    """Documents written by earlier releases carried the blob inline as base64."""
    store.put_doc(MODEL_VERSIONS, "mv-old", {"version_id": "mv-old", "created_ms": 5,
                                             "blob_b64": base64.b64encode(b"pickle").decode()})
    assert store.get_model_version("mv-old") == ({"version_id": "mv-old", "created_ms": 5},
                                                 b"pickle")
    assert "blob_b64" not in store.list_model_versions()[0]


def test_negative_limit_is_an_error_on_every_backend(store):
    for call in (lambda: store.query_bars("AAA", "1m", limit=-1),
                 lambda: store.query_predictions(limit=-1),
                 lambda: store.list_docs(RUNS, limit=-1)):
        with pytest.raises(ValueError, match="limit"):
            call()


# ---- Elasticsearch: mappings and read paths (double and real cluster) ----------------------
def test_es_indices_have_explicit_mappings(es_store):
    es_store.check()
    client = es_store._client
    props = client.indices.get(index=es_store.index_name("bars"))[
        es_store.index_name("bars")]["mappings"]["properties"]
    assert props["ts"] == {"type": "date", "format": "epoch_millis"}
    assert props["symbol"]["type"] == "keyword" and props["open"]["type"] == "double"
    name = es_store.index_name(MODEL_VERSIONS)
    mapping = client.indices.get(index=name)[name]["mappings"]
    assert mapping["properties"]["body"]["enabled"] is False  # blob_b64 never indexed
    assert mapping["properties"]["created_ms"]["type"] == "date"
    es_store.save_model_version({"symbol": "AAA"}, b"x" * 1000)
    source = client.search(index=name, size=1)["hits"]["hits"][0]["_source"]
    assert "blob_b64" not in source["eq"] and source["eq"]["symbol"] == "s:AAA"


def test_es_reads_page_with_search_after_never_from(es_store, es_server):
    bars = make_bars(n=30)
    es_store.upsert_bars(bars)
    assert es_store.query_bars("AAA", "1m").ts.tolist() == [b.ts for b in bars]
    assert es_store.query_bars("AAA", "1m", limit=16).ts.tolist() == [b.ts for b in bars[-16:]]
    if es_store.url != es_server.url:
        return
    searches = [body for method, path, body in es_server.requests
                if path.endswith("/_search") and es_store.index_prefix in path]
    assert searches and all("from" not in body for body in searches)
    assert all(body["size"] <= PAGE for body in searches)
    assert sum("search_after" in body for body in searches) >= 4


# ---- Elasticsearch only: failure handling against the double's knobs -----------------------
def _store(url, **kw) -> ElasticsearchStore:
    kw.setdefault("initial_backoff", 0.01)
    kw.setdefault("max_retries", 1)
    return ElasticsearchStore(url, **kw)


def test_es_double_hides_unrefreshed_writes(server):
    """The double is near-real-time like Elasticsearch, so the contract tests above prove the
    backend's refresh; without it the write is invisible to search."""
    lazy = _store(server.url, refresh_after_write=False)
    lazy.upsert_bars(make_bars(n=4))
    assert lazy.count_bars() == 0 and server.doc_count(lazy.index_name("bars")) == 4
    assert _store(server.url).upsert_bars(make_bars(n=1)).accepted == 1
    assert lazy.count_bars() == 4


def test_es_partial_failure_is_reported_per_item(server):
    bars = make_bars(n=12)
    server.reject_ids = {bars[3].doc_id}
    bad_type = Bar("AAA", "1m", T0 + 100 * MIN, "not-a-price", 2.0, 1.0, 1.5, 1.0)  # type: ignore
    not_finite = Bar("AAA", "1m", T0 + 101 * MIN, 1.0, 2.0, 1.0, float("nan"), 1.0)
    store = _store(server.url, chunk_size=5)
    result = store.upsert_bars(bars + [bad_type, not_finite])
    assert result.accepted == 11
    reasons = {item.doc_id: reason for item, reason in result.rejected}
    assert set(reasons) == {bars[3].doc_id, bad_type.doc_id, not_finite.doc_id}
    assert "mapper_parsing_exception" in reasons[bars[3].doc_id]
    assert "open" in reasons[bad_type.doc_id] and "400" in reasons[bad_type.doc_id]
    assert "not finite" in reasons[not_finite.doc_id]
    assert all(server.item_attempts[b.doc_id] == 1 for b in bars)  # nothing resent
    assert server.item_attempts[not_finite.doc_id] == 0  # refused before sending
    assert store.count_bars() == 11


def test_es_429_and_503_items_are_retried_then_accepted(server):
    bars = make_bars(n=10)
    server.throttle({bars[2].doc_id, bars[7].doc_id}, times=2, status=429)
    server.throttle({bars[5].doc_id}, times=1, status=503)
    store = _store(server.url, bulk_max_retries=3, chunk_size=4)
    result = store.upsert_bars(bars)
    assert (result.accepted, result.rejected) == (10, [])
    attempts = {b.doc_id: server.item_attempts[b.doc_id] for b in bars}
    assert attempts.pop(bars[2].doc_id) == 3 and attempts.pop(bars[7].doc_id) == 3
    assert attempts.pop(bars[5].doc_id) == 2
    assert set(attempts.values()) == {1}  # accepted items never resent
    assert store.count_bars() == 10


def test_es_items_still_throttled_after_retries_fail_the_batch_not_the_items(server):
    """An overloaded cluster is not a malformed bar: the call fails (the indexer retries the
    batch) instead of reporting the bar as rejected, which would dead-letter a valid bar."""
    bars = make_bars(n=5)
    server.throttle({bars[1].doc_id}, times=10)
    store = _store(server.url, bulk_max_retries=2)
    with pytest.raises(StoreUnavailable) as info:
        store.upsert_bars(bars)
    msg = _one_sentence(info.value)
    assert "overloaded" in msg and "1 of 5" in msg and "429" in msg
    assert server.item_attempts[bars[1].doc_id] == 3
    assert server.doc_count(store.index_name("bars")) == 4


def test_es_whole_request_503_is_retried_by_the_client(server):
    store = _store(server.url, max_retries=2)
    store.check()
    server.fail_requests(503, times=2, path_contains="_bulk")
    assert store.upsert_bars(make_bars(n=3)).accepted == 3
    server.fail_requests(503, times=5, path_contains="_count")
    with pytest.raises(StoreUnavailable, match="503"):
        store.count_bars()


def _one_sentence(exc: StoreUnavailable) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.endswith(".") and "Traceback" not in msg
    assert exc.__cause__ is None and exc.__context__ is None
    return msg


def test_es_unreachable_url_is_one_clear_sentence():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = _store(f"http://127.0.0.1:{port}", max_retries=0)
    with pytest.raises(StoreUnavailable) as info:
        store.check()
    msg = _one_sentence(info.value)
    assert f"http://127.0.0.1:{port}" in msg and "unreachable" in msg
    assert "ELASTICSEARCH_URL" in msg
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.query_bars("AAA", "1m")


def test_es_401_is_one_clear_sentence_without_secrets():
    with EsTestServer(basic_auth=("elastic", "right-horse"), api_key="good-key") as srv:
        for kw in ({"username": "elastic", "password": Secret("wrong-battery-staple")},
                   {"api_key": "bad-key-XYZ123"}, {}):
            with pytest.raises(StoreUnavailable) as info:
                _store(srv.url, **kw).check()
            msg = _one_sentence(info.value)
            assert "401" in msg and "ELASTICSEARCH_API_KEY" in msg
            assert "ELASTICSEARCH_USERNAME" in msg and srv.url in msg
            assert "wrong-battery-staple" not in msg and "bad-key-XYZ123" not in msg
            assert "right-horse" not in msg and "good-key" not in msg
        for kw in ({"username": "elastic", "password": "right-horse"}, {"api_key": "good-key"}):
            store = _store(srv.url, **kw)
            store.check()
            assert store.upsert_bars(make_bars(n=2)).accepted == 2


def test_es_403_and_tls_errors_are_one_clear_sentence(server):
    server.forbid_paths = {"_index_template"}
    with pytest.raises(StoreUnavailable) as info:
        _store(server.url).check()
    msg = _one_sentence(info.value)
    assert "403" in msg and "manage_index_templates" in msg
    tls_url = server.url.replace("http://", "https://")
    with pytest.raises(StoreUnavailable) as info:
        _store(tls_url, max_retries=0).check()
    msg = _one_sentence(info.value)
    assert "TLS" in msg and "ELASTICSEARCH_CA_CERTS" in msg and tls_url in msg


def test_es_8x_server_is_one_clear_sentence():
    with EsTestServer(version="8.17.0") as srv:
        with pytest.raises(StoreUnavailable) as info:
            _store(srv.url).check()
    msg = _one_sentence(info.value)
    assert "8.x" in msg and "pip install 'elasticsearch>=8,<9'" in msg


@pytest.mark.parametrize("status,body", [(200, b"{}"), (404, b"{}"), (200, b"<html>")])
def test_es_other_http_server_is_one_clear_sentence(status, body):
    """Something that is not Elasticsearch (a web server, a proxy) answers on the URL."""
    class NotElasticsearch(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NotElasticsearch)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(StoreUnavailable) as info:
            _store(url).check()
    finally:
        httpd.shutdown()
        httpd.server_close()
    msg = _one_sentence(info.value)
    assert url in msg and "ELASTICSEARCH_URL" in msg and "Elasticsearch 9.x" in msg


def test_es_describe_and_errors_hide_credentials(tmp_path):
    store = ElasticsearchStore("http://alice:pw-in-url@127.0.0.1:9200",
                               api_key=Secret("key-123-secret"))
    for text in (store.describe(), repr(store)):
        assert "pw-in-url" not in text and "key-123-secret" not in text and "alice" not in text
        assert "http://127.0.0.1:9200" in text
    config = Config(data_dir=tmp_path, es_url="https://es.example:9200", es_username="bob",
                    es_password=Secret("bobs-password"), es_index_prefix="class-3b")
    store = ElasticsearchStore.from_config(config)
    assert store.describe() == ("Elasticsearch at https://es.example:9200 "
                                "(indices class-3b-*, user bob)")
    with pytest.raises(StoreUnavailable) as info:
        ElasticsearchStore("bob:bobs-password@localhost:9200")
    msg = _one_sentence(info.value)
    assert "ELASTICSEARCH_URL" in msg and "bobs-password" not in msg
    with pytest.raises(StoreUnavailable, match="ELASTICSEARCH_INDEX_PREFIX"):
        ElasticsearchStore("http://127.0.0.1:9200", index_prefix="Class 3B")


def test_sqlite_writers_of_one_file_share_a_lock_released_after_a_failed_write(tmp_path):
    """In one process, every SqliteStore on a file queues its writes on one lock (instead of
    SQLite's busy-handler sleeps); a write that fails must release it, or the next writer
    (another thread, another store on the same file) would wait forever."""
    a, b = SqliteStore(tmp_path / "s.sqlite"), SqliteStore(tmp_path / "s.sqlite")
    assert a._writer is b._writer
    assert SqliteStore(tmp_path / "other.sqlite")._writer is not a._writer
    bad = Prediction("m", "AAA", "1m", T0, T0 - MIN, "next_return", None, 1.0)  # NOT NULL
    with pytest.raises(Exception):
        a.upsert_predictions([bad])
    done = threading.Event()

    def write() -> None:
        b.upsert_bars(make_bars(n=5))
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert done.wait(30), "the writer lock was not released by the failed write"
    assert a.count_bars() == 5


def test_sqlite_checkpoints_run_in_a_thread_that_ends_with_the_last_store(tmp_path):
    """The write-ahead log is copied into the database by a checkpoint thread (not inside
    a writer's commit): rows written well under the commit-time threshold still reach the
    main file, and the thread ends once no store uses the file."""
    import gc
    import time

    from pipeline.store import sqlite_file as sqlite_mod  # the file's checkpoint thread

    path = tmp_path / "ck.sqlite"
    store = SqliteStore(path)
    before = path.stat().st_size
    store.upsert_bars(make_bars(n=3000))
    deadline = time.time() + 30
    while path.stat().st_size <= before and time.time() < deadline:
        time.sleep(0.2)
    assert path.stat().st_size > before, "the log was never checkpointed into the database"
    key = str(path.resolve())
    thread = sqlite_mod._CHECKPOINTERS[key][0]
    del store
    gc.collect()
    thread.join(30)
    assert not thread.is_alive() and key not in sqlite_mod._CHECKPOINTERS


# ---- the backend registry (pipeline/store/__init__.py: BACKENDS) ---------------------------
def _choosing_env(backend, tmp_path, es_server) -> dict[str, str]:
    """The variables that make ``load_config`` choose ``backend`` (a new backend adds its own)."""
    env = {"KAPPALAB_DATA_DIR": str(tmp_path / "data")}
    if backend.name == "elasticsearch":
        env.update(ELASTICSEARCH_URL=es_server.url,
                   ELASTICSEARCH_INDEX_PREFIX=f"kappalab-test-{uuid.uuid4().hex[:10]}")
    return env


#: registry name -> its param of the ``store`` fixture (a new backend adds one of each)
FIXTURE_OF = {"sqlite": "sqlite", "elasticsearch": "es-double"}


def test_every_registered_backend_runs_the_contract():
    from pipeline.store import BACKENDS as REGISTRY

    assert {b.name for b in REGISTRY} == set(FIXTURE_OF)
    assert set(FIXTURE_OF.values()) <= {p for p in BACKENDS if isinstance(p, str)}
    assert REGISTRY[-1].variable is None, "the default backend (no variable) comes last"


@pytest.mark.parametrize("name", list(FIXTURE_OF))
def test_open_store_builds_the_backend_the_config_chooses(name, tmp_path, es_server):
    """Each backend parses its own settings (``from_config``) and names its target
    (``identity``, what ``Config.store_key`` returns), and pickles as the way to reopen it."""
    import pickle

    from pipeline.store import BACKENDS as REGISTRY, backend_for, open_store, store_key, store_origin

    backend = next(b for b in REGISTRY if b.name == name)
    config = load_config(env=_choosing_env(backend, tmp_path, es_server),
                         secrets_path=tmp_path / "none.toml")
    assert backend_for(config) is backend and store_origin(config) == backend.origin
    store = open_store(config)
    try:
        assert isinstance(store, backend.store_class()) and store.backend == name
        assert config.store_key() == store_key(config) == backend.store_class().identity(config)
        assert config.store_key()[0] == name
        store.put_doc(RUNS, "registry-check", {"ok": 1})
        again = pickle.loads(pickle.dumps(store))
        try:
            assert again.get_doc(RUNS, "registry-check")["ok"] == 1
        finally:
            again.close()
        assert store.outage(StoreUnavailable("down")) in (True, False)  # its own classifier
    finally:
        store.close()
