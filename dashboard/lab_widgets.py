"""Model lab building blocks: parameter widgets, the results block (a fresh run or one
reloaded from the store), the per-fold view and the save-a-version controls."""
from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import lab_charts
from dashboard.access import can_change
from dashboard.formatting import sig_styler
from dashboard.plain_text import md_plain
from dashboard.view_models import (HELP, fold_readings, fold_rows, fold_view, run_caption,
                                   unique)
from models import lab
from models.metrics import METRIC_COLUMNS, METRIC_LABELS
from models.registry import GLOBAL_SCOPE, champion_refusal
from models.splits import SPLIT_METHODS
from models.targets import TARGETS
from models.zoo import ParamWidget


def param_widget(model_key: str, w: ParamWidget, default):
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


def results_header(summary: dict[str, Any], config: dict[str, Any], run_id: str | None,
                   table: pd.DataFrame, warnings: list[str], guidance: list[str],
                   shown_above: list[str]) -> None:
    """Caption with honest row counts, warnings once each, the table, guidance once each."""
    split = SPLIT_METHODS.get(config.get("split"), str(config.get("split"))).split(" (")[0]
    st.caption(md_plain(run_caption(summary, split, config.get("target"), run_id,
                                    shuffled=config.get("split") == "random"))  # symbols
               + " Best value per quality column highlighted (not the timings); click a header "
                 "to sort.")
    for w in unique(warnings, shown_above):
        st.warning(md_plain(w))
    # Two tables that each fit the page (one had to scroll sideways on a projector).
    st.dataframe(lab_charts.styled_table(table, "verdict"), width="stretch",
                 key="ml_results_table", column_config={
                     "Skill vs persistence": st.column_config.NumberColumn(help=HELP["skill"])})
    st.caption("Error figures on the test rows (tiny errors scaled: the factor is in the "
               "header) and timings")
    st.dataframe(lab_charts.styled_table(table, "errors"), width="stretch",
                 key="ml_errors_table")
    for g in unique(guidance):
        st.info(g)


def folds_block(fold_table: pd.DataFrame, colors: dict[str, str], chart: bool = True) -> None:
    """Walk-forward: skill per fold per model, its mean and spread, and the rows per fold."""
    folds = fold_view(fold_table)
    if folds.empty or len([c for c in folds.columns if c.startswith("fold ")]) < 2:
        st.caption("One test block only: per-fold figures need a walk-forward split.")
        return
    st.markdown("**Skill vs persistence per fold** — an edge that is real shows up in most "
                "folds, not only on average.")
    st.dataframe(sig_styler(folds), width="stretch", key="ml_fold_table")
    readings = fold_readings(fold_table)
    if not readings.empty:
        st.markdown("**Against persistence, per fold** (Diebold–Mariano, Holm within the fold)")
        st.dataframe(readings, width="stretch", key="ml_fold_readings")
    rows = fold_rows(fold_table)
    st.caption("Test rows per fold: " + ", ".join(f"fold {int(f) + 1}: {int(n):,}"
                                                  for f, n in rows.items()) + ".")
    if chart:
        st.plotly_chart(lab_charts.fold_skill_chart(folds, colors), key="ml_fold_chart")


def save_controls(store, result: lab.LabResult) -> None:
    if not can_change():  # a presenter who left presenter mode keeps the result, not the saving
        return
    st.subheader("Save a model version")
    refusal = champion_refusal(result.config.target)
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    fitted = list(result.fitted)
    best = result.best_label()
    label = c1.selectbox("Model", fitted, index=fitted.index(best) if best in fitted else 0,
                         key="ml_save_model")
    champion = c2.checkbox("Make it champion", key="ml_save_champion", disabled=bool(refusal),
                           help=(f"Not possible: {refusal}." if refusal else HELP["champion"]))
    scope = c3.text_input("Scope", GLOBAL_SCOPE, key="ml_save_scope",
                          help="global, or a symbol for a per-symbol champion")
    if refusal:
        st.caption(f"This run cannot give a champion: {refusal}. Its models can still be saved "
                   "as candidates for comparison.")
    elif result.config.split == "random":
        st.caption("This run used the random split: a version saved from it keeps holdout "
                   "figures that leak the future, so expect its live error on the Predictions "
                   "page to be worse. Run a chronological or walk-forward split before making "
                   "a champion.")
    if c4.button("Save model version", key="ml_save"):
        try:
            version_id = lab.save_version(store, result, label, champion=champion and not refusal,
                                          scope=scope.strip() or GLOBAL_SCOPE)
        except (lab.LabError, ValueError) as exc:
            st.error(md_plain(exc))
        else:
            st.success(f"Saved {md_plain(label)} as {md_plain(version_id)}"
                       + (" (champion)" if champion else "")
                       + ".")


def fresh_result_tabs(result: lab.LabResult, colors: dict[str, str]) -> None:
    s = result.summary
    names = ["Metrics", "Predicted vs actual", "Residuals", "Feature importance"]
    walk = result.config.split == "walk_forward"
    if walk:
        names.insert(1, "Folds")
    tabs = dict(zip(names, st.tabs(names)))
    with tabs["Metrics"]:
        metric = st.selectbox("Metric", list(METRIC_COLUMNS), format_func=METRIC_LABELS.get,
                              index=list(METRIC_COLUMNS).index("skill"), key="ml_metric")
        st.plotly_chart(lab_charts.metric_bars(result.table, metric), key="ml_metric_chart")
    if walk:
        with tabs["Folds"]:
            folds_block(result.fold_table, colors)
    with tabs["Predicted vs actual"]:
        c1, c2, c3 = st.columns([2, 1, 1])
        shown = c1.multiselect("Models shown", result.labels, default=[
            lb for lb in [result.best_label(False), "Persistence"] if lb in result.labels],
            key="ml_pred_models")
        sym = c2.selectbox("Symbol", s["symbols"], key="ml_pred_symbol")
        as_price = c3.toggle("As close price", value=True, key="ml_pred_price")
        closes = {lb: result.predicted_close(lb) for lb in shown} if as_price else None
        st.plotly_chart(lab_charts.predicted_vs_actual(
            result.predictions, shown, colors, sym, closes), key="ml_pred_chart")
    best = result.best_label(False)
    with tabs["Residuals"]:
        residuals = result.residuals()
        picked = st.multiselect("Models shown", list(residuals.columns), default=[
            lb for lb in [best, "Persistence"] if lb in residuals.columns],
            key="ml_resid_models", help="Two or three at a time stay readable.")
        st.plotly_chart(lab_charts.residual_distribution(residuals[picked], colors),
                        key="ml_resid_chart")
    with tabs["Feature importance"]:
        baselines = set(result.table.index[result.table["kind"] == "baseline"])
        ranked = [m for m in result.importance["model"].unique() if m not in baselines] \
            if not result.importance.empty else []
        if not ranked:
            st.caption("No importances were computed (baselines use no features).")
        else:  # the best model first; baselines use no features, so they are not offered
            ranked.sort(key=lambda m: m != best)
            which = st.selectbox("Model", ranked, key="ml_imp_model")
            st.plotly_chart(lab_charts.importance_bars(result.importance, which),
                            key="ml_imp_chart")
    if result.best_params:
        with st.expander("Best parameters found by the search"):
            st.json(result.best_params)


def stored_run_block(run: dict[str, Any], shown_above: list[str]) -> None:
    """A run reloaded from the store (after a page reload): figures, folds and guidance; the
    charts that need every test prediction come back with a new run."""
    table = lab.run_table(run)
    cfg = run.get("config", {})
    st.caption(f"Showing the last recorded run ({run['run_id']}); run the comparison again "
               "for the prediction charts and to save a model version.")
    results_header(run.get("summary", {}), cfg, run["run_id"], table, run.get("warnings", []),
                   run.get("guidance", []), shown_above)
    if cfg.get("split") == "walk_forward":
        folds_block(pd.DataFrame(run.get("fold_table") or []),
                    lab_charts.model_colors(table) if "kind" in table.columns else {})


def target_label(key: str) -> str:
    return TARGETS[key].label
