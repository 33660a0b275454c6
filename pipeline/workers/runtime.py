"""The pipeline runtime of one process: broker connection, store, and worker threads.

The dashboard holds exactly one :class:`Runtime` per server process (``st.cache_resource``);
the CLI builds one per command. Workers running in *other* processes are seen through their
heartbeats in the store, so a dashboard can attach to them without owning them.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any, Callable

from pipeline.workers.broker import BrokerInfo, EmbeddedBroker, find_or_start_broker, pid_alive
from pipeline.workers.kafka_clients import quiet_kafka_logs  # noqa: F401  (re-exported)
from pipeline.contracts.config import Config
# The demo simulator's settings and its resume/warm-up rules (re-exported: callers import them here).
from pipeline.workers.demo_history import DEFAULT_DEMO, SimulatorSpec, resume_points, warmup_needed  # noqa: F401
from pipeline.store import Store, open_store
from pipeline.workers.worker import Worker, WorkerThread

log = logging.getLogger(__name__)

HEARTBEAT_FRESH_MS = 10_000

#: The news producers one runtime can run side by side, each its own worker (and table row):
#: the simulator's news, Alpha Vantage live polling, and one finite import at a time (an
#: Alpha Vantage backfill or a headline CSV). All publish to finance-news.
NEWS_FEEDS = {"news_producer": "Simulated news", "av_news": "Alpha Vantage news (live)",
              "news_import": "News import"}


class Runtime:
    """One process's pipeline: the broker connection (or the embedded broker it started), the
    store, and the worker threads it started by name. One per dashboard server (or CLI run);
    its methods are called from any script thread and serialise on its lock; a watch thread
    restarts the embedded broker."""

    def __init__(self, config: Config, store: Store | None = None):
        quiet_kafka_logs()
        self.config = config
        self.store = store or open_store(config)
        self._broker: EmbeddedBroker | None = None
        self.broker_info: BrokerInfo | None = None
        self.workers: dict[str, WorkerThread] = {}
        self._lock = threading.RLock()
        self._closed = False
        self.autostart_done = threading.Event()  # the dashboard's first-load start, once
        #: the source object behind each news worker (its request and row counts)
        self.news_sources: dict[str, Any] = {}
        self._av_budget = None
        self.simulator_spec: SimulatorSpec | None = None
        #: the demo pipeline's child process (``KAPPALAB_PIPELINE_MODE=process``), if started
        self.pipeline_process = None
        self._lags: dict[tuple[str, str], Any] = {}  # GroupLag of each stopped consumer group
        atexit.register(self.shutdown)

    # ---- broker --------------------------------------------------------------------------
    def ensure_broker(self, found: tuple | None = None) -> BrokerInfo:
        """The configured Kafka, or the embedded broker (found running or started here);
        ``found``: what :func:`find_or_start_broker` already returned for this config."""
        with self._lock:
            if self.broker_info and (not self.broker_info.embedded or self._broker_alive()):
                return self.broker_info
            # After the embedded broker died, start it again on the same port, so running
            # workers reconnect by themselves.
            port = (int(self.broker_info.bootstrap.rsplit(":", 1)[1])
                    if self.broker_info and self.broker_info.embedded else None)
            self.broker_info, started = found or find_or_start_broker(self.config, port=port)
            if started is not None:
                self._broker = started
            if self.broker_info.embedded:
                self._watch_broker()
            return self.broker_info

    def _watch_broker(self, every_s: float = 2.0) -> None:
        """Restart the embedded broker (same port) if its process dies while we run."""
        if getattr(self, "_watchdog", None) is not None:
            return

        def watch() -> None:
            while not self._closed:
                time.sleep(every_s)
                if self._closed or not self.broker_info or self._broker_alive():
                    continue
                log.warning("the embedded broker stopped; starting it again on %s (it keeps "
                            "topics in memory: bars not yet stored are produced again)",
                            self.broker_info.bootstrap)
                try:
                    self.ensure_broker()
                except Exception as exc:
                    log.warning("could not restart the embedded broker: %s", exc)

        self._watchdog = threading.Thread(target=watch, name="kappalab-broker-watch", daemon=True)
        self._watchdog.start()

    def _broker_alive(self) -> bool:
        proc = self._broker.process if self._broker else None
        if proc is not None and self.broker_info and proc.pid == self.broker_info.pid:
            return proc.poll() is None  # our child: a killed one is a zombie until reaped
        return bool(self.broker_info and pid_alive(self.broker_info.pid))

    def pipeline_process_alive(self) -> bool:
        """True while the demo pipeline's child process runs (its workers may not have sent
        their first heartbeat yet)."""
        return self.pipeline_process is not None and self.pipeline_process.alive()

    def start_pipeline_process(self):
        """The demo pipeline (:data:`DEFAULT_DEMO`: broker, indexer, simulator, scorer) in one
        supervised child process (:class:`pipeline.workers.demo_process.PipelineProcess`); once."""
        from pipeline.workers.demo_process import PipelineProcess

        with self._lock:
            if self.pipeline_process is None:
                self.simulator_spec = DEFAULT_DEMO  # the pages describe the simulated feed
                # the one the dashboard may have started already (dashboard/early_start.py)
                self.pipeline_process = PipelineProcess.once(self.config.data_dir)
            return self.pipeline_process

    @property
    def owns_broker(self) -> bool:
        return bool(self._broker and self._broker.owned)

    def visible_broker(self) -> tuple[BrokerInfo | None, str]:
        """The broker this app uses or would attach to, and who started it: this runtime's,
        else the embedded broker recorded in the data dir while its process lives (started by
        ``python -m pipeline broker`` or another app). ``(None, "")`` when there is none."""
        info = self.broker_info
        if info is not None and not info.embedded:
            return info, "configured"
        if info is not None and self.owns_broker:
            return info, "started by this app"
        if info is None:
            if self.config.kafka_bootstrap:
                return None, ""
            info = EmbeddedBroker.read_state(self.config.broker_state_file)
            if not (info and pid_alive(info.pid)):
                return None, ""
        proc = self.pipeline_process
        if proc is not None and info.owner_pid == proc.pid:
            return info, f"started by this app's pipeline process (pid {proc.pid})"
        return info, "started by another process"

    # ---- workers -------------------------------------------------------------------------
    def start_worker(self, name: str, factory: Callable[[str], Worker]) -> WorkerThread:
        """Start ``name`` unless it is already running (reruns and tabs never double it)."""
        with self._lock:
            current = self.workers.get(name)
            if current and current.alive:
                return current
            info = self.ensure_broker()
            worker = factory(info.bootstrap)
            if current is not None:  # a restart: counters and throughput history go on
                worker.carry_over(current.worker)
            wt = WorkerThread(worker).start()
            self.workers[name] = wt
            return wt

    def start_indexer(self, stream: str = "bars") -> WorkerThread:
        """The indexer of a stream of the stream table (worker ``indexer``, ``news_indexer``…)."""
        from pipeline.contracts.streams import stream as stream_row
        from pipeline.workers.indexer import Indexer

        row, kw = stream_row(stream), self.config.kafka_client_kwargs()
        return self.start_worker(row.indexer, lambda b: Indexer(self.store, b, stream=row,
                                                                client_kwargs=kw))

    def start_simulator(self, spec: SimulatorSpec | None = None) -> WorkerThread:
        from pipeline.sources.catalog import SourceRequest, build as build_source
        from pipeline.workers.producer import Producer

        spec = spec or SimulatorSpec()
        self.simulator_spec = spec  # the page describes the simulated news from it

        news = None
        if spec.news_rate > 0:
            from pipeline.workers.stream_producer import NewsQueue

            # One queue per runtime: a restarted simulator feeds the running news producer.
            if getattr(self, "news_queue", None) is None:
                self.news_queue = NewsQueue()
            news = self.news_queue
            self.start_indexer("news")
            self.start_stream_producer("news", news.batches, "simulated news")

        def simulator(resume, fast_bars: int = 0):  # the catalog's simulator
            return build_source("simulator", self.config, SourceRequest(
                list(spec.symbols), spec.interval, options=dict(
                    seed=spec.seed, bars=spec.bars, speed=spec.speed, params=spec.params,
                    resume=resume, fast_bars=fast_bars, news_rate=spec.news_rate,
                    news_impact=spec.news_impact, on_news=news.put if news else None)))

        def factory(bootstrap: str) -> Worker:
            source = simulator(resume_points(self.store, spec.symbols, spec.interval),
                               warmup_needed(self.store, spec))
            # An endless feed can pick up where the store ends after a broker restart.
            resume = simulator if spec.bars is None else None
            return Producer(source, bootstrap, client_kwargs=self.config.kafka_client_kwargs(),
                            store=self.store, live=spec.speed is not None,
                            resume_source=resume)

        return self.start_worker("producer", factory)

    def start_source(self, source, live: bool) -> WorkerThread:
        """Produce from any :class:`~pipeline.sources.base.Source` (CSV, Alpha Vantage...)."""
        from pipeline.workers.producer import Producer

        return self.start_worker("producer", lambda b: Producer(
            source, b, client_kwargs=self.config.kafka_client_kwargs(), store=self.store, live=live))

    def start_flink_indexer(self) -> WorkerThread:
        """Store the Flink job's candles (finance-data.flink), a row like any stream's."""
        from pipeline.flink.stream import FlinkIndexer

        kw = self.config.kafka_client_kwargs()
        return self.start_worker("flink_indexer",
                                 lambda b: FlinkIndexer(self.store, b, client_kwargs=kw))

    def start_stream_producer(self, stream: str, feed, description: str,
                              name: str | None = None) -> WorkerThread:
        """Publish ``feed`` to a stream's topic (:class:`pipeline.workers.stream_producer.
        StreamProducer`) as worker ``name`` (default: the stream's producer kind)."""
        from pipeline.contracts.streams import stream as stream_row
        from pipeline.workers.stream_producer import StreamProducer

        row = stream_row(stream)
        return self.start_worker(name or row.producer, lambda b: StreamProducer(
            row, feed, b, description=description,
            client_kwargs=self.config.kafka_client_kwargs(), store=self.store))

    def start_news_feed(self, name: str, source: Any) -> WorkerThread:
        """Run a news source (``items(stop)``, ``describe()``, ``stats()``: Alpha Vantage news,
        a headline CSV) as worker ``name`` of :data:`NEWS_FEEDS`, with the news indexer that
        stores what it publishes — the CLI's path (``python -m pipeline news``)."""
        if name not in NEWS_FEEDS:
            raise ValueError(f"unknown news worker {name!r}")
        with self._lock:
            if self.is_running(name):
                raise ValueError(f"the {NEWS_FEEDS[name].lower()} is already running; stop "
                                 "it first")
            self.start_indexer("news")
            self.news_sources[name] = source
            return self.start_stream_producer("news", source.items, source.describe(), name=name)

    def start_alphavantage_news(self, symbols, *, live: bool, api_key=None,
                                time_from: int | None = None, time_to: int | None = None,
                                limit: int = 50, poll_seconds: float = 900.0) -> WorkerThread:
        """Alpha Vantage NEWS_SENTIMENT: live polling (worker ``av_news``) or a backfill of
        ``[time_from, time_to]`` (worker ``news_import``). The key comes from ``api_key`` or
        the configuration; every Alpha Vantage news request of this runtime shares one budget."""
        from pipeline.sources.alphavantage_news import AlphaVantageNews

        source = AlphaVantageNews(
            symbols, api_key=api_key or self.config.alphavantage_api_key,
            base_url=self.config.alphavantage_base_url, mode="live" if live else "backfill",
            time_from=time_from, time_to=time_to, limit=limit, poll_seconds=poll_seconds,
            budget=self.alphavantage_budget())
        return self.start_news_feed("av_news" if live else "news_import", source)

    def start_headline_csv(self, path, symbol: str | None = None,
                           time_zone: str = "UTC") -> WorkerThread:
        """Import a headline CSV (VADER scores) through finance-news (worker ``news_import``)."""
        from pipeline.sources.headline_csv import HeadlineCsv

        return self.start_news_feed("news_import", HeadlineCsv(path, symbol=symbol,
                                                               time_zone=time_zone))

    def start_fundamentals(self, symbols, *, live: bool, api_key=None,
                           poll_seconds: float = 86_400.0) -> WorkerThread:
        """Alpha Vantage OVERVIEW snapshots → finance-fundamentals → store (workers
        ``fundamentals`` and ``fundamentals_indexer``); one snapshot per symbol, again every
        ``poll_seconds`` when ``live``. Shares the Alpha Vantage news budget."""
        from pipeline.sources.alphavantage_overview import AlphaVantageOverview

        source = AlphaVantageOverview(
            symbols, api_key=api_key or self.config.alphavantage_api_key,
            base_url=self.config.alphavantage_base_url, mode="live" if live else "once",
            poll_seconds=poll_seconds, budget=self.alphavantage_budget())
        with self._lock:
            if self.is_running("fundamentals"):
                raise ValueError("the fundamentals feed is already running; stop it first")
            self.start_indexer("fundamentals")
            self.news_sources["fundamentals"] = source
            return self.start_stream_producer("fundamentals", source.items, source.describe(),
                                              name="fundamentals")

    def alphavantage_budget(self):
        """One request budget (free tier: 5 a minute, 25 a day) for this runtime's Alpha
        Vantage news requests, so live polling and a backfill never overspend it together."""
        from pipeline.sources.request_budget import RequestBudget

        with self._lock:
            if self._av_budget is None:
                self._av_budget = RequestBudget(5, 25)
            return self._av_budget

    def news_source_stats(self, name: str) -> dict[str, Any]:
        source = self.news_sources.get(name)
        try:
            return source.stats() if source is not None else {}
        except Exception as exc:  # a figure for the page, never worth failing it
            log.debug("news source stats unavailable: %s", exc)
            return {}

    def running_symbols(self) -> list[str]:
        """The symbols of the running bar producer (simulator or API source), else []."""
        wt = self.workers.get("producer")
        if not (wt and wt.alive):
            alive = self.pipeline_process_alive() and self.simulator_spec is not None
            return list(self.simulator_spec.symbols) if alive else []
        source = getattr(wt.worker, "source", None)
        # the news simulator wraps a MarketSimulator (``market``), which holds the symbols
        symbols = (getattr(source, "symbols", None)
                   or getattr(getattr(source, "market", None), "symbols", None) or [])
        return [str(s) for s in symbols]

    def start_scorer(self, **kwargs: Any) -> WorkerThread:
        from pipeline.workers.scorer import Scorer

        kw = self.config.kafka_client_kwargs()
        return self.start_worker("scorer", lambda b: Scorer(self.store, b, client_kwargs=kw, **kwargs))

    def stop_worker(self, name: str, timeout_s: float = 15.0) -> bool:
        with self._lock:
            wt = self.workers.get(name)
        return wt.stop(timeout_s) if wt else True

    def is_running(self, name: str) -> bool:
        wt = self.workers.get(name)
        return bool(wt and wt.alive)

    def local_stats(self) -> dict[str, dict[str, Any]]:
        """Every worker's snapshot; a stopped consumer's lag is measured from its group's
        committed offsets, so it keeps growing while producers go on."""
        stats = {name: wt.worker.stats() for name, wt in self.workers.items()}
        for name, wt in self.workers.items():
            if not wt.alive and getattr(wt.worker, "group_id", None):
                stats[name]["gauges"]["lag"] = self._group_lag(wt.worker)
        return stats

    def _group_lag(self, worker: Worker) -> int | None:
        from pipeline.workers.lag import GroupLag

        key = (worker.group_id, worker.topic)
        with self._lock:
            lags = self._lags
            if key not in lags and self.broker_info is not None:
                lags[key] = GroupLag(self.broker_info.bootstrap, worker.group_id, worker.topic,
                                     self.config.kafka_client_kwargs())
            meter = lags.get(key)
        return meter.value() if meter is not None else None

    def attached_stats(self) -> list[dict[str, Any]]:
        """Fresh heartbeats of workers running in other processes (attach mode).

        From the store; when the store has none (or cannot be read, e.g. during its own
        outage), from the ``kappalab.workers`` topic, read at most every 10 s."""
        local_ids = {wt.worker.worker_id for wt in self.workers.values()}
        try:
            beats = self.store.list_heartbeats(max_age_ms=HEARTBEAT_FRESH_MS)
        except Exception as exc:
            log.debug("heartbeats unavailable in the store: %s", exc)
            beats = []
        if not beats:
            beats = self._topic_heartbeats()
        return [b for b in beats if b.get("worker_id") not in local_ids
                and b.get("state") in ("running", "stalled")]

    def attached_worker(self, kind: str,
                        attached: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """The freshest heartbeat of a ``kind`` worker running in another process, or None."""
        beats = [b for b in (self.attached_stats() if attached is None else attached)
                 if b.get("kind") == kind]
        return max(beats, key=lambda b: b.get("created_ms") or 0) if beats else None

    def request_stop(self, snap: dict[str, Any]) -> None:
        """Ask a worker of another process to stop: a stop request doc it reads with its
        next heartbeat (every 2 s), then it stops as on Ctrl-C."""
        from pipeline.workers.worker import STOP_REQUESTS

        self.store.put_doc(STOP_REQUESTS, str(snap["worker_id"]),
                           {"requested_ms": int(time.time() * 1000), "by": "by the dashboard"})

    def stop_requested(self, snap: dict[str, Any]) -> bool:
        from pipeline.workers.worker import STOP_REQUESTS

        return self.store.get_doc(STOP_REQUESTS, str(snap.get("worker_id"))) is not None

    def _topic_heartbeats(self, every_s: float = 10.0) -> list[dict[str, Any]]:
        from pipeline.workers.worker import latest_heartbeats

        now = time.monotonic()
        cached = getattr(self, "_beats_cache", None)
        if cached and now - cached[0] < every_s:
            return cached[1]
        beats: list[dict[str, Any]] = []
        if self.broker_info is not None:
            try:
                beats = latest_heartbeats(self.broker_info.bootstrap, HEARTBEAT_FRESH_MS,
                                          self.config.kafka_client_kwargs())
            except Exception as exc:
                log.debug("heartbeats unavailable on the topic: %s", exc)
        self._beats_cache = (now, beats)
        return beats

    # ---- shutdown ------------------------------------------------------------------------
    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.pipeline_process is not None:
                self.pipeline_process.stop()
            workers = list(self.workers.values())
            for wt in workers:  # all stop at once, then each gets its time to finish
                wt.stop_event.set()
            deadline = time.monotonic() + 10
            for wt in workers:
                wt.stop(max(0.1, deadline - time.monotonic()))
            for meter in self._lags.values():
                meter.close_clients()
            if self._broker:
                self._broker.stop()
