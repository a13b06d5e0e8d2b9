"""optuna-dashboard, served by the service itself for deeper analysis of a study.

The dashboard's page and script ask for absolute paths (``/dashboard/...``, ``/static/
bundle.js``, ``/api/meta``, ``/api/studies/...``, ``/csv/...``), as when it runs alone
at the root of a server. Those paths are routed to its WSGI app unchanged; none of
them overlaps the service's own (``/api/v1``, ``/assets``, the pages).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from fastapi import FastAPI
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from service.auth import DASHBOARD_PATHS

with warnings.catch_warnings():
    # Deprecated in favour of a2wsgi, which would be one more dependency for this one use.
    warnings.simplefilter("ignore")
    from starlette.middleware.wsgi import WSGIMiddleware



class DashboardApp:
    """An ASGI app running ``optuna_dashboard.wsgi(storage)`` on the app's Optuna storage,
    built on the first request (the storage opens when the app starts)."""

    def __init__(self, app: FastAPI):
        self._app = app
        self._asgi: Any = None
        self._lock = threading.Lock()

    def _dashboard(self) -> Any:
        with self._lock:
            if self._asgi is None:
                import optuna_dashboard  # heavy import; only when someone opens it

                self._asgi = WSGIMiddleware(optuna_dashboard.wsgi(self._app.state.storage))
            return self._asgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Mount moved the matched prefix into root_path; the dashboard routes on full paths.
        scope = dict(scope, root_path=scope.get("app_root_path", ""))
        if not any(name == b"accept-encoding" for name, _ in scope.get("headers", [])):
            # The dashboard's static route reads this header unguarded (KeyError without it).
            scope["headers"] = [*scope.get("headers", []), (b"accept-encoding", b"identity")]
        await self._dashboard()(scope, receive, send)


def mount_dashboard(app: FastAPI) -> None:
    """Route the dashboard's paths to it (call after the API's routes are added)."""
    dashboard = DashboardApp(app)
    for path in DASHBOARD_PATHS:
        app.router.routes.append(Route(path, endpoint=dashboard, include_in_schema=False))
        app.router.routes.append(Mount(path, app=dashboard))
