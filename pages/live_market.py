"""Live market: candles growing in place, volume, moving averages, predicted next close."""
from __future__ import annotations

import streamlit as st

from dashboard.charts import candlestick, ma_warmup
from dashboard.formatting import fmt_num, fmt_sig, fmt_ts, ts_to_datetime
from dashboard.state import store_or_stop
from dashboard.view_models import latest_predictions, news_markers
from pipeline.schema import INTERVALS

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
candle = c3.selectbox("Candle size", list(candle_choices), key="lm_candle",
                      help="Bigger candles are aggregated by the store (first open, max high, "
                           "min low, last close, summed volume).")
ma_windows = c4.multiselect("Moving averages", [5, 10, 20, 50, 100], default=[10, 50],
                            key="lm_ma")
ma_kind = c5.radio("Type", ["SMA", "EMA"], horizontal=True, key="lm_ma_kind")
n_candles = st.slider("Candles shown", 30, 600, 150, step=10, key="lm_n")
show_pred = st.toggle("Overlay predicted next close (live scorer)", value=True, key="lm_pred")
show_news = st.toggle("Show news markers (hover for title and score)", value=True, key="lm_news")


@st.fragment(run_every=2.0)
def live_panel() -> None:
    if not symbols:
        count = store.count_bars()
        if count:
            st.rerun()  # data arrived: rebuild the pickers
        st.caption("Waiting for the first bar…")
        return
    bucket = INTERVALS[candle]
    warm = ma_warmup(ma_windows, ma_kind)  # the model features need this many leading bars
    candles = store.ohlc_buckets(symbol, interval, bucket, limit=n_candles + warm)
    stored = store.count_bars(symbol, interval)
    if candles.empty:
        st.info(f"No {interval} bars stored for {symbol} yet.")
        return
    last, prev = candles.iloc[-1], candles.iloc[-2] if len(candles) > 1 else candles.iloc[-1]
    change = last["close"] - prev["close"]
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("Last close", fmt_sig(last["close"], 6),
              f"{fmt_sig(change, 3)} ({change / prev['close']:+.2%})")
    k2.metric(f"Volume (last {candle})", fmt_num(last["volume"], 0))
    k3.metric("Bars stored", f"{stored:,}")
    k4.metric("Last bar (UTC)", ts_to_datetime(last["ts"]).strftime(
        "%Y-%m-%d" if bucket >= INTERVALS["1d"] else "%b %d, %H:%M"),
              help=f"Bar start {fmt_ts(last['ts'])}, epoch ms {int(last['ts'])}")

    preds = None
    if show_pred:
        preds = latest_predictions(store, symbol, interval, start_ms=int(candles["ts"].iloc[0]))
    news = news_markers(store, symbol, candles, bucket) if show_news else None
    fig = candlestick(candles, ma_windows, ma_kind, preds, title=f"{symbol} · {candle} candles",
                      news=news)
    # MAs are warmed up on the extra leading candles, then only the last n are shown.
    if len(candles) > n_candles:
        fig.update_xaxes(range=[ts_to_datetime(candles["ts"].iloc[-n_candles]),
                                ts_to_datetime(candles["ts"].iloc[-1] + bucket)])
    st.plotly_chart(fig, width="stretch", key="lm_chart")
    if preds is not None and len(preds):
        nxt = preds.iloc[-1]
        st.caption(f"Next close predicted for {fmt_ts(nxt['ts'])}: **{fmt_sig(nxt['predicted_close'], 6)}** "
                   f"(model {nxt['model_id']}).")


live_panel()
