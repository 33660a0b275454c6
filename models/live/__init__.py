"""Live scoring with no Kafka: the scoring step a stream worker drives (:mod:`models.live.step`).

This package is the live layer of docs/ARCHITECTURE.md: below the stream workers (which only
feed it bars and write what it returns), above the models. The scorer's other live parts
(``models/live_series.py``, ``progressive.py``, ``champions.py``, ``retrain_schedule.py``,
``live_news.py``, ``live_fundamentals.py``, ``arena.py``) belong here too and move in with the
folder move (docs/ARCHITECTURE.md, "What is still to move").
"""
