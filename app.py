"""KappaLab: real-time machine learning on market data, over a Kappa pipeline.

    streamlit run app.py

With no configuration this starts an embedded Kafka-compatible broker, a market simulator, the
indexer into an embedded SQLite store (and the live scorer), once per server process.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard.runtime import autostart, get_runtime
from dashboard.state import get_config, store_or_stop

# A local file: a material-icon favicon is fetched from a font CDN, which fails offline.
FAVICON = Path(__file__).resolve().parent / "dashboard" / "assets" / "favicon.png"
st.set_page_config(page_title="KappaLab", page_icon=str(FAVICON), layout="wide")

PAGES = [
    st.Page("pages/live_market.py", title="Live market", icon=":material/candlestick_chart:", default=True),
    st.Page("pages/pipeline_control.py", title="Pipeline", icon=":material/account_tree:"),
    st.Page("pages/model_lab.py", title="Model lab", icon=":material/science:"),
    st.Page("pages/predictions.py", title="Predictions", icon=":material/online_prediction:"),
    st.Page("pages/data_browser.py", title="Data", icon=":material/table_view:"),
]

store_or_stop()
runtime = get_runtime()
problem = autostart(runtime)
if problem:
    st.session_state["autostart_error"] = problem

with st.sidebar:
    config = get_config()
    st.caption(f"**Store:** {runtime.store.describe()}")
    info = runtime.broker_info
    st.caption(f"**Broker:** {info.describe() if info else ('Kafka at ' + config.kafka_bootstrap if config.kafka_bootstrap else 'embedded (not started)')}")
    if st.session_state.get("autostart_error"):
        st.error(st.session_state["autostart_error"])

st.navigation(PAGES).run()
