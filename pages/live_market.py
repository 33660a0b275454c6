"""Live market: candles growing in place, volume, moving averages, predicted next close."""
from __future__ import annotations

import streamlit as st

from dashboard.candles import CandleFeed
from dashboard.charts import candlestick, ma_warmup, waiting_candlestick
from dashboard.formatting import fmt_num, fmt_pct_change, fmt_sig, fmt_ts, ts_to_datetime
from dashboard.plain_text import md_plain
from dashboard.shared_views import (LIVE_REFRESH_S, late_browser_keeps, note_shown,
                                    share_figure, shared_views)
from dashboard.shell import enter_page
from dashboard.state import store_or_stop
from dashboard.theme import current_theme
from dashboard.view_models import latest_predictions, news_markers, per_candle_predictions
from pipeline.contracts.schema import INTERVALS

enter_page()
store = store_or_stop()
st.title("Live market")

symbols = store.list_symbols()
if not symbols:
    st.info(
        "No bars stored yet. The pipeline starts by itself on first load; if it is stopped, "
        "start the **producer** and **indexer** on the Pipeline page, or run "
        "`python -m pipeline backfill --bars 5000` in a terminal. This page refreshes itself."
    )

c1, c2, c3, c4, c5 = st.columns([1.2, 0.8, 1, 1.6, 0.8])
symbol = c1.selectbox("Symbol", symbols or ["—"], key="lm_symbol")
interval = c2.selectbox("Interval", store.list_intervals(symbol) or ["1m"], key="lm_interval",
                        help="Intervals stored for this symbol.")
step = INTERVALS.get(interval, 60_000)
candle_choices = {k: v for k, v in INTERVALS.items() if v >= step}
if st.session_state.get("lm_candle_for") != interval:
    # A series of another bar size starts at its own size: a 1d candle picked for daily
    # bars would otherwise stay on when coming back to 1m bars, a chart of one candle.
    st.session_state["lm_candle"] = next(iter(candle_choices))
    st.session_state["lm_candle_for"] = interval
# Whole history picks its own candle size and count: those two pickers would do nothing.
whole_on = bool(st.session_state.get("lm_whole", False))
candle = c3.selectbox("Candle size", list(candle_choices), key="lm_candle", disabled=whole_on,
                      help="Bigger candles are aggregated by the store (first open, max high, "
                           "min low, last close, summed volume)."
                           + (" Off while Whole history is on." if whole_on else ""))
ma_windows = c4.multiselect("Moving averages", [5, 10, 20, 50, 100], default=[10, 50],
                            key="lm_ma")
ma_kind = c5.radio("Type", ["SMA", "EMA"], horizontal=True, key="lm_ma_kind")
# One row for the slider and the three switches: the chart starts high on a 1366x768 screen.
c6, c7, c8, c9 = st.columns([2.6, 1.4, 1.1, 0.9], vertical_alignment="bottom")
n_candles = c6.slider("Candles shown", 30, 600, 150, step=10, key="lm_n", disabled=whole_on,
                      help="Off while Whole history is on." if whole_on else None)
whole = c7.toggle("Whole history", value=False, key="lm_whole",
                  help="About 600 candles over everything stored (the candle size follows).")
show_pred = c8.toggle("Predictions", value=True, key="lm_pred",
                      help="Overlay the live scorer's predicted close: the last prediction of "
                           "each candle (its close).")
show_news = c9.toggle("News", value=True, key="lm_news",
                      help="One marker per candle with news (the count above it); hover for "
                           "titles and the mean score.")


@st.cache_resource(show_spinner=False)
def candle_feed(_store, store_key: str) -> CandleFeed:
    """One per server and store: the closed candles are shared by every session."""
    return CandleFeed(_store)


@st.cache_data(ttl=30, show_spinner=False)
def _counted(_store, store_key: str, symbol: str, interval: str) -> tuple[int, int | None]:
    """The series' bar count and its newest ts then: a scan, at most every 30 s."""
    span = _store.bar_time_range(symbol, interval)
    return _store.count_bars(symbol, interval), (span[1] if span else None)


def stored_count(symbol: str, interval: str) -> int:
    """Exact for a growing series on every refresh: the last full count plus the bars
    stored after its newest ts (a short index range). Bars backfilled before that ts show
    up at the next full count."""
    count, newest = _counted(store, store.describe(), symbol, interval)
    if newest is None:
        return count
    return count + len(store.query_bars(symbol, interval, start_ms=newest + 1))


#: While the store is empty, the check for the first bars runs this often (it is one count).
WAITING_REFRESH_S = 0.25


@st.fragment(run_every=LIVE_REFRESH_S if symbols else WAITING_REFRESH_S)
def live_panel() -> None:
    if not symbols:
        count = store.count_bars()
        if count:
            st.rerun()  # data arrived: rebuild the pickers
        # The chart's empty frame, saying so: the browser loads plotly.js now, not after.
        st.plotly_chart(waiting_candlestick("Waiting for the first bar…"), width="stretch",
                        key="lm_chart")
        return
    feed = candle_feed(store, store.describe())
    # One computation per server per view and store version, shared by every session
    # (dashboard/shared_views.py); the session only re-emits what was built.
    view = (symbol, interval, candle, whole, n_candles, tuple(ma_windows), ma_kind, show_pred,
            show_news)
    late = late_browser_keeps("lm", LIVE_REFRESH_S)
    # The cheap "anything new?" check: newest bar (and prediction) ts through the indexes,
    # asked once for all the sessions refreshing within the same 0.1 s.
    marker = shared_views().recent(
        ("live", store.describe(), symbol, interval, show_pred),
        lambda: (*feed.marker(symbol, interval),  # its newest ts and revision (corrections)
                 latest_prediction_ts(symbol, interval) if show_pred else None))
    built = []
    # The figure's colours follow the browser's theme: one build per theme.
    drawn = shared_views().get(("live", store.describe(), current_theme(), *view), marker,
                                lambda: built.append(1) or build_view(feed, view, marker))
    if built:
        st.session_state["lm_builds"] = st.session_state.get("lm_builds", 0) + 1
    if drawn is None:
        st.info(f"No {interval} bars stored for {md_plain(symbol)} yet.")
        return
    st.session_state["lm_drawn"] = drawn
    held = st.session_state.get("lm_figure")  # (view, figure) the browser was last sent
    if late and held and held[0] == view:
        figure = held[1]  # a late (starved) browser finishes drawing the chart it has
    else:
        figure = drawn["figure"]
        if not held or held[1] is not figure:
            note_shown("lm")
        st.session_state["lm_figure"] = (view, figure)
    _show(drawn, figure)


def build_view(feed: CandleFeed, view: tuple, marker: tuple) -> dict | None:
    """KPIs, figure and caption of the current view (None: no bars for it yet)."""
    warm = ma_warmup(ma_windows, ma_kind)  # the model features need this many leading bars
    if whole:
        candles, bucket = feed.whole_history(symbol, interval, step)
        shown = len(candles)
    else:
        bucket = INTERVALS[candle]
        candles = feed.latest(symbol, interval, bucket, n_candles + warm)
        shown = n_candles
    if candles.empty:
        return None
    last, prev = candles.iloc[-1], candles.iloc[-2] if len(candles) > 1 else candles.iloc[-1]
    change = last["close"] - prev["close"]
    size = _fmt_bucket(bucket) if whole else candle
    drawn = {"view": view, "marker": marker, "caption": None, "kpis": [
        ("Last close", fmt_sig(last["close"], 6),
         f"{fmt_sig(change, 3)} ({fmt_pct_change(change / prev['close'])})", None),
        (f"Volume (last {size})", fmt_num(last["volume"], 0), None, None),
        ("Bars stored", f"{stored_count(symbol, interval):,}", None,
         f"{interval} bars of {md_plain(symbol)} in the store (all series: the Pipeline page)."),
        ("Last bar (UTC)", ts_to_datetime(last["ts"]).strftime(
            "%Y-%m-%d" if bucket >= INTERVALS["1d"] else "%b %d, %H:%M"), None,
         f"Bar start {fmt_ts(last['ts'])}, epoch ms {int(last['ts'])}"),
    ]}
    preds = None
    if show_pred:  # the last prediction per candle: the predicted close of each candle
        preds = per_candle_predictions(latest_predictions(
            store, symbol, interval, start_ms=int(candles["ts"].iloc[0])), bucket)
    news = news_markers(store, symbol, candles, bucket) if show_news else None
    # MAs are warmed up on the extra leading candles, then only the last n are shown.
    x_range = ([int(candles["ts"].iloc[-shown]), int(candles["ts"].iloc[-1]) + bucket]
               if len(candles) > shown > 0 else None)
    # Serialised once here for every session drawing it (dashboard/shared_views.py).
    drawn["figure"] = share_figure(candlestick(
        candles, ma_windows, ma_kind, preds, news=news, title=f"{symbol} · {size} candles",
        period_ms=bucket, x_range=x_range))
    if preds is not None and len(preds):
        drawn["caption"] = prediction_caption(preds.iloc[-1], bucket, step, size, interval)
    return drawn


def _show(drawn: dict, figure) -> None:
    for col, (label, value, delta, help_) in zip(st.columns(4), drawn["kpis"]):
        col.metric(label, value, delta, help=help_)
    st.plotly_chart(figure, width="stretch", key="lm_chart")
    if drawn["caption"]:
        st.caption(drawn["caption"])


def prediction_caption(nxt, bucket: int, step: int, size: str, interval: str) -> str:
    """The latest prediction, named for the candle shown: a 5m chart gets the predicted
    close of a 5m candle (its last 1m bar), not "the next 1-minute close"."""
    value, model = fmt_sig(nxt["predicted_close"], 6), md_plain(nxt["model_id"])
    if bucket == step:
        return (f"Next close predicted for {fmt_ts(nxt['target_ts'])}: **{value}** "
                f"(model {model}).")
    day = bucket >= INTERVALS["1d"]
    start = ts_to_datetime(nxt["ts"]).strftime("%Y-%m-%d" if day else "%Y-%m-%d %H:%M UTC")
    return (f"Predicted close of the {size} candle of {start}: **{value}** — the latest "
            f"{interval} prediction in it, for the bar of {fmt_ts(nxt['target_ts'])} (model "
            f"{model}). Each diamond is the last prediction of its candle.")


def _fmt_bucket(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms // 1000}s"


def latest_prediction_ts(symbol: str, interval: str) -> int | None:
    last = store.query_predictions(symbol=symbol, interval=interval, limit=1)
    return int(last["ts"].iloc[-1]) if len(last) else None


live_panel()
