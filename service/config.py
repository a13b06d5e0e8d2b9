"""The service's settings: one ``Settings`` read from ``HPO_*`` environment variables.

Nothing else in the service reads ``os.environ``; everything else receives a ``Settings``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Where the data lives, how much a request may carry, and how much one study may ask for.

    Every field can be set from the environment, e.g. ``HPO_DATABASE_URL=postgresql://...``.
    """

    model_config = SettingsConfigDict(env_prefix="HPO_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///hpo.db",
        description="SQLAlchemy URL of the database shared with the workers (SQLite or PostgreSQL).",
    )
    data_dir: str = Field(default="hpo-data", description="Folder of uploaded datasets.")
    max_upload_bytes: int = Field(default=100 * MiB, ge=1, description="Largest dataset file accepted.")
    max_body_bytes: int = Field(default=1 * MiB, ge=1, description="Largest JSON/YAML request body accepted.")
    max_unpacked_bytes: int = Field(default=1024 * MiB, ge=1, description="Most bytes an uploaded NPZ archive may "
                                    "unpack to (a small zip of zeros can claim gigabytes).")
    max_n_trials: int = Field(default=1000, ge=1, description="Largest trial budget of one study (the "
                              "spec's `budget.n_trials`, or its grid's size).")
    max_folds: int = Field(default=10, ge=2, description="Largest `cv.folds` of one study.")
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
    events_poll_s: float = Field(default=0.5, gt=0, description="How often an event stream reads the database.")
    events_heartbeat_s: float = Field(default=15.0, gt=0, description="Seconds between keep-alive comments.")
