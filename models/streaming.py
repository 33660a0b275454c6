"""Streaming features: the batch features of :mod:`models.features`, updated one bar at a time,
for many series at once.

:class:`FeatureBank` holds the state of every series the scorer follows, one *slot* per series,
as NumPy arrays indexed by slot: :meth:`FeatureBank.update` takes one new bar for each of a set
of slots and returns their feature rows, in one pass per node of the feature graph (so the
Python work is per poll, not per bar; the arithmetic is a few vector operations per node).
:class:`StreamingFeatures` is one series on a bank of its own, River-style
(``update(bar) -> row``), for the lab, tests and tools that follow a single series.

State is bounded: each node keeps only the history its consumers read (a lag ``k`` keeps
``k + 1`` values, a window ``w`` keeps ``w``), at most ``max_lookback`` values per series.

The batch functions stay the definition, and the streaming side evaluates the *same NumPy
expressions in the same order* on the last values of each series:

- windowed sums (SMA, the windowed EMAs, Cutler's RSI means, the means of the standard
  deviations) are summed newest first from zero over the window, as
  :func:`models.features.kernels.window_sum` does, so the result is the batch's bit for bit and no
  recursion error can build up over a long stream;
- windowed standard deviations: the window's mean, then the squared deviations summed newest
  first, as :func:`models.features.kernels.window_std`;
- lags and ``ret_*``/``logret_*`` read the history of their input; the element-wise steps
  (ratios, logs, ``np.where``) are the batch's expressions on the current values, NaN and
  infinities included.

tests/test_streaming_features.py asserts equality with :func:`models.features.compute_features`
to 1e-12 for every feature, for many series updated together in irregular layers, and after a
restart that rebuilt the state from the last ``max_lookback`` stored bars (:meth:`warm`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from models.features import max_lookback, validate_features
from models.features.kernels import ema_weights, ema_window
from models.features.specs import parse_feature

NAN = float("nan")
_INPUTS = ("ts", "open", "high", "low", "close", "volume")
_NO_TS = np.iinfo(np.int64).min


def has_streaming_form(name: str) -> bool:
    """True for a bar feature (the ones :class:`FeatureBank` computes); news features are
    computed elsewhere (:mod:`models.features.sentiment`)."""
    return parse_feature(name) is not None


class FeatureBank:
    """The features of many series, one slot per series, updated a layer of bars at a time.

    ``update(slots, ts, open, high, low, close, volume)`` takes one bar per slot (the slots
    distinct; each slot's bars in ts order across calls) and returns a ``(len(slots),
    len(features))`` array: each bar's feature row (NaN during warm-up), in ``features`` order.
    """

    def __init__(self, features: Iterable[str], capacity: int = 8):
        self.features = validate_features(features)
        bad = [f for f in self.features if not has_streaming_form(f)]
        if bad:
            raise ValueError(f"no streaming form for feature {bad[0]!r} (news features come "
                             "from the news stream, not the bars)")
        self.lookback = max_lookback(self.features)
        self.size = 0
        self.capacity = max(1, capacity)
        self.last_ts = np.full(self.capacity, _NO_TS, dtype=np.int64)
        graph = FeatureGraph()
        self._outputs = [graph.feature(name) for name in self.features]
        self._order = graph.order
        for node in self._order:
            node.allocate(self.capacity)

    # ---- slots ---------------------------------------------------------------------------
    def add_slot(self) -> int:
        """A new, empty series; its slot number."""
        if self.size == self.capacity:
            self.capacity *= 2
            for node in self._order:
                node.grow(self.capacity)
            last = np.full(self.capacity, _NO_TS, dtype=np.int64)
            last[:self.size] = self.last_ts[:self.size]
            self.last_ts = last
        self.size += 1
        return self.size - 1

    def reset_slot(self, slot: int) -> None:
        """Forget a series' history (it starts warming up again)."""
        for node in self._order:
            node.reset(slot)
        self.last_ts[slot] = _NO_TS

    # ---- updates -------------------------------------------------------------------------
    def update(self, slots: Sequence[int] | np.ndarray, ts, open_, high, low, close,
               volume) -> np.ndarray:
        rows = np.asarray(slots, dtype=np.intp)
        inputs = (np.asarray(ts, dtype=np.int64), np.asarray(open_, dtype=np.float64),
                  np.asarray(high, dtype=np.float64), np.asarray(low, dtype=np.float64),
                  np.asarray(close, dtype=np.float64), np.asarray(volume, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for node in self._order:
                node.update(rows, inputs)
                if node.depth:
                    node.push(rows)
        out = np.empty((len(rows), len(self._outputs)), dtype=np.float64)
        for j, node in enumerate(self._outputs):
            out[:, j] = node.value
        self.last_ts[rows] = inputs[0]
        return out

    def update_bars(self, slots: Sequence[int], bars: Sequence) -> np.ndarray:
        """``update`` from objects with ``ts, open, high, low, close, volume`` attributes."""
        return self.update(slots, [b.ts for b in bars], [b.open for b in bars],
                           [b.high for b in bars], [b.low for b in bars],
                           [b.close for b in bars], [b.volume for b in bars])

    def warm(self, series: dict[int, Sequence]) -> None:
        """Feed each slot its bars (``{slot: bars in ts order}``), all slots together: the
        ``k``-th bar of every slot in one layer."""
        series = {s: list(b) for s, b in series.items() if len(b)}
        depth = max((len(b) for b in series.values()), default=0)
        for k in range(depth):
            layer = [(s, b[k]) for s, b in series.items() if k < len(b)]
            self.update_bars([s for s, _ in layer], [b for _, b in layer])


class FeatureGraph:
    """The node graph of one :class:`FeatureBank`: one node per intermediate, shared between
    features, in topological order. Its public methods are the primitives the streaming recipes
    of :mod:`models.features.specs` are written with. Built once by the bank's constructor."""

    def __init__(self):
        self.nodes: dict[str, _Node] = {}
        self.order: list[_Node] = []
        self._features: dict[str, _Node] = {}

    def node(self, key: str, make: Callable[[], "_Node"]) -> "_Node":
        node = self.nodes.get(key)
        if node is None:
            node = make()  # builds (and registers) its inputs first: topological order
            self.nodes[key] = node
            self.order.append(node)
        return node

    def feature(self, name: str) -> "_Node":
        """The node of a bar feature, from its spec's streaming recipe."""
        if name not in self._features:
            spec, param = parse_feature(name)
            self._features[name] = spec.stream(self, param)
        return self._features[name]

    def input(self, name: str) -> "_Node":
        return self.node(name, lambda: _Input(_INPUTS.index(name)))

    def close(self) -> "_Node":
        return self.input("close")

    def lag(self, src: "_Node", k: int, key: str) -> "_Node":
        return self.node(f"lag({key},{k})", lambda: _Lag(src, k))

    def fn(self, key: str, f: Callable[..., np.ndarray], *srcs: "_Node") -> "_Node":
        return self.node(key, lambda: _Fn(f, srcs))

    def wsum(self, key: str, src: "_Node", w: int, weights: np.ndarray | None = None
             ) -> "_Node":
        return self.node(key, lambda: _WindowSum(src, w, weights))

    def wstd(self, key: str, src: "_Node", w: int, ddof: int) -> "_Node":
        return self.node(key, lambda: _WindowStd(src, w, ddof))

    def mean(self, key: str, src: "_Node", w: int) -> "_Node":
        s = self.wsum(f"sum({key},{w})", src, w)
        return self.fn(f"mean({key},{w})", lambda s: s / w, s)

    def ema(self, span: int, src: "_Node | None" = None, key: str = "close") -> "_Node":
        return self.wsum(f"ema({key},{span})", src or self.close(), ema_window(span),
                         ema_weights(span))


class StreamingFeatures:
    """One series' features, updated bar by bar (a :class:`FeatureBank` of one slot).

    ``update(ts, open, high, low, close, volume)`` must see the series' bars in ts order;
    ``values`` is then the feature row of that bar (NaN during warm-up), in ``features`` order.
    """

    def __init__(self, features: Iterable[str]):
        self._bank = FeatureBank(features, capacity=1)
        self._slot = [self._bank.add_slot()]
        self.features = self._bank.features
        self.lookback = self._bank.lookback
        self.last_ts: int | None = None
        self.values = np.full(len(self.features), NAN)

    def update(self, ts: int, open_: float, high: float, low: float, close: float,
               volume: float) -> np.ndarray:
        self.values = self._bank.update(self._slot, [ts], [open_], [high], [low], [close],
                                        [volume])[0]
        self.last_ts = int(ts)
        return self.values

    def update_bar(self, bar) -> np.ndarray:
        """``update`` from any object with ``ts, open, high, low, close, volume`` attributes."""
        return self.update(bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume)

    def warm(self, bars: Iterable) -> "StreamingFeatures":
        """Rebuild the state from stored bars (the last ``lookback`` are enough)."""
        for bar in bars:
            self.update_bar(bar)
        return self


class FeatureSet:
    """One list of features shared by many series (the scorer's: the default ones plus every
    champion's), computed in one :class:`FeatureBank`, and where each model's features sit in
    a row of it."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.bank = FeatureBank(self.names)
        self.lookback = self.bank.lookback
        self._cols: dict[tuple[str, ...], np.ndarray] = {}

    def new_slot(self) -> int:
        return self.bank.add_slot()

    def columns(self, features: list[str]) -> np.ndarray:
        """Positions of a model's features in a row of this set."""
        key = tuple(features)
        if key not in self._cols:
            self._cols[key] = np.array([self.names.index(f) for f in features], dtype=int)
        return self._cols[key]


# ---------------------------------------------------------------------------------------------
# Nodes. ``update(rows, inputs)`` sets ``value``: one entry per row of the layer. A node that
# others read back in time keeps ``depth`` past values per slot in ``hist``, time-major
# (``hist[-1, slot]`` the newest) so that a window of many slots is a few contiguous rows.

class _Node:
    value: np.ndarray
    depth = 0
    hist: np.ndarray | None = None
    dtype = np.float64
    fill = NAN

    def need(self, depth: int) -> None:
        self.depth = max(self.depth, depth)

    def allocate(self, capacity: int) -> None:
        if self.depth:
            self.hist = np.full((self.depth, capacity), self.fill, dtype=self.dtype)

    def grow(self, capacity: int) -> None:
        if self.hist is not None:
            old = self.hist
            self.allocate(capacity)
            self.hist[:, :old.shape[1]] = old

    def reset(self, slot: int) -> None:
        if self.hist is not None:
            self.hist[:, slot] = self.fill

    def push(self, rows: np.ndarray) -> None:
        h = self.hist
        if self.depth > 1:
            h[:-1, rows] = h[1:, rows]
        h[-1, rows] = self.value

    def window(self, rows: np.ndarray, w: int) -> np.ndarray:
        """The last ``w`` values of each row's series, oldest first: ``(w, len(rows))``."""
        return self.hist[self.depth - w:, rows]

    def update(self, rows: np.ndarray, inputs: tuple) -> None:  # pragma: no cover
        raise NotImplementedError


class _Input(_Node):
    def __init__(self, index: int):
        self.index = index
        if index == 0:  # ts: int64 epoch ms, as the batch's arithmetic on it
            self.dtype, self.fill = np.int64, 0

    def update(self, rows: np.ndarray, inputs: tuple) -> None:
        self.value = inputs[self.index]


class _Fn(_Node):
    def __init__(self, f: Callable[..., np.ndarray], srcs: tuple[_Node, ...]):
        self.f, self.srcs = f, srcs

    def update(self, rows: np.ndarray, inputs: tuple) -> None:
        self.value = np.asarray(self.f(*[s.value for s in self.srcs]), dtype=np.float64)


class _Lag(_Node):
    """The source's value ``k`` bars ago (NaN for the first ``k`` bars)."""

    def __init__(self, src: _Node, k: int):
        self.src, self.k = src, k
        src.need(k + 1)

    def update(self, rows: np.ndarray, inputs: tuple) -> None:
        src = self.src
        self.value = src.hist[src.depth - 1 - self.k, rows].astype(np.float64)


class _WindowSum(_Node):
    """Sum of the last ``w`` source values, optionally weighted by age (``weights[0]`` for the
    newest), accumulated newest first from zero like
    :func:`models.features.kernels.window_sum`."""

    def __init__(self, src: _Node, w: int, weights: np.ndarray | None = None):
        self.src, self.w = src, w
        self.weights = None if weights is None else weights[::-1, None].copy()  # oldest first
        src.need(w)

    def update(self, rows: np.ndarray, inputs: tuple) -> None:
        win = self.src.window(rows, self.w)
        if self.weights is not None:
            win = win * self.weights  # each term as the batch's ``weights[age] * seg``
        self.value = _sum_newest_first(win)


class _WindowStd(_Node):
    """Standard deviation of the last ``w`` source values (``ddof`` 0 or 1), evaluated as
    :func:`models.features.kernels.window_std`: the window's mean, then squared deviations."""

    def __init__(self, src: _Node, w: int, ddof: int):
        self.src, self.w, self.ddof = src, w, ddof
        src.need(w)

    def update(self, rows: np.ndarray, inputs: tuple) -> None:
        w = self.w
        if w - self.ddof <= 0:
            self.value = np.full(len(rows), NAN)
            return
        win = self.src.window(rows, w)
        mean = _sum_newest_first(win) / w
        d = win - mean
        self.value = np.sqrt(_sum_newest_first(d * d) / (w - self.ddof))


def _sum_newest_first(win: np.ndarray) -> np.ndarray:
    """Column sums of ``win`` (oldest value first in each column) in the batch's order: from zero,
    newest value first, one addition at a time. ``np.add.accumulate`` is sequential by
    definition (``np.sum`` may sum pairwise), so this is the batch's result bit for bit; the
    final ``+ 0.0`` turns the ``-0.0`` a sum of negative zeros gives into the batch's ``0.0``.
    """
    return np.add.accumulate(win[::-1], axis=0)[-1] + 0.0
