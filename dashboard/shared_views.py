"""What a chart shows, computed once per server and shared by every session showing it.

Each open page refreshes itself (``st.fragment(run_every=...)``). Without sharing, N viewers of
one chart ran N store queries and built N Plotly figures per new bar. :class:`SharedViews`
(one per server process, through ``st.cache_resource``) keeps, per *view* (the page's own key:
symbol, interval, candle size, range...), the last value built and the *version* of the store
it was built from (for the Live page: the series' newest bar ts and newest prediction ts,
looked up once for all the sessions refreshing within 0.1 s: :meth:`SharedViews.recent`).
:meth:`SharedViews.get` returns the value built for ``(view, version)``, building it once:
sessions asking while it is being built wait for that build instead of starting their own.

A session then re-emits the same (already built) elements. Streamlit sends an element whose
serialized message is identical to one the browser already holds (≥ ``global.minCachedMessageSize``,
10 KB: a chart) as a reference to its hash (``runtime/forward_msg_cache.py``), so a refresh
with nothing new costs the browser a few bytes and the server one serialisation of the
figure's JSON, made cheap by :class:`SharedFigure`; no store query and no figure build.
(Returning early without re-emitting is not an option: a fragment run clears the elements it
did not emit.) A browser too starved to keep up keeps its chart for a few refreshes
(:func:`late_browser_keeps`). Figures: docs/CLASSROOM.md.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable

import plotly.graph_objects as go
import plotly.io
import streamlit as st

#: Seconds between refreshes of an open Live page: a new bar (one a second per symbol in the
#: demo) shows within a second; a refresh with nothing new re-emits the shared, already built
#: chart.
LIVE_REFRESH_S = 1.0
#: Sessions asking "anything new?" within this many seconds of each other share one answer
#: (:meth:`SharedViews.recent`): N open pages cost a few store lookups a second, not N.
VERSION_MAX_AGE_S = 0.1
#: A browser asking for its refreshes more than this many periods apart is late (starved of
#: CPU): it keeps the chart it has for HOLD_GAPS of its gaps (at most HOLD_MAX_S seconds)
#: instead of getting a new one on each refresh (:func:`late_browser_keeps`).
LATE_FACTOR, HOLD_GAPS, HOLD_MAX_S = 2.0, 3.0, 30.0


class SharedViews:
    """Server-wide cache of built views, keyed by view and store version (thread-safe)."""

    def __init__(self, max_views: int = 64):
        self.max_views = max_views
        self._lock = threading.Lock()
        self._built: OrderedDict[Hashable, tuple[Hashable, Any]] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}
        #: builds per view (the test of "one computation for every session" reads it)
        self.builds: dict[Hashable, int] = {}

    def get(self, view: Hashable, version: Hashable, build: Callable[[], Any]) -> Any:
        """The value built for ``view`` at ``version``; ``build()`` runs once for both."""
        with self._lock:
            hit = self._built.get(view)
            if hit and hit[0] == version:
                self._built.move_to_end(view)
                return hit[1]
            gate = self._building.setdefault(view, threading.Lock())
        with gate:
            with self._lock:
                hit = self._built.get(view)
                if hit and hit[0] == version:
                    return hit[1]
            value = build()
            with self._lock:
                self._built[view] = (version, value)
                self._built.move_to_end(view)
                self.builds[view] = self.builds.get(view, 0) + 1
                while len(self._built) > self.max_views:
                    old, _ = self._built.popitem(last=False)
                    self._building.pop(old, None)
            return value

    def recent(self, key: Hashable, compute: Callable[[], Any],
               max_age_s: float = VERSION_MAX_AGE_S) -> Any:
        """``compute()``'s value, computed at most once per ``max_age_s`` for every session
        asking (the cheap "anything new?" check of a view: its store version)."""
        return self.get(("recent", key), int(time.monotonic() / max_age_s), compute)


class SharedFigure(go.Figure):
    """A built figure that many sessions draw: its dict form made once.

    ``st.plotly_chart`` turns a figure into a dict (``to_dict``: a deep copy and the base64
    packing of every array), then into JSON, on every call: per session, per refresh. This
    figure's :meth:`to_dict` returns the dict made when it was shared, already in plain JSON
    types, so each call is one fast serialisation (plotly's orjson path takes it as it is).
    The JSON sent is the same. Read-only: made by :func:`share_figure` once the figure is
    complete; changing it afterwards would not change what is drawn.
    """

    def __init__(self, fig: go.Figure):
        # Through JSON and back: numpy arrays, dates and NaN become what the browser gets,
        # in plain types (the figure keeps its keys' order: the same JSON as before).
        spec = plotly.io.to_json(fig, validate=False)
        super().__init__(json.loads(spec), _validate=False)
        self._shared_dict = json.loads(spec)

    def to_dict(self) -> dict:
        return self._shared_dict


def share_figure(fig: go.Figure | None) -> SharedFigure | None:
    """``fig`` made cheap to draw again and again (:class:`SharedFigure`); None stays None."""
    return None if fig is None else SharedFigure(fig)


def late_browser_keeps(key: str, period_s: float) -> bool:
    """True when this session's browser should keep the chart it has on this refresh.

    Streamlit (1.67) gives a Plotly chart an element id made from its content, and the page
    mounts the chart again from scratch whenever that id changes: every new figure is a new
    plot, drawn only after the page has measured its box. A browser starved of CPU (20
    headless pages on 2 shared cores) that cannot finish that before the next figure arrives
    shows an empty chart box, again and again. Such a browser also asks for its refreshes
    late, which is how it is recognised: when it asks more than ``LATE_FACTOR`` periods after
    its previous refresh, it keeps its chart (the same element: nothing to draw again) until
    that chart is ``HOLD_GAPS`` of its gaps old. A browser on time gets every new figure.
    Call :func:`note_shown` when a new figure is sent."""
    state, now = st.session_state, time.monotonic()
    asked = state.get(f"{key}_asked_at")
    state[f"{key}_asked_at"] = now
    if asked is None or now - asked <= LATE_FACTOR * period_s:
        return False
    shown_at = state.get(f"{key}_shown_at")
    return shown_at is not None and now - shown_at < min(HOLD_GAPS * (now - asked), HOLD_MAX_S)


def note_shown(key: str) -> None:
    """This session was just sent a new figure (see :func:`late_browser_keeps`)."""
    st.session_state[f"{key}_shown_at"] = time.monotonic()


@st.cache_resource(show_spinner=False)
def shared_views() -> SharedViews:
    """The server's one :class:`SharedViews` (every session and page)."""
    return SharedViews()
