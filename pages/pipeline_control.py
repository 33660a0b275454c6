"""Pipeline: which broker and store, start/stop each worker, live figures per worker."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.charts import throughput
from dashboard.formatting import fmt_duration, fmt_num, fmt_ts
from dashboard.runtime import get_runtime
from dashboard.state import get_config, store_or_stop
from pipeline.broker import BrokerUnavailable
from pipeline.config import Secret
from pipeline.runtime import SimulatorSpec
from pipeline.sources.base import SourceError
from pipeline.sources.catalog import available_sources, build_api_source
from pipeline.schema import INTERVALS

store = store_or_stop()
runtime = get_runtime()
config = get_config()
st.title("Pipeline")
st.caption("source → producer → topic `finance-data` → indexer → store → dashboard; "
           "bad messages → `finance-data.dlq`; scorer → predictions.")

# ---- where things run ------------------------------------------------------------------------
b1, b2 = st.columns(2)
with b1:
    st.subheader("Broker")
    if config.kafka_bootstrap:
        st.write(f"Configured Kafka at `{config.kafka_bootstrap}` (KAFKA_BOOTSTRAP_SERVERS)")
    elif runtime.broker_info:
        owner = "started by this app" if runtime.owns_broker else "reused, started by another process"
        st.write(f"Embedded Tansu at `{runtime.broker_info.bootstrap}` "
                 f"(pid {runtime.broker_info.pid}, {owner}; memory only)")
    else:
        st.write("Embedded Tansu broker — not started yet (it starts with the first worker).")
with b2:
    st.subheader("Store")
    kind = "configured (ELASTICSEARCH_URL)" if config.es_url else "embedded"
    st.write(f"{store.describe()} — {kind}")

# ---- controls --------------------------------------------------------------------------------
st.subheader("Workers")


def guarded(action, *args, **kwargs) -> None:
    try:
        action(*args, **kwargs)
    except BrokerUnavailable as exc:
        st.error(str(exc))
    except SourceError as exc:
        st.error(str(exc))
    except ImportError as exc:
        st.error(f"This worker is not available in this installation ({exc}).")


with st.expander("Producer source", expanded=not runtime.is_running("producer")):
    session_keys = st.session_state.setdefault("api_keys", {})
    choices = available_sources(config, session_keys)
    labels = {c.key: c.label + ("" if c.enabled else " — needs a key") for c in choices}
    kind = st.radio("Source", [c.key for c in choices], format_func=labels.get,
                    horizontal=True, key="pc_source")
    chosen = next(c for c in choices if c.key == kind)
    s1, s2, s3 = st.columns(3)
    default_symbols = "ACME,GLOBX,INITECH,UMBRL,WAYNE" if kind == "simulator" else ""
    sym_text = s1.text_input("Symbols (comma-separated)", default_symbols, key=f"pc_symbols_{kind}")
    src_interval = s2.selectbox("Interval", list(INTERVALS), key="pc_interval")
    symbols = [s.strip() for s in sym_text.split(",") if s.strip()]
    start_producer = None
    if kind == "simulator":
        speed = s3.number_input("Speed (× real time)", 1.0, 100_000.0, 60.0, key="pc_speed",
                                help="60 = one 1m bar per second per symbol")
        w1, w2 = st.columns(2)
        warmup = w1.number_input("Warm-up bars (instant)", 0, 100_000, 0, step=500, key="pc_warmup")
        seed = w2.number_input("Seed", 0, 1_000_000, 7, key="pc_seed")
        spec = SimulatorSpec(symbols=tuple(symbols), interval=src_interval, speed=float(speed),
                             warmup_bars=int(warmup), seed=int(seed))
        start_producer = lambda: runtime.start_simulator(spec)  # noqa: E731
    elif kind == "csv":
        path = s3.text_input("CSV file path", key="pc_csv_path",
                             help="Seed template (Date, Time, Open, High, Low, Close, Volume; "
                                  "day-first dates) or a timestamp column + OHLCV.")
        c1, c2 = st.columns(2)
        csv_speed = c1.number_input("Speed (× real time, 0 = as fast as possible)", 0.0,
                                    100_000.0, 0.0, key="pc_csv_speed")
        skip_bad = c2.checkbox("Skip malformed lines", key="pc_csv_skip")

        def start_producer():
            from pipeline.sources.csv_replay import CsvReplaySource

            source = CsvReplaySource(path, symbol=symbols[0] if symbols else None,
                                     interval=src_interval, speed=csv_speed or None,
                                     skip_bad=skip_bad)
            return runtime.start_source(source, live=bool(csv_speed))
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
            source = build_api_source(kind, config, symbols, src_interval, live=live,
                                      api_key=session_keys.get(kind), days=int(days))
            return runtime.start_source(source, live=live)

WORKERS = [
    ("producer", "Producer", start_producer),
    ("indexer", "Indexer", runtime.start_indexer),
    ("scorer", "Scorer", runtime.start_scorer),
]
cols = st.columns(len(WORKERS))
for col, (name, label, start) in zip(cols, WORKERS):
    with col:
        running = runtime.is_running(name)
        st.markdown(f"**{label}** — {'● running' if running else '○ stopped'}")
        if running:
            if st.button(f"Stop {label.lower()}", key=f"stop_{name}"):
                with st.spinner(f"Stopping the {label.lower()}…"):
                    runtime.stop_worker(name)
                st.rerun()
        else:
            if st.button(f"Start {label.lower()}", key=f"start_{name}", type="primary"):
                with st.spinner(f"Starting the {label.lower()}…"):
                    guarded(start)
                st.rerun()


@st.fragment(run_every=2.0)
def live_figures() -> None:
    local = runtime.local_stats()
    attached = runtime.attached_stats()
    rows = []
    for name, snap in local.items():
        rows.append(_row(name, snap, "thread"))
    for snap in attached:
        rows.append(_row(snap.get("kind", "?"), snap, f"process {snap.get('pid')}"))
    if not rows:
        st.info("No worker has run yet in this app, and no worker process is attached. "
                "Start them above, or run `python -m pipeline produce|index|score` in a terminal.")
    else:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    k1, k2, k3 = st.columns(3)
    k1.metric("Bars in store", f"{store.count_bars():,}")
    k2.metric("Predictions in store", f"{store.count_predictions():,}")
    k3.metric("Symbols", len(store.list_symbols()))
    hist = {name: snap.get("history", []) for name, snap in local.items()}
    if any(hist.values()):
        st.plotly_chart(throughput(hist), width="stretch", key="pc_tp")
    latency = (local.get("scorer") or {}).get("gauges", {}).get("latency_ms")
    if latency:
        st.caption("Scorer latency, bar produced → prediction stored")
        l1, l2, l3 = st.columns(3)
        l1.metric("p50", f"{latency.get('p50', 0):.0f} ms")
        l2.metric("p95", f"{latency.get('p95', 0):.0f} ms")
        l3.metric("p99", f"{latency.get('p99', 0):.0f} ms")
    rejects = (local.get("indexer") or {}).get("recent_rejects") or []
    if rejects:
        with st.expander(f"Recent rejects sent to the DLQ ({len(rejects)})"):
            st.dataframe(pd.DataFrame(rejects), hide_index=True, width="stretch")


def _row(name: str, snap: dict, where: str) -> dict:
    c, g = snap.get("counters", {}), snap.get("gauges", {})
    row = {
        "worker": name,
        "where": where,
        "state": snap.get("state"),
        "produced": c.get("produced"),
        "consumed": c.get("consumed"),
        "stored": c.get("stored", c.get("predictions")),
        "rejected (DLQ)": c.get("rejected"),
        "rate/s": fmt_num(g.get("rate_per_s", 0), 1),
        "lag": g.get("lag"),
        "uptime": fmt_duration(snap.get("uptime_s")),
        "last bar": fmt_ts(g.get("last_bar_ts")) if g.get("last_bar_ts") else "—",
        "last error": snap.get("last_error") or "",
    }
    # One type per column (Arrow), and "—" rather than "None" for figures a worker lacks.
    return {k: "—" if v is None else f"{v:,}" if isinstance(v, int) else v
            for k, v in row.items()}


live_figures()
