"""The app shell: the navigation, what every run does before a page, and the deep-link guard.

``app.py`` is the only entry point: it calls :func:`run_app`, which checks the store, autostarts
the demo pipeline (once per server), fills the sidebar and hands over to ``st.navigation``.
Every page script starts with :func:`enter_page`.

Why pages need a guard (Streamlit 1.67, ``runtime/pages_manager.py`` and
``runtime/scriptrunner/script_runner.py``): when a ``pages/`` folder sits next to the main
script, ``PagesManager.uses_pages_directory`` is True for the whole server process until some
run calls ``st.navigation``. While it is True the script runner does not execute ``app.py``; it
runs ``_mpa_v1``, which builds the legacy navigation from the file names ("app", "pipeline
control", ...) and runs the requested file. Opening the root runs ``app.py`` as that legacy
main page, its ``st.navigation`` switches the mode off, and all is well. A deep link as the
server's first request runs ``pages/<page>.py`` alone: no store check, no autostart, no
sidebar, legacy navigation. :func:`enter_page` notices that the page runs without the shell,
calls ``st.navigation`` itself (the public way to end the legacy mode, for the whole process)
and reruns; the rerun keeps the page's URL and page hash (both derived from the file name), so
``app.py`` now runs and shows the same page, exactly as if the user had navigated there.
(A bootstrap called by every page would start the demo but leave the legacy file-name
navigation in the sidebar; routing through app.py keeps one place for both.)
"""
from __future__ import annotations

from contextlib import nullcontext
from contextvars import ContextVar
from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from dashboard.access import presenter_sidebar, startup_refusal, stop_if_refused
from dashboard.early_start import defer_pipeline, preload_plotly
from dashboard.plain_text import md_plain
from dashboard.runtime import autostart, autostart_enabled, get_runtime, pipeline_process_note
from dashboard.state import get_config, store_or_stop

APP_DIR = Path(__file__).resolve().parent.parent
APP_SCRIPT = APP_DIR / "app.py"
# A local file: a material-icon favicon is fetched from a font CDN, which fails offline.
FAVICON = APP_DIR / "dashboard" / "assets" / "favicon.png"

#: True while app.py's shell runs the page of this script run (the script thread's context).
_in_shell: ContextVar[bool] = ContextVar("kappalab_in_shell", default=False)
_REROUTED = "_shell_rerouted"
#: how often the sidebar's pipeline line is redrawn (its heartbeat read is shared by sessions)
PIPELINE_NOTE_EVERY_S = 5.0
STARTING = ("Starting the demo pipeline: embedded broker, market simulator, indexer and live "
            "scorer (a few seconds, once per server)…")


def app_pages() -> list[st.Page]:
    """The navigation: titles and icons the sidebar shows, URLs from the file names."""
    return [
        st.Page("pages/live_market.py", title="Live market",
                icon=":material/candlestick_chart:", default=True),
        st.Page("pages/pipeline_control.py", title="Pipeline", icon=":material/account_tree:"),
        st.Page("pages/model_lab.py", title="Model lab", icon=":material/science:"),
        st.Page("pages/predictions.py", title="Predictions",
                icon=":material/online_prediction:"),
        st.Page("pages/data_browser.py", title="Data", icon=":material/table_view:"),
    ]


def run_app() -> None:
    """The body of app.py: bootstrap, sidebar, then the selected page."""
    st.set_page_config(page_title="KappaLab", page_icon=str(FAVICON), layout="wide")
    if startup_refusal():  # network mode without a presenter password: one sentence, nothing
        st.navigation(app_pages(), position="hidden")  # starts, no legacy page list either
        stop_if_refused()
    preload_plotly()  # a session's first run: the browser loads plotly.js meanwhile
    store_or_stop()
    runtime = get_runtime()
    # A restart draws the stored bars first; its pipeline starts after this run (early_start.py).
    deferred = defer_pipeline(runtime)
    # The first load waits for the broker and the workers (seconds): say so, not a blank page.
    starting = autostart_enabled() and not runtime.autostart_done.is_set() and not deferred
    with st.spinner(STARTING) if starting else nullcontext():
        problem = None if deferred else autostart(runtime)
    if problem:
        st.session_state["autostart_error"] = problem

    with st.sidebar:
        config = get_config()
        st.caption(f"**Store:** {runtime.store.describe()}")
        info, owner = runtime.visible_broker()
        if info:
            broker = info.describe() + (f" ({owner})" if owner.startswith("started by an")
                                        else "")
        elif config.kafka_bootstrap:
            broker = f"Kafka at {config.kafka_bootstrap}"
        else:
            broker = "embedded (not started)"
        st.caption(f"**Broker:** {broker}")
        _pipeline_note(runtime)
        if st.session_state.get("autostart_error"):
            st.error(md_plain(st.session_state["autostart_error"]))

    # Less empty space above each page (Streamlit's default is 6rem): on a 1366x768 projector
    # the Live market chart starts above the fold.
    st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.5rem}</style>")
    page = st.navigation(app_pages())
    token = _in_shell.set(True)
    try:
        page.run()
    finally:
        _in_shell.reset(token)
        if deferred:
            autostart(runtime)  # process mode: returns at once (a failure shows in the sidebar)


@st.fragment(run_every=PIPELINE_NOTE_EVERY_S)
def _pipeline_note(runtime) -> None:
    """The sidebar's line about the demo pipeline process, kept current: its workers come up
    one by one after the first run (the scorer last), and the process may die later."""
    note = pipeline_process_note(runtime)
    if note:
        (st.error if note[0] == "error" else st.caption)(note[1])


def enter_page() -> None:
    """First call of every page script: route a page run that bypassed app.py through it.

    When app.py runs the page, and when the page itself is the main script (Streamlit's
    AppTest runs single pages that way), it only applies the presenter gate
    (dashboard/access.py): the refusal of network mode without a password, the sidebar box.
    """
    if _in_shell.get() or not _main_script_is_app():
        stop_if_refused()
        presenter_sidebar()  # network mode: who this session is, the password form
        return
    if st.session_state.get(_REROUTED):
        # Rerouted once already and still outside the shell: never loop; show the page.
        return
    st.session_state[_REROUTED] = True
    st.navigation(app_pages())  # ends Streamlit's pages-folder mode for this server
    st.rerun()


def _main_script_is_app() -> bool:
    ctx = get_script_run_ctx()
    return bool(ctx) and Path(ctx.main_script_path).resolve() == APP_SCRIPT
