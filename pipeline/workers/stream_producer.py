"""The producer of the item streams (news, fundamentals: every row of the stream table but the
bars, whose :class:`~pipeline.workers.producer.Producer` runs a bar source), and the news
simulator's hand-over queue.

:class:`StreamProducer` publishes batches of a stream's records from a *feed*, a callable
``feed(stop) -> iterator of lists of records``: ``AlphaVantageNews(...).items``,
``AlphaVantageOverview(...).items`` or :meth:`NewsQueue.batches` (which the news simulator
fills through its ``on_news`` hook while the bar producer runs it). Key = symbol, value = the
record's JSON. Their indexer is the one :class:`~pipeline.workers.indexer.Indexer` with the
stream's row (:mod:`pipeline.contracts.streams`).

Why every stream has a topic of its own rather than a direct write: a record is part of the
log, so a store rebuilt by replay has the same news and fundamentals, and the live scorer
follows them (subscribe, update its provider) instead of polling the store.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterator

from pipeline.contracts.news import NewsItem
from pipeline.contracts.streams import Stream, stream as stream_row
from pipeline.workers.producer import make_kafka_producer
from pipeline.sources.base import SourceError
from pipeline.workers.worker import SourceWatch, Worker

Feed = Callable[[threading.Event], Iterator[list[Any]]]


class StreamProducer(Worker):
    """Publish a feed of one stream's records (news items, fundamentals snapshots) to its topic.

    :param stream: the stream's row or name (:data:`pipeline.contracts.streams.STREAMS`); the
        worker's kind is the row's ``producer`` (``news_producer``...).
    :param feed: ``feed(stop)`` yields lists of records until done or stopped; a record has
        ``symbol``, ``ts`` and ``to_json()``.
    :param topic: default: the stream's.
    :param description: shown on the Pipeline page.
    """

    counter_names = ("produced", "send_errors")
    rate_counter = "produced"

    def __init__(self, stream: Stream | str, feed: Feed, bootstrap: str,
                 topic: str | None = None, description: str = "news",
                 client_kwargs: dict | None = None, mode: str = "thread", store=None):
        self.stream = stream_row(stream)
        self.kind = self.stream.producer
        super().__init__(store=store, mode=mode)
        self.feed = feed
        self.bootstrap = bootstrap
        self.topic = topic or self.stream.topic
        self.description = description
        self.client_kwargs = client_kwargs or {}

    def describe(self) -> str:
        return f"{self.description} → {self.topic}"

    #: How often the watchdog reads a live API feed's source (see :class:`SourceWatch`).
    WATCH_EVERY_S = 2.0

    def run(self, stop: threading.Event) -> None:
        producer = make_kafka_producer(self.bootstrap, live=True, client_kwargs=self.client_kwargs)
        # A feed that is a live API source's method (Alpha Vantage news) blocks while the API
        # fails: the watchdog says "stalled" with the source's reason meanwhile.
        source = getattr(self.feed, "__self__", None)
        watch = (SourceWatch(self, source, self.WATCH_EVERY_S, what="news").start()
                 if callable(getattr(source, "problem", None)) else None)
        try:
            for batch in self.feed(stop):
                for item in batch:
                    future = producer.send(self.topic, key=item.symbol.encode(),
                                           value=item.to_json(),
                                           timestamp_ms=int(time.time() * 1000))
                    future.add_callback(lambda _m: self.count("produced"))
                    future.add_errback(self._on_error)
                    self.gauge("last_news_ts", item.ts)
                producer.flush(timeout=30)
                self.tick()
        except SourceError as exc:
            self.error(str(exc), log_it=False)
            raise
        finally:
            if watch is not None:
                watch.close()
            producer.flush(timeout=10)
            producer.close(timeout=5)
            self.tick(force=True)

    def _on_error(self, exc: Exception) -> None:
        self.count("send_errors")
        self.error(f"news send failed: {exc}")


class NewsQueue:
    """A hand-over point between a source that publishes items (``put``, e.g. the news
    simulator's ``on_news``) and a news :class:`StreamProducer` (``batches`` is its feed)."""

    def __init__(self, maxsize: int = 100_000):
        self._queue: queue.Queue[NewsItem | None] = queue.Queue(maxsize)
        self.dropped = 0

    def put(self, item: NewsItem) -> None:
        """Never blocks the bar producer: with no news producer draining, items past
        ``maxsize`` are dropped and counted in :attr:`dropped`."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """No more items: ``batches`` ends once the queue is drained."""
        self._queue.put(None)

    def batches(self, stop: threading.Event, max_batch: int = 500) -> Iterator[list[NewsItem]]:
        while not stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if first is None:
                return
            batch = [first]
            while len(batch) < max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    yield batch
                    return
                batch.append(item)
            yield batch
