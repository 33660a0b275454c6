"""The first minute (docs/CLASSROOM.md): when the demo pipeline's child process starts, and
plotly.js loaded in the browser before the first chart.

On a new data dir (no store file yet) app.py starts the pipeline's process with its first
lines, before the shell imports the store, pandas and Plotly, so the embedded broker, the
consumer-group joins and the warm-up begin that much earlier: nothing can be drawn before
they are done. On a restart (stored bars) the first chart needs no pipeline, and on two cores
the child's start (imports, broker, models) would only slow the server and the browser down:
the shell starts it once the session's first run has sent the page (:func:`defer_pipeline`).

It starts only what :func:`dashboard.runtime.autostart` would start itself: autostart on, the
pipeline in a process (``KAPPALAB_PIPELINE_MODE=process``, the default), the embedded SQLite
store (an Elasticsearch store is checked by the shell first), and no refusal (network mode
without a presenter password). The runtime adopts the process (:meth:`PipelineProcess.once`);
the child stands down by itself when workers of another process already feed the store.
"""
from __future__ import annotations

from dashboard.access import startup_refusal
from dashboard.state import get_config


def start_pipeline_early() -> None:
    """Start the demo pipeline's child process now if this server will run it and the data
    dir is new (once)."""
    config = get_config()
    if (not config.autostart or config.pipeline_mode != "process" or config.es_url
            or config.sqlite_path.exists() or startup_refusal(config)):
        return
    from pipeline.workers.demo_process import PipelineProcess

    PipelineProcess.once(config.data_dir)


def defer_pipeline(rt) -> bool:
    """True when the shell should start the demo pipeline's process only after this run has
    sent the page: process mode, not started yet, and bars already stored (a restart)."""
    if (rt.config.pipeline_mode != "process" or rt.autostart_done.is_set()
            or rt.pipeline_process is not None):
        return False
    try:
        return bool(rt.store.list_symbols())
    except Exception:  # the store's own error is the page's to show; start as usual
        return False


#: The hidden chart of :func:`preload_plotly` (its layout's ``meta``; benchmarks skip it).
PRELOAD_META = "kappalab-plotly-preload"
_PRELOADED = "_kl_plotly_preloaded"


def preload_plotly() -> None:
    """On a session's first run, a hidden, empty Plotly chart first of all elements, so the
    browser loads and starts plotly.js (a second or more on the 2-core machine) while the
    server still runs the page, instead of after the page's first chart arrives
    (docs/CLASSROOM.md, "The first minute"). Off screen, no trace, no title; only under a real
    server (a bare run or AppTest has no browser)."""
    import streamlit as st
    from streamlit.runtime import Runtime

    if st.session_state.get(_PRELOADED) or not (
            Runtime.exists() and type(Runtime.instance()) is Runtime):
        return
    st.session_state[_PRELOADED] = True
    import plotly.graph_objects as go

    st.html("<style>.st-key-kl_plotly_preload{position:absolute;left:-10000px;top:0;"
            "width:320px;height:80px;overflow:hidden}</style>")
    st.container(key="kl_plotly_preload").plotly_chart(
        go.Figure(dict(data=[], layout=dict(height=80, width=320, meta=PRELOAD_META)),
                  _validate=False), width="content", config={"staticPlot": True})
