"""optuna-dashboard, served by the service itself for deeper analysis of a study, read-only.

The dashboard's page and script ask for absolute paths (``/dashboard/...``, ``/static/
bundle.js``, ``/api/meta``, ``/api/studies/...``, ``/csv/...``), as when it runs alone
at the root of a server. Those paths are routed to its WSGI app unchanged; none of
them overlaps the service's own (``/api/v1``, ``/assets``, the pages).

Studies are created, renamed and deleted through the service, which keeps its own rows
beside Optuna's: a study created or deleted behind its back would be half a study. So the
dashboard only reads: every other method is refused (405), and its page gets a stylesheet
(``static/dashboard_readonly.css``) that hides the controls that would write.
"""

from __future__ import annotations

import json
import threading
import warnings
from typing import Any

from fastapi import FastAPI
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from service.auth import DASHBOARD_PATHS, DASHBOARD_PREFIX

with warnings.catch_warnings():
    # Deprecated in favour of a2wsgi, which would be one more dependency for this one use.
    warnings.simplefilter("ignore")
    from starlette.middleware.wsgi import WSGIMiddleware



READ_METHODS = ("GET", "HEAD")
READ_ONLY_MESSAGE = ("optuna-dashboard is read-only in this service: create, rename, cancel or delete studies "
                     "through /api/v1 (or the service's pages), which keep the service's records with Optuna's")
# Hides the dashboard's write controls (loaded by its page, within its Content-Security-Policy).
READ_ONLY_STYLESHEET = b'<link rel="stylesheet" href="/assets/dashboard_readonly.css">'


async def refuse_write(send: Send) -> None:
    body = json.dumps({"detail": [{"field": None, "message": READ_ONLY_MESSAGE}]}).encode()
    await send({"type": "http.response.start", "status": 405, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"allow", ", ".join(READ_METHODS).encode())]})
    await send({"type": "http.response.body", "body": body})


def with_stylesheet(send: Send) -> Send:
    """``send`` for the dashboard's page: its HTML gets :data:`READ_ONLY_STYLESHEET` in its head."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def send_page(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        if b"</head>" in body:
            body = body.replace(b"</head>", READ_ONLY_STYLESHEET + b"</head>", 1)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return send_page


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
        if scope["method"] not in READ_METHODS:
            await refuse_write(send)
            return
        path = scope["path"]
        if path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/"):
            send = with_stylesheet(send)
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
