"""Plotly figures for the model lab page (pure functions: data in, figure out)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.formatting import MISSING, display_frame, fmt_sig
from dashboard.plain_text import plain_figure
from dashboard.theme import BASELINE_COLORS, MODEL_COLORS, palette, readable
from models.metrics import METRIC_COLUMNS, METRIC_LABELS


def model_colors(table: pd.DataFrame) -> dict[str, str]:
    """One colour per model: models from the colour-blind-safe set, baselines from neutral
    tones, all different from each other (two greys side by side could not be told apart)."""
    colors, i, b = {}, 0, 0
    for label, kind in table["kind"].items():
        if kind == "baseline":
            colors[label] = BASELINE_COLORS[b % len(BASELINE_COLORS)]
            b += 1
        else:
            colors[label] = MODEL_COLORS[i % len(MODEL_COLORS)]
            i += 1
    return colors


def metric_bars(table: pd.DataFrame, metric: str = "skill") -> go.Figure:
    """One bar per model for ``metric``; baselines grey."""
    values = pd.to_numeric(table[metric], errors="coerce")
    colors = model_colors(table)
    fig = go.Figure(go.Bar(
        x=list(table.index), y=values, marker_color=[colors[m] for m in table.index],
        text=[fmt_sig(v, 3) if np.isfinite(v) else "n/a" for v in values], textposition="outside",
        hovertemplate="%{x}: %{y:.6g}<extra></extra>"))
    higher = METRIC_COLUMNS.get(metric)
    hint = "" if higher is None else (" (higher is better)" if higher else " (lower is better)")
    fig.update_layout(title=f"{METRIC_LABELS.get(metric, metric)} by model{hint}",
                      yaxis_title=METRIC_LABELS.get(metric, metric), height=380,
                      margin=dict(l=40, r=20, t=50, b=40), showlegend=False)
    readable(fig, legend=False)
    if metric == "skill":
        fig.add_hline(y=0, line_dash="dot", line_color="grey")
        # A poor baseline (the moving average's skill is often far below 0) would flatten the
        # models' bars: cut the axis just below the models and say so.
        models = values[(table["kind"] == "model").to_numpy()].dropna()
        finite = values.dropna()
        if len(models) and len(finite):
            floor = min(-0.02, 2.0 * min(float(models.min()), 0.0))
            top = max(0.02, float(finite.max())) * 1.3
            if float(finite.min()) < floor:
                fig.update_yaxes(range=[floor, top])
                fig.update_traces(textposition="auto")
                fig.add_annotation(text="bars below the axis are cut; see the table",
                                   xref="paper", yref="paper", x=0, y=0, showarrow=False,
                                   font=dict(size=11, color="grey"), yanchor="bottom",
                                   xanchor="left")
    return plain_figure(fig)


def predicted_vs_actual(predictions: pd.DataFrame, labels: list[str], colors: dict[str, str],
                        symbol: str | None = None, predicted_close: dict[str, np.ndarray] | None
                        = None, max_points: int = 3000) -> go.Figure:
    """Actual vs predicted over the test range for one symbol.

    With ``predicted_close`` (label -> array aligned to ``predictions``), prices are plotted
    (actual close against predicted close); otherwise values on the target's own scale.
    """
    mask = np.ones(len(predictions), dtype=bool)
    if symbol is not None:
        mask = (predictions["symbol"] == symbol).to_numpy()
    df = predictions[mask]
    idx = np.arange(len(df))
    if len(df) > max_points:  # keep the latest points: the most recent behaviour matters most
        idx = idx[-max_points:]
    df = df.iloc[idx]
    # Epoch ms on a date axis: sent as one binary array, not as 3,000 date strings per trace.
    x = df["ts"].to_numpy(dtype="int64")
    price = predicted_close is not None
    actual = df["actual_close"] if price else df["actual"]
    fig = go.Figure(go.Scattergl(x=x, y=actual, name="actual", mode="lines",
                                 line=dict(color=palette().actual, width=1.8)))
    for label in labels:
        y = predicted_close[label][mask][idx] if price else df[label]
        fig.add_trace(go.Scattergl(x=x, y=y, name=label, mode="lines",
                                   line=dict(color=colors.get(label), width=1)))
    fig.update_layout(title=("Predicted vs actual close" if price else "Predicted vs actual target")
                      + (f" — {symbol}" if symbol else ""), height=420,
                      margin=dict(l=40, r=20, t=50, b=40), hovermode="x unified",
                      xaxis_type="date")
    return plain_figure(readable(fig))


def residual_distribution(residuals: pd.DataFrame, colors: dict[str, str],
                          bins: int = 80) -> go.Figure:
    """Overlaid histograms of actual - predicted, one per model, binned here on the server
    (common edges over the central 99.8 % of all residuals) so the browser gets ``bins``
    counts per model instead of every residual."""
    counts, edges = residual_histogram(residuals, bins)
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = go.Figure()
    for label, c in counts.items():
        fig.add_trace(go.Bar(x=centers, y=c, width=width, name=label, opacity=0.55,
                             marker_color=colors.get(label)))
    fig.update_layout(barmode="overlay", bargap=0, title="Residuals (actual − predicted)",
                      height=380, margin=dict(l=40, r=20, t=50, b=40))
    return plain_figure(readable(fig))


def residual_histogram(residuals: pd.DataFrame, bins: int = 80
                       ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Counts per model over shared bin edges (outliers beyond the 0.1/99.9 percentiles of
    all models together are counted in the outer bins)."""
    values = residuals.to_numpy(dtype="float64").ravel()
    values = values[np.isfinite(values)]
    if not len(values):
        return {}, np.linspace(-1.0, 1.0, bins + 1)
    lo, hi = np.percentile(values, [0.1, 99.9])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = {}
    for label in residuals.columns:
        r = residuals[label].to_numpy(dtype="float64")
        counts[label] = np.histogram(np.clip(r[np.isfinite(r)], lo, hi), edges)[0]
    return counts, edges


def importance_bars(importance: pd.DataFrame, model: str, top: int = 25) -> go.Figure:
    """Permutation importance (increase in test MSE when a feature is shuffled) for one model."""
    df = importance[importance["model"] == model].sort_values("importance").tail(top)
    fig = go.Figure(go.Bar(x=df["importance"], y=df["feature"], orientation="h",
                           error_x=dict(type="data", array=df["std"]),
                           marker_color=MODEL_COLORS[0]))
    fig.update_layout(title=f"Permutation importance — {model}",
                      xaxis_title="increase in test MSE when shuffled",
                      height=max(260, 24 * len(df) + 100), margin=dict(l=40, r=20, t=50, b=40))
    return plain_figure(readable(fig, legend=False))


def runs_comparison(compare: pd.DataFrame, metric_label: str) -> go.Figure:
    """Grouped bars: one group per model, one bar per run."""
    fig = go.Figure()
    for run in compare.columns:
        fig.add_trace(go.Bar(x=list(compare.index), y=compare[run], name=run))
    fig.update_layout(barmode="group", title=f"{metric_label} across runs", height=380,
                      margin=dict(l=40, r=20, t=50, b=40))
    return plain_figure(readable(fig))


def significance_text(table: pd.DataFrame) -> dict[str, list[str]]:
    """The significance columns as text: the skill's 95% interval, the Holm-corrected p-value
    and the reading in plain words (— for persistence itself)."""
    def num(c):
        return pd.to_numeric(table.get(c), errors="coerce")

    lo, hi, p = num("skill_lo"), num("skill_hi"), num("p_holm")
    interval = [MISSING if not (np.isfinite(a) and np.isfinite(b)) else
                f"{fmt_sig(a, 3)} to {fmt_sig(b, 3)}" for a, b in zip(lo, hi)]
    pv = [MISSING if not np.isfinite(v) else "< 0.0001" if v < 1e-4 else fmt_sig(v, 2)
          for v in p]
    reading = [r if isinstance(r, str) and r else MISSING for r in table["reading"]]
    return {"Skill 95% interval": interval, "p (DM, Holm)": pv, "Reading": reading}


#: Columns where "best" says nothing about the models' quality: no highlight there.
NOT_RANKED = ("fit_time_s", "predict_time_s")
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def scaled_units(values: pd.Series) -> tuple[pd.Series, str]:
    """Tiny errors (MSE 0.0000001643) in readable units: scaled so the largest is between 1
    and 10, with the factor for the header (``×10⁻⁷``); unchanged ("") when already readable."""
    finite = values[np.isfinite(values)].abs()
    top = float(finite.max()) if len(finite) else 0.0
    if not 0 < top < 1e-2:
        return values, ""
    exp = int(np.floor(np.log10(top)))
    return values / 10.0 ** exp, f" (×10{str(exp).translate(_SUPERSCRIPT)})"


#: The results in two tables that each fit a 1366-px-wide page: the verdict against
#: persistence first, then the error figures and timings.
VERDICT_COLUMNS = ("skill",)
ERROR_COLUMNS = ("r2", "mse", "rmse", "mae", "mape_pct", "directional_accuracy",
                 "fit_time_s", "predict_time_s")


def styled_table(table: pd.DataFrame, part: str | None = None):
    """Results table for display: metrics (readable headers; tiny errors scaled, the factor
    in the header), numbers with significant figures, the best per quality column
    highlighted (not timings); then the significance columns. ``part``: ``"verdict"`` (kind,
    skill and the significance columns) or ``"errors"`` (the other metrics); None: all."""
    wanted = {"verdict": VERDICT_COLUMNS, "errors": ERROR_COLUMNS}.get(part, METRIC_COLUMNS)
    cols = [c for c in METRIC_COLUMNS if c in table.columns and c in wanted]
    num = table[cols].apply(pd.to_numeric, errors="coerce")
    labels = {}
    for c in cols:
        num[c], unit = scaled_units(num[c])
        labels[c] = METRIC_LABELS[c] + unit
    lead = [] if part == "errors" else ["kind"]
    shown = display_frame(table[[*lead, *cols]].assign(**{c: num[c] for c in cols}))
    shown = shown.rename(columns=labels)
    if "reading" in table.columns and part != "errors":  # vs persistence (models/significance.py)
        for name, text in significance_text(table).items():
            shown[name] = text
    best = "background-color: #c8f7c5; color: #0b3d0b; font-weight: bold"
    styler = shown.style
    for c in cols:
        values = num[c]
        if values.notna().sum() < 2 or c in NOT_RANKED:
            continue
        winner = values.idxmax() if METRIC_COLUMNS[c] else values.idxmin()
        hits = values == values[winner]
        styler = styler.apply(lambda s, h=hits: [best if h.get(i, False) else "" for i in s.index],
                              subset=[labels[c]])
    return styler


def fold_skill_chart(folds: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    """Skill vs persistence per walk-forward fold, one line per model (``folds``: the
    :func:`dashboard.view_models.fold_view` table)."""
    fig = go.Figure()
    cols = [c for c in folds.columns if c.startswith("fold ")]
    for model, row in folds.iterrows():
        fig.add_trace(go.Scatter(x=cols, y=row[cols].astype(float), name=str(model),
                                 mode="lines+markers", line=dict(color=colors.get(model))))
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    values = folds[cols].astype(float).to_numpy()
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() < -1.0 and np.median(finite) > -1.0:
        # One fold's collapse (skill -27) would flatten the rest: cut the axis, say so.
        fig.update_yaxes(range=[-1.0, max(0.1, float(finite.max()) * 1.3)])
        fig.add_annotation(text="points below -1 are cut; see the table", xref="paper",
                           yref="paper", x=0, y=0, showarrow=False, xanchor="left",
                           yanchor="bottom", font=dict(size=11, color="grey"))
    fig.update_layout(title="Skill vs persistence per fold (above 0 beats 'no change')",
                      yaxis_title="skill", height=380, margin=dict(l=40, r=20, t=50, b=40))
    return plain_figure(readable(fig))
