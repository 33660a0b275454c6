"""Plotly figures for the live pages (the model lab's are in dashboard/lab_charts.py)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.formatting import ts_to_datetime
from dashboard.plain_text import plain_figure
from dashboard.theme import DOWN, UP, palette, readable
from models.features import compute_features, max_lookback


def candlestick(candles: pd.DataFrame, ma_windows: list[int], ma_kind: str = "SMA",
                predictions: pd.DataFrame | None = None, title: str = "",
                news: pd.DataFrame | None = None, period_ms: int | None = None) -> go.Figure:
    """Candles with a volume subplot, moving averages and (optionally) predicted closes.

    ``candles`` has columns ts, open, high, low, close, volume (extra leading rows may be
    included only to warm up the moving averages: they are computed, then cut by ``n_show``).
    ``predictions`` and ``news`` are per candle (``per_candle_predictions``, ``news_markers``)
    with ``ts`` the candle's start. With ``period_ms`` (the candle size) every trace is drawn
    in the middle of its candle's period, so a daily candle (ts = midnight UTC of its date,
    docs/SOURCES.md) covers its day instead of straddling two.
    """
    pal = palette()
    x = ts_to_datetime(candles["ts"])
    period = dict(xperiod=period_ms, xperiodalignment="middle") if period_ms else {}
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25],
                        vertical_spacing=0.03)
    fig.add_trace(go.Candlestick(x=x, open=candles["open"], high=candles["high"],
                                 low=candles["low"], close=candles["close"], name="price",
                                 increasing_line_color=UP, decreasing_line_color=DOWN,
                                 **period),
                  row=1, col=1)
    averages = compute_features(candles, ma_feature_names(ma_windows, ma_kind)) \
        if ma_windows else None
    for i, w in enumerate(ma_windows):
        series = averages[ma_feature_names([w], ma_kind)[0]]
        fig.add_trace(go.Scatter(x=x, y=series, name=f"{ma_kind} {w}", mode="lines",
                                 line=dict(width=1.4, color=pal.ma(w, i)), **period),
                      row=1, col=1)
    if predictions is not None and len(predictions):
        target = pd.Series(ts_to_datetime(predictions.get("target_ts", predictions["ts"])))
        fig.add_trace(go.Scatter(x=ts_to_datetime(predictions["ts"]),
                                 y=predictions["predicted_close"], name="predicted close",
                                 mode="markers+lines",
                                 line=dict(width=1, dash="dot", color=pal.prediction),
                                 marker=dict(size=6, symbol="diamond"),
                                 customdata=target.dt.strftime("%Y-%m-%d %H:%M"),
                                 hovertemplate="predicted close %{y:.4f}<br>for the bar of "
                                               "%{customdata} UTC<extra></extra>", **period),
                      row=1, col=1)
    if news is not None and len(news):
        # From dashboard.view_models.news_markers: one marker per candle with news.
        fig.add_trace(go.Scatter(
            x=ts_to_datetime(news["ts"]), y=news["y"], name="news", mode="markers+text",
            text=[str(n) if n > 1 else "" for n in news["count"]], textposition="top center",
            textfont=dict(size=11, color=pal.muted),
            marker=dict(size=10, symbol="triangle-down", color=news["sentiment_score"],
                        cmin=-1, cmax=1, colorscale=[[0, DOWN], [0.5, "#9e9e9e"], [1, UP]],
                        line=dict(width=0.5, color="#555")),
            customdata=news[["count", "sentiment_score", "hover"]].to_numpy(),
            hovertemplate="%{customdata[0]} item(s), mean score %{customdata[1]:+.2f}<br>"
                          "%{customdata[2]}<extra></extra>", **period),
            row=1, col=1)
    colors = [UP if c >= o else DOWN for o, c in zip(candles["open"], candles["close"])]
    fig.add_trace(go.Bar(x=x, y=candles["volume"], marker_color=colors, name="volume",
                         showlegend=False, **period), row=2, col=1)
    # Title on the left, legend on its own row under the plot: they never overlap.
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=540,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis_rangeslider_visible=False,
                      uirevision="live")  # keep the user's zoom across refreshes
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_yaxes(title_text="volume", row=2, col=1)
    # The legend on its own row: the title's row is where Plotly's toolbar shows on hover.
    return plain_figure(readable(fig))


def throughput(history_by_worker: dict[str, list[dict]], ceiling: float | None = None) -> go.Figure:
    """Messages per second per worker; ``ceiling`` cuts the axis above a warm-up burst."""
    fig = go.Figure()
    for name, points in history_by_worker.items():
        if not points:
            continue
        fig.add_trace(go.Scatter(x=pd.to_datetime([p["t"] for p in points], unit="s", utc=True),
                                 y=[p["rate"] for p in points], mode="lines", name=name))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10),
                      yaxis_title="messages / s", title="Throughput", uirevision="tp")
    if ceiling:
        fig.update_yaxes(range=[0, ceiling])
        fig.add_annotation(text="axis cut: the warm-up burst goes higher", xref="paper",
                           yref="paper", x=0, y=1, showarrow=False, xanchor="left",
                           yanchor="top", font=dict(size=12, color=palette().muted))
    return plain_figure(readable(fig))


def ma_feature_names(ma_windows, ma_kind: str) -> list[str]:
    """The model features a chart's moving averages are (``sma_<w>`` / ``ema_<w>``): the
    chart draws the same numbers the models see (:mod:`models.features`)."""
    prefix = "sma" if ma_kind == "SMA" else "ema"
    return [f"{prefix}_{int(w)}" for w in ma_windows]


def ma_warmup(ma_windows, ma_kind: str) -> int:
    """Leading candles the moving averages need before their first value."""
    return max_lookback(ma_feature_names(ma_windows, ma_kind)) if ma_windows else 0
