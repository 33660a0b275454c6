"""The stream table (pipeline/contracts/streams.py) is what the broker, the indexer, the stream
producer, the CLI and the scorer read: every row is complete and each reader takes it from the
row, so a fourth stream is its contract module plus one row. (The streams end to end on the
real broker: tests/test_pipeline_e2e.py, test_news_stream.py, test_fundamentals_stream.py.)"""
from __future__ import annotations

import pytest

from pipeline.__main__ import build_parser
from pipeline.contracts.schema import InvalidBar
from pipeline.contracts.streams import STREAMS, stream, stream_topics, with_provider
from pipeline.store.base import Store
from pipeline.workers.broker import DEFAULT_TOPICS
from pipeline.workers.indexer import Indexer
from pipeline.workers.scorer import Scorer
from pipeline.workers.stream_producer import StreamProducer

PROVIDER_SURFACE = ("kind", "topic", "names", "claims", "consume", "use", "start_series",
                    "update_item", "update", "gauge")


def test_every_row_is_complete_and_distinct():
    names = [r.name for r in STREAMS]
    assert names[0] == "bars" and len(set(names)) == len(names)
    topics = stream_topics()
    assert len(set(topics)) == len(topics) == 2 * len(STREAMS)
    assert len({r.group for r in STREAMS}) == len(STREAMS)
    for row in STREAMS:
        assert row.dlq_topic == f"{row.topic}.dlq"
        assert callable(getattr(Store, row.store_write, None)), row.store_write
        with pytest.raises(InvalidBar):
            row.parse(b'{"symbol": "X"}')
    with pytest.raises(ValueError, match="unknown stream 'tweets'; one of: bars, news"):
        stream("tweets")


def test_the_broker_creates_every_streams_topics():
    assert set(stream_topics()) <= set(DEFAULT_TOPICS)
    assert DEFAULT_TOPICS[:2] == ("finance-data", "finance-data.dlq")


def test_the_indexer_and_the_producer_take_their_names_and_topics_from_the_row(sqlite_store):
    for row in STREAMS:
        ix = Indexer(sqlite_store, "127.0.0.1:9", stream=row.name)
        assert (ix.kind, ix.topic, ix.dlq_topic, ix.group_id) == (
            row.indexer, row.topic, row.dlq_topic, row.group)
        assert ix.parse_message is row.parse and (ix.rules is not None) == (row.name == "bars")
        assert ix.worker_id.startswith(row.indexer + "-")
        pr = StreamProducer(row, lambda stop: iter(()), "127.0.0.1:9")
        assert (pr.kind, pr.topic) == (row.producer, row.topic)


def test_the_cli_has_an_index_command_per_row_and_a_topic_option_per_provider():
    parser = build_parser()
    for row in STREAMS:
        if row.index_command:
            args = parser.parse_args([row.index_command, "--until-idle", "3"])
            assert (args.stream, args.until_idle) == (row.name, 3.0)
    args = parser.parse_args(["score"])
    assert with_provider()
    for row in with_provider():
        assert getattr(args, f"{row.name}_topic") == row.topic
    args = parser.parse_args(["score", "--news-topic", ""])
    assert args.news_topic == ""


def test_the_scorer_builds_one_provider_per_row_with_a_provider(sqlite_store):
    scorer = Scorer(sqlite_store, "127.0.0.1:9")
    assert scorer.extras.topics == [row.topic for row in with_provider()]
    for row, provider in zip(with_provider(), scorer.extras.providers):
        assert isinstance(provider, row.provider_class())
        assert all(hasattr(provider, name) for name in PROVIDER_SURFACE)
    news_off = Scorer(sqlite_store, "127.0.0.1:9", stream_topics={"news": None})
    assert news_off.extras.topics == [r.topic for r in with_provider() if r.name != "news"]
    with pytest.raises(ValueError, match="no live feature provider"):
        stream("bars").provider_class()


def test_module_name_references_import_or_say_why():
    """The one ``module:Name`` import (contracts/imports.py) the stream table, the source
    catalog and the store registry share."""
    from pipeline.contracts.imports import import_object
    from pipeline.store.sqlite import SqliteStore

    assert import_object("pipeline.store.sqlite:SqliteStore") is SqliteStore
    for bad in ("pipeline.store.sqlite", "pipeline.store.sqlite:", ":SqliteStore"):
        with pytest.raises(ValueError, match="is not a 'module:Name' reference"):
            import_object(bad)
    with pytest.raises(AttributeError):
        import_object("pipeline.store.sqlite:NoSuchStore")
