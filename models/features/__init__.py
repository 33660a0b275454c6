"""The one feature pipeline: used in batch by the model lab and per bar by the live scorer.

Each bar feature is defined once, in :mod:`models.features.specs` (its lookback, batch form and
streaming recipe side by side); this module holds the groups and the public functions.

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

import re
from typing import Iterable

import numpy as np
import pandas as pd

from models.features.kernels import EMA_WINDOW_FACTOR, BarArrays
from models.features.specs import (FEATURE_GROUPS, MACD_FAST, MACD_SIGNAL, MACD_SLOW, SPECS,
                                   FeatureSpec, batch_feature, check_groups, parse_feature,
                                   spec_examples)
from models.features.fundamentals import fundamentals_features, is_fundamentals_feature
from models.features.sentiment import is_sentiment_feature, sentiment_features

#: Groups computed from another stream than the bars (joined as of each bar's end).
STREAM_GROUPS = ("sentiment", "fundamentals")

#: Scale-free features only. Price levels (``close``, raw moving averages, lags of the close:
#: :func:`is_price_level`) are opt-in: they are non-stationary, so a model fitted on one price
#: range extrapolates on the next (figures: docs/DESIGN_FIGURES.md).
#: Calendar features are opt-in too (group ``calendar``), and left out where they do not vary.
DEFAULT_FEATURES: list[str] = [
    "ret_1", "ret_5", "ret_20", "ret_lag_1", "close_to_sma_20", "rsi_14",
    "bb_width_20", "volatility_20", "hl_range", "vol_z_20",
]

#: Pseudo-group accepted by :func:`expand_features`.
DEFAULT_GROUP = "default"

#: Features measured in price units (their scale follows the price level).
PRICE_LEVEL_FEATURES = re.compile(r"^(open|high|low|close|sma_\d+|ema_\d+|close_lag_\d+|macd\w*)$")

__all__ = ["FEATURE_GROUPS", "STREAM_GROUPS", "DEFAULT_FEATURES", "DEFAULT_GROUP", "SPECS",
           "FeatureSpec", "EMA_WINDOW_FACTOR", "MACD_FAST", "MACD_SLOW", "MACD_SIGNAL",
           "compute_features", "max_lookback", "expand_features", "validate_features",
           "all_features", "every_spec_feature", "is_joined_feature", "is_price_level",
           "level_features_note", "LEVEL_FEATURES_NOTE"]


def compute_features(bars: pd.DataFrame, features: list[str], news: pd.DataFrame | None = None,
                     interval: str | None = None,
                     fundamentals: pd.DataFrame | None = None) -> pd.DataFrame:
    """Feature frame for ``bars``: same index, one float column per name in ``features``.

    ``bars`` holds the columns ``ts, open, high, low, close, volume`` (plus ``symbol`` and
    ``interval`` when several series are mixed). One series is taken in ts order; with several
    ``symbol``/``interval`` values each series is computed on its own and the rows are put back
    where they were. Rows without enough history are NaN.

    Sentiment features (:mod:`models.features.sentiment`) come from ``news`` instead, joined as of each
    bar's end (``interval`` is needed only when ``bars`` has no ``interval`` column).
    """
    names = validate_features(features)
    fund_names = [n for n in names if is_fundamentals_feature(n)]
    if fund_names:  # fundamentals snapshots (models/features/fundamentals.py), as of each bar's end
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
            series = BarArrays(bars.iloc[pos])
            for j, name in enumerate(names):
                out[pos, j] = batch_feature(series, name)
    return pd.DataFrame(out, index=bars.index, columns=names)


def max_lookback(features: Iterable[str]) -> int:
    """Number of most recent bars (including the current one) that determine the last row."""
    names = validate_features(features)
    return max((_lookback(n) for n in names), default=1)


def _lookback(name: str) -> int:
    parsed = parse_feature(name)
    if parsed is None:
        return 1  # joined from another stream as of the bar's end: the bar itself
    spec, param = parsed
    return spec.lookback(param)


def is_joined_feature(name) -> bool:
    """A feature computed from another stream than the bars (news, fundamentals), joined as
    of each bar's end; the scorer follows it with that stream's tracker, not the bar state."""
    return is_sentiment_feature(name) or is_fundamentals_feature(name)


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
        if parse_feature(name) is None and not is_joined_feature(name):
            known = ", ".join(sorted(all_features()))
            raise ValueError(
                f"unknown feature {name!r}; use a group ({', '.join(FEATURE_GROUPS)}, "
                f"{DEFAULT_GROUP}) or one of: {known}"
            )
    return names


def all_features() -> list[str]:
    """Every bar feature listed in a group (parametrised families accept other windows too).

    The ``sentiment`` group is left out: it is computed from news, not bars (the scorer's
    streaming form is :class:`models.features.sentiment.SentimentTracker`, not the bar state)."""
    return list(dict.fromkeys(f for group, names in FEATURE_GROUPS.items()
                              if group not in STREAM_GROUPS for f in names))


def every_spec_feature() -> list[str]:
    """Every bar feature spec as names (the grouped ones plus each family's examples): what
    the batch = streaming tests iterate, so a new spec is tested without being listed."""
    return spec_examples({g: m for g, m in FEATURE_GROUPS.items() if g not in STREAM_GROUPS})


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


check_groups(FEATURE_GROUPS, is_joined_feature)
