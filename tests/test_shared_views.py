"""Viewers share one computation: sessions on one Live view get the same figure from one
build per store version, and a new bar reaches every open session."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard.shared_views import VERSION_MAX_AGE_S, SharedViews, shared_views
from pipeline.contracts.schema import Bar
from pipeline.sources.simulator import MarketSimulator
from pipeline.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
MIN = 60_000


def live_session() -> AppTest:
    return AppTest.from_file(str(ROOT / "pages/live_market.py"), default_timeout=60)


def chart_spec(at: AppTest) -> str:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return charts[0].proto.spec


def candle_times(spec: str) -> list:
    price = next(t for t in json.loads(spec)["data"] if t["type"] == "candlestick")
    return price["x"]


def live_builds(store: SqliteStore) -> int:
    views = shared_views()
    return sum(n for key, n in views.builds.items() if key[:2] == ("live", store.describe()))



def test_two_sessions_on_one_view_share_one_computation_and_get_new_bars(data_dir):
    store = SqliteStore(data_dir / "kappalab.sqlite")
    bars = list(MarketSimulator(symbols=("ACME",), bars=300).bars(threading.Event()))
    store.upsert_bars(bars)
    first, second = live_session().run(), live_session().run()
    assert not first.exception and not second.exception
    assert live_builds(store) == 1  # the second session reused the first one's build
    assert first.session_state["lm_builds"] == 1 and "lm_builds" not in second.session_state
    assert chart_spec(first) == chart_spec(second)

    new = Bar("ACME", "1m", bars[-1].ts + MIN, 1.0, 2.0, 0.5, 1.5, 10.0, "test")
    store.upsert_bars([new])
    time.sleep(VERSION_MAX_AGE_S)  # sessions share the "anything new?" answer that long
    first.run()
    second.run()
    assert not first.exception and not second.exception
    assert live_builds(store) == 2  # one build for the new bar, for both sessions
    assert chart_spec(first) == chart_spec(second)
    times = candle_times(chart_spec(second))
    assert len(times) and str(times[-1]).startswith(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(new.ts / 1000)))
    store.close()


def test_concurrent_requests_for_one_view_build_once():
    views = SharedViews()
    calls = []
    gate = threading.Event()

    def build():
        calls.append(1)
        gate.wait(5)
        return {"figure": object()}

    results = []
    threads = [threading.Thread(target=lambda: results.append(views.get("v", 1, build)))
               for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and len(results) == 8
    assert all(r is results[0] for r in results)
    assert views.get("v", 2, lambda: "new") == "new" and views.builds["v"] == 2


def test_sessions_asking_within_the_max_age_share_one_version_check():
    views = SharedViews()
    calls = []

    def check():
        calls.append(1)
        return len(calls)

    for _ in range(6):
        views.recent("series", check, max_age_s=0.5)
    assert len(calls) <= 2  # one check (two when the 0.5 s window turned between two asks)
    before = len(calls)
    time.sleep(0.5)
    assert views.recent("series", check, max_age_s=0.5) == before + 1  # older: asked again


def test_a_shared_figure_sends_the_same_json_and_is_packed_once():
    import numpy as np
    import pandas as pd
    import plotly.io

    from dashboard.charts import candlestick
    from dashboard.shared_views import share_figure

    ts = 1_700_000_000_000 + np.arange(120) * MIN
    close = 100 + np.cumsum(np.sin(np.arange(120)))
    candles = pd.DataFrame({"ts": ts, "open": close - 0.1, "high": close + 0.5,
                            "low": close - 0.5, "close": close, "volume": 1e3 + ts % 7})
    news = pd.DataFrame({"ts": ts[::30], "y": close[::30], "count": [1, 2, 1, 3],
                         "sentiment_score": [0.5, -0.2, np.nan, 0.0],
                         "hover": ["<b>bold</b> title", "a\nb", "x & y", "$1"]})
    fig = candlestick(candles, [5, 20], "SMA", news=news, title="ACME <i>", period_ms=MIN)
    shared = share_figure(fig)
    assert plotly.io.to_json(shared.to_dict(), validate=False) == \
        plotly.io.to_json(fig, validate=False)
    assert shared.to_dict() is shared.to_dict()  # made once, not per call
    assert len(shared.data) == len(fig.data) and shared.layout.title.text == "ACME &lt;i&gt;"
    assert share_figure(None) is None


def test_a_late_browser_keeps_its_chart_and_one_on_time_gets_the_new_bar(data_dir):
    """A starved browser keeps the chart it is drawing (Streamlit mounts every new figure
    from scratch), with the KPIs of the newest bar; on time, it gets the new chart."""
    from dashboard.shared_views import LATE_FACTOR, LIVE_REFRESH_S

    store = SqliteStore(data_dir / "kappalab.sqlite")
    bars = list(MarketSimulator(symbols=("ACME",), bars=200).bars(threading.Event()))
    store.upsert_bars(bars)
    page = live_session().run()
    first = chart_spec(page)
    store.upsert_bars([Bar("ACME", "1m", bars[-1].ts + MIN, 1.0, 2.0, 0.5, 1.5, 10.0, "test")])
    time.sleep(LATE_FACTOR * LIVE_REFRESH_S + 0.1)  # this browser asks late: starved
    page.run()
    assert not page.exception and chart_spec(page) == first  # kept: nothing to mount again
    stored = next(m for m in page.metric if m.label == "Bars stored")
    assert stored.value == "201"  # the figures above it are the store's newest
    page.run()  # asked on time: the new bar
    assert not page.exception and chart_spec(page) != first
    assert candle_times(chart_spec(page))[-1].startswith(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime((bars[-1].ts + MIN) / 1000)))
    store.close()
