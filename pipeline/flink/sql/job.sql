-- KappaLab's Flink SQL job: 1m bars -> 5m and 1h candles, news enrichment, dead letters.
-- Placeholders ${...} are filled by pipeline/flink/job.py (string.Template); the same text runs
-- in the Flink SQL client of a cluster once they are replaced (docs/FLINK.md).
-- Statements are separated by a line holding only ';'.

-- ---- sources: raw strings, validated below, so a bad message is dead-lettered, never fatal ----
CREATE TABLE bars_raw (
  message STRING,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  pt AS PROCTIME(),
  rt AS TO_TIMESTAMP_LTZ(COALESCE(TRY_CAST(JSON_VALUE(message, '$.ts') AS BIGINT), 0), 3),
  WATERMARK FOR rt AS rt - INTERVAL '${lateness}' DAY TO SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${bars_topic}',
  'properties.bootstrap.servers' = '${bootstrap}',
  'properties.group.id' = '${group_id}',
  'properties.auto.offset.reset' = 'earliest',
  'scan.startup.mode' = '${startup_mode}',
  ${bars_bounds}
  'scan.watermark.emit.strategy' = 'on-event',
  'format' = 'raw'
)
;
CREATE TABLE news_raw (
  message STRING,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  rt AS TO_TIMESTAMP_LTZ(COALESCE(TRY_CAST(JSON_VALUE(message, '$.ts') AS BIGINT), 0), 3),
  WATERMARK FOR rt AS rt - INTERVAL '${lateness}' DAY TO SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${news_topic}',
  'properties.bootstrap.servers' = '${bootstrap}',
  'properties.group.id' = '${group_id}',
  'properties.auto.offset.reset' = 'earliest',
  'scan.startup.mode' = '${startup_mode}',
  ${news_bounds}
  'format' = 'raw'
)
;
-- ---- sinks ----------------------------------------------------------------------------------
-- Candles in the bar schema (pipeline/contracts/schema.py), keyed by the bar id symbol|interval|ts: a
-- window updated by a late bar is written again under the same key and the indexer overwrites.
CREATE TABLE candles (
  id STRING,
  symbol STRING,
  `interval` STRING,
  ts BIGINT,
  `open` DOUBLE,
  high DOUBLE,
  low DOUBLE,
  `close` DOUBLE,
  volume DOUBLE,
  source STRING,
  PRIMARY KEY (id) NOT ENFORCED
) WITH (
  'connector' = 'upsert-kafka',
  'topic' = '${out_topic}',
  'properties.bootstrap.servers' = '${bootstrap}',
  'key.format' = 'raw',
  'value.format' = 'json',
  'value.fields-include' = 'EXCEPT_KEY'
)
;
-- Each 1m bar with the news published before its close: the feature group's as-of rule
-- (models/features/sentiment.py), news_count_10 and sent_mean_10.
CREATE TABLE bar_sentiment (
  id STRING,
  symbol STRING,
  `interval` STRING,
  ts BIGINT,
  news_count_10 BIGINT,
  sent_mean_10 DOUBLE,
  source STRING,
  PRIMARY KEY (id) NOT ENFORCED
) WITH (
  'connector' = 'upsert-kafka',
  'topic' = '${sentiment_topic}',
  'properties.bootstrap.servers' = '${bootstrap}',
  'key.format' = 'raw',
  'value.format' = 'json',
  'value.fields-include' = 'EXCEPT_KEY'
)
;
-- Dead letters in the indexer's format (pipeline/workers/dead_letters.py): the original bytes as the
-- value, the reason and the origin in headers.
CREATE TABLE dead_letters (
  message STRING,
  headers MAP<STRING, BYTES> METADATA
) WITH (
  'connector' = 'kafka',
  'topic' = '${dlq_topic}',
  'properties.bootstrap.servers' = '${bootstrap}',
  'format' = 'raw'
)
;
-- ---- validation: the bar contract in SQL; reason IS NULL means valid -------------------------
CREATE TEMPORARY VIEW bars_checked AS
SELECT message, `partition`, `offset`, pt, rt, symbol, itv, ts, o, h, l, c, v, src,
  CASE
    WHEN message IS NULL THEN 'message has no value'
    WHEN CHAR_LENGTH(message) > 16384 THEN 'message is over the 16,384-byte limit'
    WHEN NOT (message IS JSON OBJECT) THEN 'message is not a JSON object'
    WHEN symbol IS NULL OR CHAR_LENGTH(symbol) NOT BETWEEN 1 AND 32 OR POSITION('|' IN symbol) > 0
      OR TRIM(symbol) <> symbol THEN 'field symbol is missing, not 1-32 characters, or holds | or edge spaces'
    WHEN itv IS NULL THEN 'field interval is missing'
    WHEN src IS NULL OR CHAR_LENGTH(src) NOT BETWEEN 1 AND 64 THEN 'field source is missing or not 1-64 characters'
    WHEN ts IS NULL OR ts < 946684800000 OR ts >= 4102444800000
      THEN 'field ts is missing or not epoch milliseconds in 2000-2100'
    WHEN o IS NULL OR h IS NULL OR l IS NULL OR c IS NULL OR v IS NULL
      THEN 'a price or volume field is missing or not a number'
    WHEN l <= 0 THEN 'low is not a positive price'
    WHEN h < l THEN 'high is below low'
    WHEN o < l OR o > h THEN 'open is outside [low, high]'
    WHEN c < l OR c > h THEN 'close is outside [low, high]'
    WHEN v < 0 OR v > 1e15 OR h > 1e9 THEN 'volume or a price is out of range'
    ELSE CAST(NULL AS STRING)
  END AS reason
FROM (
  SELECT message, `partition`, `offset`, pt, rt,
    JSON_VALUE(message, '$.symbol') AS symbol,
    JSON_VALUE(message, '$.interval') AS itv,
    JSON_VALUE(message, '$.source') AS src,
    TRY_CAST(JSON_VALUE(message, '$.ts') AS BIGINT) AS ts,
    JSON_VALUE(message, '$.open' RETURNING DOUBLE) AS o,
    JSON_VALUE(message, '$.high' RETURNING DOUBLE) AS h,
    JSON_VALUE(message, '$.low' RETURNING DOUBLE) AS l,
    JSON_VALUE(message, '$.close' RETURNING DOUBLE) AS c,
    JSON_VALUE(message, '$.volume' RETURNING DOUBLE) AS v
  FROM bars_raw
)
;
-- Valid base-interval bars not made by this job, split by the watermark. The watermark trails
-- the newest bar by the allowed lateness, so a bar up to that much older than the newest still
-- updates its window; an older one is too late (dead-lettered as LateBar, so counted). The
-- sources emit a watermark after every record, so the split does not depend on timing.
CREATE TEMPORARY VIEW bars_valid AS
SELECT *, CURRENT_WATERMARK(rt) IS NOT NULL AND rt < CURRENT_WATERMARK(rt) AS too_late
FROM bars_checked
WHERE reason IS NULL AND itv = '1m' AND src <> 'flink'
;
-- The last version of each bar id wins, as in the store (a replayed or corrected bar
-- replaces the earlier one, it is not counted twice).
CREATE TEMPORARY VIEW bars_latest AS
SELECT symbol, ts, o, h, l, c, v FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol, ts ORDER BY pt DESC) AS rn
  FROM bars_valid WHERE NOT too_late
) WHERE rn = 1
;
-- Tumbling windows [k*size, (k+1)*size) aligned to the epoch, as store.ohlc_buckets. Open and
-- close are the first and last bar by ts (not by arrival), so a late bar lands in place:
-- MIN/MAX over 'ts|price' strings (ts has 13 digits 2000-2100, so they sort by ts).
CREATE TEMPORARY VIEW rollup_input AS
SELECT symbol, '5m' AS itv, ts - MOD(ts, 300000) AS bucket, ts, o, h, l, c, v FROM bars_latest
UNION ALL
SELECT symbol, '1h' AS itv, ts - MOD(ts, 3600000) AS bucket, ts, o, h, l, c, v FROM bars_latest
;
CREATE TEMPORARY VIEW news_checked AS
SELECT message, `partition`, `offset`, rt, symbol, ts, score, rel, nid,
  CASE
    WHEN message IS NULL THEN 'message has no value'
    WHEN CHAR_LENGTH(message) > 16384 THEN 'message is over the 16,384-byte limit'
    WHEN NOT (message IS JSON OBJECT) THEN 'message is not a JSON object'
    WHEN symbol IS NULL OR CHAR_LENGTH(symbol) NOT BETWEEN 1 AND 32 OR POSITION('|' IN symbol) > 0
      THEN 'field symbol is missing, not 1-32 characters, or holds |'
    WHEN ts IS NULL OR ts < 946684800000 OR ts >= 4102444800000
      THEN 'field ts is missing or not epoch milliseconds in 2000-2100'
    WHEN src IS NULL OR title IS NULL THEN 'field source or title is missing'
    WHEN score IS NULL OR score < -1 OR score > 1 THEN 'field sentiment_score is missing or outside [-1, 1]'
    WHEN rel IS NULL OR rel < 0 OR rel > 1 THEN 'field relevance is missing or outside [0, 1]'
    ELSE CAST(NULL AS STRING)
  END AS reason
FROM (
  SELECT message, `partition`, `offset`, rt, symbol, ts, score, rel,
    -- pipeline/contracts/news.py: news_id, so a replayed item is one item
    'news-' || SHA1(CASE WHEN COALESCE(url, '') <> '' THEN CONCAT_WS(CHR(31), symbol, src, url)
                         ELSE CONCAT_WS(CHR(31), symbol, src, CAST(ts AS STRING), title) END) AS nid,
    src, title
  FROM (
    SELECT message, `partition`, `offset`, rt,
      JSON_VALUE(message, '$.symbol') AS symbol,
      TRY_CAST(JSON_VALUE(message, '$.ts') AS BIGINT) AS ts,
      JSON_VALUE(message, '$.source') AS src,
      JSON_VALUE(message, '$.title') AS title,
      JSON_VALUE(message, '$.url') AS url,
      JSON_VALUE(message, '$.sentiment_score' RETURNING DOUBLE) AS score,
      JSON_VALUE(message, '$.relevance' RETURNING DOUBLE) AS rel
    FROM news_raw
  )
)
;
-- ---- the statement set (one job) ------------------------------------------------------------
INSERT INTO candles
SELECT symbol || '|' || itv || '|' || CAST(bucket AS STRING), symbol, itv, bucket,
  CAST(SPLIT_INDEX(MIN(CAST(ts AS STRING) || '|' || CAST(o AS STRING)), '|', 1) AS DOUBLE),
  MAX(h), MIN(l),
  CAST(SPLIT_INDEX(MAX(CAST(ts AS STRING) || '|' || CAST(c AS STRING)), '|', 1) AS DOUBLE),
  SUM(v), 'flink'
FROM rollup_input
GROUP BY symbol, itv, bucket
;
-- Interval join per symbol: news published in [close - 10 bars, close), close = ts + 1m.
INSERT INTO bar_sentiment
SELECT symbol || '|1m|' || CAST(ts AS STRING), symbol, '1m', ts, COUNT(nid),
  CASE WHEN SUM(rel) > 0 THEN SUM(contrib) / SUM(rel) ELSE 0.0 END, 'flink'
FROM (
  SELECT DISTINCT b.symbol, b.ts, n.nid, n.score * n.rel AS contrib, n.rel
  FROM bars_valid b LEFT JOIN (SELECT * FROM news_checked WHERE reason IS NULL) n
    ON b.symbol = n.symbol
    AND n.rt >= b.rt - INTERVAL '9' MINUTE AND n.rt < b.rt + INTERVAL '1' MINUTE
  WHERE NOT b.too_late
)
GROUP BY symbol, ts
;
INSERT INTO dead_letters
SELECT message, MAP['reason', ENCODE(reason_text, 'UTF-8'),
                    'error_class', ENCODE(error_class, 'UTF-8'),
                    'source_topic', ENCODE(src_topic, 'UTF-8'),
                    'source_partition', ENCODE(CAST(`partition` AS STRING), 'UTF-8'),
                    'source_offset', ENCODE(CAST(`offset` AS STRING), 'UTF-8'),
                    'rejected_by', ENCODE('flink', 'UTF-8')]
FROM (
  SELECT message, `partition`, `offset`, '${bars_topic}' AS src_topic, 'InvalidBar' AS error_class,
    'InvalidBar: ' || reason AS reason_text
  FROM bars_checked WHERE reason IS NOT NULL
  UNION ALL
  SELECT message, `partition`, `offset`, '${bars_topic}', 'LateBar',
    'LateBar: bar ' || symbol || '|1m|' || CAST(ts AS STRING) || ' is behind the watermark'
    || ' (more than the allowed lateness, ${lateness_s} s, older than the newest bar)'
  FROM bars_valid WHERE too_late
  UNION ALL
  SELECT message, `partition`, `offset`, '${news_topic}', 'InvalidNews', 'InvalidNews: ' || reason
  FROM news_checked WHERE reason IS NOT NULL
)
