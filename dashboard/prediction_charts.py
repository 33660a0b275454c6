"""Plotly figures and tables for the Predictions page (live scoring and model versions).

Inputs are the frames of :mod:`models.adaptation` (:func:`~models.adaptation.score_frame`,
:func:`~models.adaptation.rolling_live_errors`) and the store's model-version and event records,
so every figure can be built, and tested, without Streamlit.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.formatting import fmt_sig, fmt_ts, sig_styler, ts_to_datetime
from dashboard.plain_text import plain_figure
from dashboard.theme import KEPT_COLOR, MODEL_COLORS, PROMOTED_COLOR, palette, readable
CHAMPION_BG = "background-color: rgba(46, 125, 50, 0.18); font-weight: 600"


def predicted_vs_actual(scored: pd.DataFrame, bars: pd.DataFrame | None = None,
                        events: list[dict[str, Any]] | None = None, title: str = "") -> go.Figure:
    """Actual close (line) and each model version's predicted close (dotted) by bar time,
    with retraining decisions as vertical lines (green: promoted, grey: champion kept)."""
    fig = go.Figure()
    actual_color = palette().actual
    if bars is not None and len(bars):
        fig.add_trace(go.Scatter(x=ts_to_datetime(bars["ts"]), y=bars["close"], name="actual close",
                                 mode="lines", line=dict(color=actual_color, width=1.6)))
    elif len(scored):
        done = scored[np.isfinite(scored["actual_close"])]
        fig.add_trace(go.Scatter(x=ts_to_datetime(done["ts"]), y=done["actual_close"],
                                 name="actual close", mode="lines",
                                 line=dict(color=actual_color, width=1.6)))
    for i, (model_id, g) in enumerate(scored.groupby("model_id", sort=False)):
        fig.add_trace(go.Scatter(
            x=ts_to_datetime(g["ts"]), y=g["predicted_close"], name=f"predicted · {model_id}",
            mode="lines+markers", line=dict(width=1, dash="dot",
                                            color=MODEL_COLORS[i % len(MODEL_COLORS)]),
            marker=dict(size=4),
            customdata=np.stack([g["base_close"], g["abs_error"]], axis=-1),
            hovertemplate="%{x}<br>predicted %{y:.4f}<br>base close %{customdata[0]:.4f}"
                          "<br>abs error %{customdata[1]:.4f}<extra>%{fullData.name}</extra>"))
    _mark_events(fig, events or [], scored)
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=440,
                      margin=dict(l=10, r=10, t=40, b=10), yaxis_title="close",
                      uirevision="pred")
    return plain_figure(readable(fig))


def rolling_errors(rolling: pd.DataFrame, events: list[dict[str, Any]] | None = None,
                   window: int = 50) -> go.Figure:
    """Rolling MAE (implied close, price units) and directional accuracy per model version."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=(f"Rolling MAE (last {window} scored)",
                                        f"Rolling directional accuracy (last {window})"))
    for i, (model_id, g) in enumerate(rolling.groupby("model_id", sort=False)):
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        x = ts_to_datetime(g["ts"])
        fig.add_trace(go.Scatter(x=x, y=g["mae"], name=model_id, mode="lines",
                                 line=dict(color=color, width=1.5), legendgroup=model_id),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=g["directional_accuracy"], name=model_id, mode="lines",
                                 line=dict(color=color, width=1.5), legendgroup=model_id,
                                 showlegend=False), row=2, col=1)
    if len(rolling):
        fig.add_hline(y=0.5, line=dict(color=KEPT_COLOR, dash="dash", width=1), row=2, col=1)
    _mark_events(fig, events or [], rolling, annotate=False)
    fig.update_yaxes(title_text="MAE", row=1, col=1)
    fig.update_yaxes(title_text="hit rate", range=[0, 1], row=2, col=1)
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10), uirevision="roll")
    readable(fig)
    # Above the first subplot's title, not on it.
    fig.update_layout(legend=dict(y=1.09), margin=dict(t=70))
    return plain_figure(fig)


def versions_table(versions: list[dict[str, Any]],
                   live: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model version: status, scope, model, target, training range, holdout
    metrics (as saved) and live metrics (from the stored predictions)."""
    rows = []
    for v in versions:
        m = v.get("metrics") or {}
        rows.append({
            "version_id": v.get("version_id"),
            "status": v.get("status"),
            "scope": v.get("scope"),
            "name": v.get("name"),
            "model": v.get("model_key"),
            "target": v.get("target"),
            "created": fmt_ts(v.get("created_ms")) if v.get("created_ms") else "—",
            "trained on": (f"{fmt_ts(v['train_start_ms'])} → {fmt_ts(v['train_end_ms'])}"
                           if v.get("train_start_ms") and v.get("train_end_ms") else "—"),
            "by": v.get("trained_by") or "lab",
            "holdout MAPE %": m.get("mape_pct"),
            "holdout dir. acc.": m.get("directional_accuracy"),
            "holdout skill": m.get("skill"),
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    live_cols = ["live scored", "live MAPE %", "live dir. acc."]
    if live is not None and len(live):
        lv = live.rename(columns={"model_id": "version_id", "mape_pct": "live MAPE %",
                                  "directional_accuracy": "live dir. acc.",
                                  "scored": "live scored"})
        df = df.merge(lv[["version_id", *live_cols]], on="version_id", how="left")
        df["live scored"] = df["live scored"].astype("Int64")
    else:
        for c in live_cols:
            df[c] = np.nan
    first = ["version_id", "status", "scope", "model", "target", "live MAPE %",
             "live dir. acc.", "live scored", "holdout MAPE %", "holdout dir. acc.",
             "holdout skill"]
    return df[first + [c for c in df.columns if c not in first]]


def highlight_champion(df: pd.DataFrame):
    """A Styler with the champion rows highlighted (for ``st.dataframe``)."""
    def row_style(row: pd.Series) -> list[str]:
        return [CHAMPION_BG if row.get("status") == "champion" else ""] * len(row)

    return sig_styler(df).apply(row_style, axis=1)


#: live_summary's columns as the page labels them (the versions table's words: "live MAPE %").
LIVE_ERROR_LABELS = {"model_id": "model version", "predictions": "predictions",
                     "scored": "scored", "mae": "MAE", "rmse": "RMSE", "mape_pct": "MAPE %",
                     "directional_accuracy": "direction right",
                     "persistence_mae": "persistence MAE"}


def live_errors_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The live error per model version, with the column names a reader knows."""
    return summary.rename(columns=LIVE_ERROR_LABELS)


def plain(df: pd.DataFrame):
    """Numbers to 4 significant figures and "—" for missing values."""
    return sig_styler(df)


def events_table(events: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for e in events:
        f = e.get("figures") or {}
        rows.append({
            "when": fmt_ts(e.get("created_ms")) if e.get("created_ms") else "—",
            "at bar": fmt_ts(e["bar_ts"]) if e.get("bar_ts") else "—",
            "trigger": e.get("trigger"),
            "promoted": bool(e.get("promoted")),
            "challenger err %": _num(f.get("challenger_error",
                                           (e.get("challenger_metrics") or {}).get("mape_pct"))),
            "champion err %": _num(f.get("champion_error")),
            "persistence err %": _num(f.get("persistence_error",
                                            (e.get("persistence_metrics") or {}).get("mape_pct"))),
            "train rows": f.get("train_rows"),
            "holdout rows": f.get("holdout_rows"),
            "champion after": e.get("champion_version_id"),
            "reason": e.get("reason"),
        })
    return pd.DataFrame(rows)


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else np.nan


def _mark_events(fig: go.Figure, events: list[dict[str, Any]], frame: pd.DataFrame,
                 annotate: bool = True) -> None:
    """Vertical lines at the bar time of each retraining decision inside the frame's range."""
    if frame is None or frame.empty or not events:
        return
    lo, hi = int(frame["ts"].min()), int(frame["ts"].max())
    for e in events:
        ts = event_bar_ts(e, frame)
        if ts is None or not lo <= ts <= hi:
            continue
        promoted = bool(e.get("promoted"))
        fig.add_vline(x=ts_to_datetime(ts), line=dict(
            color=PROMOTED_COLOR if promoted else KEPT_COLOR, width=1.5,
            dash="solid" if promoted else "dash"))
        if annotate:
            fig.add_annotation(x=ts_to_datetime(ts), y=0.99, yref="paper", showarrow=False,
                               text=f"{e.get('trigger')}: {'promoted' if promoted else 'kept'}",
                               font=dict(size=10), xanchor="left", yanchor="top", xshift=3)


def event_bar_ts(event: dict[str, Any], frame: pd.DataFrame | None = None) -> int | None:
    """The bar time of an event: its ``bar_ts``, else the bar of the prediction stored closest
    to the event's wall-clock time (bar time and wall time differ in a simulation)."""
    if event.get("bar_ts"):
        return int(event["bar_ts"])
    created = event.get("created_ms")
    if frame is None or not created or "stored_ms" not in frame or frame["stored_ms"].isna().all():
        return None
    stored = frame["stored_ms"].astype("float64")
    i = int(np.nanargmin(np.abs(stored.to_numpy() - float(created))))
    return int(frame["ts"].iloc[i])


def arena_table(board: list[dict[str, Any]]) -> pd.DataFrame:
    """The live arena's leaderboard (the scorer's ``arena`` gauge, :mod:`models.live.arena`) as
    text: one row per entry, champion first, then by live skill vs persistence (on the implied
    close), its 95% interval, the Holm-corrected DM p-value and reading, predictions scored,
    the window filled, MAE (close), directional accuracy over the moves in the window, and
    predictions waiting for their bar."""
    cols = ["Model", "Role", "Version", "Live skill", "95% interval",
            "p (DM, Holm)", "Reading", "Scored", "Window", "MAE",
            "Direction", "Waiting"]
    rows = []
    scored = [r for r in board if r.get("kind") != "error"]
    scored.sort(key=lambda r: (r.get("kind") != "champion",
                               -(r["skill"] if r.get("skill") is not None else -np.inf)))
    for r in scored:
        lo, hi, p = r.get("skill_lo"), r.get("skill_hi"), r.get("p_holm")
        da = r.get("directional_accuracy")
        rows.append({
            "Model": r.get("name"), "Role": r.get("kind"), "Version": r.get("version_id") or "—",
            "Live skill": fmt_sig(r.get("skill"), 3),
            "95% interval": (f"{fmt_sig(lo, 3)} to {fmt_sig(hi, 3)}"
                                   if lo is not None and hi is not None else "—"),
            "p (DM, Holm)": "—" if p is None else "< 0.0001" if p < 1e-4 else fmt_sig(p, 2),
            "Reading": r.get("reading") or "—",
            "Scored": f"{int(r.get('scored') or 0):,}",
            "Window": f"{int(r.get('window_n') or 0):,} of {int(r.get('window') or 0):,}",
            "MAE": fmt_sig(r.get("mae"), 4),
            "Direction": ("—" if da is None else
                                f"{da:.1%} of {int(r.get('moves') or 0):,} moves"),
            "Waiting": f"{int(r.get('pending') or 0):,}",
        })
    for r in board:
        if r.get("kind") == "error":
            rows.append({**{c: "—" for c in cols}, "Model": r.get("name"), "Role": "not scored",
                         "Reading": r.get("status")})
    return pd.DataFrame(rows, columns=cols)
