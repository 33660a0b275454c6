"""The one source catalog: which bar sources exist and how to build each one from a user's
choices. The CLI (``python -m pipeline produce|backfill --source …``: its choices and its
construction), the Pipeline page's source picker (:func:`available_sources`,
:func:`build_api_source`) and the redaction of log records (:data:`CATALOG`'s ``loggers``) all
read it, so a new source is its class file plus one :class:`SourceSpec` entry below.

Live API sources are offered but disabled until their key is configured, with the hint of
what to set; a key typed into the dashboard lives in that session only. A source's settings
and key are config variables read by name (``Config.setting`` / ``Config.secret``), so a new
one needs no field in ``pipeline/contracts/config.py``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pipeline.contracts.config import Config, Secret
from pipeline.contracts.imports import import_object
from pipeline.sources.base import Source, SourceError
from pipeline.sources.redaction import scrub_loggers


@dataclass(frozen=True)
class SourceRequest:
    """What a user asked of a source (CLI flags or the Pipeline page's form): the symbols, the
    interval, live polling or a finite backfill, a key typed for this session, and the
    source-specific ``options`` (for CSV: file, speed, skip_bad, tz, interval_given)."""

    symbols: list[str]
    interval: str = "1m"
    live: bool = False
    api_key: Secret | str | None = None
    days: int = 5
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceSpec:
    """One catalogued source: its CLI key and label, its class (``module:Class``, imported only
    when built), the config variables it reads (``secret``: its API key; ``settings``: others,
    such as a base URL), the loggers whose records must be scrubbed of its key, whether the
    Pipeline page's generic form (symbols, interval, key, live) builds it, whether an endless
    run resumes where the store's series end (``resumes``: the ``resume`` option), and
    ``build``: ``(cls, config, request) -> Source``."""

    key: str
    label: str
    cls: str
    build: Callable[[type, Config, SourceRequest], Source]
    secret: str | None = None
    settings: tuple[str, ...] = ()
    loggers: tuple[str, ...] = ()
    api_form: bool = False
    resumes: bool = False

    def source_class(self) -> type:
        return import_object(self.cls)

    def key_from(self, config: Config, request: SourceRequest) -> Secret | str | None:
        """The key typed for this session, else the configured one."""
        return request.api_key or (config.secret(self.secret) if self.secret else None)


def _simulator(cls, config: Config, req: SourceRequest) -> Source:
    """The market simulator, as the CLI, the runtime and the demo process build it: options
    ``seed``, ``bars``, ``speed``, ``params`` (of :class:`SimulatorParams`), ``resume`` (where
    each symbol's series goes on), ``fast_bars`` (warm-up owed); with ``on_news`` and a
    ``news_rate`` above 0 it also publishes news items (:class:`NewsMarketSimulator`)."""
    from pipeline.sources.simulator import SimulatorParams

    opts = req.options
    chosen = {"symbols": req.symbols} if req.symbols else {}  # none: the default symbols
    kwargs = dict(interval=req.interval, seed=opts.get("seed", 7), bars=opts.get("bars"),
                  speed=opts.get("speed"), params=SimulatorParams(**opts.get("params", {})),
                  resume=opts.get("resume"), fast_bars=opts.get("fast_bars", 0), **chosen)
    if opts.get("on_news") is not None and opts.get("news_rate", 0) > 0:
        from pipeline.sources.news_simulator import NewsMarketSimulator

        return NewsMarketSimulator(news_rate=opts["news_rate"],
                                   news_impact=opts.get("news_impact", 0.0),
                                   on_news=opts["on_news"], **kwargs)
    return cls(**kwargs)


def _csv(cls, config: Config, req: SourceRequest) -> Source:
    opts = req.options
    if not opts.get("file"):
        raise SourceError("--source csv needs --file PATH")
    # --symbols given once names the file's symbol; otherwise a symbol column or the file
    # name. --interval left out means: inferred from the rows' spacing.
    interval = req.interval if opts.get("interval_given", True) else None
    tz = opts.get("tz") or "UTC"
    source = cls(opts["file"], symbol=req.symbols[0] if len(req.symbols) == 1 else None,
                 interval=interval, speed=opts.get("speed"), skip_bad=bool(opts.get("skip_bad")),
                 tz=tz)
    if opts.get("announce"):
        print(f"{source.display_name}: {source.inspect().summary()}; times read in {tz}"
              + ("" if interval else " (interval inferred; set --interval to override)"),
              file=sys.stderr, flush=True)
    return source


def _alphavantage(cls, config: Config, req: SourceRequest) -> Source:
    return cls(req.symbols, req.interval, api_key=CATALOG["alphavantage"].key_from(config, req),
               mode="live" if req.live else "backfill",
               base_url=config.setting("ALPHAVANTAGE_BASE_URL"),
               # "full" daily history is premium-only on free keys; intraday full is free.
               outputsize="full" if not req.live and req.interval != "1d" else "compact")


def _polygon(cls, config: Config, req: SourceRequest) -> Source:
    return cls(req.symbols, req.interval, api_key=CATALOG["polygon"].key_from(config, req),
               mode="live" if req.live else "backfill", days=req.days,
               base_url=config.setting("POLYGON_BASE_URL"))


#: every bar source, in the order the CLI and the Pipeline page offer them
CATALOG: dict[str, SourceSpec] = {spec.key: spec for spec in (
    SourceSpec("simulator", "Market simulator", "pipeline.sources.simulator:MarketSimulator",
               _simulator, resumes=True),
    SourceSpec("csv", "CSV replay", "pipeline.sources.csv_replay:CsvReplaySource", _csv,
               loggers=("pipeline.sources.csv_replay",)),
    SourceSpec("alphavantage", "Alpha Vantage (live API)",
               "pipeline.sources.alphavantage:AlphaVantageSource", _alphavantage,
               secret="ALPHAVANTAGE_API_KEY", settings=("ALPHAVANTAGE_BASE_URL",),
               loggers=("pipeline.sources.alphavantage",), api_form=True),
    SourceSpec("polygon", "Polygon / Massive (live API)", "pipeline.sources.polygon:PolygonSource",
               _polygon, secret="POLYGON_API_KEY", settings=("POLYGON_BASE_URL",),
               loggers=("pipeline.sources.polygon",), api_form=True),
)}

scrub_loggers(name for spec in CATALOG.values() for name in spec.loggers)


def source_keys() -> list[str]:
    """The ``--source`` choices of ``python -m pipeline produce|backfill``."""
    return list(CATALOG)


def build(key: str, config: Config, request: SourceRequest) -> Source:
    """The catalogued source ``key`` built for ``request``."""
    spec = CATALOG.get(key)
    if spec is None:
        raise SourceError(f"There is no source {key!r}; choose one of {', '.join(CATALOG)}.")
    return spec.build(spec.source_class(), config, request)


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
    choices = []
    for spec in CATALOG.values():
        ok = not spec.secret or bool(config.secret(spec.secret) or session_keys.get(spec.key))
        choices.append(SourceChoice(spec.key, spec.label, ok, "" if ok else
                                    f"set {spec.secret}, or type a key for this session"))
    return choices


def build_api_source(kind: str, config: Config, symbols: list[str], interval: str, *,
                     live: bool, api_key: Secret | str | None = None, days: int = 5) -> Source:
    """An API source of the catalog (the Pipeline page's form); the key comes from
    ``api_key`` or the config."""
    if kind not in CATALOG or not CATALOG[kind].api_form:
        raise SourceError(f"unknown API source {kind!r}")
    return build(kind, config, SourceRequest(symbols, interval, live=live, api_key=api_key,
                                             days=days))


def source_from_cli(args, config: Config, symbols: list[str], resume=None,
                    on_news=None) -> Source:
    """The source of ``python -m pipeline produce|backfill`` (``--source``) from its flags;
    ``resume`` and ``on_news`` as the simulator's options of the same names."""
    params = {k: getattr(args, k) for k in ("phi", "regime_change_at")
              if getattr(args, k, None) is not None}
    options = {"file": getattr(args, "file", None), "speed": getattr(args, "speed", None),
               "skip_bad": getattr(args, "skip_bad", False), "tz": getattr(args, "tz", None),
               "interval_given": getattr(args, "interval_given", True), "announce": True,
               "seed": getattr(args, "seed", 7), "bars": getattr(args, "bars", None),
               "params": params, "resume": resume, "on_news": on_news,
               "news_rate": getattr(args, "news_rate", 0.0),
               "news_impact": getattr(args, "news_impact", 0.0)}
    return build(args.source, config, SourceRequest(
        symbols, args.interval, live=getattr(args, "live", False), days=getattr(args, "days", 5),
        options=options))
