"""The classroom setting (dashboard/access.py, pipeline/cli/serve.py) under Streamlit's AppTest and
the real CLI: network mode without a password refuses to start, viewers get no state-changing
control, a session that typed the presenter password gets them all, the password is never
shown. Loopback keeps everyone presenter."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.contracts.config import NETWORK_WITHOUT_PASSWORD, load_config
from pipeline.cli.serve import serve_command
from pipeline.cli.support import CliError

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "tr0ub4dor-and-3"
#: labels of controls that change state, per page
CONTROLS = {
    "pages/pipeline_control.py": ("Start producer", "Start indexer", "Start scorer",
                                  "Start news indexer"),
    "pages/model_lab.py": ("Run comparison", "Delete run"),
}


@pytest.fixture
def network(data_dir, monkeypatch):
    monkeypatch.setenv("KAPPALAB_NETWORK", "1")
    monkeypatch.setenv("KAPPALAB_PRESENTER_PASSWORD", PASSWORD)
    return data_dir


def run(path: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / path), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def labels(at: AppTest) -> set[str]:
    return {b.label for b in at.button}


def every_text(at: AppTest) -> str:
    kinds = ("markdown", "caption", "error", "warning", "info", "success", "title", "subheader")
    parts = [str(e.value) for k in kinds for e in getattr(at, k)]
    parts += [str(e.value) for e in at.text_input]
    return "\n".join(parts)


def fill(data_dir: Path) -> None:
    """Bars of two symbols, one stored lab run (so the model lab offers Delete run) and one
    model version (so the Predictions page offers Promote)."""
    from models import lab
    from pipeline.store.sqlite import SqliteStore
    from tests.test_app_pages import fill as fill_bars

    fill_bars(data_dir, 300)
    store = SqliteStore(data_dir / "kappalab.sqlite")
    cfg = lab.LabConfig(symbols=["ACME"], interval="1m", models=[("linear", {})])
    result = lab.run_comparison(lab.load_bars(store, cfg)[0], cfg)
    lab.save_run(store, result)
    lab.save_version(store, result, list(result.fitted)[0], champion=False)  # promotable
    store.close()


# ---- refusing to start -----------------------------------------------------------------------------
def test_network_mode_without_password_refuses_with_one_sentence(data_dir, monkeypatch):
    monkeypatch.setenv("KAPPALAB_NETWORK", "1")
    monkeypatch.delenv("KAPPALAB_PRESENTER_PASSWORD", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert [e.value for e in at.error] == [NETWORK_WITHOUT_PASSWORD]
    assert not at.title and not at.button  # nothing else: no page, no store, no broker
    assert not (data_dir / "kappalab.sqlite").exists()


def test_cli_serve_refuses_network_mode_without_password(tmp_path):
    env = dict(os.environ, KAPPALAB_NETWORK="1", KAPPALAB_DATA_DIR=str(tmp_path),
               PYTHONPATH=str(ROOT))
    env.pop("KAPPALAB_PRESENTER_PASSWORD", None)
    done = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--dry-run"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {NETWORK_WITHOUT_PASSWORD}"
    assert done.stdout == ""


def test_serve_binds_loopback_unless_the_classroom_setting_is_on(tmp_path):
    base = {"KAPPALAB_DATA_DIR": str(tmp_path)}
    loopback = serve_command(load_config(env=base, secrets_path=tmp_path / "none"), 8600)
    assert loopback[loopback.index("--server.address") + 1] == "127.0.0.1"
    opened = serve_command(load_config(env={**base, "KAPPALAB_NETWORK": "1",
                                            "KAPPALAB_PRESENTER_PASSWORD": "x"},
                                       secrets_path=tmp_path / "none"), 8600)
    assert opened[opened.index("--server.address") + 1] == "0.0.0.0"
    with pytest.raises(CliError):
        serve_command(load_config(env={**base, "KAPPALAB_NETWORK": "1"},
                                  secrets_path=tmp_path / "none"), 8600)
    assert (ROOT / "Procfile").read_text().strip() == "web: python -m pipeline serve --port $PORT"


def test_password_comes_from_secrets_toml_and_never_prints(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'KAPPALAB_NETWORK = "1"\nKAPPALAB_PRESENTER_PASSWORD = "{PASSWORD}"\n'
                       'KAPPALAB_IMPORT_DIR = "/srv/csv"\n')
    config = load_config(env={"KAPPALAB_DATA_DIR": str(tmp_path)}, secrets_path=secrets)
    assert config.network and config.presenter_password.get() == PASSWORD
    assert config.import_dir == Path("/srv/csv") and config.network_refusal() is None
    assert PASSWORD not in repr(config) and PASSWORD not in str(config)


# ---- the gate ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", sorted(CONTROLS))
def test_viewer_sees_no_state_changing_control(network, page):
    fill(network)
    at = run(page)
    assert not labels(at) & set(CONTROLS[page]), labels(at)
    assert not at.get("file_uploader")
    assert any("read-only view" in c.value.lower() for c in at.caption)
    assert any("Viewer" in c.value for c in at.sidebar.caption)


def test_presenter_password_unlocks_the_controls(network):
    fill(network)
    at = run("pages/pipeline_control.py")
    box = at.sidebar.text_input(key="kl_presenter_password")
    box.input("not it")
    at.sidebar.button[0].click().run()
    assert [e.value for e in at.sidebar.error] == ["That is not the presenter password."]
    assert not labels(at) & set(CONTROLS["pages/pipeline_control.py"])

    at.sidebar.text_input(key="kl_presenter_password").input(PASSWORD)
    at.sidebar.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert set(CONTROLS["pages/pipeline_control.py"]) <= labels(at)
    assert any("Presenter" in c.value for c in at.sidebar.caption)
    assert PASSWORD not in every_text(at)
    assert at.sidebar.text_input == [] or all(t.value == "" for t in at.sidebar.text_input)

    at.button(key="kl_presenter_leave").click().run()
    assert not labels(at) & set(CONTROLS["pages/pipeline_control.py"])


def test_viewer_cannot_promote_on_predictions_page(network):
    fill(network)
    at = run("pages/predictions.py")
    assert not {"Promote to champion", "Roll back this scope", "Enrol in the arena",
                "Remove from the arena", "Promote to champion (global)"} & labels(at)
    assert any("read-only view" in c.value.lower() for c in at.caption)


def test_presenter_can_promote_on_predictions_page(data_dir):
    fill(data_dir)
    at = run("pages/predictions.py")
    assert {"Promote to champion", "Roll back this scope", "Enrol in the arena"} <= labels(at)


@pytest.mark.parametrize("page", sorted(CONTROLS))
def test_loopback_keeps_everyone_presenter(data_dir, page, monkeypatch):
    monkeypatch.delenv("KAPPALAB_NETWORK", raising=False)
    fill(data_dir)
    at = run(page)
    assert set(CONTROLS[page]) <= labels(at)
    assert not at.sidebar.text_input  # no password box on loopback
