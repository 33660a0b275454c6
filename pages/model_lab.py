"""Model lab page: choose data, features, target, split and models; compare them honestly.

Layout and widgets only: the work is in models.lab, the figures in dashboard.lab_charts.
"""
from __future__ import annotations

import sys
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # running this page on its own (streamlit run pages/model_lab.py)
    sys.path.insert(0, str(_ROOT))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from dashboard import lab_charts  # noqa: E402
from dashboard.state import store_or_stop  # noqa: E402
from models import lab  # noqa: E402
from models.features import DEFAULT_GROUP, FEATURE_GROUPS, all_features, expand_features  # noqa: E402
from models.features import max_lookback  # noqa: E402
from models.metrics import METRIC_COLUMNS, METRIC_LABELS  # noqa: E402
from models.registry import GLOBAL_SCOPE  # noqa: E402
from models.splits import RANDOM_SPLIT_WARNING, SPLIT_METHODS  # noqa: E402
from models.targets import TARGETS  # noqa: E402
from models.zoo import BASELINE_KEYS, MODEL_KEYS, MODEL_SPECS, ParamWidget  # noqa: E402

MAX_ROWS = 200_000  # hard bound per run on this page (the latest bars are kept)
EMPTY_STATE = ("The store has no bars yet. Start the pipeline on the Pipeline page, or run "
               "`python -m pipeline backfill`, then come back here.")
RESULT_KEY = "model_lab_result"

st.title("Model lab")
st.caption("Train models on stored bars and compare them with honest baselines.")

store = store_or_stop()
symbols_all = store.list_symbols()
if not symbols_all:
    st.info(EMPTY_STATE)
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


def _param_widget(model_key: str, w: ParamWidget, default):
    key = f"ml_{model_key}_{w.name}"
    if w.kind == "bool":
        return st.checkbox(w.label, value=bool(default), key=key, help=w.help or None)
    if w.kind == "choice":
        return st.selectbox(w.label, list(w.options), index=list(w.options).index(default),
                            key=key, help=w.help or None)
    if w.kind == "int":
        return int(st.number_input(w.label, min_value=int(w.min), max_value=int(w.max),
                                   value=int(default), step=int(w.step or 1), key=key,
                                   help=w.help or None))
    return float(st.number_input(w.label, min_value=float(w.min), max_value=float(w.max),
                                 value=float(default), step=float(w.step or 0.01), key=key,
                                 format="%.4g", help=w.help or None))


# ---- data -------------------------------------------------------------------------------------
st.subheader("Data")
c1, c2, c3 = st.columns([2, 1, 2])
symbols = c1.multiselect("Symbols", symbols_all, default=symbols_all[:1], key="ml_symbols")
intervals = store.list_intervals() or ["1m"]
interval = c2.selectbox("Interval", intervals, key="ml_interval")
ranges = [store.bar_time_range(s, interval) for s in symbols]
ranges = [r for r in ranges if r]
start_ms = end_ms = None
if ranges:
    first = datetime.fromtimestamp(min(r[0] for r in ranges) / 1000, timezone.utc).date()
    last = datetime.fromtimestamp(max(r[1] for r in ranges) / 1000, timezone.utc).date()
    picked = c3.date_input("Date range (UTC)", value=(first, last), min_value=first,
                           max_value=last, key="ml_dates")
    if isinstance(picked, (list, tuple)) and len(picked) == 2:
        start_ms, end_ms = _day_ms(picked[0]), _day_ms(picked[1] + timedelta(days=1))
if not symbols:
    st.info("Choose at least one symbol.")
    st.stop()
n_stored = sum(store.count_bars(s, interval) for s in symbols)
bars, load_notes = _load(store, store.describe(), tuple(symbols), interval, start_ms, end_ms,
                         n_stored)
st.caption(f"{len(bars):,} bars selected ({', '.join(symbols)}, {interval}); at most "
           f"{MAX_ROWS:,} per run.")
for note in load_notes:
    st.caption(note)
if bars.empty:
    st.info(f"No {interval} bars for these symbols in this date range. " + EMPTY_STATE)
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
                params[w.name] = _param_widget(key, w, spec.defaults[w.name])
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

if st.button("Run comparison", type="primary", key="ml_run", disabled=not chosen or not features):
    cancel_slot = st.empty()
    cancel_slot.button("Cancel", key="ml_cancel",
                       help="Stops the run: training stops at its next chunk of trees or "
                            "rounds (about a second); any click on the page does the same.")
    bar = st.progress(0.0, text="Starting")
    try:
        result = lab.run_comparison(bars, config,
                                    progress=lambda f, m: bar.progress(min(max(f, 0.0), 1.0), m))
    except lab.LabError as exc:
        st.error(str(exc))
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
result: lab.LabResult | None = st.session_state.get(RESULT_KEY)
if result is not None:
    s = result.summary
    st.subheader("Results")
    st.caption(f"Run {result.run_id}: {', '.join(s['symbols'])} {s['interval']}, target "
               f"{result.config.target}, {SPLIT_METHODS[result.config.split].split(' (')[0]}; "
               f"train {s['n_train']:,} rows, test {s['n_test']:,} rows; {s['elapsed_s']:.1f} s. "
               "Best value per column highlighted; click a header to sort."
               + "".join(f" {m} trained on {d.upper()}." for m, d in
                         (s.get("devices") or {}).items()))
    for w in result.warnings:
        st.warning(w)
    st.dataframe(lab_charts.styled_table(result.table), width="stretch")
    for g in result.guidance:
        st.info(g)
    st.download_button("Download results (CSV)", lab.table_to_csv(result.table),
                       file_name=f"{result.run_id or 'model-lab'}.csv", mime="text/csv",
                       key="ml_download", on_click="ignore")

    colors = lab_charts.model_colors(result.table)
    tabs = st.tabs(["Metrics", "Predicted vs actual", "Residuals", "Feature importance"])
    with tabs[0]:
        metric = st.selectbox("Metric", list(METRIC_COLUMNS), format_func=METRIC_LABELS.get,
                              index=list(METRIC_COLUMNS).index("skill"), key="ml_metric")
        st.plotly_chart(lab_charts.metric_bars(result.table, metric), key="ml_metric_chart")
    with tabs[1]:
        c1, c2, c3 = st.columns([2, 1, 1])
        shown = c1.multiselect("Models shown", result.labels, default=[
            lb for lb in [result.best_label(False), "Persistence"] if lb in result.labels],
            key="ml_pred_models")
        sym = c2.selectbox("Symbol", s["symbols"], key="ml_pred_symbol")
        as_price = c3.toggle("As close price", value=True, key="ml_pred_price")
        closes = {lb: result.predicted_close(lb) for lb in shown} if as_price else None
        st.plotly_chart(lab_charts.predicted_vs_actual(
            result.predictions, shown, colors, sym, closes), key="ml_pred_chart")
    with tabs[2]:
        st.plotly_chart(lab_charts.residual_distribution(result.residuals(), colors),
                        key="ml_resid_chart")
    with tabs[3]:
        if result.importance.empty:
            st.caption("No importances were computed.")
        else:
            which = st.selectbox("Model", list(result.importance["model"].unique()),
                                 key="ml_imp_model")
            st.plotly_chart(lab_charts.importance_bars(result.importance, which),
                            key="ml_imp_chart")
    if result.best_params:
        with st.expander("Best parameters found by the search"):
            st.json(result.best_params)

    st.subheader("Save a model version")
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    fitted = list(result.fitted)
    best = result.best_label()
    label = c1.selectbox("Model", fitted, index=fitted.index(best) if best in fitted else 0,
                         key="ml_save_model")
    champion = c2.checkbox("Make it champion", key="ml_save_champion")
    scope = c3.text_input("Scope", GLOBAL_SCOPE, key="ml_save_scope",
                          help="global, or a symbol for a per-symbol champion")
    if c4.button("Save model version", key="ml_save"):
        version_id = lab.save_version(store, result, label, champion=champion,
                                      scope=scope.strip() or GLOBAL_SCOPE)
        st.success(f"Saved {label} as {version_id}" + (" (champion)" if champion else "") + ".")

# ---- previous runs ------------------------------------------------------------------------
st.subheader("Previous runs")
runs = lab.list_runs(store)
if runs.empty:
    st.caption("No runs recorded yet.")
else:
    st.dataframe(runs, hide_index=True, width="stretch", key="ml_runs_table")
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
        st.dataframe(compare, width="stretch")
        st.plotly_chart(lab_charts.runs_comparison(compare, METRIC_LABELS[cmp_metric]),
                        key="ml_compare_chart")
        st.download_button("Download comparison (CSV)", lab.table_to_csv(compare),
                           file_name="model-lab-comparison.csv", mime="text/csv",
                           key="ml_compare_download", on_click="ignore")
    c1, c2 = st.columns([3, 1])
    doomed = c1.selectbox("Run to delete", ids, key="ml_delete_pick")
    if c2.button("Delete run", key="ml_delete"):
        lab.delete_run(store, doomed)
        current = st.session_state.get(RESULT_KEY)
        if current is not None and current.run_id == doomed:
            del st.session_state[RESULT_KEY]
        st.rerun()
