"""Producer: publishes a source's bars to the ``finance-data`` topic.

JSON values, key = symbol (per-symbol order within a partition), record timestamp = the
moment of production (the scorer measures its latency from it). Batching is tuned per pace:
a backfill lingers to fill large batches; a live feed sends almost at once.

Throughput: the idempotent producer keeps per-partition order through retries with up to 5
requests in flight (instead of one at a time), with ``acks=all``. Acknowledgements are handled
by reaping finished futures in send order every few thousand sends (every send when live),
rather than by a Python callback per message on the client's network thread.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from typing import Callable, Iterable, Mapping

from pipeline.contracts.schema import BARS_TOPIC
from pipeline.sources.base import Source, SourceError
from pipeline.workers.worker import SourceWatch, Worker

log = logging.getLogger(__name__)

#: Per series, how many recently sent bars the producer remembers to find, after a broker
#: restart, the first bar that never reached the store.
RECENT_BARS = 50_000

ResumePoints = Mapping[str, tuple[int, float]]  # symbol -> (last good ts, its close)


class OffsetLedger:
    """The offsets the broker acknowledged for one producer's records, per partition.

    A backfill's indexer reads exactly these records (and knows when it has them all)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acked: dict[int, set[int]] = defaultdict(set)
        self._max: dict[int, int] = {}
        self.finished = False

    def add(self, partition: int, offset: int) -> None:
        self.add_many(partition, (offset,))

    def add_many(self, partition: int, offsets) -> None:
        with self._lock:
            self._acked[partition].update(offsets)
            top = max(offsets, default=-1)
            if top > self._max.get(partition, -1):
                self._max[partition] = top

    def classify(self, partition: int, offset: int) -> bool | None:
        """True: one of ours. False: another writer's. None: not acknowledged (yet)."""
        with self._lock:
            if offset in self._acked.get(partition, ()):
                return True
            if offset < self._max.get(partition, -1) or self.finished:
                return False
            return None

    def take(self, partition: int, offsets: Iterable[int]) -> tuple[list[bool], bool]:
        """:meth:`classify` for consecutive offsets under one lock: whether each is ours, up
        to the first one not acknowledged yet (the rest are not looked at); and whether one
        such stopped the list short."""
        out: list[bool] = []
        with self._lock:
            acked, top = self._acked.get(partition, ()), self._max.get(partition, -1)
            for offset in offsets:
                if offset in acked:
                    out.append(True)
                elif offset < top or self.finished:
                    out.append(False)
                else:
                    return out, True
        return out, False

    def finish(self) -> None:
        """The producer is done: every record it will ever have acknowledged is here."""
        with self._lock:
            self.finished = True

    def ends(self) -> dict[int, int] | None:
        """Once the producer finished: the offset after our last record, per partition."""
        with self._lock:
            return {p: m + 1 for p, m in self._max.items()} if self.finished else None

    def count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._acked.values())


def key_hash_partitioner():
    """kafka-python's default choice for keyed records (murmur2 of the key modulo the
    partition count, as the Java client), with the hash remembered per key: a key is a
    symbol, so there are few, and the pure-Python murmur2 per record was ~5% of a backfill."""
    from kafka.partitioner.abc import Partitioner
    from kafka.partitioner.default import DefaultPartitioner, murmur2

    class KeyHashPartitioner(Partitioner):
        """Kafka's default partitioner (murmur2 of the key) with the hashes of recent keys cached."""

        def __init__(self) -> None:
            self._default = DefaultPartitioner()
            self._hashes: dict[bytes, int] = {}

        def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
            partitions = cluster.partitions_for_topic(topic)
            if serialized_key is None or not partitions:
                return self._default.partition(topic, key, serialized_key, value,
                                               serialized_value, cluster)
            h = self._hashes.get(serialized_key)
            if h is None:
                h = murmur2(serialized_key) & 0x7FFFFFFF
                if len(self._hashes) < 100_000:
                    self._hashes[bytes(serialized_key)] = h
            return sorted(partitions)[h % len(partitions)]

    return KeyHashPartitioner()


def make_kafka_producer(bootstrap: str, live: bool, client_kwargs: dict | None = None):
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="kappalab-producer",
        acks="all",
        retries=10,
        linger_ms=2 if live else 50,
        batch_size=16_384 if live else 512_000,
        # Idempotence: the broker drops retried duplicates and keeps per-partition order
        # with several requests in flight (kafka-python >= 3.0).
        enable_idempotence=True,
        max_in_flight_requests_per_connection=5,
        request_timeout_ms=15_000,
        partitioner=key_hash_partitioner(),
        **(client_kwargs or {}),
    )


class Producer(Worker):
    """The worker that publishes a source's bars to the bars topic (key = bar id), in the
    source's order. Owns its Kafka producer and, with ``resume_source``, rebuilds the source
    after an embedded-broker restart. Runs in its worker thread (or process); ``stats`` is read
    from any thread."""

    kind = "producer"
    counter_names = ("produced", "send_errors")
    rate_counter = "produced"

    def __init__(self, source: Source, bootstrap: str, topic: str = BARS_TOPIC,
                 client_kwargs: dict | None = None, live: bool | None = None, store=None,
                 mode: str = "thread", flush_every: int = 50_000,
                 resume_source: Callable[[ResumePoints], Source] | None = None,
                 ledger: OffsetLedger | None = None):
        """:param resume_source: builds the source again from resume points, for when the
            (memory-only) embedded broker restarted and lost bars not yet stored.
        :param ledger: records the offsets of every acknowledged record (backfill)."""
        super().__init__(store=store, mode=mode)
        self.resume_source = resume_source
        self.ledger = ledger
        self._last_offset: dict[int, int] = {}
        self._log_reset = threading.Event()
        self._recent: dict[tuple[str, str], deque[tuple[int, float]]] = {}
        self._reap_lock = threading.Lock()
        self._inflight: deque | None = None  # the current client's sends, for the watchdog
        self.source = source
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_kwargs = client_kwargs or {}
        self.live = live if live is not None else getattr(source, "speed", None) is not None
        self.flush_every = flush_every
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def describe(self) -> str:
        return f"{self.source.describe()} → {self.topic}"

    def _on_sent(self, acked: list) -> None:
        """Acknowledged records (their RecordMetadata), in send order."""
        self.count("produced", len(acked))
        by_partition: dict[int, list[int]] = defaultdict(list)
        for metadata in acked:
            by_partition[metadata.partition].append(metadata.offset)
        for partition, offsets in by_partition.items():
            last = self._last_offset.get(partition)
            # Offsets only grow within a partition's log: when one goes back, the log started
            # again, i.e. the broker restarted without its data (the embedded broker keeps it
            # in memory).
            if ((last is not None and offsets[0] <= last)
                    or any(a >= b for a, b in zip(offsets, offsets[1:]))):
                self._log_reset.set()
            self._last_offset[partition] = offsets[-1]
            if self.ledger is not None:
                self.ledger.add_many(partition, offsets)

    def _on_error(self, exc: Exception) -> None:
        self.count("send_errors")
        self.error(f"send failed: {exc}")
        if self.resume_source is not None:
            self._log_reset.set()  # start again from what the store has, on a new client

    #: How often the watchdog (:class:`~pipeline.workers.worker.SourceWatch`) reads the source.
    WATCH_EVERY_S = 2.0

    def _reap_current(self) -> None:
        """The acks of the bars sent before a quiet spell (the loop reaps only per bar)."""
        with self._reap_lock:  # only the current client's: a closed one is the loop's
            if self._inflight is not None:
                self._reap_locked(self._inflight)

    def run(self, stop: threading.Event) -> None:
        source = self.source
        # While a live source's bars() is blocked (failing and backing off, say), the loop
        # below cannot report anything: the watchdog says "stalled", with the source's reason.
        watch = (SourceWatch(self, self.source, self.WATCH_EVERY_S, on_idle=self._reap_current)
                 .start() if self.live else None)
        try:
            while source is not None and not stop.is_set():
                producer = make_kafka_producer(self.bootstrap, self.live, self.client_kwargs)
                inflight: deque = deque()
                self._inflight = inflight
                try:
                    self._send_all(producer, source, stop, inflight)
                finally:
                    with self._reap_lock:  # the watchdog leaves this client's sends alone
                        self._inflight = None
                    _close(producer)
                    self._reap(inflight)
                if not self._log_reset.is_set():
                    break  # the source is exhausted, or we were asked to stop
                source = self._rewind(stop)
        except SourceError as exc:
            self.error(str(exc), log_it=False)
            raise
        finally:
            if watch is not None:
                watch.close()
            if self.ledger is not None:
                self.ledger.finish()
            self.gauge("source", self.source.stats())
            self.tick(force=True)

    def _send_all(self, producer, source: Source, stop: threading.Event,
                  inflight: deque) -> None:
        n = 0
        send, topic, clock, append = producer.send, self.topic, time.time, inflight.append
        # Only a producer that can resume after a broker restart needs its recent bars.
        remember = self.resume_source is not None and self.store is not None
        recents = self._recent
        newest = -1  # the newest bar sent (a multi-symbol file is not in time order overall)
        for bar in source.bars(stop):
            append(send(topic, key=bar.symbol.encode(), value=bar.to_json(),
                        timestamp_ms=int(clock() * 1000)))
            if remember:
                recent = recents.get((bar.symbol, bar.interval))
                if recent is None:
                    recent = recents[(bar.symbol, bar.interval)] = deque(maxlen=RECENT_BARS)
                recent.append((bar.ts, bar.close))
            n += 1
            if self.first_ts is None:
                self.first_ts = bar.ts
            self.last_ts = bar.ts
            if bar.ts > newest:
                newest = bar.ts
            if self.live or n % 2048 == 0:
                self._reap(inflight)
                self.gauge("source", source.stats())
                self.gauge("last_bar_ts", newest)
                self.tick()
            if len(inflight) >= self.flush_every:  # bound memory when the broker is slow
                try:
                    inflight[0].get(timeout=30)
                except Exception:  # handled (and reported) by _reap
                    pass
                self._reap(inflight)
            if self._log_reset.is_set():
                break
        if newest >= 0:  # a finite source ends between two samples: its true last bar
            self.gauge("last_bar_ts", newest)

    def _reap(self, inflight: deque) -> None:
        """Handle the finished sends, oldest first (per partition they finish in order).
        Called by the send loop and, while the source is quiet, by the watchdog."""
        with self._reap_lock:
            self._reap_locked(inflight)

    def _reap_locked(self, inflight: deque) -> None:
        acked = []
        while inflight and inflight[0].is_done:
            future = inflight.popleft()
            if future.failed():
                if acked:
                    self._on_sent(acked)
                    acked = []
                self._on_error(future.exception)
            else:
                acked.append(future.value)
        if acked:
            self._on_sent(acked)

    def _rewind(self, stop: threading.Event) -> Source | None:
        """The broker lost records (it restarted without its data, or sends failed): once it
        answers again, start the source after the last bar the store has before the first
        bar that never arrived, so the store ends with no gap and no duplicate."""
        from pipeline.workers.broker import is_healthy

        self._log_reset.clear()
        self._last_offset.clear()
        if self.resume_source is None or self.store is None:
            self.error("the broker restarted without its data; bars sent but not yet stored "
                       "before the restart are lost for this source (restart it to refill)")
            return None
        down_since = time.monotonic()
        while not stop.is_set() and not is_healthy(self.bootstrap, 2):
            if time.monotonic() - down_since > 15:
                self.stall(f"cannot reach the broker at {self.bootstrap}; retrying")
            stop.wait(1.0)
        if stop.is_set():
            return None
        self.unstall()
        stop.wait(3.0)  # let the indexer store what reached the broker
        points = self.resume_points()
        self.error("the broker lost bars that were not stored yet; resuming the source from "
                   "the last bar in the store")
        self._recent.clear()
        return self.resume_source(points)

    def resume_points(self) -> dict[str, tuple[int, float]]:
        """Per symbol: the last stored bar before the first recently sent bar that is missing
        from the store (or the last sent bar, when none is missing)."""
        points: dict[str, tuple[int, float]] = {}
        for (symbol, interval), recent in self._recent.items():
            have = set(self.store.query_bars(symbol, interval, start_ms=recent[0][0])["ts"].tolist())
            missing = next((ts for ts, _ in recent if ts not in have), None)
            if missing is None:
                points[symbol] = recent[-1]
                continue
            before = self.store.query_bars(symbol, interval, end_ms=missing, limit=1)
            if len(before):
                points[symbol] = (int(before["ts"].iloc[-1]), float(before["close"].iloc[-1]))
        return points


def _close(producer) -> None:
    """Flush and close; a client in a fatal state (its broker vanished) may refuse both."""
    try:
        producer.flush(timeout=30)
    except Exception as exc:
        log.debug("flush on close failed: %s", exc)
    try:
        producer.close(timeout=10)
    except Exception as exc:
        log.debug("close failed: %s", exc)
