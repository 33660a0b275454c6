"""The contracts layer (docs/ARCHITECTURE.md): what every other part of KappaLab agrees on.

The bar, prediction, news and fundamentals schemas with their topic names
(:mod:`~pipeline.contracts.schema`, :mod:`~pipeline.contracts.news`,
:mod:`~pipeline.contracts.fundamentals`), the one configuration loader
(:mod:`~pipeline.contracts.config`), back-off, JSON safety and CSV exports. Imports nothing else
of ours.
"""
