"""Plotly figures for the live pages (the model lab's are in dashboard/lab_charts.py)."""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.formatting import ts_to_datetime
from dashboard.plain_text import plain_figure
from dashboard.theme import DOWN, UP, current_theme, palette, readable
from models.features import compute_features, max_lookback


def candlestick(candles: pd.DataFrame, ma_windows: list[int], ma_kind: str = "SMA",
                predictions: pd.DataFrame | None = None, title: str = "",
                news: pd.DataFrame | None = None, period_ms: int | None = None,
                x_range: list | None = None) -> go.Figure:
    """Candles with a volume subplot, moving averages and (optionally) predicted closes.

    ``candles`` has columns ts, open, high, low, close, volume (extra leading rows may be
    included only to warm up the moving averages: pass ``x_range``, two epoch-ms times, to
    show the last ones). ``predictions`` and ``news`` are per candle
    (``per_candle_predictions``, ``news_markers``) with ``ts`` the candle's start. With
    ``period_ms`` (the candle size) every trace is drawn in the middle of its candle's period,
    so a daily candle (ts = midnight UTC of its date, docs/SOURCES.md) covers its day instead
    of straddling two.

    Built as plain dicts and wrapped without Plotly's per-property validation
    (``_validate=False``): a few ms instead of ~30 ms a figure, the same JSON for the browser
    (the Live page builds one per new bar and view: docs/CLASSROOM.md).
    """
    pal = palette()
    x = _times(candles["ts"])
    row1 = dict(xaxis="x", yaxis="y")
    if period_ms:
        row1.update(xperiod=period_ms, xperiodalignment="middle")
    data = [dict(type="candlestick", x=x, open=candles["open"].to_numpy(),
                 high=candles["high"].to_numpy(), low=candles["low"].to_numpy(),
                 close=candles["close"].to_numpy(), name="price",
                 increasing=dict(line=dict(color=UP)), decreasing=dict(line=dict(color=DOWN)),
                 **row1)]
    averages = compute_features(candles, ma_feature_names(ma_windows, ma_kind)) \
        if ma_windows else None
    for i, w in enumerate(ma_windows):
        series = averages[ma_feature_names([w], ma_kind)[0]]
        data.append(dict(type="scatter", x=x, y=np.asarray(series, dtype=float),
                         name=f"{ma_kind} {w}", mode="lines",
                         line=dict(width=1.4, color=pal.ma(w, i)), **row1))
    if predictions is not None and len(predictions):
        target = pd.Series(ts_to_datetime(predictions.get("target_ts", predictions["ts"])))
        data.append(dict(type="scatter", x=_times(predictions["ts"]),
                         y=predictions["predicted_close"].to_numpy(dtype=float),
                         name="predicted close", mode="markers+lines",
                         line=dict(width=1, dash="dot", color=pal.prediction),
                         marker=dict(size=6, symbol="diamond"),
                         customdata=target.dt.strftime("%Y-%m-%d %H:%M").to_numpy(),
                         hovertemplate="predicted close %{y:.4f}<br>for the bar of "
                                       "%{customdata} UTC<extra></extra>", **row1))
    if news is not None and len(news):
        # From dashboard.view_models.news_markers: one marker per candle with news.
        data.append(dict(
            type="scatter", x=_times(news["ts"]), y=news["y"].to_numpy(dtype=float),
            name="news", mode="markers+text",
            text=[str(n) if n > 1 else "" for n in news["count"]], textposition="top center",
            textfont=dict(size=11, color=pal.muted),
            marker=dict(size=10, symbol="triangle-down",
                        color=news["sentiment_score"].to_numpy(dtype=float),
                        cmin=-1, cmax=1, colorscale=[[0, DOWN], [0.5, "#9e9e9e"], [1, UP]],
                        line=dict(width=0.5, color="#555")),
            customdata=news[["count", "sentiment_score", "hover"]].to_numpy(),
            hovertemplate="%{customdata[0]} item(s), mean score %{customdata[1]:+.2f}<br>"
                          "%{customdata[2]}<extra></extra>", **row1))
    colors = np.where(candles["close"].to_numpy() >= candles["open"].to_numpy(), UP, DOWN)
    data.append(dict(type="bar", x=x, y=candles["volume"].to_numpy(), marker=dict(color=colors),
                     name="volume", showlegend=False,
                     **dict(row1, xaxis="x2", yaxis="y2")))
    layout = json.loads(_candle_layout(current_theme()))
    layout["title"]["text"] = title
    if x_range is not None:
        layout["xaxis"]["range"] = layout["xaxis2"]["range"] = list(_times(pd.Series(x_range)))
    return plain_figure(go.Figure(dict(data=data, layout=layout), _validate=False))


def waiting_candlestick(text: str) -> go.Figure:
    """The candlestick's empty frame with ``text`` in it, for a page waiting for its first bar.

    Drawn while the Live page waits, it makes the browser load and start plotly.js then, so
    the first candles are drawn without that delay once they land (docs/CLASSROOM.md).
    """
    layout = json.loads(_candle_layout(current_theme()))
    layout["annotations"] = [dict(text=text, showarrow=False, xref="paper", yref="paper",
                                  x=0.5, y=0.8, font=dict(size=15, color=palette().muted))]
    for axis in ("xaxis", "xaxis2", "yaxis", "yaxis2"):
        layout[axis]["showticklabels"] = False
    return plain_figure(go.Figure(dict(data=[], layout=layout), _validate=False))


@lru_cache(maxsize=4)
def _candle_layout(theme: str) -> str:
    """The candlestick's layout for ``theme`` (JSON): a price row over a volume row sharing
    the x axis, made readable (:func:`readable`) once instead of on every figure."""
    layout = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25],
                           vertical_spacing=0.03).to_dict()["layout"]
    layout["xaxis"]["rangeslider"] = dict(visible=False)
    layout["yaxis"]["title"] = dict(text="price")
    layout["yaxis2"]["title"] = dict(text="volume")
    layout.update(title=dict(text="", x=0, xanchor="left"), height=540,
                  margin=dict(l=10, r=10, t=40, b=10),
                  uirevision="live")  # keep the user's zoom across refreshes
    # The legend on its own row under the title's row (where Plotly's toolbar shows on
    # hover); the title is set per figure, so its row is made here.
    fig = readable(go.Figure(layout=layout))
    fig.update_layout(margin=dict(t=72), title=dict(y=0.985, yanchor="top"))
    return json.dumps(fig.to_dict()["layout"])


def _times(ts: pd.Series) -> np.ndarray:
    """Epoch ms as ISO strings in UTC, the form Plotly's validation used to send."""
    return np.datetime_as_string(ts.to_numpy(dtype="int64").astype("datetime64[ms]"),
                                 unit="ms")


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
