"""The batch kernels every bar feature is written with: windows summed in a fixed order, lags,
and one series' arrays with a cache of intermediates.

Windowed sums are evaluated as a fixed sequence of element-wise additions over the window
(newest bar first), never as running sums or cumulative sums, whose rounding would carry
history; so the same window of inputs always yields the same floating-point result, and the
streaming form (:mod:`models.streaming`) can repeat it bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

EMA_WINDOW_FACTOR = 3
TAU = 2.0 * math.pi


class BarArrays:
    """One series' bars as float arrays (``ts`` as int64 epoch ms), oldest first, plus a cache
    of intermediate results shared between features (the EMAs MACD reads, the SMAs...).

    Built and read by one call of :func:`models.features.compute_features`, on one thread."""

    def __init__(self, bars: pd.DataFrame):
        self.ts = bars["ts"].to_numpy(dtype="int64")
        self.open = bars["open"].to_numpy(dtype="float64")
        self.high = bars["high"].to_numpy(dtype="float64")
        self.low = bars["low"].to_numpy(dtype="float64")
        self.close = bars["close"].to_numpy(dtype="float64")
        self.volume = bars["volume"].to_numpy(dtype="float64")
        self._cache: dict[str, np.ndarray] = {}

    def cached(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        """``make()`` once per key (a feature or an intermediate) for this series."""
        if key not in self._cache:
            with np.errstate(divide="ignore", invalid="ignore"):
                self._cache[key] = np.asarray(make(), dtype="float64")
        return self._cache[key]


def shift(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` delayed by ``k`` bars (NaN for the first ``k``)."""
    out = np.full(len(x), np.nan)
    if k < len(x):
        out[k:] = x[: len(x) - k]
    return out


def window_sum(x: np.ndarray, w: int, weights: np.ndarray | None = None) -> np.ndarray:
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


def window_mean(x: np.ndarray, w: int) -> np.ndarray:
    return window_sum(x, w) / w


def window_std(x: np.ndarray, w: int, ddof: int) -> np.ndarray:
    n = len(x)
    out = np.full(n, np.nan)
    if n < w or w - ddof <= 0:
        return out
    mean = window_mean(x, w)[w - 1:]
    acc = np.zeros(n - w + 1)
    for age in range(w):
        d = x[w - 1 - age: n - age] - mean
        acc += d * d
    out[w - 1:] = np.sqrt(acc / (w - ddof))
    return out


def ema_window(span: int) -> int:
    """Bars in the fixed window of ``ema_<span>`` (``3 * span``)."""
    return EMA_WINDOW_FACTOR * span


def ema_weights(span: int) -> np.ndarray:
    """Weights by age (newest first) of the windowed EMA: ``(1 - a) ** age`` normalised to 1,
    ``a = 2 / (span + 1)``. The batch and the streaming form both read these."""
    alpha = 2.0 / (span + 1.0)
    weights = (1.0 - alpha) ** np.arange(ema_window(span))
    return weights / weights.sum()


def ewm_window(x: np.ndarray, span: int) -> np.ndarray:
    return window_sum(x, ema_window(span), ema_weights(span))


# ---------------------------------------------------------------------------------------------
# Element-wise expressions with more than one operator, shared by the batch and streaming forms
# (the same expression on the same values gives the same bits).

def ratio_minus_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a / b - 1.0


def log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.log(a / b)


def zscore(v: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.where(std == 0.0, 0.0, (v - mean) / std)


def rsi_value(up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Cutler's RSI from the mean gain and loss; 50 when the window has no change at all."""
    total = up + down
    return np.where(total == 0.0, 50.0, 100.0 * up / total)


def gains(change: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(change), np.nan, np.maximum(change, 0.0))


def losses(change: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(change), np.nan, np.maximum(-change, 0.0))


def minute_of_day(ts: np.ndarray) -> np.ndarray:
    return ((ts // 60_000) % 1440).astype("float64")


def day_of_week(ts: np.ndarray) -> np.ndarray:
    # 1970-01-01 was a Thursday; Monday = 0.
    return (((ts // 86_400_000) + 3) % 7).astype("float64")
