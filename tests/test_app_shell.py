"""app.py's shell under Streamlit's AppTest: a deep link as a server's first request.

``PagesManager.uses_pages_directory`` is Streamlit's process-wide switch for its legacy
pages-folder mode (dashboard/shell.py explains it). It starts unset on a fresh server; earlier
tests in this process may have set it, so each test resets it to the fresh-server state and
restores it after: the one place these tests touch Streamlit internals.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


@pytest.fixture
def fresh_server():
    saved = PagesManager.uses_pages_directory
    PagesManager.uses_pages_directory = None
    yield
    PagesManager.uses_pages_directory = saved


def captions(at: AppTest) -> str:
    return " ".join(c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("page, title", [("pages/pipeline_control.py", "Pipeline"),
                                         ("pages/data_browser.py", "Data"),
                                         ("pages/model_lab.py", "Model lab")])
def test_deep_link_first_runs_through_app_shell(data_dir, fresh_server, page, title):
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(page)  # the first run asks for this page, as a deep link does
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [title]
    # The shell ran: its sidebar captions are there, and st.navigation ended the legacy mode.
    assert "**Store:** embedded SQLite" in captions(at)
    assert "**Broker:**" in captions(at)
    assert PagesManager.uses_pages_directory is False


def test_root_first_shows_the_default_page(data_dir, fresh_server):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Live market"]
    assert "**Store:** embedded SQLite" in captions(at)


def test_page_run_alone_is_not_rerouted(data_dir):
    """A page as the main script (how the page tests run) renders itself, with no shell."""
    at = AppTest.from_file(str(ROOT / "pages/data_browser.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Data"]
    assert captions(at) == ""
