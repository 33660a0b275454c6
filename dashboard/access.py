"""Who may change the pipeline: the presenter gate of the classroom setting.

On loopback (the default: ``.streamlit/config.toml`` binds 127.0.0.1) only the person at the
machine reaches the app, and everyone is presenter: every control is shown, as before.

In network mode (``KAPPALAB_NETWORK=1``, or a server address other than loopback) every
control that changes state — starting and stopping workers, uploads, server paths, imports,
promotions, deletions, lab runs that write to the store — is shown only to a session that
typed the presenter password (``KAPPALAB_PRESENTER_PASSWORD``) in the sidebar; the others are
viewers and see read-only pages that say so. Network mode without a password refuses to start.

Pages use :func:`presenter_button` instead of ``st.button`` for such controls,
:func:`presenter_only` around a whole block of them, and :func:`can_change` for anything
else. The password is compared with :func:`hmac.compare_digest` and never shown or logged;
the session keeps only an HMAC of it under a per-process random key, so changing the password
(and restarting) ends every presenter session.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterator

import streamlit as st

from dashboard.state import get_config
from pipeline.contracts.config import NETWORK_WITHOUT_PASSWORD, Config

PRESENTER_KEY = "kl_presenter"
READ_ONLY = "read-only view: {what} is for the presenter (password in the sidebar)."
#: seconds a wrong password waits before the page answers (slows guessing from one session)
WRONG_PASSWORD_DELAY_S = 1.0
_PROCESS_KEY = secrets.token_bytes(32)


# ---- mode ---------------------------------------------------------------------------------------
def listening_address() -> str | None:
    """The address the Streamlit server binds: None in a bare run (AppTest, no server), ``""``
    when a real server binds every interface because no address was configured."""
    address = st.get_option("server.address")
    if address:
        return str(address)
    from streamlit.runtime import Runtime

    real_server = Runtime.exists() and type(Runtime.instance()) is Runtime
    return "" if real_server else None


def is_loopback(address: str | None) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: True; ``0.0.0.0``, ``""`` (every interface), a
    LAN address: False. None (no server) counts as loopback."""
    if address is None:
        return True
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def network_mode(config: Config | None = None) -> bool:
    """The classroom setting is on, or the server listens beyond loopback anyway."""
    config = config or get_config()
    return config.network or not is_loopback(listening_address())


def startup_refusal(config: Config | None = None) -> str | None:
    """One sentence when the app must not start (network mode without a password)."""
    config = config or get_config()
    if network_mode(config) and not config.presenter_password:
        return NETWORK_WITHOUT_PASSWORD
    return None


def stop_if_refused() -> None:
    """Show the refusal as the page's one error and stop the run (nothing is started)."""
    problem = startup_refusal()
    if problem:
        st.error(problem)
        st.stop()


# ---- the gate -----------------------------------------------------------------------------------
def can_change() -> bool:
    """True for the presenter: everyone on loopback, in network mode the sessions that typed
    the presenter password."""
    config = get_config()
    if not network_mode(config):
        return True
    token = st.session_state.get(PRESENTER_KEY)
    return bool(token) and bool(config.presenter_password) and hmac.compare_digest(
        token, _fingerprint(config.presenter_password.get()))


def presenter_button(label: str, *, where: Any = None, **kwargs) -> bool:
    """``st.button`` (or ``where.button``) for the presenter; for viewers nothing is drawn and
    the answer is False."""
    if not can_change():
        return False
    return (where or st).button(label, **kwargs)


def presenter_only(what: str, container: Callable[[], ContextManager] | None = None
                   ) -> Iterator[None]:
    """Runs the body of ``for _ in presenter_only(...)`` once, inside ``container()``, for the
    presenter; for viewers draws the read-only note instead and skips the body. (A ``with``
    block cannot skip its body; a loop of zero or one turn can.)"""
    if not can_change():
        read_only_note(what)
        return
    with container() if container else nullcontext():
        yield


def read_only_note(what: str, where: Any = None) -> None:
    text = READ_ONLY.format(what=what)
    (where or st).caption(text[0].upper() + text[1:])


def presenter_sidebar() -> None:
    """The sidebar's presenter box (network mode only): who this session is, the password
    form for viewers, a leave button for the presenter."""
    config = get_config()
    if not network_mode(config):
        return
    with st.sidebar:
        if can_change():
            st.caption("**Presenter**: you can start, stop, import, promote and delete.")
            if st.button("Leave presenter mode", key="kl_presenter_leave"):
                st.session_state.pop(PRESENTER_KEY, None)
                st.rerun()
            return
        st.caption("**Viewer** (read-only): the presenter changes the pipeline.")
        with st.form("kl_presenter_login", clear_on_submit=True):
            typed = st.text_input("Presenter password", type="password",
                                  key="kl_presenter_password")
            entered = st.form_submit_button("Enter as presenter")
        if entered:
            if login(typed, config):
                st.rerun()
            st.error("That is not the presenter password.")


def login(typed: str, config: Config) -> bool:
    """Compare in constant time; on success the session becomes presenter."""
    expected = config.presenter_password.get() if config.presenter_password else ""
    if expected and hmac.compare_digest(typed.encode("utf-8"), expected.encode("utf-8")):
        st.session_state[PRESENTER_KEY] = _fingerprint(expected)
        return True
    time.sleep(WRONG_PASSWORD_DELAY_S)
    return False


def _fingerprint(password: str) -> str:
    return hmac.new(_PROCESS_KEY, password.encode("utf-8"), hashlib.sha256).hexdigest()
