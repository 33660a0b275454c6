"""Predictions: live predicted vs actual, rolling error, model versions and retraining events."""
from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard.access import presenter_only
from dashboard.arena_widgets import arena_section, promote_with_notice
from dashboard.formatting import fmt_num, fmt_ts
from dashboard.plain_text import md_plain
from dashboard.prediction_charts import (
    events_table, highlight_champion, live_errors_table, plain, predicted_vs_actual,
    rolling_errors, versions_table,
)
from dashboard.shared_views import (late_browser_keeps, note_shown, share_figure,
                                    shared_views)
from dashboard.shell import enter_page
from dashboard.state import store_or_stop
from dashboard.theme import current_theme
from dashboard.view_models import (HELP, catch_up_note, latency_note, live_kpis,
                                   scorer_snapshot)
from dashboard.widgets import push_notice, show_notices, wait_for_data
from models.live.errors import live_summary, retrain_events, rolling_live_errors, score_frame
from models.live.news import extra_features_note
from models.registry import GLOBAL_SCOPE, champion_refusal, champions, rollback

enter_page()
store = store_or_stop()
st.title("Predictions")
st.caption("The live scorer predicts each symbol's next close with the champion model and "
           "scores every prediction only when its bar arrives (progressive validation), so the "
           "errors below are measured on data the model had never seen.")


def _scorer() -> dict | None:
    try:
        from dashboard.runtime import get_runtime

        return scorer_snapshot(get_runtime())
    except Exception:  # no runtime in this process (a bare page run): no scorer figures
        return None


@st.fragment(run_every=2.0)
def scorer_panel() -> None:
    """The scorer's top figures, refreshed every 2 s like the charts below."""
    snap = _scorer()
    if not snap:
        st.caption("No live scorer is running in this app or attached by heartbeat; start it "
                   "on the Pipeline page or with `python -m pipeline score`.")
        return
    g, c = snap.get("gauges", {}), snap.get("counters", {})
    state = snap.get("state")
    st.markdown(f"**Scorer** ({state}): {md_plain(g.get('status', '—'))}")
    problem = snap.get("last_error") or ""
    if "not usable" in problem:
        keeps = ("It keeps predicting with the version named above." if g.get("champions")
                 else "It has no model to predict with until a usable version is promoted.")
        st.warning(f"The scorer rejected a champion: {md_plain(problem)}. {keeps}")
    elif state in ("failed", "stalled"):
        st.warning(f"The scorer {state}: {md_plain(problem or 'no reason recorded')}")
    if note := extra_features_note(g.get("extra_features")):
        st.caption(note)
    lat = g.get("latency_ms") or {}
    k = st.columns(5)
    k[0].metric("Predictions", f"{c.get('predictions', 0):,}")
    k[1].metric("Scored", f"{c.get('scored', 0):,}")
    k[2].metric("Latency p50", f"{lat['p50']:.0f} ms" if lat else "—",
                help=latency_note(lat) if lat else "bar produced to Kafka → prediction stored")
    k[3].metric("Latency p99", f"{lat['p99']:.0f} ms" if lat else "—")
    # Two counts, not "n (of which promoted)": the first default model is a promotion
    # without a retrain, so "0 (1)" read as a contradiction.
    auto, hand = c.get("promotions", 0), c.get("hand_promotions", 0)
    k[4].metric("Retrains · promotions", f"{c.get('retrains', 0)} · {auto + hand}",
                help="Retrains: scheduled or drift retrainings by this scorer since it started. "
                     f"Promotions: {auto} by the scorer (its first default model included) "
                     f"and {hand} by hand (Predictions page, Model lab, CLI) while it ran.")
    if catch_up := c.get("catch_up"):
        st.caption(catch_up_note(catch_up))


scorer_panel()

versions = store.list_model_versions()
n_predictions = store.count_predictions()
if not versions and not n_predictions:
    wait_for_data(
        store, "No model versions and no predictions yet. Once the **scorer** runs and enough "
        "bars are stored, it trains a default model (linear regression on the next return), "
        "makes it champion and starts predicting; or save and promote a model from the **Model "
        "lab**. This page then shows predicted vs actual, live errors and every retraining "
        "(it fills in by itself).",
        ready=lambda: store.count_predictions() > 0 or bool(store.list_model_versions()))
    st.stop()

# ---- series ----------------------------------------------------------------------------------
symbols = store.list_symbols()
c1, c2, c3, c4 = st.columns([1.2, 0.8, 1, 1])
symbol = c1.selectbox("Symbol", symbols or ["—"], key="pr_symbol")
interval = c2.selectbox("Interval", store.list_intervals(symbol) or ["1m"], key="pr_interval")
n_points = c3.slider("Predictions shown", 20, 2000, 200, step=20, key="pr_n")
window = c4.slider("Rolling window (predictions)", 5, 500, 50, step=5, key="pr_window")
auto = st.toggle("Refresh every 2 s", value=True, key="pr_auto")
PANEL_REFRESH_S = 2.0


@st.fragment(run_every=PANEL_REFRESH_S if auto else None)
def live_panel() -> None:
    # One build per server per view and store version, shared by every session
    # (dashboard/shared_views.py): the version is the newest prediction and bar of the series
    # and the number of retraining decisions (the charts mark them), asked once for all the
    # sessions refreshing within the same 0.1 s.
    view = ("predictions", store.describe(), current_theme(), symbol, interval, n_points, window)
    late = late_browser_keeps("pr", PANEL_REFRESH_S)
    version = shared_views().recent(("predictions", store.describe(), symbol, interval),
                                    panel_version)
    built = shared_views().get(view, version, build_panel)
    held = st.session_state.get("pr_charts")  # (view, built) whose charts were last sent
    if late and held and held[0] == view and built is not None and held[1] is not None:
        charts = held[1]  # a late (starved) browser finishes drawing the charts it has
    else:
        charts = built
        if not held or held[1] is not built:
            note_shown("pr")
        st.session_state["pr_charts"] = (view, built)
    if built is None:
        st.info(f"No predictions stored for {md_plain(symbol)} {interval} yet. They appear "
                "once the scorer has a champion and this series' bars flow.")
        return
    for col, kpi in zip(st.columns(5), built["kpis"]):
        col.metric(kpi.label, kpi.value, help=kpi.help)
    st.caption(built["scored_note"])
    st.plotly_chart(charts["chart"], width="stretch", key="pr_chart")
    st.caption(built["latest_note"])
    if built["rolling"] is not None:
        st.plotly_chart(charts["rolling"] if charts["rolling"] is not None else built["rolling"],
                        width="stretch", key="pr_roll")
        st.caption(built["rolling_note"])
        st.dataframe(plain(built["table"]), hide_index=True, width="stretch")


def panel_version() -> tuple:
    """What changes whenever the panel can: the newest prediction and its model, the newest
    bar, the retraining decisions."""
    last = store.query_predictions(symbol=symbol, interval=interval, limit=1)
    events = retrain_events(store)
    return (int(last["ts"].iloc[-1]) if len(last) else None,
            str(last["model_id"].iloc[-1]) if len(last) else None,
            store.last_bar_ts(symbol, interval), len(events),
            max((e.get("created_ms") or 0 for e in events), default=None))


def build_panel() -> dict | None:
    """KPIs, charts, captions and table of the series' live predictions (None: none yet)."""
    preds = store.query_predictions(symbol=symbol, interval=interval, limit=n_points)
    if preds.empty:
        return None
    scored = score_frame(preds)
    done = scored[np.isfinite(scored["abs_error"])]
    recent = done.tail(window)
    events = retrain_events(store)
    bars = store.query_bars(symbol, interval, start_ms=int(scored["base_ts"].min()),
                            end_ms=int(scored["ts"].max()) + 1)
    nxt = scored.iloc[-1]
    built = {
        "kpis": live_kpis(recent),
        "scored_note": f"{len(done):,} of the {len(scored):,} predictions shown are scored (the "
                       "rest wait for their bar); figures over the last rolling window.",
        "chart": share_figure(predicted_vs_actual(
            scored, bars, events, title=f"{symbol} · predicted vs actual close")),
        "latest_note": f"Latest: close predicted for {fmt_ts(nxt['ts'])} = "
                       f"**{fmt_num(nxt['predicted_close'], 4)}** by {md_plain(nxt['model_id'])} "
                       f"(from the close {fmt_num(nxt['base_close'], 4)} of "
                       f"{fmt_ts(nxt['base_ts'])}).",
        "rolling": None, "table": None,
    }
    if len(done):
        built["rolling"] = share_figure(
            rolling_errors(rolling_live_errors(scored, window), events, window))
        built["rolling_note"] = (f"Live error per model version on {md_plain(symbol)} "
                                 f"{interval}, over the {len(scored):,} predictions shown")
        built["table"] = live_errors_table(live_summary(scored))
    return built


live_panel()
arena_section(store, _scorer, auto)  # shadow models: dashboard/arena_widgets.py

# ---- model versions --------------------------------------------------------------------------
st.subheader("Model versions")
if not versions:
    st.info("No model version saved yet.")
else:
    live = live_summary(score_frame(store.query_predictions(interval=interval, limit=20_000)))
    # Named for their scope: all symbols here, one symbol in the live table above.
    table = versions_table(versions, live).rename(columns={
        "live scored": "live scored (all symbols)", "live MAPE %": "live MAPE % (all symbols)",
        "live dir. acc.": "live dir. acc. (all symbols)"})
    st.dataframe(highlight_champion(table), hide_index=True, width="stretch")
    st.caption("Highlighted: champion(s). Holdout figures were measured when the version was "
               "trained; live figures come from its stored, scored predictions "
               f"(latest 20,000 {interval} predictions, all symbols).")

    do_promote = do_rollback = False
    for _ in presenter_only("promoting and rolling back", lambda: st.form("pr_manage")):
        st.markdown("**Promote or roll back by hand**")
        f1, f2 = st.columns([2, 1])
        labels = {v["version_id"]: f"{v['version_id']} · {v.get('name')} · {v.get('status')}"
                  + (" · cannot be champion" if champion_refusal(v.get("target")) else "")
                  for v in versions}
        chosen = f1.selectbox("Version", list(labels), format_func=labels.get, key="pr_version")
        scope = f2.selectbox("Scope", [GLOBAL_SCOPE, *symbols], key="pr_scope",
                             help="global: every symbol without its own champion")
        b1, b2 = st.columns(2)
        do_promote = b1.form_submit_button("Promote to champion", type="primary",
                                           key="pr_promote", help=HELP["champion"] + " Only "
                                           "forecast targets (next close, close h bars ahead, "
                                           "next return) can be champion.")
        do_rollback = b2.form_submit_button("Roll back this scope", key="pr_rollback")
    if do_promote and (champions(store).get(scope) or {}).get("version_id") == chosen:
        # Promoting the champion again would change nothing but add a promotion to the history.
        push_notice("info", f"{chosen} is already the champion of {scope}: nothing changed.",
                    "predictions")
        st.rerun()
    if do_promote:
        promote_with_notice(store, chosen, scope, "manual (Predictions page)", "predictions")
    if do_rollback:
        try:
            meta = rollback(store, scope, reason="manual rollback (Predictions page)")
            push_notice("success", f"Rolled back {scope}: {meta['version_id']} is champion "
                        "again.", "predictions")
        except LookupError as exc:
            push_notice("error", f"Nothing to roll back: {exc}.", "predictions")
        st.rerun()
    show_notices("predictions")

# ---- retraining events -----------------------------------------------------------------------
st.subheader("Retraining decisions")
events = retrain_events(store)
if not events:
    st.caption("None yet. The scorer retrains on a schedule and when its live error drifts "
               "above its reference level; each decision, promoted or not, is listed here.")
else:
    st.dataframe(plain(events_table(events)), hide_index=True, width="stretch")
