"""A real user's first run: `streamlit run app.py` with no configuration, in headless Chromium.

Starts a real Streamlit server (which starts the embedded broker, simulator, producer and
indexer by itself), opens it in Debian's Chromium through Playwright, waits for candles, uploads
a pandas-style CSV, runs a walk-forward comparison, and saves screenshots of every page in the
dark and the light theme under test-artifacts/. Any console error, page exception, exception
box or request to a host other than the local server fails the test (classrooms are often
offline). Everything is stopped by PID.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 60) -> None:
    """Until something accepts connections on 127.0.0.1:port (or the time is up)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen, log) -> None:
    """SIGTERM to the server's PID, SIGKILL after 20 s; then close its log."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    log.close()


@pytest.fixture
def streamlit_server(tmp_path):
    port = free_port()
    env = dict(os.environ, KAPPALAB_DATA_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL", "KAPPALAB_AUTOSTART"):
        env.pop(var, None)
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    started = time.time()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}", tmp_path, started
    stop_server(proc, log)
    # If the server died without its atexit hook, stop the broker it started, by PID.
    from pipeline.workers.broker import EmbeddedBroker, pid_alive

    info = EmbeddedBroker.read_state(tmp_path / "broker.json")
    if info and info.pid and pid_alive(info.pid) and info.owner_pid == proc.pid:
        os.kill(info.pid, signal.SIGTERM)


@pytest.fixture
def browser():
    if not CHROMIUM:
        pytest.fail("chromium is not installed: run `bash tests/run.sh`, which installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def metric_value(page, label: str) -> str:
    loc = page.locator('[data-testid="stMetric"]', has_text=label).first
    return loc.locator('[data-testid="stMetricValue"]').inner_text()


def test_first_run_shows_candles_growing(streamlit_server, browser):
    url, data_dir, started = streamlit_server
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    # The candlestick chart is drawn once the first bars are stored.
    page.wait_for_selector(".js-plotly-plot .cartesianlayer", timeout=90_000)
    first_candle_s = time.time() - started
    page.wait_for_selector('[data-testid="stMetric"]:has-text("Bars stored")', timeout=30_000)
    first = int(metric_value(page, "Bars stored").replace(",", ""))
    assert first > 0
    time.sleep(5)  # the fragment refreshes in place every 2 s while the simulator runs live
    later = int(metric_value(page, "Bars stored").replace(",", ""))
    page.screenshot(path=str(ARTIFACTS / "live_market.png"), full_page=True)
    assert later > first, f"candles did not grow: {first} -> {later}"
    print(f"\nfirst candle after {first_candle_s:.1f} s from server start; "
          f"bars stored {first} -> {later} in 5 s")
    # The sidebar's pipeline line follows the workers as they come up (the scorer last), with
    # no click or reload: it names the scorer once its heartbeat is in.
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stSidebar\"] p')].some("
        "p => p.innerText.startsWith('Pipeline:') && p.innerText.includes('scorer'))",
        timeout=90_000)

    page.get_by_role("link", name="Pipeline").click()
    page.wait_for_selector("text=Workers", timeout=30_000)
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "pipeline.png"), full_page=True)
    assert page.get_by_text("Embedded Tansu").count() >= 1


PAGES = [("", "Live market", ".js-plotly-plot .cartesianlayer"),
         ("pipeline_control", "Pipeline", "text=Workers"),
         ("model_lab", "Model lab", "text=Run comparison"),
         ("predictions", "Predictions", "h1:has-text('Predictions')"),
         ("data_browser", "Data", "text=Download bars as CSV")]
def brightness(css_rgb: str) -> float:
    r, g, b = (float(v) for v in css_rgb[css_rgb.index("(") + 1:-1].split(",")[:3])
    return (r + g + b) / 3


class Watch:
    """Console errors, uncaught page errors and requests that leave the local server."""

    def __init__(self, page, base: str):
        self.errors: list[str] = []
        self.external: list[str] = []
        host = urlsplit(base).netloc
        page.on("console", lambda m: self.errors.append(
            f"console {m.type}: {m.text} ({m.location.get('url', '')})")
            if m.type == "error" else None)
        page.on("response", lambda r: self.errors.append(f"HTTP {r.status} for {r.url}")
                if r.status >= 400 else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.external.append(r.url)
                if urlsplit(r.url).scheme in ("http", "https", "ws", "wss")
                and urlsplit(r.url).netloc != host else None)

    def check(self, page, where: str) -> None:
        boxes = page.locator('[data-testid="stException"]')
        assert boxes.count() == 0, f"{where}: exception box: {boxes.first.inner_text()[:400]}"
        assert not self.errors, f"{where}: {self.errors}"
        assert not self.external, f"{where}: requests leave the server: {self.external}"


def pandas_csv(path: Path) -> Path:
    import numpy as np
    import pandas as pd

    idx = pd.bdate_range("2023-01-02", periods=300)
    close = 100 + np.cumsum(np.sin(np.arange(300) / 3.0))
    df = pd.DataFrame({"Open": close - 0.2, "High": close + 1, "Low": close - 1, "Close": close,
                       "Volume": np.arange(300) * 10 + 500}, index=idx).iloc[::-1]
    df.to_csv(path)  # header ",Open,High,Low,Close,Volume", newest first
    return path


def settle(page, selector: str) -> None:
    page.wait_for_selector(selector, timeout=90_000)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText"
        ".includes('Running')", timeout=60_000)
    page.wait_for_timeout(1200)  # charts finish drawing


def test_every_page_in_both_themes_upload_and_folds(streamlit_server, browser, tmp_path):
    url, data_dir, _ = streamlit_server
    ARTIFACTS.mkdir(exist_ok=True)
    csv_path = pandas_csv(tmp_path / "GOOG.csv")
    for scheme in ("dark", "light"):
        ctx = browser.new_context(color_scheme=scheme, viewport={"width": 1400, "height": 1700})
        page = ctx.new_page()
        watch = Watch(page, url)
        # Open the app once, then move as a user does, through the navigation (opening a
        # page's URL directly makes Streamlit probe <page>/_stcore/health first: two 404s).
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        for path, title, ready in PAGES:
            if path:
                page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
            try:
                settle(page, ready)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / f"FAILED_{scheme}_{path}.png"))
                raise
            bg = page.evaluate("getComputedStyle(document.querySelector('.stApp'))"
                               ".backgroundColor")
            dark_bg = brightness(bg) < 80
            assert dark_bg == (scheme == "dark"), f"{title} in {scheme}: background {bg}"
            page.screenshot(path=str(ARTIFACTS / f"{scheme}_{path or 'live_market'}.png"),
                            full_page=True)
            watch.check(page, f"{title} ({scheme})")
            if scheme == "dark" and path == "pipeline_control":
                upload(page, csv_path, data_dir)
                watch.check(page, "CSV upload")
            if scheme == "dark" and path == "model_lab":
                walk_forward(page)
                watch.check(page, "walk-forward run")
        ctx.close()


def upload(page, csv_path: Path, data_dir: Path) -> None:
    from pipeline.store.sqlite import SqliteStore

    radio = page.get_by_text("CSV replay", exact=True)
    if not radio.is_visible():  # the expander is closed while the simulator runs
        page.locator('[data-testid="stExpander"] summary', has_text="Producer source").click()
    radio.click()
    # the bars uploader (the page also has the headline-CSV uploader under News sources)
    page.locator('[data-testid="stFileUploader"]', has_text="CSV file (drag and drop").locator(
        'input[type="file"]').set_input_files(str(csv_path))
    page.wait_for_selector("text=Preview:", timeout=60_000)
    preview = page.locator('[data-testid="stMarkdown"]', has_text="Preview:").inner_text()
    assert "300 bars of GOOG" in preview and "1d (inferred" in preview, preview
    assert page.get_by_text("299 rows were out of time order").count() == 1
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "dark_pipeline_csv_preview.png"), full_page=True)
    # The running simulator must stop before another producer can start.
    stop = page.locator('[data-testid="stButton"] button', has_text="Stop producer")
    if stop.count():
        stop.first.click()
        page.wait_for_selector('button:has-text("Import 300 bars")', timeout=60_000)
        page.wait_for_function("() => [...document.querySelectorAll('button')].some("
                               "b => b.innerText.includes('Import 300 bars') && !b.disabled)",
                               timeout=60_000)
    settle(page, 'button:has-text("Import 300 bars")')
    page.locator("button", has_text="Import 300 bars").first.click()
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        deadline = time.time() + 60
        while time.time() < deadline and store.count_bars("GOOG", "1d") < 300:
            time.sleep(0.5)
        bars = store.query_bars("GOOG", "1d")
        assert len(bars) == 300 and store.list_intervals("GOOG") == ["1d"]
        assert bars["ts"].iloc[0] == 1672617600000  # 2023-01-02T00:00Z
    finally:
        store.close()
    page.wait_for_selector("text=Importing:", timeout=30_000)
    page.wait_for_timeout(3000)  # one refresh of the worker panel
    page.screenshot(path=str(ARTIFACTS / "dark_pipeline_after_import.png"), full_page=True)


def walk_forward(page) -> None:
    page.get_by_text("Walk-forward (expanding window, several folds)").click()
    page.wait_for_timeout(1500)
    page.locator("button", has_text="Run comparison").click()
    page.get_by_role("tab", name="Folds").wait_for(timeout=240_000)
    page.get_by_role("tab", name="Folds").click()
    page.wait_for_selector("text=Skill vs persistence per fold", timeout=30_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / "dark_model_lab_folds.png"), full_page=True)
