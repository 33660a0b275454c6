"""Screenshots of N real viewers: headless Chromium pages on the Live page of one server.

    python benchmarks/classroom_shots.py [--pages 20] [--browsers 4] [--out /work/shots/22]
        [--watch 60] [--viewport 800x1000] [--mode process] [--app DIR]

Starts one ``streamlit run app.py`` on an empty data dir, waits for the demo's warm-up, opens
``--pages`` pages (each in its own browser context, spread over ``--browsers`` Chromium
processes, ``--viewport`` each), waits until every page has drawn its candlestick, then
watches them for ``--watch`` seconds: every few seconds each page is checked for a drawn
chart (a chart box without a drawn plot is a blank chart). Then it takes a screenshot of each
page (``viewer_XX.png``) and composes them into one picture (``twenty_viewers.png``, or
``viewers.png`` for another count), each tile labelled with its page, how far its chart
trails the store (1m bars) and its longest blank stretch.

Prints ONE JSON line: per page the seconds from ``goto`` to its first drawn chart, the blank
samples and longest blank stretch after that, bars behind the store at the end; the load.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.app_server import (  # noqa: E402
    CHART, ROOT, AppServer, chart_last_ts, launch_chromium, loadavg, session_first_render,
    store_figures,
)
from benchmarks.bench_classroom import MIN, wait_warm  # noqa: E402

STATE = """() => ({
    box: document.querySelectorAll('[data-testid=stPlotlyChart]').length,
    drawn: document.querySelectorAll('%s').length})""" % CHART


def page_state(page) -> str:
    """``drawn``, ``blank`` (a chart box with nothing drawn in it) or ``none`` (no chart)."""
    try:
        got = page.evaluate(STATE)
    except Exception:  # a page busy past the timeout: counted as not drawn
        return "blank"
    return "drawn" if got["drawn"] else ("blank" if got["box"] else "none")


def montage(shots: list[Path], labels: list[str], out: Path, columns: int = 5,
            tile: tuple[int, int] = (400, 300)) -> None:
    """One picture of every screenshot, scaled to ``tile``, labelled, ``columns`` a row."""
    from PIL import Image, ImageDraw  # Pillow comes with Streamlit

    rows = -(-len(shots) // columns)
    sheet = Image.new("RGB", (columns * tile[0], rows * (tile[1] + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (shot, label) in enumerate(zip(shots, labels)):
        x, y = (i % columns) * tile[0], (i // columns) * (tile[1] + 18)
        with Image.open(shot) as img:
            sheet.paste(img.convert("RGB").resize(tile), (x, y + 18))
        draw.text((x + 4, y + 3), label, fill="black")
        draw.rectangle([x, y + 18, x + tile[0] - 1, y + 18 + tile[1] - 1], outline="#888888")
    sheet.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--browsers", type=int, default=4, help="Chromium processes")
    ap.add_argument("--viewport", default="800x1000")
    ap.add_argument("--out", type=Path, default=Path("/work/shots/22"))
    ap.add_argument("--watch", type=float, default=60.0,
                    help="seconds of watching the drawn pages for blank charts")
    ap.add_argument("--draw-timeout", type=float, default=300.0)
    ap.add_argument("--mode", default="process", help="KAPPALAB_PIPELINE_MODE of the server")
    ap.add_argument("--app", type=Path, default=ROOT, help="the app directory")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    width, height = (int(v) for v in args.viewport.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="kappalab-shots-") as tmp, \
            sync_playwright() as p:
        server = AppServer(Path(tmp), args.mode, args.app)
        browsers = []
        try:
            server.wait_port()
            session_first_render(server.port, until="script_finished")  # autostart the demo
            wait_warm(server)
            browsers = [launch_chromium(p) for _ in range(args.browsers)]
            pages, opened = [], []
            for i in range(args.pages):
                context = browsers[i % len(browsers)].new_context(
                    viewport={"width": width, "height": height})
                page = context.new_page()
                opened.append(time.monotonic())
                page.goto(server.url, wait_until="commit", timeout=120_000)
                pages.append(page)
            first_drawn: list[float | None] = [None] * len(pages)
            deadline = time.monotonic() + args.draw_timeout
            while time.monotonic() < deadline and None in first_drawn:
                for i, page in enumerate(pages):
                    if first_drawn[i] is None and page_state(page) == "drawn":
                        first_drawn[i] = round(time.monotonic() - opened[i], 1)
                pages[0].wait_for_timeout(1000)
            samples = [[] for _ in pages]  # (t, state) after the page's first drawn chart
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.watch:
                for i, page in enumerate(pages):
                    if first_drawn[i] is not None:
                        samples[i].append((time.monotonic(), page_state(page)))
                pages[0].wait_for_timeout(3000)
            store_last = store_figures(server.data_dir)[1]
            report, shots, labels = [], [], []
            for i, page in enumerate(pages):
                shown = chart_last_ts(page)
                behind = (None if shown is None or store_last is None
                          else max(0, (store_last - shown) // MIN))
                shot = args.out / f"viewer_{i + 1:02d}.png"
                page.screenshot(path=str(shot))
                blank = blank_stretch(samples[i])
                report.append({"page": i + 1, "first_chart_s": first_drawn[i],
                               "samples": len(samples[i]),
                               "blank_samples": sum(s == "blank" for _, s in samples[i]),
                               "blank_max_s": blank, "behind_bars": behind})
                shots.append(shot)
                labels.append(f"viewer {i + 1:02d}: "
                              + ("never drawn" if first_drawn[i] is None else
                                 f"drawn {first_drawn[i]} s, {behind} bars behind, "
                                 f"blank max {blank} s"))
            name = "twenty_viewers.png" if args.pages == 20 else "viewers.png"
            montage(shots, labels, args.out / name, tile=(400, 400 * height // width))
        finally:
            for browser in browsers:
                browser.close()
            server.stop()
    print(json.dumps({"bench": "classroom_shots", "pages": report, "browsers": args.browsers,
                      "viewport": args.viewport, "montage": str(args.out / name),
                      "loadavg_1m_before": load_before, "loadavg_1m": loadavg(),
                      "cpus": __import__("os").cpu_count()}))


def blank_stretch(samples: list[tuple[float, str]]) -> float:
    """The longest time a drawn page showed no drawn chart: from a sample without one to the
    next sample with one (to the last sample when it never came back)."""
    longest, start = 0.0, None
    for t, state in samples:
        if state != "drawn" and start is None:
            start = t
        elif state == "drawn" and start is not None:
            longest, start = max(longest, t - start), None
    if start is not None:
        longest = max(longest, samples[-1][0] - start)
    return round(longest, 1)


if __name__ == "__main__":
    main()
