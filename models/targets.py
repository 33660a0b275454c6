"""What a model predicts, aligned to the bar whose features it sees.

Row ``t`` of a target is what a model standing at the end of bar ``t`` (knowing bars up to and
including ``t``) tries to predict:

- ``next_close``: the close of bar ``t+1``;
- ``close_ahead``: the close of bar ``t+h`` (``horizon`` h, 1 = next_close);
- ``next_return``: the simple return from close ``t`` to close ``t+1``;
- ``same_bar_close_from_volume``: the seed project's setup, the close of bar ``t`` itself from
  that bar's volume. It is **not a forecast**: the volume is only known once the bar is over,
  at the same moment as the close. Kept so the lab can show why it looked good.

``base_close`` (:func:`reference_close`) is the last close known before the predicted one: the
close of bar ``t`` for forecasts, of bar ``t-1`` for the same-bar setup. Persistence predicts
it, directional accuracy measures moves relative to it, and :func:`to_close` uses it to turn a
predicted return into a predicted close.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TargetSpec:
    """One prediction target (next close, next return, ...): its label, whether it is a return
    and uses the horizon. Immutable entries of :data:`TARGETS`."""

    key: str
    label: str
    description: str
    is_forecast: bool
    is_return: bool  # the target is a return (else a price level)
    uses_horizon: bool


TARGETS: dict[str, TargetSpec] = {
    "next_close": TargetSpec(
        "next_close", "Next close", "Close of the next bar (t+1).", True, False, False),
    "close_ahead": TargetSpec(
        "close_ahead", "Close h bars ahead", "Close of bar t+h, h = horizon.", True, False, True),
    "next_return": TargetSpec(
        "next_return", "Next return", "Simple return from this close to the next one.",
        True, True, False),
    "same_bar_close_from_volume": TargetSpec(
        "same_bar_close_from_volume", "Same-bar close from volume (seed setup, not a forecast)",
        "The seed project's setup: the close of the same bar predicted from its volume. Not a "
        "forecast: the volume is only known when the bar is over, together with its close.",
        False, False, False),
}

#: The only feature the seed's same-bar setup may use (any price feature would be the answer).
SAME_BAR_FEATURES = ["volume"]


def get_target(target: str) -> TargetSpec:
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}") from None


def effective_horizon(target: str, horizon: int = 1) -> int:
    """Bars between the last known bar and the predicted close (0 for the same-bar setup)."""
    spec = get_target(target)
    if spec.uses_horizon:
        if int(horizon) < 1:
            raise ValueError(f"horizon must be at least 1 bar, got {horizon}")
        return int(horizon)
    return 0 if not spec.is_forecast else 1


def make_target(bars: pd.DataFrame, target: str, horizon: int = 1) -> pd.Series:
    """The target for every row of ``bars`` (same index), NaN where not yet known."""
    h = effective_horizon(target, horizon)
    close = bars["close"].astype("float64")
    if target == "same_bar_close_from_volume":
        values = close
    else:
        ahead = _shift_within_series(bars, close, -h)
        values = ahead / close - 1.0 if get_target(target).is_return else ahead
    return pd.Series(values.to_numpy(), index=bars.index, name=target, dtype="float64")


def target_close(bars: pd.DataFrame, target: str, horizon: int = 1) -> pd.Series:
    """The close the target is about (the realised close it predicts, in price units)."""
    h = effective_horizon(target, horizon)
    close = bars["close"].astype("float64")
    values = close if h == 0 else _shift_within_series(bars, close, -h)
    return pd.Series(values.to_numpy(), index=bars.index, name="actual_close", dtype="float64")


def reference_close(bars: pd.DataFrame, target: str) -> pd.Series:
    """The last close known before the predicted one (see module docstring)."""
    close = bars["close"].astype("float64")
    if get_target(target).is_forecast:
        values = close
    else:
        values = _shift_within_series(bars, close, 1)
    return pd.Series(values.to_numpy(), index=bars.index, name="base_close", dtype="float64")


def to_close(target: str, predicted, base_close) -> np.ndarray:
    """A prediction of ``target`` expressed as a predicted close price.

    Price targets are already closes; a predicted return r becomes ``base_close * (1 + r)``.
    """
    spec = get_target(target)
    predicted = np.asarray(predicted, dtype="float64")
    if spec.is_return:
        return np.asarray(base_close, dtype="float64") * (1.0 + predicted)
    return predicted


def from_close(target: str, close, base_close) -> np.ndarray:
    """Inverse of :func:`to_close`: a close price expressed on the target's scale."""
    spec = get_target(target)
    close = np.asarray(close, dtype="float64")
    if spec.is_return:
        return close / np.asarray(base_close, dtype="float64") - 1.0
    return close


def to_close_value(target: str, predicted: float, base_close: float) -> float:
    """:func:`to_close` of one prediction in plain floats, for the live scorer's per-bar path
    (a NumPy round trip per value cost more than the arithmetic; the result is the same)."""
    if get_target(target).is_return:
        return float(base_close) * (1.0 + float(predicted))
    return float(predicted)


def from_close_value(target: str, close: float, base_close: float) -> float:
    """:func:`from_close` of one close in plain floats (same result, including a zero
    ``base_close``, which NumPy turns into ±inf or NaN)."""
    if not get_target(target).is_return:
        return float(close)
    if not base_close:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(from_close(target, close, base_close))
    return float(close) / float(base_close) - 1.0


def _shift_within_series(bars: pd.DataFrame, values: pd.Series, periods: int) -> pd.Series:
    """``values`` shifted by ``periods`` bars in ts order, never across symbols/intervals."""
    keys = [c for c in ("symbol", "interval") if c in bars.columns]
    order = np.argsort(bars["ts"].to_numpy(), kind="stable")
    ordered = values.iloc[order]
    if keys:
        shifted = ordered.groupby([bars[k].iloc[order].to_numpy() for k in keys],
                                  sort=False).shift(periods)
    else:
        shifted = ordered.shift(periods)
    return shifted.reindex(values.index) if values.index.is_unique else _unsort(shifted, order)


def _unsort(shifted: pd.Series, order: np.ndarray) -> pd.Series:
    out = np.empty(len(order))
    out[order] = shifted.to_numpy()
    return pd.Series(out)
