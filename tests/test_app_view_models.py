"""The pages' pure building blocks: formatting, worker states, run captions, fold tables,
throughput axis, the theme palette and a live source's failed polls (no Streamlit needed)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.formatting import fmt_pct_change, fmt_sig, sig_styler, with_time_column
from dashboard.theme import DARK, LIGHT, MA_COLORS, palette
from dashboard.view_models import (
    fold_view, latency_note, run_caption, source_problem, throughput_ceiling, unique, worker_row,
    worker_status,
)
from tests.test_sources_alphavantage import api  # noqa: F401  (fixture: the market API double)


def test_significant_figures_never_scientific_or_none():
    assert [fmt_sig(v) for v in (1.5612e-07, 0.21, -4.2, 1234567.8, None, float("nan"))] == \
        ["0.0000001561", "0.21", "-4.2", "1,234,568", "—", "—"]
    html = sig_styler(pd.DataFrame({"ts": [1706693580000], "skill": [1.56e-07]})).to_html()
    assert "1706693580000" in html and "0.000000156" in html and "e-07" not in html


def test_percent_change_never_reads_zero_for_a_real_move():
    assert [fmt_pct_change(r) for r in (0.0012, -0.0345, 0.0014 / 181.6, -2e-7, 0.0)] == \
        ["+0.12%", "-3.45%", "+0.00077%", "-0.00002%", "0%"]


def test_time_column_sits_next_to_epoch_ms():
    df = with_time_column(pd.DataFrame({"ts": [1704067200000], "close": [1.0]}))
    assert list(df.columns) == ["ts", "time (UTC)", "close"]
    assert df["time (UTC)"].iloc[0] == "2024-01-01 00:00:00"


def test_failed_and_stalled_read_the_same_in_header_and_table():
    for state in ("failed", "stalled"):
        snap = {"state": state, "last_error": "12:00:01 the store is locked; retrying in 5 s",
                "counters": {}, "gauges": {}}
        assert worker_status(snap, running=(state == "stalled")) == (state, snap["last_error"])
        assert worker_row("indexer", snap, "thread")["state"] == state
    assert worker_status(None, False) == ("stopped", "")
    # a snapshot still saying running after its thread ended is not shown as running
    assert worker_status({"state": "running"}, running=False)[0] == "stopped"


def test_stopped_worker_shows_no_rate():
    snap = {"state": "running", "counters": {"stored": 9275}, "gauges": {"rate_per_s": 5.3}}
    assert worker_row("indexer", snap, "thread", running=True)["rate/s"] == "5.3"
    # the thread ended: its last snapshot still holds the rate it had while running
    stopped = worker_row("indexer", snap, "thread", running=False)
    assert stopped["state"] == "stopped" and stopped["rate/s"] == "—"
    assert stopped["stored"] == "9,275"
    finished = worker_row("producer", {**snap, "state": "finished"}, "thread", running=False)
    assert finished["rate/s"] == "—"


def test_latency_note_says_what_the_percentiles_cover():
    note = latency_note({"p50": 28.0, "p95": 35.0, "p99": 41.0, "n": 2000})
    assert "over the latest 2,000 live predictions" in note and "warm-up history" in note
    assert "not counted here" in note
    assert "over the latest live predictions" in latency_note({"p50": 30.0})


def test_walk_forward_caption_adds_up():
    summary = {"symbols": ["ACME"], "interval": "1m", "n_rows": 19_979, "n_train": 16_650,
               "n_train_first": 3_335, "n_test": 16_645, "n_folds": 5, "elapsed_s": 3.2,
               "warmup_dropped": {"train": 0, "test": 0}}
    text = run_caption(summary, "Walk-forward", "next_return", "r1")
    assert "5 folds test 16,645 rows in all" in text
    assert "3,335 rows for fold 1 up to 16,650 for fold 5" in text
    assert "train 16,650" not in text


def test_holdout_caption_says_how_rows_were_split_before_warm_up():
    summary = {"symbols": ["ACME"], "interval": "1m", "n_rows": 2_277, "n_train": 1_805,
               "n_test": 452, "n_folds": 1, "elapsed_s": 4.8,
               "warmup_dropped": {"train": 17, "test": 3}}
    timed = run_caption(summary, "Chronological holdout", "next_return", "r1")
    assert "cut on time first, then 17 training and 3 test rows dropped" in timed
    shuffled = run_caption(summary, "Random shuffle", "next_return", "r2", shuffled=True)
    assert "split at random first, then 17 training and 3 test rows dropped" in shuffled
    assert "cut on time" not in shuffled


def test_fold_view_has_one_column_per_fold_and_counts_wins():
    rows = [{"model": m, "fold": f, "n_test": 10, "skill": s}
            for m, skills in (("Persistence", [0, 0, 0]), ("Linear", [0.1, -0.2, 0.05]))
            for f, s in enumerate(skills)]
    view = fold_view(pd.DataFrame(rows))
    assert list(view.index) == ["Persistence", "Linear"]
    assert view.loc["Linear", "folds with skill > 0"] == "2/3"
    assert "folds beating persistence" not in view.columns  # an old run: no test, no claim
    readings = [None, None, None, "beats persistence", "worse than persistence",
                "no evidence it beats persistence"]
    view = fold_view(pd.DataFrame(rows).assign(reading=readings))
    assert view.loc["Linear", "folds beating persistence"] == "1/3"  # significant ones only
    assert np.isclose(view.loc["Linear", "mean"], -0.05 / 3)


def test_warnings_shown_once():
    assert unique(["a", "b", "a", "c"], already_shown=["c"]) == ["a", "b"]


def test_throughput_axis_cuts_the_warm_up_burst_only():
    steady = [{"t": i, "rate": 5.0} for i in range(100)]
    burst = [{"t": i, "rate": 2000.0} for i in range(10)]
    assert throughput_ceiling({"indexer": burst + steady}) == 12.5
    assert throughput_ceiling({"indexer": steady}) is None
    idle = [{"t": i, "rate": 0.0} for i in range(100)]  # stopped: nothing to zoom in on
    assert throughput_ceiling({"indexer": burst + idle}) is None


def test_palette_actual_line_contrasts_with_each_background():
    def lum(hex_color: str) -> float:
        return sum(int(hex_color[i:i + 2], 16) for i in (1, 3, 5)) / 3

    assert lum(DARK.actual) > 200 and lum(LIGHT.actual) < 60
    assert palette("light") is LIGHT and palette("dark") is DARK
    assert len(set(MA_COLORS.values())) == len(MA_COLORS)  # SMA 10 and SMA 20 differ


def test_source_problem_reads_a_live_sources_failed_polls(api):
    """A real Alpha Vantage source polling the market API double: its first poll fails every
    attempt. The Pipeline page reads the running producer's ``source.stats()``."""
    import threading

    from tests.market_api_double import server_error
    from tests.test_sources_alphavantage import FAST, FIVE_MIN, START, make_bars, source

    assert source_problem({}) is None
    api.set_av_bars("IBM", "5min", make_bars(START, 2, FIVE_MIN))
    api.script("alphavantage", *[server_error(503)] * (FAST.retries + 1))
    stop = threading.Event()
    src = source(api, mode="live", poll_seconds=0.02)
    gen = src.bars(stop)
    next(gen)  # the second poll delivers
    stop.set()
    problem = source_problem(src.stats())
    assert problem.startswith("1 failed poll(s) of the source; last: ")
    assert "503" in problem or "failed" in problem.split("last: ")[1]
    assert source_problem(src.stats(), "running") == problem
    # A stalled producer gives the source's reason in its own header: not said twice.
    assert source_problem(src.stats(), "stalled") is None
