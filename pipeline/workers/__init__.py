"""The workers layer (docs/ARCHITECTURE.md): everything that talks to Kafka.

The broker finder, the worker base and its heartbeats, the one Kafka client factory, the
producer, the indexers, the scorer loop (a thin shell around :class:`models.live.step.ScoringStep`),
the prediction feed, one process's runtime and the dashboard's demo pipeline process. Imports the
layers below (contracts, store, sources, features, models, live); never the dashboard.
"""
