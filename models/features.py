"""The one feature pipeline: used in batch by the model lab and per bar by the live scorer.

Public surface (kept stable for the scorer):

- :data:`FEATURE_GROUPS` — named groups of feature names, for pickers and the CLI;
- :data:`DEFAULT_FEATURES` — a sensible small set;
- :func:`compute_features` — ``bars -> DataFrame`` with one column per feature, the same index
  as ``bars`` and NaN during warm-up;
- :func:`max_lookback` — how many most recent bars are needed to compute the last row exactly;
- :func:`expand_features` / :func:`validate_features` — group names and feature names to a
  checked list of feature names.

Finite memory, so batch and stream give identical numbers
----------------------------------------------------------
Every feature is a function of at most ``max_lookback(features)`` consecutive bars (the bar
itself and the ones before it), never of anything later. The scorer can therefore keep only the
last ``max_lookback`` bars, call :func:`compute_features` on them and read the last row: it is
bit-for-bit the row the lab computed over the whole history (tests/test_features.py proves it).

That rules out the textbook recursive indicators, whose value depends on every bar since the
series began (and so on where the series happens to start). The choices made instead:

- ``ema_<span>``: an exponentially weighted average over a *fixed window* of ``3 * span`` bars,
  weights ``(1 - a) ** age`` with ``a = 2 / (span + 1)``, normalised to sum to 1. The tail a
  classic infinite EMA would add weighs ``(1 - a) ** (3 span)`` ≈ e^-6 ≈ 0.25 %; normalising
  redistributes it, so the level is unbiased.
- ``macd`` / ``macd_signal`` / ``macd_hist``: built from those windowed EMAs (12, 26, and 9 over
  the MACD line), so they have a finite lookback too (26*3 + 9*3 - 1 = 104 bars).
- ``rsi_<w>``: Cutler's RSI, i.e. simple rolling means of gains and losses over ``w`` changes
  instead of Wilder's recursive smoothing; 50 when the window has no change at all.
- Windowed sums are evaluated as a fixed sequence of element-wise additions over the window
  (newest bar first), never as running sums or cumulative sums, whose rounding would carry
  history; so the same window of inputs always yields the same floating-point result.

Parametrised names: ``sma_<w>``, ``ema_<span>``, ``close_to_sma_<w>``, ``close_to_ema_<span>``,
``ret_<h>``, ``logret_<h>``, ``rsi_<w>``, ``bb_width_<w>``, ``volatility_<w>``, ``vol_z_<w>``,
``close_lag_<k>``, ``ret_lag_<k>`` accept any positive integer; the groups list common choices.
Calendar features use the bar's start ``ts`` in UTC.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from models.fundamentals import (FUNDAMENTALS_GROUP, fundamentals_features,
                                 is_fundamentals_feature)
from models.sentiment import SENTIMENT_GROUP, is_sentiment_feature, sentiment_features

FEATURE_GROUPS: dict[str, list[str]] = {
    "raw": ["open", "high", "low", "close", "volume"],
    "returns": ["ret_1", "ret_5", "ret_20", "logret_1", "logret_5", "logret_20"],
    "moving_averages": [
        "sma_5", "sma_10", "sma_20", "sma_50", "ema_10", "ema_20", "ema_50",
        "close_to_sma_5", "close_to_sma_20", "close_to_sma_50", "close_to_ema_10",
        "close_to_ema_20", "close_to_ema_50",
    ],
    "macd": ["macd", "macd_signal", "macd_hist"],
    "rsi": ["rsi_14"],
    "bollinger": ["bb_width_20"],
    "volatility": ["volatility_10", "volatility_20"],
    "range": ["hl_range"],
    "volume": ["vol_z_20", "volume_change"],
    "lags": ["close_lag_1", "close_lag_2", "close_lag_3", "ret_lag_1", "ret_lag_2", "ret_lag_3"],
    "calendar": ["minute_sin", "minute_cos", "dow_sin", "dow_cos"],
    "sentiment": SENTIMENT_GROUP,  # news joined as of the bar's end: models/sentiment.py
    "fundamentals": FUNDAMENTALS_GROUP,  # snapshots as of the bar's end: models/fundamentals.py
}
#: Groups computed from another stream than the bars (joined as of each bar's end).
STREAM_GROUPS = ("sentiment", "fundamentals")

#: Scale-free features only. Price levels (``close``, raw moving averages, lags of the close:
#: :func:`is_price_level`) are opt-in: they are non-stationary, so a model fitted on one price
#: range extrapolates on the next (one walk-forward fold read skill -2.1 from ``close`` alone).
#: Calendar features are opt-in too (group ``calendar``), and left out where they do not vary.
DEFAULT_FEATURES: list[str] = [
    "ret_1", "ret_5", "ret_20", "ret_lag_1", "close_to_sma_20", "rsi_14",
    "bb_width_20", "volatility_20", "hl_range", "vol_z_20",
]

#: Pseudo-group accepted by :func:`expand_features`.
DEFAULT_GROUP = "default"

#: Features measured in price units (their scale follows the price level).
PRICE_LEVEL_FEATURES = re.compile(r"^(open|high|low|close|sma_\d+|ema_\d+|close_lag_\d+|macd\w*)$")

EMA_WINDOW_FACTOR = 3
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9


def compute_features(bars: pd.DataFrame, features: list[str], news: pd.DataFrame | None = None,
                     interval: str | None = None,
                     fundamentals: pd.DataFrame | None = None) -> pd.DataFrame:
    """Feature frame for ``bars``: same index, one float column per name in ``features``.

    ``bars`` holds the columns ``ts, open, high, low, close, volume`` (plus ``symbol`` and
    ``interval`` when several series are mixed). One series is taken in ts order; with several
    ``symbol``/``interval`` values each series is computed on its own and the rows are put back
    where they were. Rows without enough history are NaN.

    Sentiment features (:mod:`models.sentiment`) come from ``news`` instead, joined as of each
    bar's end (``interval`` is needed only when ``bars`` has no ``interval`` column).
    """
    names = validate_features(features)
    fund_names = [n for n in names if is_fundamentals_feature(n)]
    if fund_names:  # fundamentals snapshots (models/fundamentals.py), as of each bar's end
        rest = [n for n in names if n not in fund_names]
        parts = [compute_features(bars, rest, news=news, interval=interval)] if rest else []
        parts.append(fundamentals_features(bars, fundamentals, fund_names, interval))
        return pd.concat(parts, axis=1)[names]
    news_names = [n for n in names if is_sentiment_feature(n)]
    if news_names:
        rest = [n for n in names if n not in news_names]
        parts = [compute_features(bars, rest)] if rest else []
        parts.append(sentiment_features(bars, news, news_names, interval))
        return pd.concat(parts, axis=1)[names]
    out = np.full((len(bars), len(names)), np.nan)
    if len(bars):
        keys = [c for c in ("symbol", "interval") if c in bars.columns]
        if keys and bars[keys].drop_duplicates().shape[0] > 1:
            codes = bars.groupby(keys, sort=False).ngroup().to_numpy()
            groups = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
        else:
            groups = [np.arange(len(bars))]
        ts = bars["ts"].to_numpy()
        for pos in groups:
            pos = pos[np.argsort(ts[pos], kind="stable")]
            series = _Series(bars.iloc[pos])
            for j, name in enumerate(names):
                out[pos, j] = series.feature(name)
    return pd.DataFrame(out, index=bars.index, columns=names)


def max_lookback(features: Iterable[str]) -> int:
    """Number of most recent bars (including the current one) that determine the last row."""
    names = validate_features(features)
    return max((_lookback(n) for n in names), default=1)


def expand_features(items: Iterable[str]) -> list[str]:
    """Group names (``"returns"``, ``"default"``) and feature names to a de-duplicated, checked
    list of feature names, in the order given."""
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item == DEFAULT_GROUP:
            out.extend(DEFAULT_FEATURES)
        elif item in FEATURE_GROUPS:
            out.extend(FEATURE_GROUPS[item])
        else:
            out.append(item)
    return validate_features(out)


def validate_features(features: Iterable[str]) -> list[str]:
    """The names, de-duplicated in order; ``ValueError`` naming the first unknown one."""
    names = list(dict.fromkeys(features))
    for name in names:
        if _parse(name) is None:
            known = ", ".join(sorted(all_features()))
            raise ValueError(
                f"unknown feature {name!r}; use a group ({', '.join(FEATURE_GROUPS)}, "
                f"{DEFAULT_GROUP}) or one of: {known}"
            )
    return names


def all_features() -> list[str]:
    """Every bar feature listed in a group (parametrised families accept other windows too).

    The ``sentiment`` group is left out: it is computed from news, not bars (the scorer's
    streaming form is :class:`models.sentiment.SentimentTracker`, not the bar state)."""
    return list(dict.fromkeys(f for group, names in FEATURE_GROUPS.items()
                              if group not in STREAM_GROUPS for f in names))


def is_price_level(name: str) -> bool:
    return PRICE_LEVEL_FEATURES.match(name) is not None


#: Said wherever price-level features are chosen (the lab's warnings, the page).
LEVEL_FEATURES_NOTE = (
    "{names}: price levels, opt-in. They are non-stationary: a model fitted on one price "
    "range meets another in the test period (linear models extrapolate, trees go flat), so "
    "one fold can lose badly from them alone. Scale-free features (returns, close_to_sma_*) "
    "carry the same information without the level."
)


def level_features_note(features) -> str | None:
    """:data:`LEVEL_FEATURES_NOTE` for the price-level features among ``features``, or None."""
    levels = [f for f in features if is_price_level(f)]
    return LEVEL_FEATURES_NOTE.format(names=", ".join(levels)) if levels else None


# ---------------------------------------------------------------------------------------------
# Feature definitions: name -> (lookback in bars, computation on one series)

@dataclass(frozen=True)
class _Family:
    lookback: Callable[[int], int]
    compute: Callable[["_Series", int], np.ndarray]
    min_param: int = 1


_FIXED: dict[str, tuple[int, Callable[["_Series"], np.ndarray]]] = {}
_FAMILIES: dict[str, _Family] = {}
_FAMILY_RE = re.compile(r"^([a-z_]+?)_(\d+)$")


def _parse(name: str):
    if not isinstance(name, str):
        return None
    if name in _FIXED:
        return ("fixed", name, 0)
    if is_sentiment_feature(name) or is_fundamentals_feature(name):
        return ("news", name, 0)  # another stream, not bars: the scorer uses a tracker
    m = _FAMILY_RE.match(name)
    if m and m.group(1) in _FAMILIES:
        param = int(m.group(2))
        if param >= _FAMILIES[m.group(1)].min_param and str(param) == m.group(2):
            return ("family", m.group(1), param)
    return None


def _lookback(name: str) -> int:
    kind, key, param = _parse(name)
    if kind == "news":
        return 1
    return _FIXED[key][0] if kind == "fixed" else _FAMILIES[key].lookback(param)


def _ema_window(span: int) -> int:
    return EMA_WINDOW_FACTOR * span


class _Series:
    """One series' arrays plus a cache of intermediate results (EMAs shared by MACD...)."""

    def __init__(self, bars: pd.DataFrame):
        self.ts = bars["ts"].to_numpy(dtype="int64")
        self.open = bars["open"].to_numpy(dtype="float64")
        self.high = bars["high"].to_numpy(dtype="float64")
        self.low = bars["low"].to_numpy(dtype="float64")
        self.close = bars["close"].to_numpy(dtype="float64")
        self.volume = bars["volume"].to_numpy(dtype="float64")
        self._cache: dict[str, np.ndarray] = {}

    def feature(self, name: str) -> np.ndarray:
        if name not in self._cache:
            kind, key, param = _parse(name)
            with np.errstate(divide="ignore", invalid="ignore"):
                values = (_FIXED[key][1](self) if kind == "fixed"
                          else _FAMILIES[key].compute(self, param))
            self._cache[name] = np.asarray(values, dtype="float64")
        return self._cache[name]


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` delayed by ``k`` bars (NaN for the first ``k``)."""
    out = np.full(len(x), np.nan)
    if k < len(x):
        out[k:] = x[: len(x) - k]
    return out


def _window_sum(x: np.ndarray, w: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Sum over the last ``w`` values (optionally weighted by age 0..w-1), NaN before.

    Accumulated newest-first with element-wise operations, so each result depends only on its
    own window, in a fixed order: the same window gives the same bits whatever came before.
    """
    n = len(x)
    out = np.full(n, np.nan)
    if n < w:
        return out
    acc = np.zeros(n - w + 1)
    for age in range(w):
        seg = x[w - 1 - age: n - age]
        acc += seg if weights is None else weights[age] * seg
    out[w - 1:] = acc
    return out


def _window_mean(x: np.ndarray, w: int) -> np.ndarray:
    return _window_sum(x, w) / w


def _window_std(x: np.ndarray, w: int, ddof: int) -> np.ndarray:
    n = len(x)
    out = np.full(n, np.nan)
    if n < w or w - ddof <= 0:
        return out
    mean = _window_mean(x, w)[w - 1:]
    acc = np.zeros(n - w + 1)
    for age in range(w):
        d = x[w - 1 - age: n - age] - mean
        acc += d * d
    out[w - 1:] = np.sqrt(acc / (w - ddof))
    return out


def _ewm_window(x: np.ndarray, span: int) -> np.ndarray:
    w = _ema_window(span)
    alpha = 2.0 / (span + 1.0)
    weights = (1.0 - alpha) ** np.arange(w)
    weights = weights / weights.sum()
    return _window_sum(x, w, weights)


def _ema(s: _Series, span: int) -> np.ndarray:
    key = f"ema_{span}"
    if key not in s._cache:
        s._cache[key] = _ewm_window(s.close, span)
    return s._cache[key]


def _sma(s: _Series, w: int) -> np.ndarray:
    key = f"sma_{w}"
    if key not in s._cache:
        s._cache[key] = _window_mean(s.close, w)
    return s._cache[key]


def _logret1(s: _Series) -> np.ndarray:
    return np.log(s.close / _shift(s.close, 1))


def _ret(s: _Series, h: int) -> np.ndarray:
    return s.close / _shift(s.close, h) - 1.0


def _macd_line(s: _Series) -> np.ndarray:
    key = "macd"
    if key not in s._cache:
        s._cache[key] = _ema(s, MACD_FAST) - _ema(s, MACD_SLOW)
    return s._cache[key]


def _macd_signal(s: _Series) -> np.ndarray:
    key = "macd_signal"
    if key not in s._cache:
        s._cache[key] = _ewm_window(_macd_line(s), MACD_SIGNAL)
    return s._cache[key]


def _rsi(s: _Series, w: int) -> np.ndarray:
    change = s.close - _shift(s.close, 1)
    gain = np.where(np.isnan(change), np.nan, np.maximum(change, 0.0))
    loss = np.where(np.isnan(change), np.nan, np.maximum(-change, 0.0))
    up, down = _window_mean(gain, w), _window_mean(loss, w)
    total = up + down
    rsi = 100.0 * up / total
    return np.where(total == 0.0, 50.0, rsi)


def _bb_width(s: _Series, w: int) -> np.ndarray:
    # (upper - lower) / middle with bands at +-2 population standard deviations.
    return 4.0 * _window_std(s.close, w, ddof=0) / _sma(s, w)


def _vol_z(s: _Series, w: int) -> np.ndarray:
    mean = _window_mean(s.volume, w)
    std = _window_std(s.volume, w, ddof=0)
    z = (s.volume - mean) / std
    return np.where(std == 0.0, 0.0, z)


def _minute_of_day(s: _Series) -> np.ndarray:
    return ((s.ts // 60_000) % 1440).astype("float64")


def _day_of_week(s: _Series) -> np.ndarray:
    # 1970-01-01 was a Thursday; Monday = 0.
    return (((s.ts // 86_400_000) + 3) % 7).astype("float64")


_TAU = 2.0 * math.pi

_FIXED.update({
    "open": (1, lambda s: s.open),
    "high": (1, lambda s: s.high),
    "low": (1, lambda s: s.low),
    "close": (1, lambda s: s.close),
    "volume": (1, lambda s: s.volume),
    "hl_range": (1, lambda s: (s.high - s.low) / s.close),
    # log((v_t + 1) / (v_{t-1} + 1)): finite even when a bar traded nothing.
    "volume_change": (2, lambda s: np.log((s.volume + 1.0) / (_shift(s.volume, 1) + 1.0))),
    "macd": (_ema_window(MACD_SLOW), _macd_line),
    "macd_signal": (_ema_window(MACD_SLOW) + _ema_window(MACD_SIGNAL) - 1, _macd_signal),
    "macd_hist": (_ema_window(MACD_SLOW) + _ema_window(MACD_SIGNAL) - 1,
                  lambda s: _macd_line(s) - _macd_signal(s)),
    "minute_sin": (1, lambda s: np.sin(_TAU * _minute_of_day(s) / 1440.0)),
    "minute_cos": (1, lambda s: np.cos(_TAU * _minute_of_day(s) / 1440.0)),
    "dow_sin": (1, lambda s: np.sin(_TAU * _day_of_week(s) / 7.0)),
    "dow_cos": (1, lambda s: np.cos(_TAU * _day_of_week(s) / 7.0)),
})

_FAMILIES.update({
    "ret": _Family(lambda h: h + 1, _ret),
    "logret": _Family(lambda h: h + 1, lambda s, h: np.log(s.close / _shift(s.close, h))),
    "sma": _Family(lambda w: w, _sma),
    "ema": _Family(_ema_window, _ema),
    "close_to_sma": _Family(lambda w: w, lambda s, w: s.close / _sma(s, w) - 1.0),
    "close_to_ema": _Family(_ema_window, lambda s, span: s.close / _ema(s, span) - 1.0),
    "rsi": _Family(lambda w: w + 1, _rsi),
    "bb_width": _Family(lambda w: w, _bb_width, min_param=2),
    "volatility": _Family(lambda w: w + 1, lambda s, w: _window_std(_logret1(s), w, ddof=1),
                          min_param=2),
    "vol_z": _Family(lambda w: w, _vol_z, min_param=2),
    "close_lag": _Family(lambda k: k + 1, lambda s, k: _shift(s.close, k)),
    "ret_lag": _Family(lambda k: k + 2, lambda s, k: _shift(_ret(s, 1), k)),
})
