"""Sentiment features in the live scorer, on real parts: embedded broker over TCP, SQLite file,
bar indexer, news indexer, the scorer reading bars and news.

- a champion trained in the model lab with the ``sentiment`` group is served (not refused);
- the sentiment values the scorer used for every bar equal the batch ``sentiment_features``
  of the same bars and news (1e-9), before and after a restart rebuilt from the store, and
  each prediction equals the model applied to the batch feature row;
- an item published 1 ms (or 0 ms) after a bar's end, read before that bar, does not reach
  that bar's features;
- news seen both in the store and on the topic counts once;
- an item that reaches the topic after its bar (and the next) were scored changes neither
  prediction, is counted as late, and every later bar equals the batch again.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from kafka import KafkaProducer

from models.adaptation import RetrainPolicy
from models.features import compute_features
from models.lab import LabConfig, run_comparison
from models.lab_runs import save_version
from models.live.news import LiveSentiment, extra_features_note
from models.live.providers import ExtraFeatures
from models.registry import load_model_version
from models.features.sentiment import SENTIMENT_GROUP, sentiment_features
from pipeline.workers.broker import ensure_topics
from pipeline.workers.indexer import Indexer
from pipeline.contracts.news import NewsItem
from pipeline.contracts.schema import Bar
from pipeline.workers.scorer import Scorer
from pipeline.sources.news_simulator import simulate_frames
from pipeline.workers.worker import WorkerThread
from tests.test_scorer import wait_for

SYMBOLS = ("ACME", "GLOBX")
STEP = 60_000


def simulated(n_bars: int, seed: int = 5):
    bars, news = simulate_frames(symbols=SYMBOLS, bars=n_bars, seed=seed, news_rate=0.3,
                                 news_impact=1.5)
    bars = bars.sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)
    return bars, news


def news_items(frame: pd.DataFrame) -> list[NewsItem]:
    return [NewsItem(r.symbol, int(r.ts), r.source, r.title, r.url, float(r.sentiment_score),
                     float(r.relevance)) for r in frame.itertuples(index=False)]


def bar_objects(frame: pd.DataFrame) -> list[Bar]:
    return [Bar(r.symbol, r.interval, int(r.ts), float(r.open), float(r.high), float(r.low),
                float(r.close), float(r.volume), r.source) for r in frame.itertuples(index=False)]


def sentiment_of(wt: WorkerThread) -> LiveSentiment:
    return next(p for p in wt.worker.extras.providers if p.kind == "sentiment")


# ---- the provider alone, on a real SQLite store --------------------------------------------
def test_items_from_store_and_topic_count_once_and_equal_batch(any_store):
    """On SQLite and on the Elasticsearch test double."""
    bars, news = simulated(300)
    items = news_items(news)
    first = bars[bars["ts"] < bars["ts"].min() + 150 * STEP]
    cut = int(first["ts"].max()) + STEP
    any_store.upsert_news([n for n in items if n.ts < cut + 20 * STEP])  # some ahead too
    live = LiveSentiment(any_store, topic="unused")
    live.use(SENTIMENT_GROUP)
    got = []
    started = set()
    for bar in bar_objects(bars):
        if bar.ts == cut and "topic" not in started:  # the topic delivers every item once
            started.add("topic")
            for n in items:
                live.update_item(n)
        if bar.symbol not in started:
            started.add(bar.symbol)
            live.start_series(bar.symbol, bar.interval, bar.ts)
        got.append([bar.ts, *live.update(bar).values()])
    stored = sum(n.ts < cut + 20 * STEP for n in items)
    assert live.counts["from_store"] == stored and live.counts["duplicates"] == stored
    want = sentiment_features(bars, news, SENTIMENT_GROUP).to_numpy()
    np.testing.assert_allclose(np.array(got)[:, 1:], want, rtol=0, atol=1e-9)
    assert want[:, 2].sum() > 50  # news_count_10: there is news to get wrong


def test_a_sentiment_champion_arriving_later_gets_the_stored_news(sqlite_store):
    bars, news = simulated(200)
    sqlite_store.upsert_news(news_items(news))
    extras = ExtraFeatures([LiveSentiment(sqlite_store, topic="unused")])
    extras.use(["ret_1"])  # no champion uses sentiment yet: nothing is read
    objs = bar_objects(bars)
    for bar in objs[:2]:
        extras.start_series(bar.symbol, bar.interval, bar.ts)
    live = extras.providers[0]
    assert not extras.active and live.counts["from_store"] == 0
    half = len(objs) // 2
    extras.use(["ret_1", *SENTIMENT_GROUP])  # promoted mid-stream
    assert live.counts["from_store"] == len(news)
    got = np.array([list(extras.update(bar).values()) for bar in objs[half:]])
    want = sentiment_features(bars, news, SENTIMENT_GROUP).to_numpy()[half:]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_scorer_without_news_refuses_a_sentiment_champion(sqlite_store):
    scorer = Scorer(sqlite_store, "127.0.0.1:9", stream_topics={"news": None})
    with pytest.raises(ValueError, match="needs the news stream"):
        scorer.extras.check(["ret_1", "sent_decay_1"])
    with pytest.raises(ValueError, match="streaming form|unknown feature"):
        scorer.extras.check(["ret_1", "no_such_feature_3"])
    with_news = Scorer(sqlite_store, "127.0.0.1:9")
    with_news.extras.check(["ret_1", *SENTIMENT_GROUP])  # no error


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_live_sentiment_equals_batch_across_a_restart(broker, topics, sqlite_store):
    store = sqlite_store
    n_hist, n_stream = 300, 80
    bars, news = simulated(n_hist + n_stream)
    t_split = int(bars["ts"].min()) + n_hist * STEP
    hist, stream = bars[bars["ts"] < t_split], bars[bars["ts"] >= t_split]
    store.upsert_bars(bar_objects(hist))
    store.upsert_news(news_items(news[news["ts"] < t_split]))

    # Items at a bar's end + 0 ms and + 1 ms, strongly bearish: they belong to the next bar.
    edge_bars = stream[stream["symbol"] == "ACME"]["ts"].iloc[[5, 25, 55]].tolist()
    edge = [NewsItem("ACME", ts + STEP + d, "test", f"edge {ts} +{d}", "", -1.0, 1.0)
            for ts in edge_bars for d in (0, 1)]
    # An item published inside a bar that reaches the topic only after the next bar was scored.
    late_bar = int(stream[stream["symbol"] == "ACME"]["ts"].iloc[65])
    late = NewsItem("ACME", late_bar + STEP // 2, "test", "late", "", 1.0, 1.0)
    all_news = pd.concat([news, pd.DataFrame([n.to_dict() for n in [*edge, late]])],
                         ignore_index=True)

    cfg = LabConfig(symbols=list(SYMBOLS), features=["default", "sentiment"],
                    models=[("linear", {})], target="next_return")
    result = run_comparison(store, cfg)
    label = result.best_label(include_baselines=False)  # the linear model
    version = save_version(store, result, label, champion=True)
    model = load_model_version(store, version)
    assert set(SENTIMENT_GROUP) <= set(model.features)

    news_topic = f"{topics['bars']}.news"
    ensure_topics(broker.bootstrap, (news_topic, f"{news_topic}.dlq"))
    group = f"sc-{topics['bars']}"
    quiet = dict(policy=RetrainPolicy(every_bars=None, drift_factor=None), adapt=False,
                 train_default=False, stream_topics={"news": news_topic}, publish=False)
    workers = [
        WorkerThread(Indexer(store, broker.bootstrap, topic=topics["bars"],
                             dlq_topic=topics["dlq"], group_id=f"ix-{topics['bars']}")).start(),
        WorkerThread(Indexer(store, broker.bootstrap, stream="news", topic=news_topic,
                                 dlq_topic=f"{news_topic}.dlq",
                                 group_id=f"nix-{topics['bars']}")).start()]
    scorer = WorkerThread(Scorer(store, broker.bootstrap, topic=topics["bars"], group_id=group,
                                 **quiet)).start()
    served: list[tuple] = []
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        wait_for(lambda: "lag" in scorer.worker.stats(history=False)["gauges"], 30,
                 "the scorer to join its group")
        assert scorer.worker.last_error is None or "not usable" not in scorer.worker.last_error
        assert version in str(scorer.worker.stats(history=False)["gauges"].get("status"))
        pending = sorted([*news_items(news[news["ts"] >= t_split]), *edge], key=lambda n: n.ts)
        sent_news = 0
        times = sorted(stream["ts"].unique())
        restart_at = times[len(times) // 2]
        for t in times:
            if t == restart_at:  # stop mid-stream, once everything so far is stored
                wait_for(lambda: store.count_news() == len(news[news["ts"] < t_split]) +
                         sent_news, 30, "the news indexer")
                wait_for(lambda: {(s, t - STEP) for s in SYMBOLS} <= {
                    (r[0], r[2]) for r in sentiment_of(scorer).served}, 30,
                    "the scorer to take the last bars before the restart")
                assert scorer.stop(), "scorer did not stop"
                served += list(sentiment_of(scorer).served)
                scorer = WorkerThread(Scorer(store, broker.bootstrap, topic=topics["bars"],
                                             group_id=group, **quiet)).start()
            # News published before this bar's end goes first, and the scorer has read it
            # before the bar is sent (the ordering the as-of equality needs; see models/live/news.py).
            due = [n for n in pending if n.ts < t + STEP + 2]
            pending = pending[len(due):]
            if t == late_bar + 2 * STEP:
                wait_for(lambda: ("ACME", t - STEP) in {
                    (r[0], r[2]) for r in sentiment_of(scorer).served}, 30, "the bar to go")
                due.append(late)
            before = sentiment_of(scorer).counts["read"]
            for n in due:
                producer.send(news_topic, key=n.symbol.encode(), value=n.to_json())
            producer.flush()
            sent_news += len(due)
            if due:
                wait_for(lambda: sentiment_of(scorer).counts["read"] >= before + len(due), 30,
                         "the scorer to read the news")
            for bar in bar_objects(stream[stream["ts"] == t]):
                producer.send(topics["bars"], key=bar.symbol.encode(), value=bar.to_json())
            producer.flush()
        last = times[-1]
        wait_for(lambda: {(s, last) for s in SYMBOLS} <= {
            (r[0], r[2]) for r in sentiment_of(scorer).served}, 30, "the last bars")
        wait_for(lambda: store.count_news() == len(all_news), 30, "every news item stored")
        second = sentiment_of(scorer)
        served += list(second.served)
        assert second.counts["from_store"] > 0 and second.counts["invalid"] == 0
        assert second.counts["late"] == 1
        gauges = lambda: scorer.worker.stats(history=False)["gauges"]  # noqa: E731
        assert "with sentiment from the news stream" in gauges()["status"]
        wait_for(lambda: "1 arrived after the bar" in (extra_features_note(
            gauges().get("extra_features")) or ""), 10, "the gauges (published every second)")
        counters = scorer.worker.stats(history=False)["counters"]
    finally:
        producer.close()
        scorer.stop()
        for w in workers:
            w.stop()

    # Batch: the lab's sentiment features of every stored bar and item.
    all_bars = pd.concat([store.query_bars(s, "1m") for s in SYMBOLS], ignore_index=True)
    stored_news = pd.concat([store.query_news(s) for s in SYMBOLS], ignore_index=True)
    assert len(stored_news) == len(all_news)
    want = sentiment_features(all_bars, stored_news, SENTIMENT_GROUP)
    want.index = pd.MultiIndex.from_arrays([all_bars["symbol"], all_bars["ts"]])
    live = pd.DataFrame([v for *_, v in served],
                        index=pd.MultiIndex.from_tuples([(s, ts) for s, _, ts, _ in served]))
    assert not live.index.duplicated().any()
    assert len(live) == len(stream)  # every streamed bar, each once, across the restart
    missed = [("ACME", late_bar), ("ACME", late_bar + STEP)]  # scored before the late item
    on_time = live.drop(missed)
    np.testing.assert_allclose(on_time[SENTIMENT_GROUP].to_numpy(),
                               want.loc[on_time.index, SENTIMENT_GROUP].to_numpy(), rtol=0,
                               atol=1e-9)
    no_late = sentiment_features(all_bars, stored_news[stored_news["title"] != "late"],
                                 SENTIMENT_GROUP)
    no_late.index = want.index
    np.testing.assert_allclose(live.loc[missed, SENTIMENT_GROUP].to_numpy(float),
                               no_late.loc[missed].to_numpy(), rtol=0, atol=1e-12)
    assert (want.loc[missed, "news_count_10"] == no_late.loc[missed, "news_count_10"] + 1).all()
    assert live["news_count_10"].sum() > 20

    # The edge items were read before their bar, yet only the next bar has them.
    for ts in edge_bars:
        others = stored_news[~stored_news["title"].str.startswith(f"edge {ts} ")]
        assert len(others) == len(stored_news) - 2
        without = sentiment_features(all_bars, others, SENTIMENT_GROUP)
        without.index = want.index
        np.testing.assert_allclose(live.loc[("ACME", ts), SENTIMENT_GROUP].to_numpy(float),
                                   without.loc[("ACME", ts)].to_numpy(), rtol=0, atol=1e-12)
        assert live.loc[("ACME", ts + STEP), "news_count_10"] == \
            without.loc[("ACME", ts + STEP), "news_count_10"] + 2

    # Every prediction is the model applied to the batch feature row of its bar.
    preds = store.query_predictions(model_id=version)
    assert counters["predictions"] > 0 and len(preds) == len(stream)
    feats = compute_features(all_bars, model.features, news=stored_news)
    expected = pd.Series(model.predict(feats), index=want.index)
    got = preds.set_index(["symbol", "base_ts"])["predicted"].drop(missed)
    np.testing.assert_allclose(got.to_numpy(), expected.loc[got.index].to_numpy(), rtol=1e-9,
                               atol=1e-12)



@pytest.mark.slow
def test_predictions_page_says_the_scorer_uses_live_sentiment(data_dir):
    """The app's own runtime (embedded broker, SQLite in the data directory): simulated bars
    and news flow to a scorer serving a lab champion with the sentiment group; the page's
    status line and note say so, with the scorer's real counts."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from dashboard.runtime import get_runtime
    from pipeline.workers.runtime import SimulatorSpec
    from pipeline.store.sqlite import SqliteStore

    store = SqliteStore(data_dir / "kappalab.sqlite")
    bars, news = simulated(300)
    store.upsert_bars(bar_objects(bars))
    store.upsert_news(news_items(news))
    result = run_comparison(store, LabConfig(features=["default", "sentiment"],
                                             models=[("linear", {})]))
    version = save_version(store, result, result.best_label(include_baselines=False),
                           champion=True)
    runtime = get_runtime()
    try:
        wt = runtime.start_scorer(adapt=False, train_default=False)
        runtime.start_simulator(SimulatorSpec(symbols=SYMBOLS, speed=None, bars=40, seed=9,
                                              news_rate=0.5))
        live = sentiment_of(wt)
        wait_for(lambda: wt.worker.stats(history=False)["counters"]["predictions"] >= 40
                 and live.counts["read"] > 0, 60, "predictions with live news")
        wait_for(lambda: (wt.worker.stats(history=False)["gauges"].get("extra_features") or {})
                 .get("sentiment", {}).get("read"), 10, "the gauges")
        page = Path(__file__).resolve().parent.parent / "pages" / "predictions.py"
        at = AppTest.from_file(str(page), default_timeout=60)
        at.run(timeout=60)
        assert not at.exception, [e.value for e in at.exception]
        status = next(m.value for m in at.markdown if m.value.startswith("**Scorer**"))
        assert version in status and "with sentiment from the news stream" in status
        note = next(c.value for c in at.caption if c.value.startswith("Sentiment features"))
        assert f"{len(news):,} stored items loaded at start" in note
        assert not [w.value for w in at.warning if "rejected a champion" in w.value]
    finally:
        runtime.shutdown()
        store.close()


def test_retraining_a_sentiment_champion_reads_the_stored_news(sqlite_store):
    """The scorer's retrain data (models/adaptation.py) carries the real sentiment columns,
    not zeros: a retrained sentiment champion learns from the news like the lab's."""
    from models.adaptation import load_training_data

    bars, news = simulated(300)
    sqlite_store.upsert_bars(bar_objects(bars))
    sqlite_store.upsert_news(news_items(news))
    data = load_training_data(sqlite_store, list(SYMBOLS), "1m", ["ret_1", *SENTIMENT_GROUP],
                              "next_return", 1, 200)
    want = sentiment_features(bars, news, SENTIMENT_GROUP)
    want.index = pd.MultiIndex.from_arrays([bars["symbol"], bars["ts"]])
    got = data.set_index(["symbol", "ts"])[SENTIMENT_GROUP]
    assert len(got) == 400 and got["news_count_10"].sum() > 50
    np.testing.assert_allclose(got.to_numpy(), want.loc[got.index].to_numpy(), rtol=0,
                               atol=1e-12)
