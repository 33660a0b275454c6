"""The sentiment feature group: as-of join without look-ahead, batch == streaming, and the
simulator's information level showing up (or not) in the model lab."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from models.features import FEATURE_GROUPS, compute_features, expand_features, max_lookback
from models.lab import LabConfig, run_comparison
from models.features.sentiment import SENTIMENT_GROUP, SentimentTracker, sentiment_features
from pipeline.contracts.news import NEWS_COLUMNS
from pipeline.sources.news_simulator import NewsMarketSimulator, simulate_frames
from pipeline.sources.simulator import SimulatorParams
from pipeline.store.sqlite import SqliteStore

NAMES = SENTIMENT_GROUP + ["sent_decay_3", "news_count_1", "sent_mean_3"]
MIN = 60_000


@pytest.fixture(scope="module")
def frames():
    return simulate_frames(("ACME", "GLOBX"), "1m", 400, seed=5, news_rate=0.5)


def test_group_is_registered_and_needs_news():
    assert FEATURE_GROUPS["sentiment"] == SENTIMENT_GROUP
    assert expand_features(["sentiment", "ret_1"]) == SENTIMENT_GROUP + ["ret_1"]
    assert max_lookback(SENTIMENT_GROUP) == 1
    with pytest.raises(ValueError, match="unknown feature"):
        expand_features(["sent_decay_0"])


def test_values_on_a_hand_made_example():
    t0 = 1_735_725_600_000
    bars = pd.DataFrame({"symbol": "A", "interval": "1m", "ts": [t0, t0 + MIN, t0 + 2 * MIN]})
    news = pd.DataFrame([("A", t0 + 10, 1.0, 0.5), ("A", t0 + MIN - 1, -0.5, 1.0),
                         ("A", t0 + MIN, 0.8, 1.0), ("B", t0, 1.0, 1.0)],
                        columns=["symbol", "ts", "sentiment_score", "relevance"])
    f = sentiment_features(bars, news, ["news_count_1", "sent_mean_1", "sent_decay_1"])
    assert f["news_count_1"].tolist() == [2.0, 1.0, 0.0]
    np.testing.assert_allclose(f["sent_mean_1"], [(0.5 - 0.5) / 1.5, 0.8, 0.0])
    first = 0.5 * 0.5 ** ((MIN - 10) / MIN) - 0.5 * 0.5 ** (1 / MIN)
    np.testing.assert_allclose(f["sent_decay_1"], [first, first / 2 + 0.4, first / 4 + 0.2])


def test_news_one_millisecond_after_the_close_never_reaches_the_bar(frames):
    bars, news = frames
    base = compute_features(bars, NAMES, news=news)
    rng = np.random.default_rng(0)
    for cut_row in rng.choice(len(bars), 12, replace=False):
        end = int(bars["ts"].iloc[cut_row]) + MIN  # the bar's close
        later = news["ts"] >= end
        for delay in (0, 1):
            # everything published at or after the close is changed, and one extra item is
            # published at close + delay ms with an extreme score
            perturbed = news.copy()
            perturbed.loc[later, "sentiment_score"] *= -1
            perturbed.loc[later, "relevance"] = 1.0
            extra = pd.DataFrame([{"symbol": bars["symbol"].iloc[cut_row], "ts": end + delay,
                                   "source": "t", "title": "t", "url": "",
                                   "sentiment_score": 1.0, "relevance": 1.0}])
            perturbed = pd.concat([perturbed, extra], ignore_index=True)
            got = compute_features(bars, NAMES, news=perturbed)
            done = (bars["ts"] + MIN <= end).to_numpy()
            pd.testing.assert_frame_equal(got[done], base[done])
            assert not got[~done].equals(base[~done])  # the perturbation is not a no-op
    # and one millisecond *before* the close does reach it
    row = 100
    end = int(bars["ts"].iloc[row]) + MIN
    extra = pd.DataFrame([{"symbol": bars["symbol"].iloc[row], "ts": end - 1,
                           "sentiment_score": 1.0, "relevance": 1.0}])
    got = compute_features(bars, ["news_count_1"], news=pd.concat([news, extra]))
    assert got["news_count_1"].iloc[row] == base["news_count_1"].iloc[row] + 1


def test_streaming_tracker_agrees_with_batch(frames):
    bars, news = frames
    # a gap in the bars (closed market) and news before the first bar
    bars = bars[(bars["ts"] < bars["ts"].min() + 150 * MIN)
                | (bars["ts"] >= bars["ts"].min() + 170 * MIN)].reset_index(drop=True)
    early = pd.DataFrame([{"symbol": "ACME", "ts": int(bars["ts"].min()) - 5 * MIN,
                           "source": "t", "title": "t", "url": "", "sentiment_score": -0.7,
                           "relevance": 0.9}])
    news = pd.concat([early, news], ignore_index=True)
    expected = compute_features(bars, NAMES, news=news)

    # News arrives in publication order, interleaved with bars; every tenth item arrives late
    # (after the bar it belongs to): the bar it missed differs, every later bar agrees.
    tracker = SentimentTracker(NAMES)
    events = [(int(r.ts), 0, ("news", r._asdict())) for r in news.itertuples(index=False)]
    events += [(int(r.ts) + MIN, 1, ("bar", r._asdict())) for r in bars.itertuples(index=False)]
    late = {i for i in range(1, len(news), 10)}
    delayed = []
    for i, (when, order, (kind, obj)) in enumerate(sorted(events, key=lambda e: e[:2])):
        if kind == "news" and i in late:
            delayed.append(obj)
            continue
        if kind == "bar":
            row = tracker.update(obj)
            idx = bars.index[(bars["ts"] == obj["ts"]) & (bars["symbol"] == obj["symbol"])][0]
            missed = [d for d in delayed if d["symbol"] == obj["symbol"]]
            if not missed:
                np.testing.assert_allclose([row[n] for n in NAMES], expected.loc[idx, NAMES],
                                           rtol=1e-9, atol=1e-12, err_msg=str(obj))
            for d in missed:
                tracker.update_news(d)
                delayed.remove(d)
        else:
            tracker.update_news(obj)
    assert tracker.value("ACME").keys() == set(NAMES)
    # replaying an old bar changes nothing
    first = bars.iloc[0].to_dict()
    assert tracker.update(first) == tracker.value(first["symbol"])


def test_simulator_news_is_seeded_valid_and_published_inside_its_bar():
    sim = NewsMarketSimulator(news_rate=0.3, news_impact=1.0, symbols=["ACME"], bars=300, seed=9)
    bars = list(sim.bars(threading.Event()))
    items = list(sim.news)
    assert 50 < len(items) < 130 and sim.stats()["news_emitted"] == len(items)
    starts = {b.ts for b in bars}
    for item in items:
        assert item.ts - item.ts % MIN in starts
        assert -1 <= item.sentiment_score <= 1 and 0.2 <= item.relevance <= 1
    for prev, cur in zip(bars, bars[1:]):
        assert cur.open == pytest.approx(prev.close, abs=1e-3)  # no gap at the shift
        assert cur.low <= min(cur.open, cur.close) and cur.high >= max(cur.open, cur.close)
    again, news2 = simulate_frames(("ACME",), "1m", 300, seed=9, news_rate=0.3, news_impact=1.0)
    assert again["close"].tolist() == [b.close for b in bars]
    assert list(news2.columns) == NEWS_COLUMNS and len(news2) == len(items)


def _skills(impact: float) -> tuple[float, float]:
    bars, news = simulate_frames(("ACME", "GLOBX"), "1m", 3000, seed=11, news_rate=0.2,
                                 news_impact=impact, params=SimulatorParams(phi=0.0))
    out = []
    for feats in (["default"], ["default", "sentiment"]):
        cfg = LabConfig(features=feats, models=[("linear", {})], split="chronological",
                        importance_rows=200, importance_repeats=1, seed=11)
        table = run_comparison(bars, cfg, news=news).table
        out.append(float(table.loc["Linear regression", "skill"]))
    return out[0], out[1]


def test_lab_finds_the_information_when_there_is_some():
    without, with_ = _skills(1.5)
    assert with_ > without + 0.02 and with_ > 0.02, (without, with_)


def test_lab_finds_nothing_when_news_is_noise():
    without, with_ = _skills(0.0)
    assert with_ < without + 0.01 and with_ < 0.01, (without, with_)


def test_lab_reads_news_from_the_store(tmp_path, frames):
    bars, news = simulate_frames(("ACME",), "1m", 1500, seed=11, news_rate=0.3,
                                 news_impact=2.0, params=SimulatorParams(phi=0.0))
    store = SqliteStore(tmp_path / "s.sqlite")
    try:
        from pipeline.contracts.news import NewsItem
        from pipeline.contracts.schema import Bar

        store.upsert_bars([Bar(**r) for r in bars.to_dict("records")])
        store.upsert_news([NewsItem(**r) for r in news.to_dict("records")])
        cfg = LabConfig(features=["ret_1", "sentiment"], models=[("linear", {})],
                        importance_rows=100, importance_repeats=1)
        from_store = run_comparison(store, cfg).table
        from_frames = run_comparison(bars, cfg, news=news).table
        assert from_store.loc["Linear regression", "skill"] == pytest.approx(
            from_frames.loc["Linear regression", "skill"], abs=1e-9)
        assert from_store.loc["Linear regression", "skill"] > 0.02
    finally:
        store.close()
