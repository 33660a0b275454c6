"""One palette for every chart, readable on the dark and the light theme.

Streamlit tells the page which theme the browser shows (``st.context.theme.type``); charts
take the colours of :func:`palette` so that, for instance, the "actual" line is light on dark
and dark on light instead of a fixed black that vanishes on the dark theme.
"""
from __future__ import annotations

from dataclasses import dataclass

UP, DOWN = "#26a69a", "#ef5350"
#: Moving averages by window: five windows, five hues that differ on both themes.
MA_COLORS = {5: "#f2a900", 10: "#29b6f6", 20: "#e040fb", 50: "#ff7043", 100: "#9ccc65"}
MA_FALLBACK = ["#f2a900", "#29b6f6", "#e040fb", "#ff7043", "#9ccc65", "#ab47bc"]
#: Models: the Okabe-Ito colour-blind-safe set (minus black), fine on both backgrounds.
MODEL_COLORS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442"]
BASELINE_COLOR = "#9aa0a6"
#: Baselines: neutral tones that still differ from each other (persistence first).
BASELINE_COLORS = ["#9aa0a6", "#8d6e63", "#607d8b", "#bcaaa4"]
PROMOTED_COLOR, KEPT_COLOR = "#43a047", "#9e9e9e"


@dataclass(frozen=True)
class Palette:
    """The colours of one theme (light or dark) for the charts: the actual series, text,
    muted, predictions and the moving averages. Immutable."""

    dark: bool
    actual: str  # the series every model is judged against
    text: str
    muted: str
    prediction: str

    def ma(self, window: int, i: int = 0) -> str:
        return MA_COLORS.get(window, MA_FALLBACK[i % len(MA_FALLBACK)])


DARK = Palette(True, actual="#eceff1", text="#fafafa", muted="#b0bec5", prediction="#e040fb")
LIGHT = Palette(False, actual="#212121", text="#262730", muted="#546e7a", prediction="#8e24aa")


def current_theme() -> str:
    """``"dark"`` or ``"light"``: what the browser shows (dark when it cannot tell)."""
    try:
        import streamlit as st

        kind = getattr(st.context.theme, "type", None)
    except Exception:  # outside a Streamlit run (tests of pure figures)
        kind = None
    return "light" if kind == "light" else "dark"


def palette(theme: str | None = None) -> Palette:
    return LIGHT if (theme or current_theme()) == "light" else DARK


#: Sizes for a projected chart: ticks and legend readable from the back of a classroom.
TICK_FONT_SIZE = 13
LEGEND_FONT_SIZE = 13


def readable(fig, legend: bool = True, title_row: bool = True):
    """Projector-readable axes and legend for ``fig`` (returned): larger ticks in the text
    colour (not light grey), axis labels sized to fit (automargin), and the legend on a row
    of its own above the plot, right-aligned, clear of the x axis' date line and of the
    title on the left (on a row of its own under the title, or with ``title_row=False`` on
    the title's line, right-aligned: for a short title, to save height)."""
    pal = palette()
    font = dict(size=TICK_FONT_SIZE, color=pal.text)
    fig.update_xaxes(tickfont=font, title_font=font, automargin=True)
    fig.update_yaxes(tickfont=font, title_font=font, automargin=True)
    if legend:
        fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.01,
                                      xanchor="right", x=1, title_text="",
                                      font=dict(size=LEGEND_FONT_SIZE, color=pal.text)))
        top = fig.layout.margin.t if fig.layout.margin.t is not None else 40
        if fig.layout.title.text and title_row:  # the title's line, then the legend's row
            fig.update_layout(margin=dict(t=max(top, 72)),
                              title=dict(y=0.985, yanchor="top"))
    return fig
