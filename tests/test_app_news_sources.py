"""The Pipeline page's news sources under Streamlit AppTest, on real parts: Alpha Vantage news
from the loopback market API double (live polling, then a backfill of a date range), a headline
CSV uploaded, previewed and imported, and the simulator's news controls — each through the
embedded broker's finance-news topic and the news indexer into a real SQLite store."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.store.sqlite import SqliteStore
from tests.market_api_double import MarketApiDouble, av_article

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "pipeline_control.py")
AV_KEY = "av-secret-key-123"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KAPPALAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KAPPALAB_AUTOSTART", "0")
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL", "ALPHAVANTAGE_API_KEY",
                "ALPHAVANTAGE_BASE_URL", "POLYGON_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def page_text(at: AppTest) -> str:
    parts = [e.value for kind in (at.markdown, at.caption, at.info, at.warning, at.error,
                                  at.success) for e in kind]
    parts += [str(t.value) for t in at.text_input]
    parts += [df.value.to_csv() for df in at.dataframe]
    return "\n".join(parts)


def wait_for(predicate, timeout_s: float = 90.0) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def news_count(data_dir: Path, symbol: str | None = None) -> int:
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        return store.count_news(symbol)
    finally:
        store.close()


def days_ago(n: float) -> int:
    return int((datetime.now(timezone.utc) - timedelta(days=n)).timestamp() * 1000)


def test_alphavantage_news_says_why_it_is_unavailable_without_a_key(data_dir):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    info = " ".join(i.value for i in at.info)
    assert "Alpha Vantage news and fundamentals are unavailable" in info and "ALPHAVANTAGE_API_KEY" in info
    keys = {b.key for b in at.button}
    assert "pc_avn_live" not in keys and "pc_avn_backfill" not in keys
    # the news workers' row is there, every one stopped
    assert any(m.value == "**Alpha Vantage news (live)** — stopped" for m in at.markdown)
    needs = [c.value for c in at.caption if c.value.startswith("Needs an Alpha Vantage API key")]
    assert len(needs) == 2  # live news and fundamentals


def test_alphavantage_live_polling_then_backfill_from_the_page(data_dir, monkeypatch):
    from dashboard.runtime import get_runtime

    with MarketApiDouble(av_key=AV_KEY) as api:
        api.set_av_news("IBM", [av_article(f"IBM item {i}", days_ago(i + 0.5),
                                           {"IBM": (0.3, 0.9)}) for i in range(3)])
        api.set_av_news("MSFT", [av_article("MSFT item", days_ago(1), {"MSFT": (-0.2, 0.5)})])
        monkeypatch.setenv("ALPHAVANTAGE_API_KEY", AV_KEY)
        monkeypatch.setenv("ALPHAVANTAGE_BASE_URL", api.base_url)
        at = AppTest.from_file(PAGE, default_timeout=90).run()
        assert not at.exception
        runtime = get_runtime()
        try:
            assert "Uses the Alpha Vantage key from ALPHAVANTAGE_API_KEY (not shown)" in \
                page_text(at)
            at.text_input(key="pc_avn_symbols").set_value("IBM, msft").run()
            at.number_input(key="pc_avn_poll").set_value(60).run()
            assert any("2 symbol(s) every 60 min ≈ 48 requests a day: more than a free key's 25"
                       in c.value for c in at.caption)
            at.button(key="pc_avn_live").click().run()
            assert not at.exception and not at.error, [e.value for e in at.error]
            assert runtime.is_running("av_news") and runtime.is_running("news_indexer")
            assert wait_for(lambda: news_count(data_dir) == 4), news_count(data_dir)
            assert news_count(data_dir, "IBM") == 3 and news_count(data_dir, "MSFT") == 1
            at.run()
            assert any(m.value == "**Alpha Vantage news (live)** — :green[running]"
                       for m in at.markdown)
            table = at.dataframe[0].value.set_index("worker")
            assert table.loc["av_news", "state"] == "running"
            assert table.loc["av_news", "produced"] == "4"
            assert AV_KEY not in page_text(at)
            at.button(key="stop_av_news").click().run()
            assert not runtime.is_running("av_news")
            assert any(m.value == "**Alpha Vantage news (live)** — stopped" for m in at.markdown)

            # Backfill: two older IBM items inside the range, one before it.
            api.set_av_news("IBM", [av_article("IBM old 1", days_ago(20), {"IBM": (0.5, 1.0)}),
                                    av_article("IBM old 2", days_ago(18), {"IBM": (-0.5, 1.0)}),
                                    av_article("IBM ancient", days_ago(40), {"IBM": (0.1, 1.0)})])
            today = datetime.now(timezone.utc).date()
            at.text_input(key="pc_avn_symbols").set_value("IBM").run()
            at.date_input(key="pc_avn_range").set_value(
                (today - timedelta(days=25), today - timedelta(days=10))).run()
            before = len(api.requests_for("alphavantage"))
            at.button(key="pc_avn_backfill").click().run()
            assert not at.exception and not at.error, [e.value for e in at.error]
            assert wait_for(lambda: news_count(data_dir, "IBM") == 5), news_count(data_dir, "IBM")
            assert wait_for(lambda: runtime.workers["news_import"].worker.state == "finished")
            sent = api.requests_for("alphavantage")[before:]
            assert len(sent) == 1 and sent[0].params["tickers"] == "IBM"
            assert sent[0].params["time_from"].startswith(
                (today - timedelta(days=26)).strftime("%Y%m%d"))  # 00:00 UTC, in US/Eastern
            assert sent[0].params["time_to"] == (today - timedelta(days=9)).strftime(
                "%Y%m%dT0000")
            titles = set(SqliteStore(data_dir / "kappalab.sqlite").query_news("IBM")["title"])
            assert "IBM old 1" in titles and "IBM ancient" not in titles
            at.run()
            assert AV_KEY not in page_text(at)
        finally:
            runtime.shutdown()


def test_headline_csv_is_previewed_then_imported_through_the_topic(data_dir):
    from dashboard.runtime import get_runtime

    body = ("ticker,published,headline,url\n"
            "ACME,2025-01-02T10:00:00Z,ACME beats estimates and shares soar,https://x.test/1\n"
            "ACME,2025-01-03T10:00:00Z,ACME faces lawsuit after terrible losses,\n"
            "GLOBX,2025-01-01T09:00:00Z,GLOBX opens an office,\n"
            "GLOBX,yesterday,A row with a bad time,\n"
            "GLOBX,2025-01-04T09:00:00Z,,\n"
            "ACME,2025-01-05T12:30:00Z,ACME wins a great contract,\n").encode()
    at = AppTest.from_file(PAGE, default_timeout=90).run()
    runtime = get_runtime()
    try:
        at.file_uploader(key="pc_news_upload").set_value(("heads.csv", body, "text/csv")).run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        preview = next(m.value for m in at.markdown if m.value.startswith("**Preview:**"))
        assert "6 rows → 4 headlines of **ACME** (3), **GLOBX** (1)" in preview
        assert "2025-01-01 09:00 UTC → 2025-01-05 12:30 UTC" in preview
        assert "VADER scores -0." in preview and "to +0." in preview
        warning = " ".join(w.value for w in at.warning)
        assert "2 malformed row(s) will be skipped" in warning and "line 5" in warning
        at.button(key="pc_news_import").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert wait_for(lambda: news_count(data_dir) == 4), news_count(data_dir)
        assert wait_for(lambda: runtime.workers["news_import"].worker.state == "finished")
        at.run()
        assert any(c.value.startswith("4 published; 6 rows read, 2 skipped") for c in at.caption)
        assert any(m.value == "**News import** — finished" for m in at.markdown)
    finally:
        runtime.shutdown()


def test_simulator_news_controls_reach_the_runtime(data_dir, monkeypatch):
    from dashboard.runtime import get_runtime

    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", AV_KEY)  # no request is made in this test
    at = AppTest.from_file(PAGE, default_timeout=90).run()
    runtime = get_runtime()
    try:
        assert any("**Information** is how much a news item moves the *next* bar" in c.value
                   for c in at.caption)
        at.number_input(key="pc_warmup").set_value(200).run()
        at.number_input(key="pc_news_rate").set_value(0.5).run()
        at.number_input(key="pc_news_impact").set_value(1.5).run()
        at.button(key="start_producer").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        spec = runtime.simulator_spec
        assert (spec.news_rate, spec.news_impact) == (0.5, 1.5)
        assert runtime.is_running("news_producer") and runtime.is_running("news_indexer")
        assert wait_for(lambda: news_count(data_dir) > 100), news_count(data_dir)
        at.run()
        assert any(c.value == "0.5 items per symbol per bar, impact 1.5." for c in at.caption)
        # Alpha Vantage news offers the running producer's symbols
        assert at.text_input(key="pc_avn_symbols").value == "ACME,GLOBX,INITECH,UMBRL,WAYNE"
    finally:
        runtime.shutdown()


def test_alphavantage_news_stopped_while_waiting_for_the_budget_ends_cleanly():
    """Stopping live polling while it waits for the request budget is a stop, not a failure
    (the worker would otherwise read `failed: Stopped`)."""
    import threading

    from pipeline.sources.alphavantage_news import AlphaVantageNews
    from pipeline.sources.request_budget import RequestBudget

    with MarketApiDouble(av_key=AV_KEY) as api:
        api.set_av_news("IBM", [av_article("IBM item", days_ago(1), {"IBM": (0.3, 0.9)})])
        budget = RequestBudget(windows=[(1, 3600.0)])  # one request an hour
        src = AlphaVantageNews("IBM,MSFT", api_key=AV_KEY, base_url=api.base_url,
                               mode="live", budget=budget, max_budget_wait=None)
        stop = threading.Event()
        got: list = []
        done = threading.Event()

        def run():
            for batch in src.items(stop):  # IBM is fetched; MSFT waits for the budget
                got.extend(batch)
            done.set()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        assert wait_for(lambda: budget.waits == 1 or len(got) == 1, 30)
        stop.set()
        assert done.wait(30), "the source did not end when stopped"
        assert [i.title for i in got] == ["IBM item"]
        assert len(api.requests_for("alphavantage")) == 1


def test_fundamentals_are_fetched_through_their_topic_from_the_page(data_dir, monkeypatch):
    from dashboard.runtime import get_runtime
    from tests.market_api_double import av_overview

    with MarketApiDouble(av_key=AV_KEY) as api:
        api.set_av_overview("IBM", av_overview("IBM", PERatio="24.5", EPS="9.61"))
        monkeypatch.setenv("ALPHAVANTAGE_API_KEY", AV_KEY)
        monkeypatch.setenv("ALPHAVANTAGE_BASE_URL", api.base_url)
        at = AppTest.from_file(PAGE, default_timeout=90).run()
        runtime = get_runtime()
        try:
            at.text_input(key="pc_avn_symbols").set_value("IBM,NOPE").run()
            at.checkbox(key="pc_fund_daily").uncheck().run()
            before = time.time()
            at.button(key="pc_fund_start").click().run()
            assert not at.exception and not at.error, [e.value for e in at.error]
            store = SqliteStore(data_dir / "kappalab.sqlite")
            try:
                assert wait_for(lambda: store.count_fundamentals() == 1)
                snap = store.query_fundamentals("IBM").iloc[0]
            finally:
                store.close()
            assert snap["pe_ratio"] == 24.5 and snap["eps"] == 9.61
            assert before * 1000 <= snap["ts"] <= time.time() * 1000  # effective at the fetch
            assert wait_for(lambda: runtime.workers["fundamentals"].worker.state == "finished")
            at.run()
            assert any(c.value.startswith("1 published; 1 snapshot(s), 1 symbol(s) "
                                          "without an overview") for c in at.caption)
            assert any(m.value == "**Fundamentals** — finished" for m in at.markdown)
            assert AV_KEY not in page_text(at)
        finally:
            runtime.shutdown()
