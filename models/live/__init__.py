"""Live scoring with no Kafka: the scoring step a stream worker drives (:mod:`models.live.step`).

This package is the live layer of docs/ARCHITECTURE.md: below the stream workers (which only
feed it bars and write what it returns), above the models. Beside the step: the series state
(``series``), progressive validation (``progressive``), the champion lookup (``champions``),
live errors and drift (``errors``), retraining in the background (``retrain_schedule``), the
news and fundamentals feature providers (``news``, ``fundamentals``) and the arena of shadow
models (``arena``).
"""
