"""Every bar feature, defined once: its lookback, its batch form and its streaming recipe side by
side in one :class:`FeatureSpec`.

Adding a bar feature is one ``fixed(...)`` or ``family(...)`` call here plus its name in a group
of :data:`FEATURE_GROUPS` (below, in this file too); the lab (batch), the scorer (streaming), the charts
and the batch = streaming equality test (tests/test_streaming_features.py, which iterates
:func:`spec_examples`) all pick it up. A spec that is in no group, or a group name that is no
spec, is refused at import, for the lab and the scorer alike.

- ``batch(s, p)``: the values over one whole series (:class:`~models.features.kernels.BarArrays`)
  with the kernels of :mod:`models.features.kernels`; NaN during warm-up. It is the definition.
- ``stream(g, p)``: the same computation as a graph of nodes over the last values of each
  series, built with the primitives of :class:`models.streaming.FeatureGraph` (``g.input``,
  ``g.lag``, ``g.fn``, ``g.wsum``, ``g.wstd``, ``g.mean``, ``g.ema``, ``g.feature``). Element-wise
  steps use the same functions as the batch form, so the numbers are the batch's bit for bit.
- ``lookback(p)``: the number of most recent bars (including the current one) that determine
  the value; tests/test_features.py proves it is tight.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from models.features.kernels import (
    TAU, BarArrays, day_of_week, ema_window, ewm_window, gains, log_ratio, losses,
    minute_of_day, ratio_minus_one, rsi_value, shift, window_mean, window_std, zscore,
)
from models.features.fundamentals import FUNDAMENTALS_GROUP
from models.features.sentiment import SENTIMENT_GROUP

MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9

#: Named groups of feature names, for the lab's pickers and the CLI (every spec is in one).
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
    "sentiment": SENTIMENT_GROUP,  # news joined as of the bar's end: models/features/sentiment.py
    "fundamentals": FUNDAMENTALS_GROUP,  # snapshots as of the bar's end: models/features/fundamentals.py
}


@dataclass(frozen=True)
class FeatureSpec:
    """One bar feature (``family=False``: the name itself) or one parametrised family
    (``family=True``: names ``<key>_<p>`` for integers ``p >= min_param``).

    Immutable; the registry :data:`SPECS` is filled at import and only read afterwards, from
    any thread. ``examples`` are the parameters the equality and causality tests try besides
    the ones listed in the groups."""

    key: str
    lookback: Callable[[int], int]
    batch: Callable[[BarArrays, int], np.ndarray]
    stream: Callable[[Any, int], Any]
    family: bool = False
    min_param: int = 1
    examples: tuple[int, ...] = ()

    def name(self, param: int = 0) -> str:
        return f"{self.key}_{param}" if self.family else self.key


#: key -> spec (fixed names and family prefixes share the namespace)
SPECS: dict[str, FeatureSpec] = {}
_FAMILY_RE = re.compile(r"^([a-z_]+?)_(\d+)$")


def fixed(key: str, lookback: int, batch, stream) -> None:
    """Register a feature without parameter."""
    SPECS[key] = FeatureSpec(key, lambda _p, n=lookback: n, batch, stream)


def family(key: str, lookback, batch, stream, min_param: int = 1,
           examples: tuple[int, ...] = ()) -> None:
    """Register a family ``<key>_<p>``; ``lookback``, ``batch`` and ``stream`` take ``p``."""
    SPECS[key] = FeatureSpec(key, lookback, batch, stream, True, min_param, examples)


def parse_feature(name: Any) -> tuple[FeatureSpec, int] | None:
    """``(spec, param)`` of a bar feature name, or None (unknown, or not a bar feature)."""
    if not isinstance(name, str):
        return None
    spec = SPECS.get(name)
    if spec is not None and not spec.family:
        return spec, 0
    m = _FAMILY_RE.match(name)
    if m:
        spec = SPECS.get(m.group(1))
        param = int(m.group(2))
        if (spec is not None and spec.family and param >= spec.min_param
                and str(param) == m.group(2)):
            return spec, param
    return None


def batch_feature(s: BarArrays, name: str) -> np.ndarray:
    """The batch values of one bar feature on one series (cached per series)."""
    spec, param = parse_feature(name)
    return s.cached(name, lambda: spec.batch(s, param))


def spec_examples(groups: dict[str, list[str]]) -> list[str]:
    """Every spec as feature names: the grouped names plus each family's examples and smallest
    parameter; what the equality tests iterate, so a new spec is tested without listing it."""
    names = [n for members in groups.values() for n in members if parse_feature(n)]
    for spec in SPECS.values():
        params = (spec.min_param, *spec.examples) if spec.family else (0,)
        names.extend(spec.name(p) for p in params)
    return list(dict.fromkeys(names))


def check_groups(groups: dict[str, list[str]], joined: Callable[[str], bool]) -> None:
    """Refuse a spec listed in no group, and a grouped name that is neither a spec nor a
    feature ``joined`` from another stream (news, fundamentals)."""
    listed = {parse_feature(n)[0].key for m in groups.values() for n in m if parse_feature(n)}
    orphans = [k for k in SPECS if k not in listed]
    if orphans:
        raise ValueError(f"feature {orphans[0]!r} is in no group of FEATURE_GROUPS")
    unknown = [n for m in groups.values() for n in m if not parse_feature(n) and not joined(n)]
    if unknown:
        raise ValueError(f"grouped feature {unknown[0]!r} has no FeatureSpec")


# ---------------------------------------------------------------------------------------------
# The definitions. ``s``: one series' arrays (batch); ``g``: the streaming graph.

def _input(field: str) -> None:
    fixed(field, 1, lambda s, _: getattr(s, field), lambda g, _: g.input(field))


for _field in ("open", "high", "low", "close", "volume"):
    _input(_field)


def _hl_range(h, lo, c):
    return (h - lo) / c


def _volume_change(v, prev):
    # log((v_t + 1) / (v_{t-1} + 1)): finite even when a bar traded nothing.
    return np.log((v + 1.0) / (prev + 1.0))


fixed("hl_range", 1,
      lambda s, _: _hl_range(s.high, s.low, s.close),
      lambda g, _: g.fn("hl_range", _hl_range, g.input("high"), g.input("low"), g.close()))
fixed("volume_change", 2,
      lambda s, _: _volume_change(s.volume, shift(s.volume, 1)),
      lambda g, _: g.fn("volume_change", _volume_change, g.input("volume"),
                        g.lag(g.input("volume"), 1, "volume")))

# MACD from the windowed EMAs (12, 26, and 9 over the MACD line): 26*3 + 9*3 - 1 = 104 bars.
_MACD_LOOKBACK = ema_window(MACD_SLOW) + ema_window(MACD_SIGNAL) - 1
fixed("macd", ema_window(MACD_SLOW),
      lambda s, _: batch_feature(s, f"ema_{MACD_FAST}") - batch_feature(s, f"ema_{MACD_SLOW}"),
      lambda g, _: g.fn("macd", lambda a, b: a - b, g.ema(MACD_FAST), g.ema(MACD_SLOW)))
fixed("macd_signal", _MACD_LOOKBACK,
      lambda s, _: ewm_window(batch_feature(s, "macd"), MACD_SIGNAL),
      lambda g, _: g.ema(MACD_SIGNAL, g.feature("macd"), key="macd"))
fixed("macd_hist", _MACD_LOOKBACK,
      lambda s, _: batch_feature(s, "macd") - batch_feature(s, "macd_signal"),
      lambda g, _: g.fn("macd_hist", lambda m, sig: m - sig, g.feature("macd"),
                        g.feature("macd_signal")))


# Calendar features: the bar's start ts in UTC.
def _calendar(key: str, expr: Callable[[np.ndarray], np.ndarray]) -> None:
    fixed(key, 1, lambda s, _: expr(s.ts), lambda g, _: g.fn(key, expr, g.input("ts")))


_calendar("minute_sin", lambda t: np.sin(TAU * minute_of_day(t) / 1440.0))
_calendar("minute_cos", lambda t: np.cos(TAU * minute_of_day(t) / 1440.0))
_calendar("dow_sin", lambda t: np.sin(TAU * day_of_week(t) / 7.0))
_calendar("dow_cos", lambda t: np.cos(TAU * day_of_week(t) / 7.0))

family("ret", lambda h: h + 1,
       lambda s, h: ratio_minus_one(s.close, shift(s.close, h)),
       lambda g, h: g.fn(f"ret_{h}", ratio_minus_one, g.close(), g.lag(g.close(), h, "close")),
       examples=(2,))
family("logret", lambda h: h + 1,
       lambda s, h: log_ratio(s.close, shift(s.close, h)),
       lambda g, h: g.fn(f"logret_{h}", log_ratio, g.close(), g.lag(g.close(), h, "close")),
       examples=(3,))
family("sma", lambda w: w,
       lambda s, w: window_mean(s.close, w),
       lambda g, w: g.mean("close", g.close(), w))
# ema_<span>: an exponentially weighted average over a fixed window of 3 * span bars.
family("ema", ema_window,
       lambda s, span: ewm_window(s.close, span),
       lambda g, span: g.ema(span), examples=(3,))
family("close_to_sma", lambda w: w,
       lambda s, w: ratio_minus_one(s.close, batch_feature(s, f"sma_{w}")),
       lambda g, w: g.fn(f"close_to_sma_{w}", ratio_minus_one, g.close(), g.feature(f"sma_{w}")),
       examples=(7,))
family("close_to_ema", ema_window,
       lambda s, w: ratio_minus_one(s.close, batch_feature(s, f"ema_{w}")),
       lambda g, w: g.fn(f"close_to_ema_{w}", ratio_minus_one, g.close(), g.feature(f"ema_{w}")),
       examples=(7,))


# rsi_<w>: Cutler's RSI, simple rolling means of gains and losses over w changes.
def _rsi_batch(s: BarArrays, w: int) -> np.ndarray:
    change = s.close - shift(s.close, 1)
    return rsi_value(window_mean(gains(change), w), window_mean(losses(change), w))


def _rsi_stream(g, w: int):
    change = g.fn("change_1", lambda c, p: c - p, g.close(), g.lag(g.close(), 1, "close"))
    gain, loss = g.fn("gain", gains, change), g.fn("loss", losses, change)
    return g.fn(f"rsi_{w}", rsi_value, g.mean("gain", gain, w), g.mean("loss", loss, w))


family("rsi", lambda w: w + 1, _rsi_batch, _rsi_stream, examples=(2, 30))


# bb_width_<w>: (upper - lower) / middle with bands at +-2 population standard deviations.
def _bb_width(sd, m):
    return 4.0 * sd / m


family("bb_width", lambda w: w,
       lambda s, w: _bb_width(window_std(s.close, w, ddof=0), batch_feature(s, f"sma_{w}")),
       lambda g, w: g.fn(f"bb_width_{w}", _bb_width, g.wstd(f"std(close,{w})", g.close(), w, 0),
                         g.feature(f"sma_{w}")),
       min_param=2)
family("volatility", lambda w: w + 1,
       lambda s, w: window_std(batch_feature(s, "logret_1"), w, ddof=1),
       lambda g, w: g.wstd(f"volatility_{w}", g.feature("logret_1"), w, 1), min_param=2)
family("vol_z", lambda w: w,
       lambda s, w: zscore(s.volume, window_mean(s.volume, w), window_std(s.volume, w, ddof=0)),
       lambda g, w: g.fn(f"vol_z_{w}", zscore, g.input("volume"),
                         g.mean("volume", g.input("volume"), w),
                         g.wstd(f"std(volume,{w})", g.input("volume"), w, 0)),
       min_param=2, examples=(7,))
family("close_lag", lambda k: k + 1,
       lambda s, k: shift(s.close, k),
       lambda g, k: g.lag(g.close(), k, "close"), examples=(10,))
family("ret_lag", lambda k: k + 2,
       lambda s, k: shift(batch_feature(s, "ret_1"), k),
       lambda g, k: g.lag(g.feature("ret_1"), k, "ret_1"), examples=(7,))
