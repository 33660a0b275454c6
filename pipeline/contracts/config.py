"""One configuration loader: environment variables first, then ``.streamlit/secrets.toml``.

Unset Kafka means the embedded broker; unset Elasticsearch means the embedded SQLite store.
Secrets are kept in :class:`Secret` so that printing a config never shows them.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROJECT_ROOT = Path(__file__).resolve().parents[2]

ENV_KEYS = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "ELASTICSEARCH_URL",
    "ELASTICSEARCH_API_KEY",
    "ELASTICSEARCH_USERNAME",
    "ELASTICSEARCH_PASSWORD",
    "ELASTICSEARCH_CA_CERTS",
    "ELASTICSEARCH_VERIFY_CERTS",
    "ELASTICSEARCH_INDEX_PREFIX",
    "ALPHAVANTAGE_API_KEY",
    "ALPHAVANTAGE_BASE_URL",
    "POLYGON_API_KEY",
    "POLYGON_BASE_URL",
    "KAPPALAB_DATA_DIR",
    "KAPPALAB_TOPIC_PARTITIONS",
    "KAPPALAB_AUTOSTART",
    "KAPPALAB_PIPELINE_MODE",
    "KAPPALAB_NETWORK",
    "KAPPALAB_PRESENTER_PASSWORD",
    "KAPPALAB_IMPORT_DIR",
)

_FALSE_WORDS = ("0", "false", "no", "off")
PIPELINE_MODES = ("process", "threads")
NETWORK_WITHOUT_PASSWORD = (
    "KappaLab is open to the network (KAPPALAB_NETWORK, or a server address other than "
    "127.0.0.1) but no presenter password is set: set KAPPALAB_PRESENTER_PASSWORD (environment "
    "or .streamlit/secrets.toml), or unset KAPPALAB_NETWORK to listen on 127.0.0.1 only.")


class Secret:
    """A string that never shows itself in repr/str/logs; ``.get()`` returns the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Config:
    """The one configuration of a process (environment, ``.streamlit/secrets.toml``, data dir),
    loaded once by :func:`load_config`; immutable, read from any thread. Secrets are
    :class:`Secret` values that never print."""

    data_dir: Path
    kafka_bootstrap: str | None = None  # None: embedded broker
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: Secret | None = None
    topic_partitions: int = 1
    es_url: str | None = None  # None: embedded SQLite store
    es_api_key: Secret | None = None
    es_username: str | None = None
    es_password: Secret | None = None
    es_ca_certs: str | None = None
    es_verify_certs: bool = True
    es_index_prefix: str = "kappalab"
    alphavantage_api_key: Secret | None = None
    alphavantage_base_url: str = "https://www.alphavantage.co"
    polygon_api_key: Secret | None = None
    polygon_base_url: str = "https://api.polygon.io"
    autostart: bool = True  # the dashboard starts broker, simulator, indexer, scorer on load
    #: where the dashboard runs the demo pipeline it starts: "process" (one supervised child
    #: process, off the UI's interpreter) or "threads" (threads of the Streamlit server)
    pipeline_mode: str = "process"
    network: bool = False  # classroom setting: the app listens on every interface
    presenter_password: Secret | None = None  # needed for every state change in network mode
    import_dir: Path | None = None  # server paths of the CSV import may also point in here
    #: every other variable of the environment and ``secrets.toml`` (non-empty values), for a
    #: source's own settings, read by name through :meth:`setting` / :meth:`secret`; never printed
    extra: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def network_refusal(self) -> str | None:
        """The one sentence why network mode cannot start (no presenter password), or None."""
        if self.network and not self.presenter_password:
            return NETWORK_WITHOUT_PASSWORD
        return None

    def setting(self, name: str, default: str | None = None) -> str | None:
        """The config variable ``name`` (e.g. a source's ``*_BASE_URL``, named in its catalog
        entry): the field that holds it when it is one of :data:`ENV_KEYS`, else the
        environment or ``secrets.toml``; ``default`` when unset."""
        value = self._named(name)
        if isinstance(value, Secret):
            value = value.get()
        return str(value) if value not in (None, "") else default

    def secret(self, name: str) -> Secret | None:
        """The config variable ``name`` as a :class:`Secret` (a source's API key), or None."""
        value = self._named(name)
        if isinstance(value, Secret) or value is None:
            return value or None
        return Secret(str(value)) if str(value).strip() else None

    def _named(self, name: str) -> Any:
        attr = _FIELD_OF_VARIABLE.get(name)
        return getattr(self, attr) if attr else self.extra.get(name)

    def store_key(self) -> tuple:
        """Identity of the store this config points at (for caching one store per target):
        the chosen backend's ``identity`` (``pipeline/store/__init__.py`` registers it)."""
        if store_identity is not None:
            return store_identity(self)
        if self.es_url:
            return ("elasticsearch", self.es_url, self.es_index_prefix)
        return ("sqlite", str(self.sqlite_path))

    @property
    def embedded_broker(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def embedded_store(self) -> bool:
        return not self.es_url

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "kappalab.sqlite"

    @property
    def broker_state_file(self) -> Path:
        return self.data_dir / "broker.json"

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Security settings shared by every kafka-python client (empty when plaintext)."""
        kw: dict[str, Any] = {}
        if self.kafka_security_protocol != "PLAINTEXT":
            kw["security_protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            kw["sasl_mechanism"] = self.kafka_sasl_mechanism
            kw["sasl_plain_username"] = self.kafka_sasl_username
            kw["sasl_plain_password"] = self.kafka_sasl_password.get() if self.kafka_sasl_password else None
        return kw


#: ``pipeline.store.store_key``, set when the store registry is imported (the core cannot
#: import it); before that, ``Config.store_key`` knows the two built-in backends
store_identity: Callable[["Config"], tuple] | None = None

#: the variables a named field holds (so :meth:`Config.setting` sees overrides of the field)
_FIELD_OF_VARIABLE = {
    "ALPHAVANTAGE_API_KEY": "alphavantage_api_key", "ALPHAVANTAGE_BASE_URL": "alphavantage_base_url",
    "POLYGON_API_KEY": "polygon_api_key", "POLYGON_BASE_URL": "polygon_base_url",
    "ELASTICSEARCH_URL": "es_url", "ELASTICSEARCH_API_KEY": "es_api_key",
    "ELASTICSEARCH_USERNAME": "es_username", "ELASTICSEARCH_PASSWORD": "es_password",
    "ELASTICSEARCH_CA_CERTS": "es_ca_certs", "ELASTICSEARCH_INDEX_PREFIX": "es_index_prefix",
}


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kappalab"


def read_secrets_toml(path: Path | None = None) -> dict[str, Any]:
    """Top-level string values of ``.streamlit/secrets.toml`` (missing file: empty)."""
    candidates = [path] if path else [Path.cwd() / ".streamlit" / "secrets.toml",
                                      PROJECT_ROOT / ".streamlit" / "secrets.toml"]
    for p in candidates:
        if p and p.is_file():
            with open(p, "rb") as fh:
                data = tomllib.load(fh)
            return {k: v for k, v in data.items() if not isinstance(v, dict)}
    return {}


def load_config(env: Mapping[str, str] | None = None, secrets_path: Path | None = None,
                **overrides: Any) -> Config:
    """Build the configuration. ``env`` defaults to ``os.environ``; values from
    ``secrets.toml`` fill in only what the environment leaves unset."""
    env = dict(os.environ if env is None else env)
    merged: dict[str, str] = {k: str(v) for k, v in read_secrets_toml(secrets_path).items()}
    merged.update({k: v for k, v in env.items() if k in ENV_KEYS and v != ""})
    extra = {k: str(v).strip() for k, v in {**merged, **env}.items()
             if k not in ENV_KEYS and isinstance(v, str) and v.strip()}

    def get(key: str) -> str | None:
        v = merged.get(key)
        return v.strip() if isinstance(v, str) and v.strip() else None

    def secret(key: str) -> Secret | None:
        v = get(key)
        return Secret(v) if v else None

    data_dir = Path(get("KAPPALAB_DATA_DIR") or default_data_dir()).expanduser()
    verify = (get("ELASTICSEARCH_VERIFY_CERTS") or "true").lower() not in _FALSE_WORDS
    autostart = (get("KAPPALAB_AUTOSTART") or "1").lower() not in _FALSE_WORDS
    network = (get("KAPPALAB_NETWORK") or "0").lower() not in _FALSE_WORDS
    import_dir = get("KAPPALAB_IMPORT_DIR")
    partitions = get("KAPPALAB_TOPIC_PARTITIONS") or "1"
    try:
        n_partitions = max(1, int(partitions))
    except ValueError:
        raise ValueError(f"KAPPALAB_TOPIC_PARTITIONS must be a whole number, got {partitions!r}") from None

    mode = (get("KAPPALAB_PIPELINE_MODE") or "process").lower()
    if mode not in PIPELINE_MODES:
        raise ValueError(f"KAPPALAB_PIPELINE_MODE must be one of {', '.join(PIPELINE_MODES)}, "
                         f"got {mode!r}")

    cfg = dict(
        data_dir=data_dir,
        kafka_bootstrap=get("KAFKA_BOOTSTRAP_SERVERS"),
        kafka_security_protocol=get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT",
        kafka_sasl_mechanism=get("KAFKA_SASL_MECHANISM"),
        kafka_sasl_username=get("KAFKA_SASL_USERNAME"),
        kafka_sasl_password=secret("KAFKA_SASL_PASSWORD"),
        topic_partitions=n_partitions,
        es_url=get("ELASTICSEARCH_URL"),
        es_api_key=secret("ELASTICSEARCH_API_KEY"),
        es_username=get("ELASTICSEARCH_USERNAME"),
        es_password=secret("ELASTICSEARCH_PASSWORD"),
        es_ca_certs=get("ELASTICSEARCH_CA_CERTS"),
        es_verify_certs=verify,
        es_index_prefix=get("ELASTICSEARCH_INDEX_PREFIX") or "kappalab",
        alphavantage_api_key=secret("ALPHAVANTAGE_API_KEY"),
        alphavantage_base_url=get("ALPHAVANTAGE_BASE_URL") or "https://www.alphavantage.co",
        polygon_api_key=secret("POLYGON_API_KEY"),
        polygon_base_url=get("POLYGON_BASE_URL") or "https://api.polygon.io",
        autostart=autostart,
        pipeline_mode=mode,
        network=network,
        presenter_password=secret("KAPPALAB_PRESENTER_PASSWORD"),
        import_dir=Path(import_dir).expanduser() if import_dir else None,
        extra=extra,
    )
    cfg.update(overrides)
    return Config(**cfg)
