"""Live market refresh: nothing is re-aggregated when the store has no newer bar; candles
extended incrementally and read over the visible range equal a full aggregation."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

from dashboard.candles import CandleFeed, whole_history_bucket
from dashboard.shared_views import VERSION_MAX_AGE_S
from pipeline.contracts.schema import Bar
from pipeline.sources.simulator import MarketSimulator
from pipeline.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
MIN = 60_000


def sim_bars(n: int, start_ms: int | None = None) -> list[Bar]:
    return list(MarketSimulator(symbols=("ACME",), bars=n, start_ms=start_ms)
                .bars(threading.Event()))


def test_live_page_skips_the_refresh_when_no_newer_bar(data_dir):
    store = SqliteStore(data_dir / "kappalab.sqlite")
    bars = sim_bars(300)
    store.upsert_bars(bars)
    at = AppTest.from_file(str(ROOT / "pages/live_market.py"), default_timeout=60).run()
    assert not at.exception
    assert at.session_state["lm_builds"] == 1
    at.run()  # a refresh with nothing new: the drawn chart is shown again, nothing aggregated
    assert not at.exception and at.session_state["lm_builds"] == 1
    assert any(m.label == "Last close" for m in at.metric)
    drawn_before = at.session_state["lm_drawn"]["marker"]
    store.upsert_bars([Bar("ACME", "1m", bars[-1].ts + MIN, 1.0, 2.0, 0.5, 1.5, 10.0, "test")])
    time.sleep(VERSION_MAX_AGE_S)  # the sessions' shared "anything new?" answer expires
    at.run()  # a newer bar: aggregated and drawn again
    assert not at.exception and at.session_state["lm_builds"] == 2
    assert at.session_state["lm_drawn"]["marker"][0] == bars[-1].ts + MIN != drawn_before[0]
    store.close()


def test_candle_feed_extends_incrementally_and_equals_full_aggregation(sqlite_store):
    bars = sim_bars(2_000)
    # a closed market: a 17-hour gap in the middle
    bars = [b if i < 1_000 else Bar(b.symbol, b.interval, b.ts + 17 * 3_600_000, b.open,
                                    b.high, b.low, b.close, b.volume, b.source)
            for i, b in enumerate(bars)]
    sqlite_store.upsert_bars(bars[:1_500])
    feed = CandleFeed(sqlite_store)
    for bucket in (MIN, 5 * MIN, 60 * MIN):
        feed.latest("ACME", "1m", bucket, 150)
    for i in range(1_500, 2_000, 37):  # bars arrive; each answer extends the cached candles
        sqlite_store.upsert_bars(bars[i:i + 37])
        for bucket in (MIN, 5 * MIN, 60 * MIN):
            got = feed.latest("ACME", "1m", bucket, 150)
            full = sqlite_store.ohlc_buckets("ACME", "1m", bucket, start_ms=0)
            pd.testing.assert_frame_equal(got, full.iloc[-150:].reset_index(drop=True))
    assert sqlite_store.last_bar_ts("ACME", "1m") == bars[-1].ts
    # the visible-range read spans the gap when the latest candles need it
    got = sqlite_store.ohlc_buckets("ACME", "1m", MIN, limit=1_200)
    full = sqlite_store.ohlc_buckets("ACME", "1m", MIN, start_ms=0)
    pd.testing.assert_frame_equal(got, full.iloc[-1_200:].reset_index(drop=True))


def test_whole_history_candles_cover_everything(sqlite_store):
    bars = sim_bars(3_000)
    sqlite_store.upsert_bars(bars)
    frame, bucket = CandleFeed(sqlite_store).whole_history("ACME", "1m", MIN, candles=100)
    assert bucket == whole_history_bucket(bars[0].ts, bars[-1].ts, MIN, 100)
    assert len(frame) <= 101 and frame["n"].sum() == len(bars)


def test_whole_history_turns_off_the_candle_pickers(data_dir):
    store = SqliteStore(data_dir / "kappalab.sqlite")
    store.upsert_bars(sim_bars(300))
    store.close()
    at = AppTest.from_file(str(ROOT / "pages/live_market.py"), default_timeout=60).run()
    assert not at.exception
    assert not at.slider(key="lm_n").disabled and not at.selectbox(key="lm_candle").disabled
    bars_kpi = next(m for m in at.metric if m.label == "Bars stored")
    assert bars_kpi.value == "300" and "1m bars of ACME" in bars_kpi.help
    at.toggle(key="lm_whole").set_value(True).run()
    assert not at.exception
    assert at.slider(key="lm_n").disabled and at.selectbox(key="lm_candle").disabled
    assert at.session_state["lm_drawn"]["view"][3] is True  # drawn as whole history
    at.toggle(key="lm_whole").set_value(False).run()
    assert not at.slider(key="lm_n").disabled and not at.selectbox(key="lm_candle").disabled


def test_candle_size_starts_at_the_bar_size_of_a_new_interval(data_dir):
    store = SqliteStore(data_dir / "kappalab.sqlite")
    store.upsert_bars(sim_bars(300))
    store.upsert_bars(list(MarketSimulator(symbols=("GOOG",), interval="1d", bars=60,
                                           start_ms=1672617600000).bars(threading.Event())))
    store.close()
    at = AppTest.from_file(str(ROOT / "pages/live_market.py"), default_timeout=60).run()
    at.selectbox(key="lm_candle").set_value("5m").run()
    at.selectbox(key="lm_symbol").set_value("GOOG").run()
    assert not at.exception
    assert at.selectbox(key="lm_interval").value == "1d" == at.selectbox(key="lm_candle").value
    at.selectbox(key="lm_symbol").set_value("ACME").run()  # back to 1m bars: 1m candles
    assert not at.exception
    assert at.selectbox(key="lm_candle").value == "1m"
    at.selectbox(key="lm_candle").set_value("15m").run()  # a pick on the same interval stays
    at.toggle(key="lm_pred").set_value(False).run()
    assert at.selectbox(key="lm_candle").value == "15m"
