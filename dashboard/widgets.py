"""Streamlit building blocks shared by the pages: messages that stay until dismissed, a
two-step confirmation, worker status lines, and the CSV import panel."""
from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path
from typing import Callable

import pandas as pd
import streamlit as st

from dashboard.formatting import fmt_ts, with_time_column
from dashboard.plain_text import md_plain
from dashboard.state import get_config
from dashboard.view_models import worker_status
from pipeline.contracts.schema import INTERVALS
from pipeline.sources.base import SourceError
from pipeline.sources.import_paths import resolve_import_path

NOTICE_KEY = "kl_notices"
#: st.file_uploader's limit (server.maxUploadSize in .streamlit/config.toml), stated in the UI.
MAX_UPLOAD_MB = 200
TIME_ZONES = ["UTC", "America/New_York", "Europe/London", "Europe/Berlin", "Asia/Tokyo"]
TZ_HELP = ("Zone of times written without one. UTC for most data files; America/New_York for "
           "files from US exchanges. Daily bars are stored at midnight UTC of their date "
           "whatever the zone, like the Alpha Vantage and Polygon sources.")


# ---- messages that stay on screen ---------------------------------------------------------------
def push_notice(kind: str, text: str, scope: str = "global") -> None:
    """Keep ``text`` on screen (across reruns and fragment refreshes) until dismissed."""
    notices = st.session_state.setdefault(NOTICE_KEY, [])
    if not any(n["text"] == text and n["scope"] == scope for n in notices):
        key = hashlib.sha1(f"{scope}|{text}".encode()).hexdigest()[:10]
        notices.append({"kind": kind, "text": text, "scope": scope, "key": key})


def show_notices(scope: str = "global") -> None:
    for n in list(st.session_state.get(NOTICE_KEY, [])):
        if n["scope"] != scope:
            continue
        c1, c2 = st.columns([7, 1], vertical_alignment="center")
        {"error": c1.error, "warning": c1.warning, "success": c1.success}.get(
            n["kind"], c1.info)(md_plain(n["text"]))  # notices quote symbols, files, errors
        if c2.button("Dismiss", key=f"dismiss_{n['key']}"):
            st.session_state[NOTICE_KEY] = [m for m in st.session_state[NOTICE_KEY]
                                            if m["key"] != n["key"]]
            st.rerun()


def guarded(action: Callable[[], object], what: str, scope: str = "global") -> bool:
    """Run ``action``; a failure the user can fix becomes a notice that stays. True if it ran."""
    from pipeline.workers.broker import BrokerUnavailable

    try:
        action()
    except (BrokerUnavailable, SourceError, ValueError) as exc:
        push_notice("error", f"Could not start the {what}: {exc}", scope)
        return False
    except ImportError as exc:
        push_notice("error", f"The {what} is not available in this installation ({exc}).", scope)
        return False
    return True


def confirm_button(label: str, key: str, question: str) -> bool:
    """A button that asks first: True only after the second, confirming click."""
    pending = st.session_state.get(f"{key}_pending", False)
    if not pending:
        if st.button(label, key=key):
            st.session_state[f"{key}_pending"] = True
            st.rerun()
        return False
    st.warning(question)
    c1, c2 = st.columns(2)
    if c1.button("Yes, " + label.lower(), key=f"{key}_yes", type="primary"):
        st.session_state[f"{key}_pending"] = False
        return True
    if c2.button("Cancel", key=f"{key}_no"):
        st.session_state[f"{key}_pending"] = False
        st.rerun()
    return False


# ---- date range ---------------------------------------------------------------------------------
def stored_date_range(where, label: str, first: date, last: date, key: str, **kwargs):
    """A date range picker over the stored days that grows with the data while the user
    leaves it at everything stored. A plain ``date_input(value=(first, last))`` keeps the
    range of the page's first run: on a live feed the newest days then drop out of the
    selection unnoticed. A range the user picked stays, kept inside the stored days."""
    offered_key = f"{key}_offered"
    offered = st.session_state.get(offered_key)
    current = st.session_state.get(key)
    if not isinstance(current, (tuple, list)) or tuple(current) == offered:
        st.session_state[key] = (first, last)  # untouched: everything stored
    elif len(current) == 2:  # (a half-picked range has one date: left alone)
        lo, hi = max(current[0], first), min(current[1], last)
        st.session_state[key] = (lo, hi) if lo <= hi else (first, last)
    st.session_state[offered_key] = (first, last)
    return where.date_input(label, min_value=first, max_value=last, key=key, **kwargs)


# ---- empty store --------------------------------------------------------------------------------
BARS_ON_THEIR_WAY = ("The pipeline is running and the first bars are on their way: this page "
                     "fills in by itself as soon as they are stored.")


def wait_for_data(store, idle_text: str, ready: Callable[[], bool] | None = None,
                  every_s: float = 2.0) -> None:
    """An empty page's message, then the whole page again once data is stored (``ready``;
    default: any bar). While a producer runs, in this app or attached, the message says the
    bars are coming instead of asking the user to start what already runs (the first load
    after the demo autostart). The caller stops the page after this."""
    from dashboard.runtime import get_runtime

    runtime = get_runtime()
    feeding = runtime.is_running("producer") or runtime.pipeline_process_alive() or any(
        s.get("kind") == "producer" for s in runtime.attached_stats())
    st.info(BARS_ON_THEIR_WAY if feeding and ready is None else idle_text)
    ready = ready or (lambda: store.count_bars() > 0)

    @st.fragment(run_every=every_s)
    def poll() -> None:
        if ready():
            st.rerun(scope="app")

    poll()


# ---- workers ------------------------------------------------------------------------------------
def worker_header(label: str, snap: dict | None, running: bool) -> None:
    """``**Producer** — running`` or a warning with the full reason: the table's state."""
    state, reason = worker_status(snap, running)
    if state in ("failed", "stalled"):
        st.markdown(f"**{label}** — :orange[{state}]")
        st.warning(md_plain(reason) if reason else f"The {label.lower()} {state} without a "
                   "reason.")
    elif state == "running":
        st.markdown(f"**{label}** — :green[running]")
    else:
        st.markdown(f"**{label}** — {state}")


# ---- CSV import ---------------------------------------------------------------------------------
def saved_upload(uploaded, data_dir: Path) -> Path:
    """Write an uploaded file under the data directory (once per content) and return its path."""
    data = uploaded.getvalue()
    folder = Path(data_dir) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(uploaded.name).name
    path = folder / f"{hashlib.sha256(data).hexdigest()[:12]}-{name}"
    if not path.exists():
        path.write_bytes(data)
    return path


@st.cache_data(show_spinner=False, max_entries=16)
def _inspect(path: str, mtime: float, display: str, symbol: str, interval: str | None, tz: str,
             skip_bad: bool):
    from pipeline.sources.csv_replay import CsvReplaySource

    source = CsvReplaySource(path, symbol=symbol or None, interval=interval, tz=tz,
                             skip_bad=skip_bad, display_name=display)
    return source.inspect()


def csv_import_panel(data_dir: Path, key: str = "pc_csv"):
    """Upload (or name) a CSV, check it, show what will be stored; returns a source factory
    ``() -> CsvReplaySource`` once the file reads cleanly, else None."""
    from pipeline.sources.csv_replay import CsvReplaySource, symbol_from_filename

    uploaded = st.file_uploader(
        f"CSV file (drag and drop, or browse; up to {MAX_UPLOAD_MB} MB)", type=["csv", "txt"],
        key=f"{key}_upload",
        help="A pandas df.to_csv() file (dates in the first column), a Date,Time,Open,High,Low,"
             "Close,Volume file, or a timestamp column with open, high, low, close, volume.")
    import_dir = get_config().import_dir
    server_path = st.text_input(
        "…or a path on the server", key=f"{key}_path", placeholder="GOOG.csv",
        help="Read only inside the data directory" + (" or KAPPALAB_IMPORT_DIR" if import_dir
                                                       else "") + "; a relative path starts "
             "there. Set KAPPALAB_IMPORT_DIR to open one more folder.")
    if uploaded is not None:
        path, display = saved_upload(uploaded, data_dir), uploaded.name
    elif server_path.strip():
        try:
            path = resolve_import_path(server_path, [data_dir, import_dir])
        except SourceError as exc:
            st.error(md_plain(exc))
            return None
        display = path.name
    else:
        st.caption("Choose a file to see a preview before anything is imported.")
        return None

    c1, c2, c3 = st.columns(3)
    symbol = c1.text_input("Symbol", value=symbol_from_filename(display) or "",
                           key=f"{key}_symbol_{display}",
                           help="Taken from the file name; edit it if needed. A symbol column in "
                                "the file wins over it.")
    auto = "inferred from the file"
    interval_choice = c2.selectbox("Interval", [auto, *INTERVALS], key=f"{key}_interval",
                                   help="By default the median spacing of the rows decides.")
    tz = c3.selectbox("Time zone", TIME_ZONES, key=f"{key}_tz", help=TZ_HELP,
                      format_func=lambda z: {"UTC": "UTC (default)",
                                             "America/New_York": "America/New_York (US exchanges)"
                                             }.get(z, z))
    c4, c5 = st.columns(2)
    speed = c4.number_input("Speed (x real time, 0 = as fast as possible)", 0.0, 1e7, 0.0,
                            key=f"{key}_speed")
    skip_bad = c5.checkbox("Skip malformed lines", key=f"{key}_skip")
    interval = None if interval_choice == auto else interval_choice
    try:
        insp = _inspect(str(path), path.stat().st_mtime, display, symbol.strip(), interval, tz,
                        skip_bad)
    except SourceError as exc:
        st.error(md_plain(exc))
        return None
    from_name = symbol.strip() == (symbol_from_filename(display) or "")
    _show_inspection(insp, interval is None, from_name)

    def factory() -> CsvReplaySource:
        return CsvReplaySource(path, symbol=symbol.strip() or None, interval=insp.interval,
                               tz=tz, speed=speed or None, skip_bad=skip_bad,
                               display_name=display)

    factory.summary = insp.summary()  # type: ignore[attr-defined]
    factory.live = bool(speed)  # type: ignore[attr-defined]
    return factory


SYMBOL_FROM = {"column": "from the file's symbol column", "typed": "typed in the Symbol field",
               "file name": "from the file name"}


def _show_inspection(insp, inferred: bool, from_name: bool) -> None:
    interval = f"{insp.interval}" + (" (inferred from the spacing)" if inferred else "")
    origin = ("from the file name; edit the Symbol field to change it"
              if insp.symbol_from == "typed" and from_name
              else SYMBOL_FROM.get(insp.symbol_from, insp.symbol_from))
    symbols = md_plain(", ".join(insp.symbols) or "?")
    st.markdown(f"**Preview:** {insp.bars:,} bars of **{symbols}** "
                f"({origin}), interval **{interval}**, "
                f"{fmt_ts(insp.first_ts)} → {fmt_ts(insp.last_ts)}.")
    st.caption("Read as: " + md_plain("; ".join(insp.notes)) + ".")
    counts = []
    if insp.out_of_order:
        counts.append(f"{insp.out_of_order:,} rows were out of time order: they are sorted "
                      "before import")
    if insp.duplicates:
        counts.append(f"{insp.duplicates:,} rows repeat a time: the last one is kept")
    if insp.bad_lines:
        counts.append(f"{insp.bad_lines:,} malformed lines will be skipped, e.g. "
                      f"{md_plain(insp.bad_samples[0]) if insp.bad_samples else ''}")
    for c in counts:
        st.info(c + ".")
    if insp.preview:
        st.dataframe(with_time_column(pd.DataFrame(insp.preview)), hide_index=True,
                     width="stretch", key="pc_csv_preview")
