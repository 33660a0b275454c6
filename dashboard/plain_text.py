"""Text that came from data, shown as text: never as Markdown, never as Plotly's HTML subset.

Symbols, news titles and sources, file names, file content and errors that quote any of them
can hold ``[a link](https://…)``, ``<b>``, ``<a href>``, ``:material/…:`` or ``$…$``.
Streamlit renders Markdown in ``st.markdown``, ``st.caption``, ``st.info``/``warning``/``error``/
``success``, labels and ``help`` tooltips; Plotly renders ``<b>``, ``<i>``, ``<br>``,
``<a href>`` and ``<span style>`` in titles, trace names, text, hover text and category
labels. So every such text passes through here:

* :func:`md_plain` for anything Streamlit renders as Markdown;
* :func:`plain_figure` on every figure before it is drawn (it escapes the data-bearing parts
  of a Plotly figure; the app's own hover templates stay as they are).

CSV exports have their own rule (cells that a spreadsheet would run as a formula):
:mod:`pipeline.csv_export`.
"""
from __future__ import annotations

import html
import re
from typing import Any

import numpy as np

#: characters that make Markdown (or Streamlit's extensions) anywhere in a line: code, emphasis,
#: links and images, HTML and autolinks, maths, strikethrough, tables
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>$~|])")
#: an underscore emphasises only at a word's edge (``snake_case`` stays as it is)
_EDGE_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
#: what starts a block at the beginning of a line: heading, list, quote, setext rule
_BLOCK_START = re.compile(r"^(\s*)([#+](?=\s|$)|[\-=>]|\d{1,9}(?=[.)](?:\s|$)))")
#: an invisible word joiner breaks what backslashes cannot: the autolink literals
#: (``https://…``, ``www.…``, ``a@b.c``) and Streamlit's ``:material/…:``, ``:emoji:`` shortcodes,
#: which are read after Markdown unescaped the text
_WJ = "\u2060"
_JOIN_AFTER = re.compile(r"([:@](?=\S)|(?i:www)(?=\.))")  # "note: text" stays as it is
_TRACE_TEXT = ("name", "text", "hovertext", "customdata", "x", "y", "labels")


def md_plain(value: Any) -> str:
    """``value`` as a Markdown string that renders as exactly its text, on one line.

    Only what can make markup is escaped, so the text stays readable in the page source and
    in tests (``ALPHAVANTAGE_API_KEY``, ``GOOG.csv``, ``python -m pipeline`` are unchanged)."""
    text = " ".join(str(value).split())  # a newline would start a new Markdown block
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _EDGE_UNDERSCORE.sub(r"\\_", text)
    text = _BLOCK_START.sub(_escape_block_start, text, count=1)
    return _JOIN_AFTER.sub(lambda m: m.group(1) + _WJ, text)


def _escape_block_start(m: re.Match) -> str:
    lead, mark = m.group(1), m.group(2)
    return lead + (mark + "\\" if mark[0].isdigit() else "\\" + mark)  # "1\." / "\#"


def html_plain(value: Any) -> Any:
    """A string escaped for Plotly's HTML subset (``<`` ``>`` ``&``: with ``<`` escaped no tag
    can form, and Plotly shows ``&quot;`` as it is), its newlines made line breaks (Plotly
    ignores ``\n``; builders join the lines of a hover text with it); anything else
    unchanged."""
    if not isinstance(value, str):
        return value
    return html.escape(value, quote=False).replace("\n", "<br>")


def plain_figure(fig):
    """Escape, in place, every string a Plotly figure got from data: trace names, text, hover
    text, custom data and category coordinates; the layout's title, axis titles and
    annotations. Returns ``fig``. (Hover templates are the app's own and keep their markup;
    a builder that wants several lines in a data text joins them with ``\n``.)"""
    for trace in fig.data:
        for attr in _TRACE_TEXT:
            if attr in trace and trace[attr] is not None:
                trace[attr] = _escaped(trace[attr])
    layout = fig.layout
    if layout.title and layout.title.text:
        layout.title.text = html_plain(layout.title.text)
    for axis in [a for a in layout if a.startswith(("xaxis", "yaxis"))]:
        title = layout[axis].title
        if title and title.text:
            title.text = html_plain(title.text)
    for note in layout.annotations or ():
        if note.text:
            note.text = html_plain(note.text)
    return fig


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return html_plain(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US" or (value.dtype.kind == "O" and any(
                isinstance(v, str) for v in value.flat)):
            return np.vectorize(html_plain, otypes=[object])(value)
        return value  # numbers and dates: nothing to escape
    if isinstance(value, (list, tuple)):
        return type(value)(_escaped(v) for v in value)
    return value
