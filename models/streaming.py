"""Streaming features: the batch features of :mod:`models.features`, updated one bar at a time.

:class:`StreamingFeatures` holds one series' state and, River-style, takes a bar with
:meth:`~StreamingFeatures.update` and exposes the feature row in :attr:`~StreamingFeatures.values`.
State is bounded (ring buffers no longer than the feature's lookback) and each update costs a
few microseconds per feature, instead of rebuilding a frame of the last ``max_lookback`` bars.

The batch functions stay the definition. The streaming side reaches the same numbers by:

- windowed sums (SMA, the windowed EMAs, Cutler's RSI means) as O(1) recursions
  (add the new value, drop the one leaving the window; for the EMA weights, scale by
  ``1 - alpha`` first), re-anchored every ``window`` updates by an exact sum in the batch's own
  order (newest first), so the rounding a recursion picks up never outlives one window;
- windowed standard deviations by the sliding form of Welford's update, re-anchored the same
  way, and recomputed exactly when the window is (nearly) constant, where cancellation would
  otherwise decide the sign of a tiny variance;
- lags and ``ret_*``/``logret_*`` from ring buffers of the inputs.

tests/test_streaming_features.py asserts equality with :func:`models.features.compute_features`
to 1e-12 on long random series for every feature, also after a restart that rebuilt the state
from the last ``max_lookback`` stored bars (:meth:`StreamingFeatures.warm`).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Callable, Iterable

import numpy as np

from models.features import (
    EMA_WINDOW_FACTOR, MACD_FAST, MACD_SIGNAL, MACD_SLOW, _parse, max_lookback,
    validate_features,
)

NAN = float("nan")
_TAU = 2.0 * math.pi
_INPUTS = ("ts", "open", "high", "low", "close", "volume")


class StreamingFeatures:
    """One series' features, updated bar by bar.

    ``update(ts, open, high, low, close, volume)`` must see the series' bars in ts order;
    ``values`` is then the feature row of that bar (NaN during warm-up), in ``features`` order.
    """

    def __init__(self, features: Iterable[str]):
        self.features = validate_features(features)
        self.lookback = max_lookback(self.features)
        self.last_ts: int | None = None
        self.values = np.full(len(self.features), NAN)
        self._nodes: dict[str, _Node] = {}
        self._order: list[_Node] = []
        self._outputs = [self._feature(name) for name in self.features]

    def update(self, ts: int, open_: float, high: float, low: float, close: float,
               volume: float) -> np.ndarray:
        bar = (int(ts), float(open_), float(high), float(low), float(close), float(volume))
        for node in self._order:
            node.update(bar)
        self.values = np.array([n.value for n in self._outputs], dtype="float64")
        self.last_ts = bar[0]
        return self.values

    def update_bar(self, bar) -> np.ndarray:
        """``update`` from any object with ``ts, open, high, low, close, volume`` attributes."""
        return self.update(bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume)

    def warm(self, bars: Iterable) -> "StreamingFeatures":
        """Rebuild the state from stored bars (the last ``lookback`` are enough)."""
        for bar in bars:
            self.update_bar(bar)
        return self

    # ---- the graph: one node per intermediate, shared between features ---------------------
    def _node(self, key: str, make: Callable[[], "_Node"]) -> "_Node":
        node = self._nodes.get(key)
        if node is None:
            node = make()  # builds (and registers) its inputs first: topological order
            self._nodes[key] = node
            self._order.append(node)
        return node

    def _input(self, name: str) -> "_Node":
        return self._node(name, lambda: _Input(_INPUTS.index(name)))

    def _lag(self, src: "_Node", k: int, key: str) -> "_Node":
        return self._node(f"lag({key},{k})", lambda: _Lag(src, k))

    def _fn(self, key: str, f: Callable[..., float], *srcs: "_Node") -> "_Node":
        return self._node(key, lambda: _Fn(f, srcs))

    def _wsum(self, key: str, src: "_Node", w: int, decay: float | None = None) -> "_Node":
        return self._node(key, lambda: _WindowSum(src, w, decay))

    def _wstd(self, key: str, src: "_Node", w: int, ddof: int) -> "_Node":
        return self._node(key, lambda: _WindowStd(src, w, ddof))

    def _close(self):
        return self._input("close")

    def _ret(self, h: int) -> "_Node":
        c = self._close()
        return self._fn(f"ret_{h}", lambda c, p: _div(c, p) - 1.0, c, self._lag(c, h, "close"))

    def _logret(self, h: int) -> "_Node":
        c = self._close()
        return self._fn(f"logret_{h}", lambda c, p: _log(_div(c, p)), c,
                        self._lag(c, h, "close"))

    def _sma(self, w: int) -> "_Node":
        s = self._wsum(f"sum_close_{w}", self._close(), w)
        return self._fn(f"sma_{w}", lambda s: s / w, s)

    def _ema(self, span: int, src: "_Node | None" = None, key: str = "close") -> "_Node":
        alpha = 2.0 / (span + 1.0)
        return self._wsum(f"ema({key},{span})", src or self._close(),
                          EMA_WINDOW_FACTOR * span, 1.0 - alpha)

    def _macd(self) -> "_Node":
        return self._fn("macd", lambda a, b: a - b, self._ema(MACD_FAST), self._ema(MACD_SLOW))

    def _macd_signal(self) -> "_Node":
        return self._ema(MACD_SIGNAL, self._macd(), key="macd")

    def _feature(self, name: str) -> "_Node":
        kind, key, p = _parse(name)
        if kind == "fixed":
            if key in ("open", "high", "low", "close", "volume"):
                return self._input(key)
            return self._fixed(key)
        c = self._close()
        if key == "ret":
            return self._ret(p)
        if key == "logret":
            return self._logret(p)
        if key == "sma":
            return self._sma(p)
        if key == "ema":
            return self._ema(p)
        if key == "close_to_sma":
            return self._fn(name, lambda c, m: _div(c, m) - 1.0, c, self._sma(p))
        if key == "close_to_ema":
            return self._fn(name, lambda c, m: _div(c, m) - 1.0, c, self._ema(p))
        if key == "rsi":
            return self._rsi(p)
        if key == "bb_width":
            return self._fn(name, lambda sd, m: _div(4.0 * sd, m),
                            self._wstd(f"std_close_{p}", c, p, 0), self._sma(p))
        if key == "volatility":
            return self._wstd(name, self._logret(1), p, 1)
        if key == "vol_z":
            v = self._input("volume")
            mean = self._fn(f"mean_vol_{p}", lambda s: s / p, self._wsum(f"sum_vol_{p}", v, p))
            return self._fn(name, _zscore, v, mean, self._wstd(f"std_vol_{p}", v, p, 0))
        if key == "close_lag":
            return self._lag(c, p, "close")
        if key == "ret_lag":
            return self._lag(self._ret(1), p, "ret_1")
        raise ValueError(f"no streaming form for feature {name!r}")  # pragma: no cover

    def _fixed(self, key: str) -> "_Node":
        inp = self._input
        if key == "hl_range":
            return self._fn(key, lambda h, lo, c: _div(h - lo, c), inp("high"), inp("low"),
                            self._close())
        if key == "volume_change":
            v = inp("volume")
            return self._fn(key, lambda v, p: _log(_div(v + 1.0, p + 1.0)), v,
                            self._lag(v, 1, "volume"))
        if key == "macd":
            return self._macd()
        if key == "macd_signal":
            return self._macd_signal()
        if key == "macd_hist":
            return self._fn(key, lambda m, s: m - s, self._macd(), self._macd_signal())
        ts = inp("ts")
        if key == "minute_sin":
            return self._fn(key, lambda t: math.sin(_TAU * ((t // 60_000) % 1440) / 1440.0), ts)
        if key == "minute_cos":
            return self._fn(key, lambda t: math.cos(_TAU * ((t // 60_000) % 1440) / 1440.0), ts)
        if key == "dow_sin":
            return self._fn(key, lambda t: math.sin(_TAU * (((t // 86_400_000) + 3) % 7) / 7.0),
                            ts)
        if key == "dow_cos":
            return self._fn(key, lambda t: math.cos(_TAU * (((t // 86_400_000) + 3) % 7) / 7.0),
                            ts)
        raise ValueError(f"no streaming form for feature {key!r}")  # pragma: no cover

    def _rsi(self, w: int) -> "_Node":
        c = self._close()
        change = self._fn("change_1", lambda c, p: c - p, c, self._lag(c, 1, "close"))
        gain = self._fn("gain", lambda d: d if d != d else max(d, 0.0), change)
        loss = self._fn("loss", lambda d: d if d != d else max(-d, 0.0), change)
        up = self._wsum(f"sum_gain_{w}", gain, w)
        down = self._wsum(f"sum_loss_{w}", loss, w)
        return self._fn(f"rsi_{w}", lambda u, d: _rsi_value(u / w, d / w), up, down)


class FeatureSet:
    """One list of features shared by many series (the scorer's: the default ones plus every
    champion's), and where each model's features sit in a row of it."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.lookback = StreamingFeatures(self.names).lookback
        self._cols: dict[tuple[str, ...], np.ndarray] = {}

    def new(self) -> StreamingFeatures:
        return StreamingFeatures(self.names)

    def columns(self, features: list[str]) -> np.ndarray:
        """Positions of a model's features in a row of this set."""
        key = tuple(features)
        if key not in self._cols:
            self._cols[key] = np.array([self.names.index(f) for f in features], dtype=int)
        return self._cols[key]


# ---------------------------------------------------------------------------------------------
# Nodes: each keeps O(window) floats at most and does O(1) amortised work per bar

class _Node:
    value: float = NAN

    def update(self, bar: tuple) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class _Input(_Node):
    def __init__(self, index: int):
        self.index = index

    def update(self, bar: tuple) -> None:
        self.value = bar[self.index]


class _Fn(_Node):
    def __init__(self, f: Callable[..., float], srcs: tuple[_Node, ...]):
        self.f, self.srcs = f, srcs

    def update(self, bar: tuple) -> None:
        self.value = float(self.f(*[s.value for s in self.srcs]))


class _Lag(_Node):
    """The source's value ``k`` bars ago (NaN for the first ``k`` bars)."""

    def __init__(self, src: _Node, k: int):
        self.src, self.k = src, k
        self.ring: deque[float] = deque(maxlen=k + 1)

    def update(self, bar: tuple) -> None:
        self.ring.append(self.src.value)
        self.value = self.ring[0] if len(self.ring) > self.k else NAN


class _WindowSum(_Node):
    """Sum of the last ``w`` source values, optionally weighted ``decay ** age`` normalised to
    sum to 1 (the windowed EMA). NaN until ``w`` consecutive finite values have been seen."""

    def __init__(self, src: _Node, w: int, decay: float | None = None):
        self.src, self.w, self.decay = src, w, decay
        self.ring: deque[float] = deque(maxlen=w)
        if decay is None:
            self.weights = None
        else:
            weights = decay ** np.arange(w)  # as in models.features._ewm_window
            self.weights = [float(x) for x in weights / weights.sum()]
            self.w0 = self.weights[0]
            self.w_out = self.weights[0] * decay ** w  # weight of the value leaving, rescaled
        self.run = 0  # consecutive finite inputs
        self.since_exact = 0
        self.total = NAN

    def update(self, bar: tuple) -> None:
        x = self.src.value
        old = self.ring[0] if len(self.ring) == self.w else NAN
        self.ring.append(x)
        if not math.isfinite(x):
            self.run, self.value, self.total = 0, (x if x != x else NAN), NAN
            return
        self.run += 1
        if self.run < self.w:
            self.value = NAN
            return
        self.since_exact += 1
        if self.run == self.w or self.since_exact >= self.w:
            self.total = self._exact()
        elif self.decay is None:
            self.total = self.total + x - old
        else:
            self.total = self.decay * self.total + self.w0 * x - self.w_out * old
        if not math.isfinite(self.total):
            self.total = self._exact()
        self.value = self.total

    def _exact(self) -> float:
        """The batch's own evaluation order: newest first, starting from zero."""
        self.since_exact = 0
        acc = 0.0
        ring = self.ring
        if self.weights is None:
            for age in range(self.w):
                acc += ring[-1 - age]
        else:
            for age, wt in enumerate(self.weights):
                acc += wt * ring[-1 - age]
        return acc


class _WindowStd(_Node):
    """Standard deviation of the last ``w`` source values (``ddof`` 0 or 1), sliding Welford."""

    def __init__(self, src: _Node, w: int, ddof: int):
        self.src, self.w, self.ddof = src, w, ddof
        self.ring: deque[float] = deque(maxlen=w)
        self.run = 0
        self.since_exact = 0
        self.mean = self.m2 = NAN

    def update(self, bar: tuple) -> None:
        x = self.src.value
        old = self.ring[0] if len(self.ring) == self.w else NAN
        self.ring.append(x)
        if not math.isfinite(x):
            self.run, self.value = 0, (x if x != x else NAN)
            return
        self.run += 1
        if self.run < self.w or self.w - self.ddof <= 0:
            self.value = NAN
            return
        self.since_exact += 1
        if self.run == self.w or self.since_exact >= self.w:
            self._exact()
        else:
            mean = self.mean + (x - old) / self.w
            self.m2 += (x - old) * (x - mean + old - self.mean)
            self.mean = mean
            # Nearly constant window: the recursion's rounding is as large as the variance.
            if not (self.m2 > 1e-9 * self.w * self.mean * self.mean) or not math.isfinite(
                    self.m2):
                self._exact()
        self.value = math.sqrt(max(self.m2, 0.0) / (self.w - self.ddof))

    def _exact(self) -> None:
        """As :func:`models.features._window_std`: mean of the window, then squared
        deviations, both summed newest first."""
        self.since_exact = 0
        ring, w = self.ring, self.w
        acc = 0.0
        for age in range(w):
            acc += ring[-1 - age]
        mean = acc / w
        m2 = 0.0
        for age in range(w):
            d = ring[-1 - age] - mean
            m2 += d * d
        self.mean, self.m2 = mean, m2


# ---------------------------------------------------------------------------------------------
# Scalar forms of the batch's NumPy expressions (NumPy divides by zero to inf/NaN; Python raises)

def _div(a: float, b: float) -> float:
    if b != 0.0 or b != b:
        return a / b if b == b else NAN
    if a != a or a == 0.0:
        return NAN
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _log(x: float) -> float:
    if x > 0.0:
        return math.log(x)
    return -math.inf if x == 0.0 else NAN


def _zscore(v: float, mean: float, std: float) -> float:
    if std == 0.0:
        return 0.0
    return _div(v - mean, std)


def _rsi_value(up: float, down: float) -> float:
    total = up + down
    if total == 0.0:
        return 50.0
    return _div(100.0 * up, total)
