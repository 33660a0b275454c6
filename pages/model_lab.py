"""Model lab page: choose data, features, target, split and models; compare them honestly.

Layout and widgets only: the work is in models.lab, the figures in dashboard.lab_charts, the
results blocks in dashboard.lab_widgets.
"""
from __future__ import annotations

from datetime import date, datetime, time as dtime, timedelta, timezone

import pandas as pd
import streamlit as st

from dashboard import lab_charts
from dashboard.access import can_change, presenter_button, presenter_only, read_only_note
from dashboard.lab_widgets import (
    fresh_result_tabs, param_widget, results_header, save_controls, stored_run_block,
)
from dashboard.formatting import sig_styler
from dashboard.plain_text import md_plain
from dashboard.shell import enter_page
from dashboard.state import store_or_stop
from dashboard.widgets import confirm_button, stored_date_range, wait_for_data
from models import lab
from dashboard.lab_seeds import seeds_block
from models.features import (DEFAULT_GROUP, FEATURE_GROUPS, all_features, expand_features,
                             level_features_note)
from models.features.fundamentals import is_fundamentals_feature, load_fundamentals
from models.features.sentiment import is_sentiment_feature, load_news
from models.features import max_lookback
from models.metrics import METRIC_COLUMNS, METRIC_LABELS
from models.splits import RANDOM_SPLIT_WARNING, SPLIT_METHODS
from models.targets import TARGETS
from models.zoo import BASELINE_KEYS, MODEL_KEYS, MODEL_SPECS

MAX_ROWS = 200_000  # hard bound per run on this page (the latest bars are kept)
EMPTY_STATE = ("The store has no bars yet. Start the pipeline on the Pipeline page, or run "
               "`python -m pipeline backfill`; this page fills in by itself once bars are "
               "stored.")
RESULT_KEY = "model_lab_result"

enter_page()
st.title("Model lab")
st.caption("Train models on stored bars and compare them with honest baselines.")

store = store_or_stop()
symbols_all = store.list_symbols()
if not symbols_all:
    wait_for_data(store, EMPTY_STATE)
    st.stop()


@st.cache_data(show_spinner=False, ttl=300, max_entries=8)
def _load(_store, store_id: str, symbols: tuple, interval: str, start_ms: int | None,
          end_ms: int | None, n_stored: int) -> tuple[pd.DataFrame, list[str]]:
    # n_stored is part of the cache key so newly indexed bars show up.
    cfg = lab.LabConfig(symbols=list(symbols), interval=interval, start_ms=start_ms,
                        end_ms=end_ms, max_rows=MAX_ROWS)
    try:
        return lab.load_bars(_store, cfg)
    except lab.NoData:
        return pd.DataFrame(), []


def _day_ms(d: date) -> int:
    return int(datetime.combine(d, dtime(0), tzinfo=timezone.utc).timestamp() * 1000)


# ---- data -------------------------------------------------------------------------------------
st.subheader("Data")
c1, c2, c3 = st.columns([2, 1, 2])
symbols = c1.multiselect("Symbols", symbols_all, default=symbols_all[:1], key="ml_symbols")
# Only intervals stored for every chosen symbol (else for any of them).
per_symbol = [set(store.list_intervals(s)) for s in symbols] or [set(store.list_intervals())]
common = set.intersection(*per_symbol) or set.union(*per_symbol)
intervals = [i for i in store.list_intervals() if i in common] or ["1m"]
interval = c2.selectbox("Interval", intervals, key="ml_interval",
                        help="Intervals stored for the chosen symbols.")
ranges = [store.bar_time_range(s, interval) for s in symbols]
ranges = [r for r in ranges if r]
start_ms = end_ms = None
if ranges:
    first = datetime.fromtimestamp(min(r[0] for r in ranges) / 1000, timezone.utc).date()
    last = datetime.fromtimestamp(max(r[1] for r in ranges) / 1000, timezone.utc).date()
    picked = stored_date_range(c3, "Date range (UTC)", first, last, key="ml_dates")
    if isinstance(picked, (list, tuple)) and len(picked) == 2:
        start_ms, end_ms = _day_ms(picked[0]), _day_ms(picked[1] + timedelta(days=1))
if not symbols:
    st.info("Choose at least one symbol.")
    st.stop()
n_stored = sum(store.count_bars(s, interval) for s in symbols)
bars, load_notes = _load(store, store.describe(), tuple(symbols), interval, start_ms, end_ms,
                         n_stored)
st.caption(f"{len(bars):,} bars selected ({md_plain(', '.join(symbols))}, {interval}); at most "
           f"{MAX_ROWS:,} per run.")
for note in load_notes:
    st.caption(md_plain(note))
if bars.empty:
    st.info(f"No {interval} bars of {md_plain(', '.join(symbols))} in this date range: widen "
            "the Date range or choose other Symbols.")
    st.stop()

# ---- features and target ----------------------------------------------------------------------
st.subheader("Features and target")
c1, c2 = st.columns(2)
groups = c1.multiselect("Feature groups", [DEFAULT_GROUP, *FEATURE_GROUPS], default=[DEFAULT_GROUP],
                        key="ml_groups")
extra = c1.multiselect("Extra features", all_features(), default=[], key="ml_extra_features")
features = expand_features([*groups, *extra])
if features:
    c1.caption(f"{len(features)} features; warm-up {max_lookback(features)} bars: "
               + ", ".join(features))
    if any(map(is_sentiment_feature, features)):
        n_news = sum(store.count_news(s) for s in symbols)
        c1.caption(f"Sentiment features join news as of each bar's close (only items published "
                   f"before it); {n_news:,} news items stored for these symbols"
                   + ("." if n_news else ": without news they are constant and left out."))
    if any(map(is_fundamentals_feature, features)):
        n_snaps = sum(store.count_fundamentals(s) for s in symbols)
        c1.caption(f"Fundamentals features take the latest snapshot fetched before each bar's "
                   f"close; bars before a symbol's first snapshot have none and are left out. "
                   f"{n_snaps:,} snapshots stored for these symbols.")
    if level_note := level_features_note(features):
        c1.caption(level_note)
    constant_here = [f for f in features if f.startswith("minute_") and interval == "1d"]
    if constant_here:
        c1.caption(f"On {interval} bars {', '.join(constant_here)} never change: the run leaves "
                   "them out and says so.")
target = c2.selectbox("Target", list(TARGETS), format_func=lambda k: TARGETS[k].label,
                      index=list(TARGETS).index("next_return"), key="ml_target")
c2.caption(TARGETS[target].description)
horizon = 1
if TARGETS[target].uses_horizon:
    horizon = int(c2.number_input("Horizon (bars ahead)", 1, 500, 5, key="ml_horizon"))

# ---- split --------------------------------------------------------------------------------
st.subheader("Split")
c1, c2, c3 = st.columns([2, 1, 1])
split = c1.radio("Method", list(SPLIT_METHODS), format_func=SPLIT_METHODS.get, key="ml_split")
test_fraction, n_folds, gap = 0.2, 5, 0
if split == "walk_forward":
    n_folds = int(c2.number_input("Folds", 2, 20, 5, key="ml_folds"))
else:
    test_fraction = c2.slider("Test share", 0.05, 0.5, 0.2, 0.05, key="ml_test_fraction")
if split != "random":
    gap = int(c3.number_input("Gap (bars)", 0, 1000, 0, key="ml_gap",
                              help="Bars dropped between training and test data."))
if split == "random":
    st.warning(RANDOM_SPLIT_WARNING)

# ---- models -------------------------------------------------------------------------------
st.subheader("Models")
chosen = st.multiselect("Models", MODEL_KEYS, default=MODEL_KEYS,
                        format_func=lambda k: MODEL_SPECS[k].name, key="ml_models")
st.caption("Baselines always run: " + ", ".join(MODEL_SPECS[k].name for k in BASELINE_KEYS) + ".")
models: list[tuple[str, dict]] = []
for key in [*BASELINE_KEYS, *chosen]:
    spec = MODEL_SPECS[key]
    params = {}
    if spec.widgets:
        with st.expander(f"{spec.name} settings"):
            st.caption(spec.description)
            for w in spec.widgets:
                params[w.name] = param_widget(key, w, spec.defaults[w.name])
    models.append((key, params))
c1, c2, c3 = st.columns(3)
search = c1.checkbox("Randomized search (inside the training range)", key="ml_search")
budget = int(c2.number_input("Search budget (iterations per model)", 1, 100, 10,
                             key="ml_budget", disabled=not search))
seed = int(c3.number_input("Seed", 0, 1_000_000, 0, key="ml_seed"))

# ---- run ----------------------------------------------------------------------------------
config = lab.LabConfig(
    symbols=list(symbols), interval=interval, start_ms=start_ms, end_ms=end_ms,
    features=features, target=target, horizon=horizon, split=split,
    test_fraction=float(test_fraction), n_folds=n_folds, gap=gap, models=models, search=search,
    search_budget=budget, seed=seed, n_jobs=1, max_rows=MAX_ROWS)

if not can_change():
    read_only_note("running a comparison (it stores a run)")
if presenter_button("Run comparison", type="primary", key="ml_run",
                    disabled=not chosen or not features):
    cancel_slot = st.empty()
    cancel_slot.button("Cancel", key="ml_cancel",
                       help="Stops the run: training stops at its next chunk of trees or "
                            "rounds (about a second); any click on the page does the same.")
    bar = st.progress(0.0, text="Starting")
    try:
        news = load_news(store, bars) if any(map(is_sentiment_feature, features)) else None
        fundamentals = (load_fundamentals(store, bars)
                        if any(map(is_fundamentals_feature, features)) else None)
        result = lab.run_comparison(bars, config, news=news, fundamentals=fundamentals,
                                    progress=lambda f, m: bar.progress(min(max(f, 0.0), 1.0), m))
    except lab.LabError as exc:
        st.error(md_plain(exc))
    else:
        previous = lab.list_runs(store, limit=1)["run_id"].tolist()
        lab.save_run(store, result)
        st.session_state[RESULT_KEY] = result
        st.session_state["ml_compare_pick"] = [result.run_id, *previous]  # new vs last run
    finally:
        bar.empty()
        cancel_slot.empty()
elif st.session_state.get("ml_cancel"):
    st.info("Run cancelled.")

# ---- results ------------------------------------------------------------------------------
shown_above = [RANDOM_SPLIT_WARNING] if split == "random" else []
result: lab.LabResult | None = st.session_state.get(RESULT_KEY)
if result is not None:
    st.subheader("Results")
    results_header(result.summary, result.config.to_dict(), result.run_id, result.table,
                   result.warnings, result.guidance, shown_above)
    if result.summary.get("devices"):
        st.caption(" ".join(f"{m} trained on {d.upper()}." for m, d in
                            result.summary["devices"].items()))
    st.download_button("Download results (CSV)", lab.table_to_csv(result.table),
                       file_name=f"{result.run_id or 'model-lab'}.csv", mime="text/csv",
                       key="ml_download", on_click="ignore")
    fresh_result_tabs(result, lab_charts.model_colors(result.table))
    save_controls(store, result)
else:
    latest = lab.list_runs(store, limit=1)
    if len(latest):  # a reload keeps the last result on screen
        run = store.get_run(latest["run_id"].iloc[0])
        if run:
            st.subheader("Results")
            stored_run_block(run, shown_above)

seeds_block(config)  # the same comparison on simulated paths: dashboard/lab_seeds.py

# ---- previous runs ------------------------------------------------------------------------
st.subheader("Previous runs")
runs = lab.list_runs(store)
if runs.empty:
    st.caption("No runs recorded yet.")
else:
    st.dataframe(runs, hide_index=True, width="stretch", key="ml_runs_table", column_config={
        "created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm"),
        "best_skill": st.column_config.NumberColumn("best skill", format="%.4g",
                                                    help="Skill vs persistence of the best model"),
        "best_reading": st.column_config.TextColumn(
            "best model vs persistence", help="Diebold–Mariano test, Holm-corrected, at 5 %")})
    ids = runs["run_id"].tolist()
    if "ml_compare_pick" in st.session_state:  # drop runs deleted meanwhile
        st.session_state["ml_compare_pick"] = [
            r for r in st.session_state["ml_compare_pick"] if r in ids]
    else:
        st.session_state["ml_compare_pick"] = ids[:2]
    c1, c2 = st.columns([3, 1])
    picked = c1.multiselect("Compare runs side by side", ids, key="ml_compare_pick")
    cmp_metric = c2.selectbox("Metric", list(METRIC_COLUMNS), format_func=METRIC_LABELS.get,
                              index=list(METRIC_COLUMNS).index("skill"), key="ml_compare_metric")
    if picked:
        docs = [d for d in (store.get_run(r) for r in picked) if d]
        compare = lab.compare_runs(docs, cmp_metric)
        st.dataframe(sig_styler(compare), width="stretch")
        st.plotly_chart(lab_charts.runs_comparison(compare, METRIC_LABELS[cmp_metric]),
                        key="ml_compare_chart")
        st.download_button("Download comparison (CSV)", lab.table_to_csv(compare),
                           file_name="model-lab-comparison.csv", mime="text/csv",
                           key="ml_compare_download", on_click="ignore")
    confirmed = doomed = None
    for _ in presenter_only("deleting runs"):
        c1, c2 = st.columns([3, 1])
        doomed = c1.selectbox("Run to delete", ids, key="ml_delete_pick")
        with c2:
            confirmed = confirm_button("Delete run", "ml_delete",
                                       f"Delete run {doomed}? Its figures cannot be brought "
                                       "back.")
    if confirmed:
        lab.delete_run(store, doomed)
        current = st.session_state.get(RESULT_KEY)
        if current is not None and current.run_id == doomed:
            del st.session_state[RESULT_KEY]
        st.rerun()
