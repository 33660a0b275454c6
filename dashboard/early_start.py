"""The demo pipeline's child process, started by the first lines of app.py's first script run.

Before the shell imports the store, pandas and Plotly (about a second of a first run on the
2-core machine), so the embedded broker, the consumer-group joins and the warm-up begin that
much earlier (docs/CLASSROOM.md, "The first minute"). It starts only what
:func:`dashboard.runtime.autostart` would start itself: autostart on, the pipeline in a process
(``KAPPALAB_PIPELINE_MODE=process``, the default), the embedded SQLite store (an Elasticsearch
store is checked by the shell first), and no refusal (network mode without a presenter
password). The runtime adopts it (:meth:`PipelineProcess.once`); the child stands down by
itself when workers of another process already feed the store (attach mode).
"""
from __future__ import annotations

from dashboard.access import startup_refusal
from dashboard.state import get_config


def start_pipeline_early() -> None:
    """Start the demo pipeline's child process now if this server will run it (once)."""
    config = get_config()
    if (not config.autostart or config.pipeline_mode != "process" or config.es_url
            or startup_refusal(config)):
        return
    from pipeline.workers.demo_process import PipelineProcess

    PipelineProcess.once(config.data_dir)
