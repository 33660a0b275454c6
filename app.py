"""KappaLab: real-time machine learning on market data, over a Kappa pipeline.

    streamlit run app.py

With no configuration this starts an embedded Kafka-compatible broker, a market simulator, the
indexer into an embedded SQLite store (and the live scorer), once per server process.
The navigation, the bootstrap and why every page calls ``enter_page`` (deep links): see
dashboard/shell.py.
"""
from dashboard.shell import run_app

run_app()
