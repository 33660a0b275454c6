"""CSV exports that a spreadsheet opens as data, never as formulas.

A stored ``source`` of ``=HYPERLINK("https://…","click")``, a news title starting with ``+``
or a symbol starting with ``@`` would run as a formula in Excel, LibreOffice or Google Sheets
when an exported file is opened (CSV injection). Every text cell that begins with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` (the OWASP rule); numeric
columns stay numbers, so a genuine ``-0.42`` is written as ``-0.42``.
"""
from __future__ import annotations

import re

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value):
    """``value`` with a leading ``'`` if it is text a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def neutralised(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells, column names and index labels cannot start a
    formula; numbers, dates and booleans are unchanged."""
    out = frame.copy()
    for column in out.columns:
        if _is_text(out[column]):
            out[column] = out[column].map(neutralise_cell)
    if not isinstance(out.columns, pd.MultiIndex):
        out.columns = [neutralise_cell(c) for c in out.columns]
    if _is_text(out.index) and not isinstance(out.index, pd.MultiIndex):
        out.index = pd.Index([neutralise_cell(v) for v in out.index], name=out.index.name)
    return out


def csv_bytes(frame: pd.DataFrame, index: bool = False) -> bytes:
    """``frame`` as UTF-8 CSV with CRLF line ends, neutralised (:func:`neutralised`): every
    download uses this."""
    # CRLF (RFC 4180): the csv writer then also quotes a cell holding a lone carriage return,
    # which with "\n" line ends it writes bare, splitting the row in a spreadsheet.
    return neutralised(frame).to_csv(index=index, lineterminator="\r\n").encode("utf-8")


def export_file_name(*parts: str, suffix: str = ".csv") -> str:
    """A download's file name from data (``symbol``, ``interval``…): letters, digits, ``.``,
    ``-`` and ``_`` kept, anything else (``/``, quotes, markup) made ``_``."""
    stem = "_".join(re.sub(r"[^A-Za-z0-9._-]+", "_", str(p)).strip("._") or "x" for p in parts)
    return stem + suffix


def _is_text(values) -> bool:
    return values.dtype == object or pd.api.types.is_string_dtype(values.dtype)
