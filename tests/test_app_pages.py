"""Streamlit AppTest: every page renders on an empty and on a filled store; the Pipeline
page's buttons start and stop real workers (on a real embedded broker)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.sources.simulator import MarketSimulator
from pipeline.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["pages/live_market.py", "pages/pipeline_control.py", "pages/data_browser.py",
         "pages/model_lab.py", "pages/predictions.py"]


def fill(data_dir: Path, bars_per_symbol: int = 400) -> int:
    store = SqliteStore(data_dir / "kappalab.sqlite")
    bars = list(MarketSimulator(symbols=("ACME", "GLOBX"), bars=bars_per_symbol).bars(threading.Event()))
    store.upsert_bars(bars)
    store.close()
    return len(bars)


def run_page(path: str) -> AppTest:
    full = ROOT / path
    at = AppTest.from_file(str(full), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_empty_store(data_dir, page):
    run_page(page)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_filled_store(data_dir, page):
    fill(data_dir)
    run_page(page)


def test_live_market_shows_kpis_for_stored_bars(data_dir):
    n = fill(data_dir)
    at = run_page("pages/live_market.py")
    labels = [m.label for m in at.metric]
    assert "Last close" in labels and "Bars stored" in labels
    stored = next(m for m in at.metric if m.label == "Bars stored")
    assert stored.value == f"{n // 2:,}"


def test_empty_live_market_explains_what_to_do(data_dir):
    at = run_page("pages/live_market.py")
    assert any("No bars stored yet" in i.value for i in at.info)
    # The chart's empty frame while waiting (the browser loads plotly.js before the first bar):
    # no trace, the waiting sentence in it.
    (chart,) = at.get("plotly_chart")
    figure = json.loads(chart.proto.spec)
    assert figure["data"] == []
    assert "Waiting for the first bar" in figure["layout"]["annotations"][0]["text"]


def test_app_entry_renders_with_navigation(data_dir):
    fill(data_dir)
    run_page("app.py")


@pytest.mark.slow
def test_pipeline_buttons_start_and_stop_workers(data_dir):
    from dashboard.runtime import get_runtime

    at = run_page("pages/pipeline_control.py")
    runtime = get_runtime()
    try:
        assert not runtime.is_running("indexer")
        at.button(key="start_indexer").click().run(timeout=90)
        assert not at.exception
        assert runtime.is_running("indexer")
        assert runtime.broker_info is not None and runtime.broker_info.embedded
        at.button(key="stop_indexer").click().run(timeout=60)
        assert not at.exception
        assert not runtime.is_running("indexer")
        # A rerun (or another tab) never starts a second copy.
        at.button(key="start_indexer").click().run(timeout=60)
        first = runtime.workers["indexer"]
        runtime.start_indexer()
        assert runtime.workers["indexer"] is first
    finally:
        runtime.shutdown()  # stops the threads and the broker this runtime started, by PID


def test_pipeline_page_shows_an_attached_stalled_worker_with_its_reason(data_dir):
    """An indexer process that cannot store (heartbeat written by it, read here) reads
    `stalled` with the full reason, not `running`."""
    store = SqliteStore(data_dir / "kappalab.sqlite")
    reason = ("no batch stored for over 15 s, retrying: the store is unavailable "
              "(OperationalError: database or disk is full)")
    store.heartbeat("indexer-elsewhere-1", {
        "worker_id": "indexer-elsewhere-1", "kind": "indexer", "mode": "process",
        "state": "stalled", "pid": 4242, "counters": {"consumed": 10, "stored": 5},
        "gauges": {"lag": 1690}, "last_error": reason, "uptime_s": 60.0})
    store.close()
    at = run_page("pages/pipeline_control.py")
    frames = [df.value for df in at.dataframe]
    text = " ".join(frames_to_text(frames)) + " ".join(str(m.value) for m in at.markdown) + \
        " ".join(str(w.value) for w in at.warning)
    assert "stalled" in text
    assert "database or disk is full" in text


def frames_to_text(frames) -> list[str]:
    return [f.to_string() for f in frames]


def test_data_page_shows_prediction_prices_with_their_decimals(data_dir):
    from pipeline.contracts.schema import Prediction

    fill(data_dir, bars_per_symbol=50)
    store = SqliteStore(data_dir / "kappalab.sqlite")
    ts = int(store.query_bars("ACME", "1m")["ts"].iloc[-1])
    p = Prediction("mv-test", "ACME", "1m", ts + 60_000, ts, "next_close", 181.8391, 181.8163)
    p.actual, p.error = 181.8425, 181.8391 - 181.8425
    store.upsert_predictions([p])
    store.close()
    at = run_page("pages/data_browser.py")
    preds = next(d.value for d in at.dataframe if "base_close" in d.value.columns)
    row = preds.iloc[-1]
    assert (row["base_close"], row["predicted"], row["actual"]) == (
        "181.8163", "181.8391", "181.8425")
    assert row["error"] == "-0.0034"


def test_simulator_without_symbols_says_which_field_and_starts_nothing(data_dir):
    from dashboard.runtime import get_runtime

    at = run_page("pages/pipeline_control.py")
    at.text_input(key="pc_symbols_simulator").set_value(" , ").run()
    at.button(key="start_producer").click().run(timeout=60)
    assert not at.exception
    assert any("type at least one symbol in the Symbols field" in e.value for e in at.error)
    runtime = get_runtime()
    assert not runtime.workers  # not even the simulated-news workers
    assert runtime.broker_info is None  # nothing was started, not even the broker


@pytest.mark.parametrize("page, key", [("pages/model_lab.py", "ml_dates"),
                                       ("pages/data_browser.py", "db_dates")])
def test_date_range_grows_with_new_days_unless_the_user_picked_one(data_dir, page, key):
    import datetime as dt

    store = SqliteStore(data_dir / "kappalab.sqlite")
    bars = list(MarketSimulator(symbols=("ACME",), bars=3000, start_ms=1_704_067_200_000)
                .bars(threading.Event()))  # 1m bars from 2024-01-01 00:00 to 01-03 01:59
    store.upsert_bars(bars[:1000])  # the first day only, at first
    at = run_page(page)
    assert at.date_input(key=key).value == (dt.date(2024, 1, 1), dt.date(2024, 1, 1))
    store.upsert_bars(bars[1000:])  # the feed goes on into the next days
    at.run()
    assert not at.exception
    assert at.date_input(key=key).value == (dt.date(2024, 1, 1), dt.date(2024, 1, 3))
    # A range the user picked stays as picked when more bars arrive.
    at.date_input(key=key).set_value((dt.date(2024, 1, 2), dt.date(2024, 1, 2))).run()
    store.upsert_bars(list(MarketSimulator(symbols=("ACME",), bars=10,
                                           start_ms=bars[-1].ts + 60_000).bars(threading.Event())))
    store.close()
    at.run()
    assert at.date_input(key=key).value == (dt.date(2024, 1, 2), dt.date(2024, 1, 2))
