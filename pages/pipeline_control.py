"""Pipeline: which broker and store, import a CSV, start/stop each worker, live figures."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from dashboard.access import can_change, presenter_button, presenter_only
from dashboard.charts import throughput
from dashboard.flink_panel import flink_section
from dashboard.plain_text import md_plain
from dashboard.runtime import get_runtime
from dashboard.shared_views import share_figure, shared_views
from dashboard.shell import enter_page
from dashboard.state import get_config, store_or_stop
from dashboard.theme import current_theme
from dashboard.view_models import (HELP, catch_up_note, latency_note, source_problem,
                                   throughput_ceiling, worker_row, worker_status)
from dashboard.view_models import data_rules_note
from dashboard.news_widgets import (NEWS_PANEL_OPEN, alphavantage_key,
                                    alphavantage_news_panel, headline_csv_panel,
                                    news_worker_row)
from dashboard.widgets import csv_import_panel, guarded, push_notice, show_notices, worker_header
from pipeline.contracts.config import Secret
from pipeline.workers.runtime import SimulatorSpec
from pipeline.contracts.schema import INTERVALS
from pipeline.contracts.streams import STREAMS
from pipeline.sources.catalog import available_sources, build_api_source
from pipeline.sources.simulator import DEFAULT_SYMBOLS
from pipeline.store import store_origin

enter_page()
store = store_or_stop()
runtime = get_runtime()
config = get_config()
st.title("Pipeline")
st.caption("source → producer → topic `finance-data` → indexer → store → dashboard; "
           "bad messages → `finance-data.dlq` (the dead-letter queue); scorer → predictions. "
           "News: `finance-news` → news indexer → store (bad items → `finance-news.dlq`).")

# ---- where things run ------------------------------------------------------------------------
b1, b2 = st.columns(2)
with b1:
    st.subheader("Broker")
    shown, owner = runtime.visible_broker()
    if config.kafka_bootstrap:
        st.write(f"Configured Kafka at `{config.kafka_bootstrap}` (KAFKA_BOOTSTRAP_SERVERS)")
    elif shown:
        st.write(f"Embedded Tansu at `{shown.bootstrap}` (pid {shown.pid}, {owner}; memory "
                 "only)")
    else:
        st.write("Embedded Tansu broker — not started yet (it starts with the first worker).")
with b2:
    st.subheader("Store")
    st.write(f"{store.describe()} — {store_origin(config)}")

# ---- producer source -------------------------------------------------------------------------
st.subheader("Workers")
show_notices("pipeline")

producing_elsewhere = runtime.attached_worker("producer") is not None
# what the Producer source panel was drawn for; the worker panel reruns the page when it changes
st.session_state["pc_producer_busy"] = runtime.is_running("producer") or producing_elsewhere
start_producer = None
for _ in presenter_only("starting, stopping and importing", lambda: st.expander(
        "Producer source", expanded=not (runtime.is_running("producer") or producing_elsewhere))):
    session_keys = st.session_state.setdefault("api_keys", {})
    choices = available_sources(config, session_keys)
    labels = {c.key: c.label + ("" if c.enabled else " — needs a key") for c in choices}
    kind = st.radio("Source", [c.key for c in choices], format_func=labels.get,
                    horizontal=True, key="pc_source")
    chosen = next(c for c in choices if c.key == kind)
    start_producer = None
    if kind == "csv":
        make_csv = csv_import_panel(config.data_dir)
        if make_csv is not None:
            def start_producer():
                runtime.start_indexer()  # imported bars reach the store through the indexer
                return runtime.start_source(make_csv(), live=make_csv.live)

            what = md_plain(make_csv.summary.split(';')[1].strip())  # symbols from the file
            # one producer at a time, whether it runs in this server or in another process
            # (the demo pipeline's child process, a `python -m pipeline produce`)
            producing = runtime.is_running("producer") or producing_elsewhere
            if st.button(f"Import {what}", type="primary",
                         key="pc_csv_import", disabled=producing,
                         help="Stop the running producer first" if producing
                         else "Sends the bars through the producer and indexer into the store."):
                with st.spinner("Starting the import…"):
                    if guarded(start_producer, "CSV import", "pipeline"):
                        push_notice("success", f"Importing: {make_csv.summary}. The producer "
                                    "row below counts the bars; the Live market and Data pages "
                                    "show them as they are stored.", "pipeline")
                st.rerun()
            if producing:
                st.caption("One producer at a time: stop the running producer below, then "
                           "import.")
    else:
        s1, s2, s3 = st.columns(3)
        default_symbols = ",".join(DEFAULT_SYMBOLS) if kind == "simulator" else ""
        sym_text = s1.text_input("Symbols (comma-separated)", default_symbols,
                                 key=f"pc_symbols_{kind}")
        src_interval = s2.selectbox("Interval", list(INTERVALS), key="pc_interval")
        symbols = [s.strip() for s in sym_text.split(",") if s.strip()]
        if kind == "simulator":
            speed = s3.number_input("Speed (× real time)", 1.0, 100_000.0, 60.0, key="pc_speed",
                                    help="60 = one 1m bar per second per symbol")
            w1, w2 = st.columns(2)
            warmup = w1.number_input("Warm-up bars (instant)", 0, 100_000, 0, step=500,
                                     key="pc_warmup")
            seed = w2.number_input("Seed", 0, 1_000_000, 7, key="pc_seed")
            n1, n2 = st.columns(2)
            news_rate = n1.number_input(
                "News items per bar (simulated news)", 0.0, 1.0, 0.1, step=0.05,
                key="pc_news_rate", help="Chance that a symbol gets a news item during each "
                "bar, published to finance-news; 0 = no simulated news.")
            news_impact = n2.number_input(
                "News information (impact)", 0.0, 10.0, 0.0, step=0.5, key="pc_news_impact",
                help="0 = news is noise; 1.5 = a clearly informative feed.")
            st.caption("**Information** is how much a news item moves the *next* bar: its "
                       "return gets impact × one typical bar move × the item's score × "
                       "relevance. At 0 the news says nothing about prices, and the honest "
                       "Model lab result is no skill from the sentiment features; at 1.5 a "
                       "linear model gains a few percent of skill from them.")
            spec = SimulatorSpec(symbols=tuple(symbols), interval=src_interval,
                                 speed=float(speed), warmup_bars=int(warmup), seed=int(seed),
                                 news_rate=float(news_rate), news_impact=float(news_impact))

            def start_producer():
                if not symbols:  # checked first: the simulator also starts its news workers
                    raise ValueError("type at least one symbol in the Symbols field")
                return runtime.start_simulator(spec)
        else:
            if not chosen.enabled:
                st.info(f"{chosen.label} is disabled: {chosen.hint}.")
            typed = st.text_input("API key for this session only (not stored)", type="password",
                                  key=f"pc_key_{kind}")
            if typed:
                session_keys[kind] = Secret(typed)
            live = st.checkbox("Keep polling (live)", value=True, key=f"pc_live_{kind}")
            days = st.number_input("Backfill days (Polygon)", 1, 3650, 5, key="pc_days")

            def start_producer():
                if not symbols:
                    raise ValueError("type at least one symbol in the Symbols field")
                source = build_api_source(kind, config, symbols, src_interval, live=live,
                                          api_key=session_keys.get(kind), days=int(days))
                return runtime.start_source(source, live=live)

WORKERS = [
    ("producer", "Producer", start_producer),
    ("indexer", "Indexer", runtime.start_indexer),
    ("scorer", "Scorer", runtime.start_scorer),
]


@st.fragment(run_every=2.0)
def worker_panel() -> None:
    """Headers, buttons and figures refresh together, in every tab, every 2 s."""
    local = runtime.local_stats()
    attached = runtime.attached_stats()
    busy = (runtime.is_running("producer")
            or runtime.attached_worker("producer", attached) is not None)
    if busy != st.session_state.get("pc_producer_busy", busy):
        st.rerun(scope="app")  # a producer started or stopped (here or elsewhere): redraw its panel
    cols = st.columns(len(WORKERS))
    for col, (name, label, start) in zip(cols, WORKERS):
        with col:
            running = runtime.is_running(name)
            remote = None if running else runtime.attached_worker(name, attached)
            if remote is not None:  # runs in another process: say where, offer to ask it to stop
                remote_worker(label, remote)
                continue
            worker_header(label, local.get(name), running)
            problem = (source_problem(producer_source_stats(),
                                      worker_status(local.get(name), running)[0])
                       if name == "producer" and running else None)
            if problem:  # some polls failed, yet it is not stalled: say so under the header
                produced = (local["producer"].get("counters") or {}).get("produced")
                (st.caption if produced else st.warning)(md_plain(problem))
            if running:
                if presenter_button(f"Stop {label.lower()}", key=f"stop_{name}"):
                    with st.spinner(f"Stopping the {label.lower()}…"):
                        runtime.stop_worker(name)
                    st.rerun()
            elif start is None:
                st.caption("Choose a file in Producer source above to import it."
                           if name == "producer" and can_change() else "")
            elif presenter_button(f"Start {label.lower()}", key=f"start_{name}",
                                  type="primary"):
                with st.spinner(f"Starting the {label.lower()}…"):
                    guarded(start, label.lower(), "pipeline")
                st.rerun(scope="app")
    live_figures(local, attached)


def remote_worker(label: str, snap: dict) -> None:
    """A worker of another process: its state, where it runs, and a Stop that asks it to."""
    worker_header(label, snap, True)
    proc = runtime.pipeline_process
    if proc is not None and proc.pid == snap.get("pid"):  # this app's own demo pipeline
        st.caption(f"Runs in this app's pipeline process {snap.get('pid')} (a child of the "
                   "server, stopped with it).")
    else:
        st.caption(f"Runs in process {snap.get('pid')} on "
                   f"{md_plain(snap.get('host') or 'this host')} (`python -m pipeline`), "
                   "not in this app.")
    if runtime.stop_requested(snap):
        st.caption("Stop requested: it stops within a few seconds.")
    elif presenter_button(f"Stop {label.lower()}", key=f"stop_remote_{snap.get('kind')}",
                          help="Asks that process to stop (as Ctrl-C in its terminal would)."):
        runtime.request_stop(snap)
        st.rerun()


def producer_source_stats() -> dict:
    """The running producer's source figures, read live: the producer publishes them only
    with a bar, so a source that fails before its first bar would never show its errors."""
    wt = runtime.workers.get("producer")
    source = getattr(wt.worker, "source", None) if wt else None
    return source.stats() if source is not None else {}


def store_counts() -> tuple[int, int, int, int]:
    """Bars, predictions, news items and symbols stored: counted once per server every 2 s
    (full counts: one per refresh per open tab was most of an idle Pipeline tab's cost)."""
    return shared_views().get(("pipeline counts", store.describe()), int(time.time() // 2),
                              lambda: (store.count_bars(), store.count_predictions(),
                                       store.count_news(), len(store.list_symbols())))


def live_figures(local: dict, attached: list[dict]) -> None:
    rows = [worker_row(name, snap, "thread", runtime.is_running(name))
            for name, snap in local.items()]
    rows += [worker_row(snap.get("kind", "?"), snap, f"process {snap.get('pid')}")
             for snap in attached]
    if not rows:
        st.info("No worker has run yet in this app, and no worker process is attached. "
                + ("Start them above, or run `python -m pipeline produce|index|score` in a "
                   "terminal." if can_change() else
                   "The presenter starts them (this is a read-only view)."))
    else:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            "lag": st.column_config.TextColumn("lag", help=HELP["lag"]),
            "uptime": st.column_config.TextColumn(
                "uptime", width="medium", help="Running: time since it started. Stopped: "
                "when it stopped. Counts of a restarted worker: this run (total of its runs)."),
            "rejected (DLQ)": st.column_config.TextColumn("rejected (DLQ)", help=HELP["dlq"]),
            "last error": st.column_config.TextColumn("last error", width="large")})
    k1, k2, k3, k4 = st.columns(4)
    counts = store_counts()
    k1.metric("Bars in store", f"{counts[0]:,}")
    k2.metric("Predictions in store", f"{counts[1]:,}")
    k3.metric("News items in store", f"{counts[2]:,}", help=HELP["news"])
    k4.metric("Symbols", counts[3])
    hist = {name: snap.get("history", []) for name, snap in local.items()}
    if any(hist.values()):
        # One figure per server every 2 s (the workers' figures are the server's), per theme.
        figure = shared_views().get(
            ("pipeline throughput", store.describe(), current_theme()), int(time.time() // 2),
            lambda: share_figure(throughput(hist, throughput_ceiling(hist))))
        st.plotly_chart(figure, width="stretch", key="pc_tp")
    # This app's scorer, else the one attached by heartbeat (a `python -m pipeline score`).
    scorer = ((local.get("scorer") if runtime.is_running("scorer") else None)
              or runtime.attached_worker("scorer", attached) or local.get("scorer") or {})
    latency = scorer.get("gauges", {}).get("latency_ms")
    if latency:
        st.caption("Scorer latency, bar produced → prediction stored")
        l1, l2, l3 = st.columns(3)
        l1.metric("p50", f"{latency.get('p50', 0):.0f} ms", help=latency_note(latency))
        l2.metric("p95", f"{latency.get('p95', 0):.0f} ms")
        l3.metric("p99", f"{latency.get('p99', 0):.0f} ms")
    if catch_up := (scorer.get("counters") or {}).get("catch_up"):
        st.caption(catch_up_note(catch_up))
    if rules := data_rules_note((local.get("indexer") or {}).get("counters")):
        st.caption(rules)
    for row in STREAMS:  # each stream's indexer and its dead-letter topic
        rejects = (local.get(row.indexer) or {}).get("recent_rejects") or []
        if rejects:
            with st.expander(f"Recent rejects sent to {row.dlq_topic} ({len(rejects)})"):
                st.dataframe(pd.DataFrame(rejects), hide_index=True, width="stretch")


worker_panel()

# ---- news ----------------------------------------------------------------------------------------
st.subheader("News")
for _ in presenter_only("starting news feeds and imports", lambda: st.expander(
        "News sources", expanded=st.session_state.get(NEWS_PANEL_OPEN, False))):
    av_tab, csv_tab = st.tabs(["Alpha Vantage news", "Headline CSV"])
    with av_tab:
        alphavantage_news_panel(runtime, config, st.session_state.setdefault("api_keys", {}))
    with csv_tab:
        headline_csv_panel(runtime, config.data_dir)


@st.fragment(run_every=2.0)
def news_panel() -> None:
    key, _ = alphavantage_key(config, st.session_state.get("api_keys", {}))
    news_worker_row(runtime, runtime.local_stats(), av_ready=key is not None)


news_panel()

# ---- stream engine -------------------------------------------------------------------------------
flink_section(runtime, config)
