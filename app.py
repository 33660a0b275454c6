"""KappaLab: real-time machine learning on market data, over a Kappa pipeline.

    streamlit run app.py

With no configuration this starts an embedded Kafka-compatible broker, a market simulator, the
indexer into an embedded SQLite store (and the live scorer), once per server process.
The navigation, the bootstrap and why every page calls ``enter_page`` (deep links): see
dashboard/shell.py. The pipeline's process starts first, before the shell's imports
(dashboard/early_start.py).
"""
from dashboard.early_start import start_pipeline_early

start_pipeline_early()

from dashboard.shell import run_app  # noqa: E402  (after the start: pandas, Plotly, the store)

run_app()
