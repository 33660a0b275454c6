"""The README's command as an outsider sees it: `streamlit run app.py` from the project folder
(no --server.address: the project's .streamlit/config.toml decides) listens on loopback only,
and markup in stored data reaches the browser as text, never as elements.

Data with markup, put where a hostile feed or file would put it: a symbol and two news titles
(one hover, two lines) with ``<b>``, ``<a href>`` and Markdown links in the store (Live market chart title and
news hover), a price CSV with such symbols (the Pipeline page's preview) and a headline CSV
with such a symbol and a malformed row quoting a link (the news preview and its skipped-row
reason). The DOM must hold none of it as an element: no ``<a>`` to the data's URL, no bold or
italic made from it, and the text itself visible. Screenshots: /work/shots/19/.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.contracts.news import NewsItem
from pipeline.contracts.schema import Bar
from pipeline.store.sqlite import SqliteStore
from tests.test_browser_e2e import (  # noqa: F401 (browser: the fixture)
    browser, free_port, stop_server, wait_for_port)

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("KAPPALAB_SHOTS", "/work/shots/19"))
EVIL = "evil.example"
SYMBOL = f"<b>MK</b>[l](https://{EVIL}/s)"
TITLE = f'<b>BOLD</b> <a href="https://{EVIL}/t">click</a> <i>it</i> [m](https://{EVIL}/m)'
SOURCE = f'<a href="https://{EVIL}/src">src</a>'
SECOND = "second headline"
CSV_SYMBOLS = (f"[csv](https://{EVIL}/c)", "<b>CB</b>")
#: elements that data must never become (Markdown and Plotly both make these)
DATA_ELEMENTS = (f'a[href*="{EVIL}"]', "b", "i", "img")

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def fill(data_dir: Path) -> None:
    store = SqliteStore(data_dir / "kappalab.sqlite")
    t0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
    bars = [Bar(SYMBOL, "1m", t0 + 60_000 * i, 100 + i % 7, 104 + i % 7, 98 + i % 7,
                101 + i % 7, 1_000.0, "csv") for i in range(120)]
    store.upsert_bars(bars)
    store.upsert_news([NewsItem(SYMBOL, t0 + 60_000 * 110 + 5_000 + i, SOURCE, title,
                                f"https://{EVIL}/u{i}", 0.6, 0.9)
                       for i, title in enumerate([TITLE, f"<i>{SECOND}</i>"])])
    store.close()


def start_streamlit(data_dir: Path, cwd: Path, *flags: str, **extra_env: str):
    """`streamlit run app.py` with only a port, a data dir and ``flags`` (no address unless
    given: the project's .streamlit/config.toml decides; Streamlit reads the one beside the
    script too, so the working folder does not matter)."""
    port = free_port()
    env = dict(os.environ, KAPPALAB_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT),
               KAPPALAB_AUTOSTART="0")
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "ELASTICSEARCH_URL", "KAPPALAB_NETWORK",
                "KAPPALAB_PRESENTER_PASSWORD", "STREAMLIT_SERVER_ADDRESS"):
        env.pop(var, None)
    env.update(extra_env)
    log = open(data_dir / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), *flags],
                            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port)
    return port, proc, log


@pytest.fixture
def readme_server(tmp_path):
    """The README's command: from the project folder."""
    fill(tmp_path)
    port, proc, log = start_streamlit(tmp_path, ROOT)
    yield port, tmp_path
    stop_server(proc, log)


def listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) of sockets listening on port."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def other_addresses() -> set[str]:
    """This machine's IPv4 addresses other than loopback (from the kernel's routing trie)."""
    lines = Path("/proc/net/fib_trie").read_text().splitlines()
    local = {prev.split()[-1] for prev, line in zip(lines, lines[1:]) if "/32 host LOCAL" in line}
    return {a for a in local if not a.startswith("127.")}


def no_data_elements(page, where: str) -> None:
    for selector in DATA_ELEMENTS:
        found = page.locator(selector)
        texts = [found.nth(i).inner_text() for i in range(min(found.count(), 5))]
        assert found.count() == 0, f"{where}: {selector} from data: {texts}"


def visible_text(page) -> str:
    return page.locator("body").inner_text().replace("\u2060", "")


def test_readme_command_listens_on_loopback_and_shows_data_as_text(readme_server, browser):
    port, data_dir = readme_server
    SHOTS.mkdir(parents=True, exist_ok=True)
    # ---- loopback only
    bound = listening(port)
    assert bound, f"nothing listens on {port}"
    assert set(bound) == {"0100007F"}, f"listening on {bound}, not only 127.0.0.1"
    for address in other_addresses():
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=60_000)
    # ---- Live market: symbol in the chart title, news title and source in the hover
    page.wait_for_selector(".js-plotly-plot .cartesianlayer", timeout=90_000)
    page.wait_for_selector(".scatterlayer path.point", timeout=30_000)
    title = page.locator(".js-plotly-plot .gtitle").first.text_content()
    assert title.startswith(SYMBOL), title
    page.locator(".scatterlayer path.point").last.hover(force=True)
    page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)
    # the hover layer of the chart hovered (the page also holds the hidden plotly.js preload
    # chart of dashboard/early_start.py, whose hover layer is empty)
    hover = page.locator(".hoverlayer:has(.hovertext)").text_content()
    assert TITLE in hover and f"<i>{SECOND}</i>" in hover, hover
    assert page.locator(".js-plotly-plot a").count() == 0
    assert page.locator('.hoverlayer tspan[style*="bold"], .hoverlayer tspan[style*="italic"]'
                        ).count() == 0
    page.screenshot(path=str(SHOTS / "live_market_markup_as_text.png"))
    no_data_elements(page, "Live market")

    # ---- Pipeline page: a price CSV whose symbols carry markup, in the preview
    prices = data_dir / "markup_prices.csv"
    lines = ["timestamp,symbol,open,high,low,close,volume"]
    lines += [f"2026-01-02T00:{i:02d}:00Z,{s},1,2,0.5,1.5,10" for s in CSV_SYMBOLS
              for i in range(30)]
    prices.write_text("\n".join(lines) + "\n")
    page.get_by_role("link", name="Pipeline").click()
    page.wait_for_selector("text=Workers", timeout=30_000)
    page.get_by_text("CSV replay").first.click()
    # the producer's uploader is there once the rerun drew the CSV panel (the headline CSV's
    # uploader further down exists already)
    page.wait_for_selector("text=…or a path on the server", timeout=60_000)
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(
        str(prices))
    page.wait_for_selector("text=Preview:", timeout=90_000)
    text = visible_text(page)
    assert all(s in text for s in CSV_SYMBOLS), text[:2000]
    button = page.locator('[data-testid="stButton"]', has_text="Import 60 bars").inner_text()
    assert all(s in button.replace("\u2060", "") for s in CSV_SYMBOLS), button
    page.screenshot(path=str(SHOTS / "csv_preview_markup_as_text.png"), full_page=True)
    no_data_elements(page, "CSV preview")

    # ---- Headline CSV: a markup symbol, and a malformed row whose reason quotes a link
    headlines = data_dir / "markup_news.csv"
    headlines.write_text("symbol,published,title\n"
                         f'"{CSV_SYMBOLS[0]}",2026-01-02T00:00:00Z,Shares rise\n'
                         f"ACME,[when](https://{EVIL}/w),Shares fall\n")
    page.get_by_text("News sources", exact=True).click()
    page.get_by_role("tab", name="Headline CSV").click()
    page.locator('[data-testid="stFileUploader"] input[type=file]').last.set_input_files(
        str(headlines))
    page.wait_for_selector("text=malformed row", timeout=90_000)
    text = visible_text(page)
    assert CSV_SYMBOLS[0] in text and f"[when](https://{EVIL}/w)" in text, text[-3000:]
    page.screenshot(path=str(SHOTS / "headline_preview_markup_as_text.png"), full_page=True)
    no_data_elements(page, "headline preview")
    page.close()


def test_server_beyond_loopback_without_password_refuses(tmp_path, browser):
    """Opened by hand (`--server.address 0.0.0.0`, without KAPPALAB_NETWORK): the app sees the
    address, counts it as network mode, and without a presenter password shows one sentence
    and starts nothing. Run from another folder, the default still binds loopback."""
    from pipeline.contracts.config import NETWORK_WITHOUT_PASSWORD

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port, proc, log = start_streamlit(tmp_path, elsewhere)
    try:
        assert set(listening(port)) == {"0100007F"}  # the config beside app.py applies
    finally:
        stop_server(proc, log)
    port, proc, log = start_streamlit(tmp_path, elsewhere, "--server.address", "0.0.0.0")
    try:
        assert set(listening(port)) == {"00000000"}
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_selector('[data-testid="stAlertContentError"]', timeout=60_000)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "network_without_password_refuses.png"))
        errors = page.locator('[data-testid="stAlertContentError"]')
        assert errors.count() == 1
        assert errors.inner_text().strip() == NETWORK_WITHOUT_PASSWORD
        assert page.locator("h1").count() == 0  # no page drawn
        assert not (tmp_path / "kappalab.sqlite").exists()  # nothing opened or started
        page.close()
    finally:
        stop_server(proc, log)


def test_classroom_viewer_reads_and_presenter_password_unlocks(tmp_path, browser):
    """KAPPALAB_NETWORK=1 with a password: a viewer's Pipeline page has no Start button, no
    upload and says it is read-only; the password typed in the sidebar unlocks them, and the
    password appears nowhere on the page."""
    fill(tmp_path)
    password = "classroom-pw-7f3a"
    port, proc, log = start_streamlit(tmp_path, ROOT, KAPPALAB_NETWORK="1",
                                      KAPPALAB_PRESENTER_PASSWORD=password)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/pipeline_control", wait_until="domcontentloaded",
                  timeout=60_000)
        page.wait_for_selector("text=Workers", timeout=60_000)
        page.wait_for_selector("text=Read-only view", timeout=30_000)
        assert page.get_by_role("button", name="Start producer").count() == 0
        assert page.locator('[data-testid="stFileUploader"]').count() == 0
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "classroom_viewer_pipeline.png"))
        page.get_by_label("Presenter password").fill(password)
        page.get_by_role("button", name="Enter as presenter").click()
        page.wait_for_selector("text=Start producer", timeout=30_000)
        assert page.get_by_text("Presenter", exact=False).count() >= 1
        assert password not in page.content()
        page.screenshot(path=str(SHOTS / "classroom_presenter_pipeline.png"))
        page.close()
    finally:
        stop_server(proc, log)
    assert password not in (tmp_path / "streamlit.log").read_text()
