"""The Pipeline page's Flink section: the job's state, counts, lag and watermark, start/stop.

The job is a separate process (``pipeline/flink/launcher.py``) whose files live in the data
directory, so this section also shows a job started from the CLI (``python -m pipeline flink
start``). Without the Flink venv or Java it says, in one sentence, how to install them.
"""
from __future__ import annotations

import time

import streamlit as st

from dashboard.access import presenter_button
from dashboard.plain_text import md_plain
from dashboard.widgets import guarded, worker_header
from pipeline.workers.broker import BrokerUnavailable, find_or_start_broker
from pipeline.flink import FLINK_DLQ_TOPIC, FLINK_INTERVALS, FLINK_TOPIC
from pipeline.flink.launcher import (INSTALL_HINT, FlinkJob, log_identity, missing_parts,
                                     venv_dir)


def flink_section(runtime, config) -> None:
    """The whole section; a fragment refreshes its figures every 3 s."""
    st.subheader("Flink job")
    st.caption(f"A Flink SQL job reads `finance-data` and `finance-news`, rolls the 1m bars up "
               f"to {' and '.join(FLINK_INTERVALS)} candles (event-time windows, late bars "
               f"update theirs), joins each bar with the news before its close, and writes "
               f"`{FLINK_TOPIC}` (indexed like any stream: pick {FLINK_INTERVALS[0]} on the "
               f"Live market page); bad or too-late input → `{FLINK_DLQ_TOPIC}`.")
    missing = missing_parts(venv_dir(config.data_dir))
    if missing:
        st.info(INSTALL_HINT)
        return
    _flink_live(runtime, config)


@st.fragment(run_every=3.0)
def _flink_live(runtime, config) -> None:
    job = FlinkJob(config.data_dir, _bootstrap(runtime, config),
                   client_kwargs=config.kafka_client_kwargs())
    status = _status(job)
    state = status["state"]
    c1, c2 = st.columns([3, 1])
    with c1:
        worker_header("Flink job", {"state": state, "last_error": status.get("reason")},
                      running=state != "stopped")
        if status.get("pid"):
            st.caption(f"pid {status['pid']}" + (f" · job {status['job_id'][:8]}"
                                                 if status.get("job_id") else ""))
        if state == "starting":
            st.caption("The JVM and the SQL planner take about half a minute.")
        elif state == "unresponsive":
            st.caption(md_plain(status.get("reason", "")))
    with c2:
        if state != "stopped":
            if presenter_button("Stop Flink job", key="flink_stop"):
                with st.spinner("Cancelling the job (its last checkpoint is kept)…"):
                    job.stop()
                    runtime.stop_worker("flink_indexer")
                _status_cached.clear()
                st.rerun(scope="app")
        elif presenter_button("Start Flink job", key="flink_start", type="primary"):
            with st.spinner("Starting the Flink job…"):
                def start() -> int:
                    info = runtime.ensure_broker()
                    return FlinkJob(config.data_dir, info.bootstrap,
                                    client_kwargs=config.kafka_client_kwargs()).start(
                                        log_identity(info))

                guarded(start, "Flink job", "pipeline")
                guarded(runtime.start_flink_indexer, "Flink indexer", "pipeline")
            _status_cached.clear()
            st.rerun(scope="app")
    if state != "stopped":
        read = status.get("records_in") or {}
        wrote = status.get("records_out") or {}
        k = st.columns(5)
        k[0].metric("Bars read", f"{read.get('bars', 0):,}")
        k[1].metric("News read", f"{read.get('news', 0):,}")
        k[2].metric("Candle writes", f"{wrote.get('candles', 0):,}",
                    help="Window results written, updates included (a window is written "
                         "again when a bar, late or not, changes it).")
        k[3].metric("Dead letters", f"{wrote.get('dead_letters', 0):,}",
                    help="Invalid bars and news, and bars later than the allowed lateness.")
        lag = status.get("lag")
        k[4].metric("Lag (bars)", "?" if lag is None else f"{lag:,}",
                    help="Bars not yet committed by the job's group (commits happen at each "
                         "checkpoint, every 10 s).")
        mark = status.get("watermark_ms")
        st.caption("Watermark: " + (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(mark / 1000))
                                    if mark else "none yet")
                   + " — windows before it are final; a bar older than it is too late.")


def _bootstrap(runtime, config) -> str | None:
    """The broker the job uses, for its lag: this runtime's, the configured Kafka, or the
    embedded broker of the data dir (the demo's child process runs it). The page never starts
    a broker just to look; Start does."""
    if runtime.broker_info is not None:
        return runtime.broker_info.bootstrap
    if config.kafka_bootstrap:
        return config.kafka_bootstrap
    return _embedded_bootstrap(str(config.data_dir), config)


@st.cache_data(ttl=10, show_spinner=False)
def _embedded_bootstrap(data_dir: str, _config) -> str | None:
    try:
        return find_or_start_broker(_config, start=False)[0].bootstrap
    except BrokerUnavailable:
        return None


@st.cache_data(ttl=2.5, show_spinner=False)
def _status_cached(home: str, bootstrap: str | None, _job: FlinkJob) -> dict:
    return _job.status()


def _status(job: FlinkJob) -> dict:
    return _status_cached(str(job.home), job.bootstrap, job)
