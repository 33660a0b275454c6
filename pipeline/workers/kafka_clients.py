"""The one place the pipeline's Kafka consumers are built, and how far their logs reach.

Every consumer of the pipeline (indexer, news and fundamentals indexers, scorer, the worker
heartbeat reader) is built by :func:`make_consumer`, so they share the same rules:

* ``isolation_level="read_committed"``: records of an open transaction are not read before it
  ends, and aborted ones are skipped: listed by the broker (Apache Kafka), or found from the
  ABORT markers in the fetched batches where the broker lists none (Tansu; see
  :func:`list_aborted_transactions` and docs/STREAM_ROBUSTNESS.md).
* short group timeouts on the embedded broker (its group joins take half a session timeout),
  Kafka's own defaults elsewhere; no auto-commit, ``earliest`` reset, no topic auto-creation.
* waits that cost little while idle (:class:`IdleFetchWait`): the configured fetch wait while
  records come, a long one once nothing has come for :data:`IDLE_AFTER_S`.

:func:`log_end_offsets` is the log end a consumer can trust: the high watermark of its last
fetch response (the embedded broker's ListOffsets answers the *start* of the last record
batch, not the end).
"""
from __future__ import annotations

import time
from functools import cache
from typing import Any, Iterable

from pipeline.workers.broker import is_embedded
from pipeline.workers.dead_letters import describe_failure

#: Consumers read committed data only (see the module docstring).
ISOLATION_LEVEL = "read_committed"
#: Consumer-group session timeout of the stream workers on the embedded broker: it answers a
#: group join after half of it (one second at least), so it bounds the first bar's delay on
#: every start (docs/CLASSROOM.md); four heartbeats per session.
GROUP_SESSION_MS = 2_000
GROUP_HEARTBEAT_MS = 500
#: On a configured Kafka: the client's defaults (Kafka refuses sessions under
#: ``group.min.session.timeout.ms``, 6 s by default); its joins wait
#: ``group.initial.rebalance.delay.ms`` instead.
KAFKA_SESSION_MS = 10_000
KAFKA_HEARTBEAT_MS = 3_000
#: A consumer that got nothing for this long is idle: its fetches wait :data:`IDLE_FETCH_WAIT_MS`.
IDLE_AFTER_S = 5.0
IDLE_FETCH_WAIT_MS = 500


def make_consumer(bootstrap: str, topics: str | Iterable[str] | None, group_id: str | None,
                  client_kwargs: dict | None = None, max_poll_records: int = 5000,
                  client_id: str = "kappalab", **overrides: Any):
    """A kafka-python consumer with the pipeline's settings; ``overrides`` win."""
    if topics is None:
        topics = ()
    elif isinstance(topics, str):
        topics = (topics,)
    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=ISOLATION_LEVEL,
        # A consumer never creates the topic it reads: one deleted under it stays missing
        # (and is said) until someone creates it, with the partitions they choose.
        allow_auto_create_topics=False,
        # Short intervals: the embedded broker completes a group join half a session timeout
        # after it starts (minutes with the defaults, 1 s here: docs/CLASSROOM.md).
        max_poll_interval_ms=10_000,
        session_timeout_ms=GROUP_SESSION_MS if is_embedded(bootstrap) else KAFKA_SESSION_MS,
        heartbeat_interval_ms=(GROUP_HEARTBEAT_MS if is_embedded(bootstrap)
                               else KAFKA_HEARTBEAT_MS),
        max_poll_records=max_poll_records,
        fetch_max_wait_ms=200,
        max_partition_fetch_bytes=8 * 1024 * 1024,  # a whole batch per fetch round trip
    )
    settings.update(overrides)
    settings.update(client_kwargs or {})
    consumer = consumer_class()(*topics, **settings)
    list_aborted_transactions(consumer)
    return consumer


def quiet_kafka_logs() -> None:
    """kafka-python warns about every slow event-loop task on a busy 2-core machine."""
    import logging

    logging.getLogger("kafka").setLevel(logging.WARNING)
    for name in ("kafka.net.selector", "kafka.conn", "kafka.coordinator", "kafka.client"):
        logging.getLogger(name).setLevel(logging.ERROR)


@cache
def consumer_class():
    """kafka-python's consumer whose ``poll`` keeps an :class:`IdleFetchWait`."""
    from kafka import KafkaConsumer

    class PipelineConsumer(KafkaConsumer):
        """A KafkaConsumer whose fetches wait long once it is idle (:class:`IdleFetchWait`)."""

        def __init__(self, *topics, **configs):
            super().__init__(*topics, **configs)
            self.idle_wait = IdleFetchWait(getattr(self, "_fetcher", None),
                                           configs.get("fetch_max_wait_ms", 500))

        def poll(self, *args, **kwargs):
            records = super().poll(*args, **kwargs)
            self.idle_wait.polled(bool(records))
            return records

    return PipelineConsumer


class IdleFetchWait:
    """How long the broker may hold a fetch with nothing to return: the consumer's own
    ``fetch_max_wait_ms`` (``busy_ms``) while records come, :data:`IDLE_FETCH_WAIT_MS` once
    none came for :data:`IDLE_AFTER_S`, and back at the first record.

    A short wait is paid in CPU while nothing comes (a fetch round trip every ``busy_ms``: the
    scorer's 10 ms cost about 0.06 core per idle consumer); a long one in latency only on a
    broker that holds an empty fetch even when data arrives (the embedded Tansu: the first
    record after an idle spell waits up to about half of it), not on Apache Kafka, which
    answers as soon as data arrives. Changes the fetcher's setting of kafka-python (each fetch
    request carries its wait); a client without that attribute keeps its own wait."""

    def __init__(self, fetcher, busy_ms: int, idle_ms: int = IDLE_FETCH_WAIT_MS,
                 idle_after_s: float = IDLE_AFTER_S):
        self._config = getattr(fetcher, "config", None)
        self.busy_ms, self.idle_ms = busy_ms, max(busy_ms, idle_ms)
        self.idle_after_s = idle_after_s
        self._last_records = time.monotonic()
        self.idle = False

    def polled(self, got_records: bool) -> None:
        now = time.monotonic()
        if got_records:
            self._last_records = now
            if self.idle:
                self._set(False)
        elif not self.idle and now - self._last_records >= self.idle_after_s:
            self._set(True)

    def _set(self, idle: bool) -> None:
        self.idle = idle
        if isinstance(self._config, dict):
            self._config["fetch_max_wait_ms"] = self.idle_ms if idle else self.busy_ms


def log_end_offsets(consumer, partitions: Iterable) -> dict:
    """The end of each partition's log as far as this consumer can tell: the high watermark
    of its last fetch response, or the position it has read to if that is further. Only a
    partition not fetched yet asks ListOffsets (``end_offsets``), which on the embedded broker
    answers the start of the last batch, not the end, and creates a deleted topic again."""
    partitions = list(partitions)
    out, unknown = {}, []
    for tp in partitions:
        try:
            known = [consumer.highwater(tp), consumer.position(tp)]
        except Exception:  # not assigned any more
            known = [None]
        if known[0] is None:
            unknown.append(tp)
        out[tp] = max((k for k in known if k is not None), default=0)
    if unknown:
        for tp, end in consumer.end_offsets(unknown).items():
            out[tp] = max(out[tp], end or 0)
    return out


def probe_log_end(consumer, partitions: Iterable, wait_ms: int = 300) -> dict:
    """The log end of ``partitions`` for a consumer that does not read them otherwise (lag
    measured from outside a group): ``end_offsets``, then one fetch from there, whose
    response carries the high watermark. Reassigns ``consumer`` to ``partitions``."""
    partitions = list(partitions)
    ends = consumer.end_offsets(partitions)
    consumer.assign(partitions)
    for tp in partitions:
        consumer.seek(tp, ends[tp])
    consumer.poll(timeout_ms=wait_ms)
    return log_end_offsets(consumer, partitions)


def consumer_lag(consumer, partitions: Iterable) -> int:
    """Records behind the log end over ``partitions`` (see :func:`log_end_offsets`)."""
    partitions = list(partitions)
    ends = log_end_offsets(consumer, partitions)
    return sum(max(0, ends[tp] - consumer.position(tp)) for tp in partitions)


def reset_fetch_buffer(consumer) -> bool:
    """Drop the records the client parsed but could not hand out.

    kafka-python keeps a partition's parsed fetch after its record iterator raised (e.g.
    ``UnsupportedCodecError`` for a batch whose codec is not installed); the next ``poll``
    then loops over that exhausted iterator forever, holding the worker's thread. Dropping
    it makes the next poll fetch again (and raise again), so the worker can say ``stalled``.
    Returns False when the client has no such buffer (another version): the caller then
    builds a new consumer."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_next_partition_records"):
        return False
    fetcher._next_partition_records = None
    return True


def fresh_fetch(consumer, reopen):
    """After a poll that raised: ``consumer`` with its stuck fetch dropped, or, for a client
    without that buffer, a new consumer from ``reopen()`` (the old one closed)."""
    if reset_fetch_buffer(consumer):
        return consumer
    consumer.close()
    return reopen()


def list_aborted_transactions(consumer) -> None:
    """Make ``consumer`` skip aborted transactions on a broker that does not list them.

    A ``read_committed`` fetch response names the aborted transactions in its range, and the
    client skips their records. Tansu (the embedded broker) names none, so every client
    returns aborted records. For such a response this reads the transaction markers in the
    fetched batches themselves: a producer's transactional batches followed by its ABORT
    marker in the same response are listed as aborted, and the client skips them as it would
    for Apache Kafka. (Tansu hands out a transaction's records only once it has ended, so its
    marker comes with them unless the response is cut by ``max_partition_fetch_bytes``.)
    Only this consumer's fetcher is changed; a broker that lists them is left alone."""
    fetcher = getattr(consumer, "_fetcher", None)
    base = getattr(type(fetcher), "PartitionRecords", None) if fetcher is not None else None
    if base is None or getattr(fetcher, "_isolation_level", None) is None:
        return
    from kafka.protocol.consumer import IsolationLevel

    if fetcher._isolation_level != IsolationLevel.READ_COMMITTED:
        return

    class PartitionRecords(base):
        """kafka-python's fetched batch, with the aborted transactions found from its ABORT markers."""

        def __init__(self, fetch_offset, tp, records, **kw):
            if not kw.get("aborted_transactions") and records is not None:
                kw["aborted_transactions"] = _aborted_in(base, records)
            super().__init__(fetch_offset, tp, records, **kw)

    fetcher.PartitionRecords = PartitionRecords


def _aborted_in(partition_records_class, records) -> list:
    """The aborted transactions whose ABORT marker is among ``records`` (a MemoryRecords)."""
    from kafka.protocol.old.fetch import AbortedTransaction
    from kafka.record.memory_records import MemoryRecords

    copy, first, out = MemoryRecords(records._buffer), {}, []
    batch = copy.next_batch()
    while batch is not None:
        if batch.magic == 2 and batch.is_transactional:
            pid = batch.producer_id
            if batch.is_control_batch:
                start = first.pop(pid, None)
                if start is not None and partition_records_class._contains_abort_marker(None, batch):
                    out.append(AbortedTransaction(pid, start))
            else:
                first.setdefault(pid, batch.base_offset)
        batch = copy.next_batch()
    return out


def undecodable(exc: BaseException) -> bool:
    """A fetch the client cannot decode (no codec, corrupt batch): retrying will not help
    until someone acts, so the worker says ``stalled`` at once."""
    name = type(exc).__name__
    return name in ("UnsupportedCodecError", "CorruptRecordError", "CorruptRecordException")


def unreadable_reason(topic: str, exc: BaseException) -> str:
    """One sentence for a poll that failed, with the way out for a missing codec."""
    reason = f"cannot read {topic} ({describe_failure(exc)})"
    if type(exc).__name__ == "UnsupportedCodecError":
        reason += ("; a producer compressed a batch with a codec this client cannot decode: "
                   "install the codec packages (pip install -r requirements.txt: "
                   "python-snappy, lz4, zstandard)")
    return reason
