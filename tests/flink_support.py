"""What the Flink tests share: the check that the Flink venv and Java are there."""
from __future__ import annotations

import pytest


def require_flink_venv(venv) -> None:
    """The Flink tests need the Flink venv and a Java runtime, which `bash tests/run.sh`
    installs. In CI (``CI`` set) a missing part fails the test, so CI can never pass with the
    Flink job untested; on a developer machine without them the test is skipped, saying how
    to get them."""
    import os

    from pipeline.flink.launcher import missing_parts

    missing = missing_parts(venv)
    if not missing:
        return
    reason = (f"the Flink job needs {', '.join(missing)}: run `bash tests/run.sh` once "
              "(it installs a Java runtime and the Flink venv), or set KAPPALAB_FLINK_VENV")
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
