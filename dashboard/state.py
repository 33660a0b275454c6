"""Per-server shared resources for the pages: the configuration and one store per target.

Pages call :func:`get_store` (or :func:`store_or_stop`, which shows the store's one-sentence
error and stops the page instead of a traceback).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from dashboard.plain_text import md_plain
from pipeline.contracts.config import Config, load_config

if TYPE_CHECKING:  # the store (pandas) is imported by its first use, not by this module:
    from pipeline.store import Store  # app.py starts the pipeline before (early_start.py)


def get_config() -> Config:
    # Cheap to rebuild; rebuilding on each run lets env/secrets changes show up on rerun.
    return load_config()


@st.cache_resource(show_spinner=False)
def _open_store(key: tuple, _config: Config) -> Store:
    from pipeline.store import open_store

    store = open_store(_config)
    store.check()
    return store


def get_store(config: Config | None = None) -> Store:
    config = config or get_config()
    return _open_store(config.store_key(), config)


def store_or_stop(config: Config | None = None) -> Store:
    from pipeline.store import StoreUnavailable

    try:
        return get_store(config)
    except StoreUnavailable as exc:
        st.error(md_plain(exc))
        st.stop()
        raise  # unreachable: st.stop raises
