"""News in the app: the Live chart's news markers (view model + figure), the Pipeline page's
news count, and the Model lab's sentiment group reading stored news (Streamlit AppTest on a
real SQLite store)."""
from __future__ import annotations

import threading

import pytest

from dashboard.charts import candlestick
from dashboard.view_models import news_markers
from pipeline.sources.news_simulator import NewsMarketSimulator
from pipeline.store.sqlite import SqliteStore
from tests.test_app_pages import run_page


def fill_with_news(path) -> tuple[int, int]:
    store = SqliteStore(path / "kappalab.sqlite")
    sim = NewsMarketSimulator(news_rate=0.3, news_impact=2.0, symbols=["ACME", "GLOBX"],
                              bars=1500, seed=2)
    store.upsert_bars(list(sim.bars(threading.Event())))
    store.upsert_news(list(sim.news))
    n = store.count_news()
    store.close()
    return 3000, n


def test_news_markers_sit_above_their_candle_with_title_and_score(tmp_path):
    fill_with_news(tmp_path)
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    try:
        candles = store.ohlc_buckets("ACME", "1m", 300_000, limit=40)
        markers = news_markers(store, "ACME", candles, 300_000)
        assert markers is not None and len(markers) > 10
        assert (markers["ts"] >= candles["ts"].iloc[0]).all()
        # One marker per candle, at the candle's start, with the count of its items.
        assert markers["ts"].is_unique and set(markers["ts"]) <= set(candles["ts"])
        news = store.query_news("ACME", int(candles["ts"].iloc[0]),
                                int(candles["ts"].iloc[-1]) + 300_000)
        assert markers["count"].sum() == len(news) > len(markers)
        bucket_high = candles.set_index("ts")["high"]
        assert (markers["y"].to_numpy() > bucket_high.loc[markers["ts"]].to_numpy()).all()
        fig = candlestick(candles, [], news=markers, period_ms=300_000)
        trace = next(t for t in fig.data if t.name == "news")
        assert len(trace.x) == len(markers) and trace.xperiodalignment == "middle"
        assert trace.customdata[0][0] == markers["count"].iloc[0]
        assert "score" in trace.hovertemplate
        assert news_markers(store, "NOPE", candles, 300_000) is None
    finally:
        store.close()


def test_pages_show_news(data_dir):
    bars, n = fill_with_news(data_dir)
    live = run_page("pages/live_market.py")
    assert any("news" in t.label.lower() for t in live.toggle)
    pipeline = run_page("pages/pipeline_control.py")
    metrics = {m.label: m.value for m in pipeline.metric}
    assert metrics["News items in store"] == f"{n:,}"
    lab = run_page("pages/model_lab.py")
    lab.multiselect(key="ml_groups").set_value(["default", "sentiment"]).run()
    assert not lab.exception
    captions = " ".join(c.value for c in lab.caption)
    assert "as of each bar's close" in captions and "news items stored" in captions
    lab.multiselect(key="ml_groups").set_value(["sentiment"])
    lab.multiselect(key="ml_models").set_value(["linear"])
    lab.button(key="ml_run").click().run()
    assert not lab.exception and not lab.error
    result = lab.session_state["model_lab_result"]
    # the stored news reached the features: not left out as constant, and informative here
    assert "sent_mean_1" in result.summary["features"]
    assert result.table.loc["Linear regression", "skill"] > 0.05


@pytest.mark.slow
def test_simulated_news_says_idle_while_the_simulator_is_stopped(data_dir):
    """A real runtime with its own embedded broker (not the session's: its workers use the
    default topics and groups, which would leave committed offsets for the tests that use
    them): the news producer outlives the simulator (a restarted simulator feeds it again),
    and its caption says when it is idle."""
    from dashboard.news_widgets import news_worker_caption
    from pipeline.contracts.config import load_config
    from pipeline.workers.runtime import Runtime, SimulatorSpec

    rt = Runtime(load_config())
    try:
        rt.start_simulator(SimulatorSpec(symbols=("ACME",), speed=60.0, news_rate=0.1))
        assert rt.is_running("producer") and rt.is_running("news_producer")
        running = news_worker_caption(rt, "news_producer", None)
        assert running == "0.1 items per symbol per bar, noise."
        rt.stop_worker("producer")
        assert rt.is_running("news_producer")
        assert news_worker_caption(rt, "news_producer", None).endswith(
            "Idle while the market simulator is stopped.")
    finally:
        rt.shutdown()


def test_predictions_on_5m_candles_are_the_last_per_candle():
    """Five 1m predictions per 5m candle become one: the last (the candle's close)."""
    import pandas as pd

    from dashboard.view_models import per_candle_predictions

    t0 = 1_735_725_600_000  # 10:00 UTC, a 5m boundary
    preds = pd.DataFrame({"ts": [t0 + i * 60_000 for i in range(1, 13)],
                          "predicted_close": [100.0 + i for i in range(1, 13)],
                          "model_id": "m1"})
    per = per_candle_predictions(preds, 300_000)
    assert list(per["ts"]) == [t0, t0 + 300_000, t0 + 600_000]
    # 10:01-10:04 in the first candle, 10:05-10:09 in the second, 10:10-10:12 in the third
    assert list(per["n"]) == [4, 5, 3]
    assert list(per["predicted_close"]) == [104.0, 109.0, 112.0]
    assert list(per["target_ts"]) == [t0 + 4 * 60_000, t0 + 9 * 60_000, t0 + 12 * 60_000]
    fig = candlestick(pd.DataFrame({"ts": [t0, t0 + 300_000], "open": [1.0, 1.0],
                                    "high": [2.0, 2.0], "low": [0.5, 0.5],
                                    "close": [1.5, 1.5], "volume": [10, 10]}), [],
                      predictions=per, period_ms=300_000)
    trace = next(t for t in fig.data if t.name == "predicted close")
    assert len(trace.x) == 3 and trace.xperiod == 300_000
