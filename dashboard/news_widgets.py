"""The Pipeline page's news controls: Alpha Vantage news (live polling, backfill of a date
range), a headline-CSV import with its preview, and the status row of each news worker.

Every feed goes the CLI's way (``python -m pipeline news``): a news producer publishes to
``finance-news``, the news indexer stores what it reads. The Alpha Vantage key is read from the
configuration (or the session's typed key) and never written on the page.
"""
from __future__ import annotations

from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.access import can_change, presenter_button
from dashboard.formatting import fmt_ts, with_time_column
from dashboard.plain_text import md_plain
from dashboard.widgets import TIME_ZONES, guarded, push_notice, saved_upload, worker_header
from pipeline.workers.runtime import NEWS_FEEDS
from pipeline.sources.base import SourceError

AV_FREE_PER_DAY = 25
#: session key: the News sources expander stays open once the user started something from it
NEWS_PANEL_OPEN = "pc_news_open"
AV_KEY_MISSING = ("Alpha Vantage news and fundamentals are unavailable: no Alpha Vantage API key "
                  "is configured. "
                  "Set ALPHAVANTAGE_API_KEY (environment or .streamlit/secrets.toml) and "
                  "restart the app, or type a key for this session under Producer source → "
                  "Alpha Vantage.")
HEADLINE_HELP = ("A header row with a symbol column (symbol or ticker; or give one symbol for "
                 "the whole file), a time column (published, time, datetime, date or ts: epoch "
                 "ms/s or ISO 8601) and a headline column (title or headline); url, source and "
                 "relevance are used when present. Each headline is scored with VADER.")


# ---- Alpha Vantage ------------------------------------------------------------------------------
def alphavantage_key(config, session_keys: dict) -> tuple[Any, str]:
    """(key, where it comes from) — the key itself is only handed to the source."""
    if config.alphavantage_api_key:
        return config.alphavantage_api_key, "ALPHAVANTAGE_API_KEY"
    if session_keys.get("alphavantage"):
        return session_keys["alphavantage"], "the key typed for this session"
    return None, ""


def date_range_ms(start: date, end: date) -> tuple[int, int]:
    """``[start 00:00 UTC, end + 1 day 00:00 UTC)`` in epoch ms: both days included."""
    lo = datetime.combine(start, dtime(0), timezone.utc)
    hi = datetime.combine(end + timedelta(days=1), dtime(0), timezone.utc)
    return int(lo.timestamp() * 1000), int(hi.timestamp() * 1000)


def alphavantage_news_panel(runtime, config, session_keys: dict) -> None:
    key, origin = alphavantage_key(config, session_keys)
    if key is None:
        st.info(AV_KEY_MISSING)
        return
    st.caption(f"Uses the Alpha Vantage key from {origin} (not shown). One request per symbol "
               f"each time; the free tier allows 5 a minute and {AV_FREE_PER_DAY} a day, "
               "shared by everything started here (live polling, backfills, fundamentals).")
    running = ",".join(runtime.running_symbols())
    if st.session_state.get("pc_avn_running") != running:
        # a (re)started producer offers its symbols again; typed symbols stay until then
        st.session_state["pc_avn_running"] = running
        if running or "pc_avn_symbols" not in st.session_state:
            st.session_state["pc_avn_symbols"] = running
    sym_text = st.text_input("Symbols (comma-separated)", key="pc_avn_symbols",
                             placeholder="IBM,MSFT",
                             help="By default the symbols of the running producer.")
    symbols = [s.strip().upper() for s in sym_text.split(",") if s.strip()]
    if not symbols:
        st.caption("Type at least one symbol (no producer is running to take them from).")
    live_col, back_col = st.columns(2)
    with live_col:
        st.markdown("**Live polling**")
        minutes = st.number_input("Poll every (minutes)", 1, 1440, 15, key="pc_avn_poll")
        per_day = len(symbols) * (1440 // int(minutes) or 1)
        note = (f"{len(symbols)} symbol(s) every {int(minutes)} min ≈ {per_day:,} requests a "
                "day")
        if per_day > AV_FREE_PER_DAY:
            note += f": more than a free key's {AV_FREE_PER_DAY}; poll less often or use fewer "\
                    "symbols, or a premium key"
        st.caption(note + ".")
        busy = runtime.is_running("av_news")
        if st.button("Start live news polling", key="pc_avn_live", type="primary",
                     disabled=busy or not symbols,
                     help="Running: stop it in the news workers below" if busy else
                     "Polls Alpha Vantage NEWS_SENTIMENT and publishes new items to "
                     "finance-news; repeats are dropped."):
            _start(lambda: runtime.start_alphavantage_news(
                symbols, live=True, api_key=key, poll_seconds=60.0 * int(minutes)),
                "Alpha Vantage news polling",
                f"Polling Alpha Vantage news for {', '.join(symbols)} every {int(minutes)} min.")
    with back_col:
        st.markdown("**Backfill a date range**")
        today = datetime.now(timezone.utc).date()
        picked = st.date_input("Published between (UTC days, both included)",
                               (today - timedelta(days=7), today), max_value=today,
                               key="pc_avn_range")
        limit = st.number_input("Items per symbol (at most 1000)", 1, 1000, 200,
                                key="pc_avn_limit",
                                help="Alpha Vantage returns the latest items of the range, up "
                                     "to this many, in one request per symbol.")
        whole = isinstance(picked, (tuple, list)) and len(picked) == 2
        busy = runtime.is_running("news_import")
        if not whole:
            st.caption("Pick the first and the last day of the range.")
        if st.button("Backfill news", key="pc_avn_backfill", disabled=busy or not symbols
                     or not whole, help="One import at a time: stop the running one below"
                     if busy else "One request per symbol, then the import ends."):
            lo, hi = date_range_ms(*picked)
            _start(lambda: runtime.start_alphavantage_news(
                symbols, live=False, api_key=key, time_from=lo, time_to=hi, limit=int(limit)),
                "Alpha Vantage news backfill",
                f"Backfilling Alpha Vantage news for {', '.join(symbols)}, {picked[0]} to "
                f"{picked[1]}.")


    st.markdown("**Fundamentals (company overview)**")
    f1, f2 = st.columns([2, 1], vertical_alignment="bottom")
    daily = f1.checkbox("Fetch again every day", value=True, key="pc_fund_daily",
                        help="Alpha Vantage OVERVIEW: P/E, EPS, market capitalisation, dividend "
                             "yield, price/book, beta… One request per symbol each time.")
    busy = runtime.is_running("fundamentals")
    if f2.button("Fetch fundamentals", key="pc_fund_start", disabled=busy or not symbols,
                 help="Running: stop it in the workers below" if busy else
                 "Publishes one snapshot per symbol to finance-fundamentals; the model lab's "
                 "fundamentals features use each from its fetch time on."):
        _start(lambda: runtime.start_fundamentals(symbols, live=daily, api_key=key),
               "fundamentals feed", f"Fetching fundamentals for {', '.join(symbols)}"
               + (", then again every day." if daily else "."))
    st.caption("A snapshot counts from the moment it is fetched, never earlier (Alpha Vantage "
               "gives today's figures only), so fundamentals cover the bars after the first "
               "fetch.")


# ---- headline CSV -------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=8)
def _headline_preview(path: str, mtime: float, symbol: str, tz: str):
    from pipeline.sources.headline_csv import HeadlineCsv

    return HeadlineCsv(path, symbol=symbol or None, time_zone=tz).preview()


def headline_csv_panel(runtime, data_dir: Path) -> None:
    uploaded = st.file_uploader("Headline CSV", type=["csv", "txt"], key="pc_news_upload",
                                help=HEADLINE_HELP)
    if uploaded is None:
        st.caption("Choose a file to see a preview before anything is imported. "
                   + HEADLINE_HELP)
        return
    path = saved_upload(uploaded, data_dir)
    c1, c2 = st.columns(2)
    symbol = c1.text_input("Symbol for the whole file", key="pc_news_symbol",
                           help="Only for a file without a symbol/ticker column.").strip()
    tz = c2.selectbox("Time zone of times without one", TIME_ZONES, key="pc_news_tz")
    try:
        preview = _headline_preview(str(path), path.stat().st_mtime, symbol, tz)
    except SourceError as exc:
        st.error(md_plain(exc))
        return
    show_headline_preview(preview)
    if preview.items == 0:
        st.error(f"No headline in {md_plain(uploaded.name)} could be read; fix the rows above "
                 "and upload it again.")
        return
    busy = runtime.is_running("news_import")
    if st.button(f"Import {preview.items:,} headlines", key="pc_news_import", type="primary",
                 disabled=busy, help="One import at a time: stop the running one below" if busy
                 else "Publishes the scored headlines to finance-news; the news indexer "
                      "stores them."):
        _start(lambda: runtime.start_headline_csv(path, symbol or None, tz),
               "headline import", f"Importing {preview.items:,} headlines from {uploaded.name}.")


def show_headline_preview(p) -> None:
    symbols = ", ".join(f"**{md_plain(s)}** ({n:,})" for s, n in list(p.symbols.items())[:8])
    more = f" and {len(p.symbols) - 8} more" if len(p.symbols) > 8 else ""
    if p.items:
        st.markdown(
            f"**Preview:** {p.rows:,} rows → {p.items:,} headlines of {symbols}{more}, "
            f"published {fmt_ts(p.first_ts)} → {fmt_ts(p.last_ts)}; VADER scores "
            f"{p.score_min:+.2f} to {p.score_max:+.2f} (mean {p.score_mean:+.2f}).")
    if p.skipped:
        st.warning(f"{p.skipped:,} malformed row(s) will be skipped, e.g. "
                   + md_plain("; ".join(p.skipped_samples[:3])) + ".")
    if p.sample:
        st.dataframe(with_time_column(pd.DataFrame(p.sample)), hide_index=True,
                     width="stretch", key="pc_news_preview")


# ---- news workers -------------------------------------------------------------------------------
NEWS_WORKERS = [("news_indexer", "News indexer"), *NEWS_FEEDS.items(),
                ("fundamentals", "Fundamentals")]
STOP_LABELS = {"av_news": "Alpha Vantage polling"}
AV_WORKERS = ("av_news", "fundamentals")
START_HINT = "Start it in News sources above."
AV_KEY_HINT = "Needs an Alpha Vantage API key (see News sources)."


def news_worker_row(runtime, local: dict, av_ready: bool = True) -> None:
    """Header, stop (or start) button and a one-line account per news worker; ``av_ready``:
    an Alpha Vantage key is available (else its workers say they need one)."""
    cols = st.columns(len(NEWS_WORKERS))
    for col, (name, label) in zip(cols, NEWS_WORKERS):
        with col:
            running = runtime.is_running(name)
            worker_header(label, local.get(name), running)
            if running:
                what = STOP_LABELS.get(name, label.lower())
                if presenter_button(f"Stop {what}", key=f"stop_{name}"):
                    with st.spinner(f"Stopping the {what}…"):
                        runtime.stop_worker(name)
                    st.rerun()
            elif name == "news_indexer":
                if presenter_button("Start news indexer", key="start_news_indexer"):
                    guarded(lambda: runtime.start_indexer("news"), "news indexer", "pipeline")
                    st.rerun(scope="app")
            caption = news_worker_caption(runtime, name, local.get(name))
            if name in AV_WORKERS and not av_ready and not running:
                caption = AV_KEY_HINT
            if caption in (START_HINT, AV_KEY_HINT) and not can_change():
                caption = ""  # a viewer cannot start it: the read-only note above says so
            if caption:
                st.caption(md_plain(caption))  # a feed's last error quotes its API


def news_worker_caption(runtime, name: str, snap: dict | None) -> str:
    produced = ((snap or {}).get("counters") or {}).get("produced")
    if name == "news_producer":
        spec = getattr(runtime, "simulator_spec", None)
        if spec is None or not spec.news_rate:
            return "Starts with the market simulator when News items per bar is above 0."
        info = "noise" if not spec.news_impact else f"impact {spec.news_impact:g}"
        text = f"{spec.news_rate:g} items per symbol per bar, {info}."
        if not _simulator_producing(runtime):
            # It keeps running between simulator runs, so a restarted simulator feeds it.
            text += " Idle while the market simulator is stopped."
        return text
    stats = runtime.news_source_stats(name)
    parts = []
    if produced is not None:
        parts.append(f"{produced:,} published")
    if "rows" in stats:
        parts.append(f"{stats['rows']:,} rows read, {stats['skipped']:,} skipped")
    if "snapshots" in stats:
        parts.append(f"{stats['snapshots']:,} snapshot(s), {stats.get('no_overview', 0):,} "
                     "symbol(s) without an overview")
    elif "requests" in stats:
        parts.append(f"{stats['requests']:,} requests, {stats.get('duplicates', 0):,} repeats "
                     "dropped")
        used = stats.get("budget_used") or {}
        day = next((v for k, v in used.items() if k.endswith("/86400s")), None)
        if day is not None:
            parts.append(f"{day} of the day's budget used")
    if stats.get("live_errors"):
        parts.append(f"{stats['live_errors']:,} failed poll(s), last: {stats.get('last_error')}")
    if not parts and name != "news_indexer":
        return START_HINT
    return "; ".join(parts) + ("." if parts else "")


def _simulator_producing(runtime) -> bool:
    """The producer runs the market simulator (the one source of simulated news)."""
    from pipeline.sources.news_simulator import NewsMarketSimulator
    from pipeline.sources.simulator import MarketSimulator

    wt = runtime.workers.get("producer")
    source = getattr(wt.worker, "source", None) if wt and wt.alive else None
    return isinstance(source, (MarketSimulator, NewsMarketSimulator))


def _start(action, what: str, success: str) -> None:
    st.session_state[NEWS_PANEL_OPEN] = True  # keep News sources open across the rerun
    with st.spinner(f"Starting the {what}…"):
        if guarded(action, what, "pipeline"):
            push_notice("success", success + " Its row is in the news workers below.",
                        "pipeline")
    st.rerun()
