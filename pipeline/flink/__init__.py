"""KappaLab's stream engine: a Flink SQL job on the same topics (docs/FLINK.md).

The job (``sql/job.sql``, run by ``job.py`` in its own venv) reads ``finance-data`` and
``finance-news`` and writes candles rolled up from 1m bars to 5m and 1h (bars in the bar schema,
``source = 'flink'``) to :data:`FLINK_TOPIC`, each 1m bar's news sentiment to
:data:`FLINK_SENTIMENT_TOPIC`, and bad or too-late input to :data:`FLINK_DLQ_TOPIC`.
:mod:`pipeline.flink.launcher` starts and watches it from the app's interpreter (which never
imports pyflink); :mod:`pipeline.flink.stream` indexes its candles like any stream.
"""
FLINK_TOPIC = "finance-data.flink"
FLINK_SENTIMENT_TOPIC = "finance-data.flink.sentiment"
FLINK_DLQ_TOPIC = "finance-data.flink.dlq"
#: The job's consumer group: its Kafka sources commit offsets here on every checkpoint.
FLINK_JOB_GROUP = "kappalab-flink-job"
#: The indexer of the job's candles.
FLINK_INDEX_GROUP = "kappalab-flink-indexer"
#: The intervals the job makes from the 1m bars.
FLINK_INTERVALS = ("5m", "1h")
