"""A real user's first run: `streamlit run app.py` with no configuration, in headless Chromium.

Starts a real Streamlit server (which starts the embedded broker, simulator, producer and
indexer by itself), opens it in Debian's Chromium through Playwright, waits for candles, and
saves screenshots under test-artifacts/. Everything is stopped by PID.
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

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    deadline = started + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}", tmp_path, started
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    log.close()
    # If the server died without its atexit hook, stop the broker it started, by PID.
    from pipeline.broker import EmbeddedBroker, pid_alive

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

    page.get_by_role("link", name="Pipeline").click()
    page.wait_for_selector("text=Workers", timeout=30_000)
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "pipeline.png"), full_page=True)
    assert page.get_by_text("Embedded Tansu").count() >= 1
