"""Data: browse and filter stored bars and predictions; download them as CSV."""
from __future__ import annotations

from datetime import datetime, time, timezone

import streamlit as st

from dashboard.formatting import fmt_ts, sig_styler, ts_to_datetime, with_time_column
from dashboard.shell import enter_page
from dashboard.state import store_or_stop
from dashboard.widgets import stored_date_range, wait_for_data
from pipeline.contracts.csv_export import csv_bytes, export_file_name

TS_COLUMN = {"ts": st.column_config.NumberColumn("ts (epoch ms)", format="%d")}

PRICE_DIGITS = 8

enter_page()
store = store_or_stop()
st.title("Data")

symbols = store.list_symbols()
if not symbols:
    wait_for_data(store, "The store holds no bars yet. Start the pipeline on the Pipeline page "
                  "or run `python -m pipeline backfill --bars 5000`; this page fills in by "
                  "itself once bars are stored.")
    st.stop()

c1, c2, c3 = st.columns([1, 1, 1])
symbol = c1.selectbox("Symbol", symbols, key="db_symbol")
interval = c2.selectbox("Interval", store.list_intervals(symbol) or ["1m"], key="db_interval")
limit = c3.number_input("Rows (latest)", 10, 200_000, 1000, step=100, key="db_limit")
span = store.bar_time_range(symbol, interval)
start_ms = end_ms = None
if span:
    first, last = ts_to_datetime(span[0]).date(), ts_to_datetime(span[1]).date()
    st.caption(f"{store.count_bars(symbol, interval):,} bars stored from {fmt_ts(span[0])} "
               f"to {fmt_ts(span[1])}")
    dates = stored_date_range(st, "Date range (UTC)", first, last, key="db_dates")
    if isinstance(dates, tuple) and len(dates) == 2:
        start_ms = int(datetime.combine(dates[0], time.min, tzinfo=timezone.utc).timestamp() * 1000)
        end_ms = int(datetime.combine(dates[1], time.max, tzinfo=timezone.utc).timestamp() * 1000) + 1

tab_bars, tab_preds = st.tabs(["Bars", "Predictions"])
with tab_bars:
    bars = with_time_column(store.query_bars(symbol, interval, start_ms, end_ms,
                                             limit=int(limit)))
    st.dataframe(bars, hide_index=True, width="stretch", column_config=TS_COLUMN)
    st.caption("ts is the bar start in epoch milliseconds (UTC); time (UTC) is the same instant.")
    st.download_button("Download bars as CSV", csv_bytes(bars),
                       file_name=export_file_name(symbol, interval, "bars"), mime="text/csv")
with tab_preds:
    preds = store.query_predictions(symbol=symbol, interval=interval, start_ms=start_ms,
                                    end_ms=end_ms, limit=int(limit))
    if preds.empty:
        st.info("No predictions stored for this series yet (the live scorer writes them).")
    else:
        preds = with_time_column(preds)
        # Prices keep their decimals (4 significant figures would show 181.8163 as 181.8);
        # returns stay in plain notation, never 8.2e-06.
        st.dataframe(sig_styler(preds, digits=PRICE_DIGITS), hide_index=True, width="stretch",
                     column_config=TS_COLUMN)
        st.download_button("Download predictions as CSV", csv_bytes(preds),
                           file_name=export_file_name(symbol, interval, "predictions"),
                           mime="text/csv")
