"""Every setting of ``hpo`` and its service, in one typed place.

:class:`Settings` reads ``HPO_*`` environment variables (e.g. ``HPO_DATABASE_URL``); the
command line passes its flags as keyword arguments, which win over the environment, which
wins over the defaults written here. Nothing else in ``hpo`` or ``service`` reads
``os.environ``: everything else receives a ``Settings`` or the values taken from one.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024

DEFAULT_DATABASE_URL = "sqlite:///hpo.db"
DEFAULT_DATA_DIR = "hpo-data"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_HEARTBEAT_S = 10
DEFAULT_GRACE_S = 30
DEFAULT_PROXY_PORT = 13000


class Settings(BaseSettings):
    """Where the data lives, where the server is, how workers report, and the service's limits.

    Every field can be set from the environment, e.g. ``HPO_DATABASE_URL=postgresql://...``;
    keyword arguments (the command line's flags) win over the environment.
    """

    model_config = SettingsConfigDict(env_prefix="HPO_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the database shared with the workers (SQLite or PostgreSQL).",
    )
    data_dir: str = Field(default=DEFAULT_DATA_DIR, description="This machine's cache of uploaded datasets "
                          "(they live in the database) and staging folder for uploads; may start empty.")
    host: str = Field(default=DEFAULT_HOST, description="Address `hpo serve` listens on.")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="Port `hpo serve` listens on (0: any free port).")
    url: str = Field(default=DEFAULT_URL, description="The server the remote commands talk to (`HPO_URL`).")
    api_key: str | None = Field(default=None, description="API key the remote commands send (`HPO_API_KEY`).")
    heartbeat_interval: int = Field(default=DEFAULT_HEARTBEAT_S, ge=1,
                                    description="Seconds between a running trial's heartbeats.")
    grace_period: int = Field(default=DEFAULT_GRACE_S, ge=1,
                              description="Seconds without a heartbeat before a running trial counts as dead.")
    max_upload_bytes: int = Field(default=100 * MiB, ge=1, description="Largest dataset file accepted.")
    max_body_bytes: int = Field(default=1 * MiB, ge=1, description="Largest JSON/YAML request body accepted.")
    max_unpacked_bytes: int = Field(default=1024 * MiB, ge=1, description="Most bytes an uploaded NPZ archive may "
                                    "unpack to (a small zip of zeros can claim gigabytes).")
    max_n_trials: int = Field(default=1000, ge=1, description="Largest trial budget of one study (the "
                              "spec's `budget.n_trials`, or its grid's size).")
    max_folds: int = Field(default=10, ge=2, description="Largest `cv.folds` of one study.")
    max_cv_repeats: int = Field(default=5, ge=1, description="Largest `cv.repeats` of one study (each repeat "
                                "trains every fold again).")
    max_epochs: int = Field(default=200, ge=1, description="Largest `training.max_epochs` of one study.")
    max_queued_studies_per_owner: int = Field(
        default=20, ge=1, description="Unfinished (queued or running) studies one owner (API key name) may "
                                      "have at once; one more is refused with 429.")
    default_page_size: int = Field(default=50, ge=1, description="Items per page when `limit` is not given.")
    max_page_size: int = Field(default=500, ge=1, description="Largest `limit` accepted.")
    trial_cache_trials: int = Field(
        default=100_000, ge=0, description="Finished trials the API process keeps in memory, over all studies "
                                           "(about 3 KiB each with 10-20 epochs): past it, the least recently "
                                           "read studies are read from the database again when asked for.")
    max_active_requests: int = Field(default=32, ge=1, description="Requests worked on at once; more wait "
                                     "for a turn (an event stream holds one only until its answer starts).")
    queue_timeout_s: float = Field(default=10.0, gt=0, description="Seconds a request waits for a turn before "
                                   "it is answered 503 with `Retry-After`.")
    db_pool_size: int = Field(default=5, ge=1, description="Database connections the API keeps open for its "
                              "requests (SQLAlchemy's `pool_size`).")
    db_max_overflow: int = Field(default=10, ge=0, description="Connections opened beyond `db_pool_size` "
                                 "during a burst, closed again once returned.")
    db_pool_timeout_s: float = Field(default=10.0, gt=0, description="Seconds a request waits for a free "
                                     "connection before it is answered 503 with `Retry-After`.")
    proxy_host: str = Field(default=DEFAULT_HOST, description="Address `hpo storage-proxy` listens on.")
    proxy_port: int = Field(default=DEFAULT_PROXY_PORT, ge=1, le=65535,
                            description="Port `hpo storage-proxy` listens on (workers: `grpc://HOST:PORT`).")
    proxy_threads: int = Field(default=10, ge=1, description="Requests `hpo storage-proxy` serves at once; "
                               "each may hold one database connection.")
    events_poll_s: float = Field(default=0.5, gt=0, description="How often an event stream reads the database.")
    events_heartbeat_s: float = Field(default=15.0, gt=0, description="Seconds between keep-alive comments.")


def load_settings(**flags: Any) -> Settings:
    """The settings, with the flags that were given (not ``None``) over the environment.

    Args:
        **flags: ``Settings`` fields from the command line; ``None`` means "not given".

    Returns:
        The settings: flags, else ``HPO_*`` environment variables, else the defaults.

    Raises:
        ValueError: a flag or an ``HPO_*`` variable has a value its field refuses (pydantic's
            ``ValidationError`` names the field).
    """
    return Settings(**{name: value for name, value in flags.items() if value is not None})


def setting_default(name: str) -> Any:
    """The default of the ``Settings`` field ``name`` (for help texts)."""
    return Settings.model_fields[name].default


def add_database_flags(parser: argparse.ArgumentParser, data_dir: bool = True) -> None:
    """Add ``--database`` and, for a command that reads datasets, ``--data-dir`` (read back by
    :func:`settings_of`)."""
    parser.add_argument("--database", help="storage URL (default: $HPO_DATABASE_URL or "
                        f"{setting_default('database_url')})")
    if data_dir:
        parser.add_argument("--data-dir", help="local cache of uploaded datasets (default: $HPO_DATA_DIR or "
                            f"{setting_default('data_dir')})")


def add_remote_flags(parser: argparse.ArgumentParser, url: bool = True) -> None:
    """Add ``--url`` (unless ``url`` is false: the command defines its own) and ``--api-key``."""
    if url:
        parser.add_argument("--url", help=f"the service's URL (default: $HPO_URL or {setting_default('url')})")
    parser.add_argument("--api-key", help="API key (default: $HPO_API_KEY)")


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings of a command: its flags (those given), else ``HPO_*`` variables, else the defaults.

    Args:
        args: parsed flags; ``--database`` (or its alias ``--storage``) sets ``database_url``,
            the others set the field of their name.

    Returns:
        The settings.

    Raises:
        ValueError: a flag or an ``HPO_*`` variable has a value its field refuses.
    """
    flags = {name: getattr(args, name, None) for name in Settings.model_fields}
    flags["database_url"] = getattr(args, "storage", None) or getattr(args, "database", None)
    return load_settings(**flags)
