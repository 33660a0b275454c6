"""Batching keeps progressive validation exact (docs/LIVE_SCORING.md, "What happens to each bar").

The scoring step (:class:`models.live.step.ScoringStep`, no Kafka) takes a whole poll at once:
one feature update per layer of bars, one ``predict`` per model for all rows, one outbox
written in one store call. A poll holding several bars of one series must still predict each
bar before the next one settles it, in bar order: the same predictions, IDs, actuals and
errors as one bar per poll, and each settled by the bar after it, not by one further on.

Real parts: a SQLite file, the default champion trained on it, the scorer's own parse and
screening of message bytes (:meth:`pipeline.workers.scorer.Scorer._bars_by_series`) and its
store write (``_write_outbox``); the Kafka records are plain tuples carrying the bytes a
producer sends (no broker is needed to hand bytes to a function).
"""
from __future__ import annotations

import threading
from collections import namedtuple

import pytest

from models.adaptation import RetrainPolicy, train_default_model
from pipeline.contracts.schema import prediction_id
from pipeline.sources.simulator import MarketSimulator
from pipeline.store.sqlite import SqliteStore
from pipeline.workers.scorer import Scorer

SYMBOLS = ("ACME", "GLOBX", "INITECH")
STEP = 60_000
HISTORY, LIVE = 400, 6
Record = namedtuple("Record", "topic partition key value timestamp offset")


def _bars():
    return list(MarketSimulator(symbols=SYMBOLS, bars=HISTORY + LIVE, seed=5)
                .bars(threading.Event()))


def _scorer(tmp_path, name: str, history) -> Scorer:
    store = SqliteStore(tmp_path / f"{name}.sqlite")
    store.upsert_bars(history)
    assert train_default_model(store, "1m").promoted
    scorer = Scorer(store, "127.0.0.1:9", publish=False, adapt=False, train_default=False,
                    retrain_in="thread", policy=RetrainPolicy(every_bars=None))
    scorer.step.refresh_models(force=True)
    return scorer


def _poll(scorer: Scorer, bars, produced_ms: int) -> None:
    """One poll through the scorer's own parse, the step, and its store write."""
    tp = namedtuple("TP", "topic partition")(scorer.topic, 0)
    records = [Record(scorer.topic, 0, b.symbol.encode(), b.to_json(), produced_ms, i)
               for i, b in enumerate(bars)]
    scorer.step.process(scorer._bars_by_series({tp: records}))
    assert scorer._write_outbox(None), "the store refused the outbox"


def _stored(scorer: Scorer) -> dict:
    df = scorer.store.query_predictions()
    return {r.doc_id: (r.base_ts, round(r.predicted, 12),
                       None if r.actual != r.actual else round(r.actual, 12))
            for r in df.assign(doc_id=[prediction_id(*k) for k in zip(
                df["model_id"], df["symbol"], df["interval"], df["ts"])]).itertuples()}


@pytest.fixture(scope="module")
def bars():
    return _bars()


def test_a_poll_with_several_bars_of_a_series_predicts_each_before_the_next_settles_it(
        tmp_path, bars):
    live_from = sorted({b.ts for b in bars})[HISTORY]
    history = [b for b in bars if b.ts < live_from]
    live = [b for b in bars if b.ts >= live_from]  # LIVE bars of each symbol, ts order

    one_by_one = _scorer(tmp_path, "single", history)
    for b in live:
        _poll(one_by_one, [b], produced_ms=1)
    batched = _scorer(tmp_path, "batched", history)
    _poll(batched, live, produced_ms=1)  # one poll: every live bar of every symbol

    single, batch = _stored(one_by_one), _stored(batched)
    # Same model content (same data, same training), so predictions match value for value
    # once the (content-hashed) version ids are lined up.
    assert len(single) == len(batch) == len(SYMBOLS) * LIVE
    key = lambda d: sorted((k.split("|", 1)[1], v) for k, v in d.items())  # noqa: E731
    assert key(batch) == key(single)
    for symbol in SYMBOLS:
        series = sorted((v for k, v in batch.items() if f"|{symbol}|" in k))
        closes = {b.ts: b.close for b in live if b.symbol == symbol}
        # every prediction but the last was settled by the very next bar of the same poll
        for (base_ts, predicted, actual), nxt in zip(series, series[1:]):
            assert actual is not None, f"{symbol} {base_ts}: not settled inside the poll"
            expected = closes[nxt[0]] / closes[base_ts] - 1.0  # next_return of the next bar
            assert actual == pytest.approx(expected, rel=1e-9)
        assert series[-1][2] is None, "the poll's last bar cannot have been settled yet"
    c = batched.stats(history=False)["counters"]
    assert c["predictions"] == len(SYMBOLS) * LIVE
    assert c["scored"] == len(SYMBOLS) * (LIVE - 1)


def test_a_replayed_poll_is_not_predicted_or_scored_twice(tmp_path, bars):
    live_from = sorted({b.ts for b in bars})[HISTORY]
    scorer = _scorer(tmp_path, "replay", [b for b in bars if b.ts < live_from])
    live = [b for b in bars if b.ts >= live_from]
    _poll(scorer, live, produced_ms=1)
    before = _stored(scorer)
    _poll(scorer, live, produced_ms=1)  # the same records again (a lost offset commit)
    assert _stored(scorer) == before
    c = scorer.stats(history=False)["counters"]
    assert c["predictions"] == len(SYMBOLS) * LIVE and c["replayed"] == len(live)
