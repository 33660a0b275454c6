"""One pipeline runtime per Streamlit server process, shared by every session and tab.

``st.cache_resource`` makes the runtime a per-process singleton (keyed by the configuration's
targets), so reruns, pages and browser tabs reuse the same workers instead of starting copies.
Workers running as separate processes (the demo pipeline's child process, or ``python -m
pipeline …``) are shown through their store heartbeats.
"""
from __future__ import annotations

import threading
import time
import weakref

import streamlit as st

from dashboard.state import get_config, get_store
from pipeline.workers.broker import BrokerUnavailable
from pipeline.workers.runtime import DEFAULT_DEMO, Runtime

# Sessions run in their own threads: two first loads at once (the root in one tab, a deep link
# in another) must not both pass the "not done yet" check.
_AUTOSTART_LOCK = threading.Lock()
STARTING_PROCESS = ("Starting the demo pipeline: embedded broker, market simulator, indexer and "
                    "live scorer in their own process")


@st.cache_resource(show_spinner=False)
def _runtime_for(key: tuple, kafka: str | None, _config) -> Runtime:
    return Runtime(_config, store=get_store(_config))


def get_runtime() -> Runtime:
    config = get_config()
    return _runtime_for(config.store_key(), config.kafka_bootstrap, config)


def autostart_enabled() -> bool:
    """``KAPPALAB_AUTOSTART`` from the one config loader (environment, then secrets.toml)."""
    return get_config().autostart


def autostart(rt: Runtime) -> str | None:
    """On the first load of this server: broker, indexer, the simulator feed and the scorer.

    Runs once per runtime (not per session). Skipped when workers of another process are
    already feeding this store (attach mode). With ``KAPPALAB_PIPELINE_MODE=process`` (the
    default) they run in one supervised child process (pipeline/workers/demo_process.py,
    which makes that check itself; maybe started already by dashboard/early_start.py) and
    this returns at once; with ``threads``, as threads of this server, started here. Returns
    an error sentence, or None.
    """
    if not autostart_enabled():
        return None
    with _AUTOSTART_LOCK:
        if rt.autostart_done.is_set():
            return None
        rt.autostart_done.set()
    if rt.config.pipeline_mode == "process":
        # Off the UI's interpreter: the pages see its workers by their heartbeats. Maybe
        # started already by app.py (dashboard/early_start.py); the child itself stands down
        # when workers of another process feed the store (attach mode).
        rt.start_pipeline_process()
        return None
    if rt.attached_stats():
        return None
    try:
        rt.ensure_broker()
        rt.start_indexer()
        rt.start_simulator(DEFAULT_DEMO)
        if _scorer_available():
            rt.start_scorer()
    except BrokerUnavailable as exc:
        return str(exc)
    return None


def pipeline_process_note(rt: Runtime) -> tuple[str, str] | None:
    """(level, sentence) about the demo pipeline's child process for the sidebar, or None
    when this app started none."""
    proc = rt.pipeline_process
    if proc is None or proc.stood_down:  # none, or other workers feed the store (attach mode)
        return None
    if not proc.alive():
        return "error", (f"The demo pipeline process stopped: {proc.last_error}"
                         if proc.last_error else "The demo pipeline process is stopping.")
    kinds = sorted({str(b.get("kind")) for b in _shared_attached(rt) if b.get("pid") == proc.pid})
    if not kinds:
        return "caption", f"{STARTING_PROCESS} (process {proc.pid})…"
    return "caption", f"**Pipeline:** process {proc.pid} ({', '.join(kinds)})"


def _shared_attached(rt: Runtime, every_s: float = 2.0) -> list[dict]:
    """``rt.attached_stats()``, read at most every ``every_s`` for all sessions together (the
    sidebar of every open page asks for it every few seconds)."""
    now = time.monotonic()
    with _ATTACHED_LOCK:
        cached = _ATTACHED.get(rt)
        if cached is None or now - cached[0] >= every_s:
            cached = _ATTACHED[rt] = (now, rt.attached_stats())
    return cached[1]


_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ATTACHED_LOCK = threading.Lock()


def _scorer_available() -> bool:
    try:
        import pipeline.workers.scorer  # noqa: F401
    except ImportError:
        return False
    return True
