"""Deep links: a page's address opened as the very first request to a fresh server.

With a ``pages/`` folder next to app.py, Streamlit runs such a request through its legacy
pages-folder mode, which skips app.py (see dashboard/shell.py). These tests start a real
Streamlit server on an empty data dir, open the address in headless Chromium and check the page
behaves as if the user had navigated there from the root: its own content, the app's navigation
titles in the sidebar (not file names), and the demo pipeline started, once.
"""
from __future__ import annotations

import re
import time

import pytest

from test_browser_e2e import browser, streamlit_server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NAV_TITLES = ["Live market", "Pipeline", "Model lab", "Predictions", "Data"]
FILE_NAMES = ["app", "live market", "pipeline control", "model lab", "predictions",
              "data browser"]


def nav_titles(page) -> list[str]:
    links = page.locator('[data-testid="stSidebarNav"] a')
    # Each link's text is "<material icon name>\n<title>"; the title is the last line.
    return [links.nth(i).inner_text().strip().splitlines()[-1] for i in range(links.count())]


def wait_running(page, worker: str) -> None:
    line = re.compile(rf"^\s*{worker} — running\s*$")
    page.locator('[data-testid="stMarkdownContainer"] p', has_text=line).first.wait_for(
        timeout=120_000)


def test_pipeline_page_opened_first_starts_the_demo(streamlit_server, browser):
    url, data_dir, _ = streamlit_server
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{url}/pipeline_control", wait_until="domcontentloaded", timeout=60_000)
    # While the broker and workers start (seconds), the page says so instead of staying blank.
    page.wait_for_selector("text=Starting the demo pipeline", timeout=60_000)

    page.wait_for_selector("h1:has-text('Pipeline')", timeout=90_000)
    page.wait_for_selector("text=Workers", timeout=60_000)
    # The demo pipeline was autostarted by app.py's shell, as on a first load of the root.
    wait_running(page, "Producer")
    wait_running(page, "Indexer")
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)

    assert page.url.rstrip("/").endswith("/pipeline_control"), page.url
    titles = nav_titles(page)
    assert titles == NAV_TITLES, titles
    # Streamlit's legacy navigation names pages after their files, in lower case.
    nav_lines = [s.strip() for s in page.locator('[data-testid="stSidebarNav"]').inner_text()
                 .splitlines()]
    assert not set(FILE_NAMES) & set(nav_lines), nav_lines
    active = page.locator('[data-testid="stSidebarNav"] a[aria-current="page"]')
    assert active.count() == 1 and active.inner_text().strip().endswith("Pipeline")
    # The shell's sidebar captions ran too.
    sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "Store:" in sidebar and "Broker:" in sidebar, sidebar
    assert page.locator('[data-testid="stException"]').count() == 0

    # Bars arrive: the store count shown on the page grows.
    def bars() -> int:
        loc = page.locator('[data-testid="stMetric"]', has_text="Bars in store").first
        return int(loc.locator('[data-testid="stMetricValue"]').inner_text().replace(",", ""))

    deadline = time.time() + 60
    while time.time() < deadline and bars() == 0:
        page.wait_for_timeout(1000)
    first = bars()
    assert first > 0
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector('[data-testid="stMetric"]:has-text("Bars in store")', timeout=60_000)
    deadline = time.time() + 30
    while time.time() < deadline and bars() <= first:
        page.wait_for_timeout(1000)
    assert bars() > first


def test_root_and_deep_link_together_start_each_worker_once(streamlit_server, browser):
    from pipeline.store.sqlite import SqliteStore

    url, data_dir, _ = streamlit_server
    root = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    deep = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    # Both sessions load at once: neither waits for the other's first run.
    deep.goto(f"{url}/data_browser", wait_until="commit", timeout=60_000)
    root.goto(url, wait_until="commit", timeout=60_000)

    deep.wait_for_selector("h1:has-text('Data')", timeout=120_000)
    root.wait_for_selector("h1:has-text('Live market')", timeout=120_000)
    assert nav_titles(deep) == NAV_TITLES
    assert nav_titles(root) == NAV_TITLES

    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        kinds: list[str] = []
        deadline = time.time() + 90
        while time.time() < deadline:
            beats = store.list_heartbeats()
            kinds = sorted(b["kind"] for b in beats)
            if "producer" in kinds and "indexer" in kinds:
                break
            time.sleep(1)
        time.sleep(3)  # any second copy would have sent its first heartbeat by now
        beats = store.list_heartbeats()
        kinds = sorted(b["kind"] for b in beats)
        assert kinds.count("producer") == 1, kinds
        assert kinds.count("indexer") == 1, kinds
        assert kinds.count("scorer") <= 1, kinds
        assert len({b["pid"] for b in beats}) == 1  # all threads of the one server process
    finally:
        store.close()


def test_model_lab_opened_first_fills_in_without_a_reload(streamlit_server, browser):
    url, _, _ = streamlit_server
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{url}/model_lab", wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector("h1:has-text('Model lab')", timeout=90_000)
    # Right after the autostart the store may still be empty: the page must not ask the user
    # to start the pipeline that is already running, and must fill in by itself.
    first = page.locator('[data-testid="stMain"]').inner_text()
    assert "Start the pipeline" not in first, first
    page.wait_for_selector("button:has-text('Run comparison')", timeout=120_000)
    assert nav_titles(page) == NAV_TITLES
    assert page.locator('[data-testid="stException"]').count() == 0
