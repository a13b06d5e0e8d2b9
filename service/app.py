"""The FastAPI application: ``create_app(settings)``.

On start it brings the service's tables up to date (Alembic), opens Optuna's storage once
(kept on ``app.state`` and shared by all requests), the trial cache that every route reads
studies through (warmed in a background thread), and the dataset store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from hpo.data import DatasetStore
from hpo.spec import StudySpec
from hpo.storage import open_storage
from service import auth, web
from hpo.settings import Settings
from service.admission import Activity, AdmissionMiddleware
from service.browser import CrossSiteRequestMiddleware, SecurityHeadersMiddleware
from hpo.db import make_engine, make_sessionmaker, upgrade
from service.errors import install_error_handlers
from service.events import LeftStreamsMiddleware, SharedReads
from service.limits import BodySizeLimitMiddleware
from service.routes import datasets, health, studies, trials
from service.routes import models as model_routes
from service.trial_cache import TrialCache
from service.web.pages import plotly_gzipped

log = logging.getLogger("service")
API_PREFIX = "/api/v1"
# The trial cache's warming reads the next study only after this long without a request: a
# page opened right after the start gets the CPU (its first view does not need the cache).
WARM_AFTER_QUIET_S = 1.0
# Swagger UI's and ReDoc's scripts, served from the fastapi-offline package (the machine may be offline).
DOCS_ASSETS = "/assets/api-docs"
DESCRIPTION = """Hyperparameter optimization of recurrent networks, as a service.

Submit a study spec, watch its trials arrive (`/events` streams them), then ask for the
best parameters. Every error answers `{"detail": [{"field": ..., "message": ...}]}`.
Once API keys exist (`hpo keys create`), send one as `Authorization: Bearer <key>`.
"""


def _open_resources(app: FastAPI, settings: Settings) -> None:
    upgrade(settings.database_url)
    app.state.engine = make_engine(settings.database_url, pool_size=settings.db_pool_size,
                                   max_overflow=settings.db_max_overflow, pool_timeout_s=settings.db_pool_timeout_s)
    app.state.sessions = make_sessionmaker(app.state.engine)
    app.state.storage = open_storage(settings.database_url)
    app.state.trial_cache = TrialCache(app.state.storage, max_cached_trials=settings.trial_cache_trials)
    app.state.dataset_store = DatasetStore(app.state.engine, settings.data_dir, max_bytes=settings.max_upload_bytes,
                                           max_uncompressed=settings.max_unpacked_bytes)
    app.state.dataset_store.clear_staging()  # what an API killed mid-upload (kill -9) left behind
    _import_old_datasets(app.state.dataset_store)


def _import_old_datasets(store: DatasetStore) -> None:
    """Move the files an earlier version kept in this API's data folder into the database
    (see migration 0005 for why this is not done by the migration)."""
    report = store.import_folder(store.data_dir)
    if report["imported"]:
        log.info("moved %d dataset(s) from %s into the database", len(report["imported"]), store.data_dir)
    for dataset_id, reason in report["skipped"].items():
        log.warning("dataset folder %s not imported: %s", dataset_id, reason)


def _close_resources(app: FastAPI) -> None:
    app.state.engine.dispose()
    app.state.storage.remove_session()
    app.state.storage.engine.dispose()


def _warm(app: FastAPI) -> None:
    """What the first requests would otherwise wait for: Plotly's bundle gzipped (the study
    page's largest asset), then the trial cache, a study at a time in quiet moments."""
    plotly_gzipped()
    try:
        app.state.trial_cache.warm(app.state.sessions,
                                   before_each=lambda: app.state.activity.wait_quiet(WARM_AFTER_QUIET_S))
    except Exception as exc:  # noqa: BLE001 - a cold cache is only slower; requests read the database
        log.warning("trial cache not warmed: %s", exc)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(_open_resources, app, app.state.settings)
    threading.Thread(target=_warm, args=(app,), name="warm", daemon=True).start()
    try:
        yield
    finally:
        await run_in_threadpool(_close_resources, app)


def _openapi_with_spec_schema(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus ``StudySpec``'s, which the submit route reads by hand (JSON or YAML)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        spec_schema = StudySpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(spec_schema.pop("$defs", {}))
        components["StudySpec"] = spec_schema
        schema["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"apiKey": []}, {}]  # {}: no key while the service runs open
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application.

    Args:
        settings: database, data folder and limits; read from ``HPO_*`` variables when omitted.

    Returns:
        The app; its resources open when it starts (lifespan).
    """
    settings = settings or Settings()
    app = FastAPIOffline(
        title="hpo",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url="/redoc",
        static_url=DOCS_ASSETS,
    )
    app.state.settings = settings
    app.state.event_reads = SharedReads(max_age_s=settings.events_poll_s)  # one read per study and poll
    install_error_handlers(app)
    app.add_middleware(LeftStreamsMiddleware)  # innermost: a stream's client leaving is no error
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(auth.AuthMiddleware)  # a request without a valid key goes no further
    app.state.activity = Activity()  # what the trial cache's warming waits out
    app.add_middleware(AdmissionMiddleware, max_active=settings.max_active_requests,
                       queue_timeout_s=settings.queue_timeout_s, activity=app.state.activity)  # a burst waits a bounded time, then 503
    app.add_middleware(CrossSiteRequestMiddleware)  # before signing in: /login is guarded too
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: refusals carry the headers too
    for module in (studies, trials, datasets):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(model_routes.router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(auth.router)  # /login, /logout: the browser pages' way to send a key
    app.openapi = lambda: _openapi_with_spec_schema(app)  # type: ignore[method-assign]
    web.install(app, API_PREFIX)  # the browser pages (`/` lists the studies) and /dashboard
    return app
