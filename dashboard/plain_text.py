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
:mod:`pipeline.contracts.csv_export`.
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
_HTML_SPECIAL = re.compile(r"[<>&\n]")
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
    # Read through to_plotly_json (the raw values, no per-property lookups), write through the
    # API only what escaping changed: re-assigning makes Plotly validate the value again.
    for trace in fig.data:
        raw = trace.to_plotly_json()
        for attr in _TRACE_TEXT:
            if raw.get(attr) is not None:
                escaped = _escaped(raw[attr])
                if escaped is not raw[attr]:
                    trace[attr] = escaped
    raw = fig.layout.to_plotly_json()
    for key in ["title", *(k for k in raw if k.startswith(("xaxis", "yaxis")))]:
        owner = raw.get(key)
        title = owner if key == "title" else (owner or {}).get("title")
        text = title.get("text") if isinstance(title, dict) else title
        if isinstance(text, str) and _HTML_SPECIAL.search(text):
            (fig.layout.title if key == "title" else fig.layout[key].title).text = \
                html_plain(text)
    for i, note in enumerate(raw.get("annotations") or ()):
        text = note.get("text")
        if isinstance(text, str) and _HTML_SPECIAL.search(text):
            fig.layout.annotations[i].text = html_plain(text)
    return fig


def _escaped(value: Any) -> Any:
    """``value`` with its strings escaped; the very same object when nothing needed it (most
    arrays are numbers, dates or date strings, and re-assigning makes Plotly validate)."""
    if isinstance(value, str):
        return html_plain(value) if _HTML_SPECIAL.search(value) else value
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":  # one search over the joined text: fast for dates
            needs = value.size and _HTML_SPECIAL.search("".join(value.ravel().tolist()))
        else:
            needs = value.dtype.kind == "O" and any(
                isinstance(v, str) and _HTML_SPECIAL.search(v) for v in value.flat)
        return np.vectorize(html_plain, otypes=[object])(value) if needs else value
    if isinstance(value, (list, tuple)) and any(_escaped(v) is not v for v in value):
        return type(value)(_escaped(v) for v in value)
    return value
