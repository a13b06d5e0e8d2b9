"""The browser pages: studies (``/``), a study (``/studies/{id}``), a new study (``/new``),
their data (``/api/v1/views``) and optuna-dashboard (``/dashboard``)."""

from __future__ import annotations

from fastapi import FastAPI

from service.web import api, pages
from service.web.dashboard import mount_dashboard
from service.web.plots import ImportanceCache


def install(app: FastAPI, api_prefix: str = "/api/v1") -> None:
    """Add the pages, their data routes and the dashboard to ``app`` (after the API's routes)."""
    app.state.importance = ImportanceCache()
    app.include_router(api.router, prefix=api_prefix)
    app.include_router(pages.router)
    mount_dashboard(app)
