"""Which sources exist and how to build each one from user choices (CLI or dashboard).

Live API sources are offered but disabled until their key is configured, with the hint of
what to set; a key typed into the dashboard lives in that session only.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from pipeline.config import Config, Secret
from pipeline.sources.base import Source, SourceError


@dataclass(frozen=True)
class SourceChoice:
    """One entry of the source catalog (the Pipeline page's picker and the CLI): its key,
    label, whether it can run with the keys at hand, and the hint when it cannot."""

    key: str
    label: str
    enabled: bool
    hint: str = ""


def available_sources(config: Config, session_keys: dict[str, Any] | None = None) -> list[SourceChoice]:
    session_keys = session_keys or {}
    av = bool(config.alphavantage_api_key or session_keys.get("alphavantage"))
    pg = bool(config.polygon_api_key or session_keys.get("polygon"))
    return [
        SourceChoice("simulator", "Market simulator", True),
        SourceChoice("csv", "CSV replay", True),
        SourceChoice("alphavantage", "Alpha Vantage (live API)", av,
                     "" if av else "set ALPHAVANTAGE_API_KEY, or type a key for this session"),
        SourceChoice("polygon", "Polygon / Massive (live API)", pg,
                     "" if pg else "set POLYGON_API_KEY, or type a key for this session"),
    ]


def build_api_source(kind: str, config: Config, symbols: list[str], interval: str, *,
                     live: bool, api_key: Secret | str | None = None, days: int = 5) -> Source:
    """An Alpha Vantage or Polygon source; the key comes from ``api_key`` or the config."""
    if kind == "alphavantage":
        from pipeline.sources.alphavantage import AlphaVantageSource

        return AlphaVantageSource(
            symbols, interval, api_key=api_key or config.alphavantage_api_key,
            mode="live" if live else "backfill", base_url=config.alphavantage_base_url,
            # "full" daily history is premium-only on free keys; intraday full is free.
            outputsize="full" if not live and interval != "1d" else "compact")
    if kind == "polygon":
        from pipeline.sources.polygon import PolygonSource

        return PolygonSource(symbols, interval, api_key=api_key or config.polygon_api_key,
                             mode="live" if live else "backfill", days=days,
                             base_url=config.polygon_base_url)
    raise SourceError(f"unknown API source {kind!r}")


def source_from_cli(args, config: Config, symbols: list[str]) -> Source:
    """The non-simulator sources of ``python -m pipeline produce|backfill``."""
    if args.source == "csv":
        from pipeline.sources.csv_replay import CsvReplaySource

        if not args.file:
            raise SourceError("--source csv needs --file PATH")
        # --symbols given once names the file's symbol; otherwise a symbol column or the file
        # name. --interval left out means: inferred from the rows' spacing.
        interval = args.interval if getattr(args, "interval_given", True) else None
        source = CsvReplaySource(args.file, symbol=symbols[0] if len(symbols) == 1 else None,
                                 interval=interval, speed=args.speed, skip_bad=args.skip_bad,
                                 tz=getattr(args, "tz", None) or "UTC")
        insp = source.inspect()
        print(f"{source.display_name}: {insp.summary()}; times read in "
              f"{getattr(args, 'tz', None) or 'UTC'}"
              + ("" if interval else " (interval inferred; set --interval to override)"),
              file=sys.stderr, flush=True)
        return source
    return build_api_source(args.source, config, symbols, args.interval, live=args.live,
                            days=args.days)
