"""Who is asking: API keys on every request, once any key exists.

- No key was ever created (``hpo keys create``): the service is open, as ``make serve`` on
  the loopback address runs it; everything belongs to nobody and everyone sees it all.
- Otherwise every request needs a valid key, except the probes (``/healthz``, ``/readyz``),
  the API docs, the pages' static assets and ``/login``. A key comes as
  ``Authorization: Bearer <token>`` (scripts, ``hpo``, :class:`hpo.client.Client`); a browser
  signs in at ``/login`` instead, which keeps a login on the server (:mod:`service.logins`)
  and gives the browser an HttpOnly, SameSite=Strict cookie holding the login's random token,
  never the key (the pages' ``fetch`` and ``EventSource`` calls send it). Revoking a key ends
  its logins.
- A key sees and manages what keys of its name created (another owner's study answers 404,
  not 403, so its existence is not leaked); an admin key sees everything, and only an admin
  key opens optuna-dashboard (which shows every study in the database).

:class:`AuthMiddleware` decides, for every path; :data:`PrincipalDep` gives routes the
caller; ``service.deps.get_session`` restricts a non-admin caller's session to its rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from service import keys, logins
from service.errors import problem
from service.templating import templates

log = logging.getLogger("service")

COOKIE = "hpo_login"
COOKIE_MAX_AGE_S = 7 * 24 * 3600
LOGIN_PATH = "/login"
METRICS_PATH = "/metrics"
# Open to anyone even when keys exist: probes, the API's own docs, the pages' static files.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", LOGIN_PATH, "/logout", "/docs", "/docs/oauth2-redirect",
                          "/redoc", "/openapi.json"})
PUBLIC_PREFIXES = ("/assets/",)
DASHBOARD_PREFIX = "/dashboard"
# Admin only: the optuna-dashboard app (service.web.dashboard) and everything its page fetches.
DASHBOARD_PATHS = (
    DASHBOARD_PREFIX, "/static", "/csv", "/favicon.ico",
    "/api/meta", "/api/studies", "/api/trials", "/api/artifacts", "/api/llm", "/api/compare-studies",
)


@dataclass(frozen=True)
class Principal:
    """The caller: a key's owner name and rights, or everyone while the service is open.

    Attributes:
        name: recorded as ``owner`` on what the caller creates (``None`` while open).
        admin: sees and manages every owner's studies and datasets.
        key_id: the key's public id (``None`` while open).
    """

    name: str | None
    admin: bool
    key_id: str | None = None


OPEN = Principal(name=None, admin=True)


class AuthError(Exception):
    """401 (no or bad key), 403 (not an admin key) or 503 (the keys could not be read)."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(message)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def admin_only_reason(path: str) -> str | None:
    """Why ``path`` needs an admin key (it shows every owner's studies), or ``None``."""
    if path == METRICS_PATH:
        return "/metrics counts every owner's studies and trials; it needs an admin key"
    if any(path == p or path.startswith(p + "/") for p in DASHBOARD_PATHS):
        return "optuna-dashboard shows every study in the database; it needs an admin key"
    return None


def bearer_token(request: Request) -> str | None:
    """The API key of a request's ``Authorization: Bearer`` header."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def credentials_key(request: Request) -> str:
    """A digest of what a request authenticates with (its bearer key or login cookie), to share
    the re-checks of an open event stream among the streams of the same credentials."""
    return keys.hash_token(f"{bearer_token(request)} {request.cookies.get(COOKIE)}")


def authenticate(request: Request) -> Principal:
    """Who sent ``request`` (blocking: reads the keys table).

    Raises:
        AuthError: 401 without a valid key once keys exist; 503 when the database is down.
    """
    state = request.app.state
    token, login = bearer_token(request), request.cookies.get(COOKIE)
    try:
        with state.sessions() as session:
            if not getattr(state, "keys_exist", False):
                if not keys.keys_exist(session):
                    return OPEN
                state.keys_exist = True  # keys are revoked, never deleted: this stays true
            if token is not None:
                record = keys.find_key(session, token)
            elif login:
                record = logins.find_login(session, login)
            else:
                raise AuthError(401, "this service needs an API key: send `Authorization: Bearer <key>` "
                                     "(an admin creates keys with `hpo keys create`), or sign in at /login")
    except SQLAlchemyError as exc:
        log.warning("cannot read the API keys: %s", type(exc).__name__)
        raise AuthError(503, "the database is unavailable; try again in a moment") from None
    if record is None and token is None:
        raise AuthError(401, "your sign-in has ended (signed out, expired, or its key was revoked); sign in "
                             "again at /login")
    if record is None:
        raise AuthError(401, "the API key is not valid (unknown, mistyped or revoked)")
    return Principal(name=record.name, admin=record.admin, key_id=record.id)


def _wants_html(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "") \
        and not request.url.path.startswith("/api/")


class AuthMiddleware:
    """Authenticate every request that is not public; keep the caller in ``request.state``.

    Refusals answer ``{"detail": [{"field": "Authorization", "message": ...}]}`` (with
    ``WWW-Authenticate: Bearer`` on a 401); a browser opening a page is sent to ``/login``.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            principal = await run_in_threadpool(authenticate, request)
            admin_only = admin_only_reason(scope["path"])
            if admin_only and not principal.admin:
                raise AuthError(403, admin_only)
        except AuthError as exc:
            await _refusal(request, exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _refusal(request: Request, exc: AuthError) -> Response:
    if exc.status == 401 and _wants_html(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{LOGIN_PATH}?next={quote(target, safe='')}", status_code=303)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.status == 503:
        headers["Retry-After"] = "5"
    return JSONResponse({"detail": [{"field": "Authorization", "message": exc.message}]},
                        status_code=exc.status, headers=headers)


def get_principal(request: Request) -> Principal:
    """The caller, as the middleware found it (or found here, when an app runs without it)."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        try:
            principal = authenticate(request)
        except AuthError as exc:
            raise problem(exc.status, exc.message, field="Authorization") from None
        request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


# ---- signing in from a browser -------------------------------------------------------------

router = APIRouter(include_in_schema=False)

def _safe_next(target: str | None) -> str:
    """Only a path on this server (never ``//evil.example``): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(request: Request, next_path: str, error: str | None = None, status_code: int = 200
                ) -> HTMLResponse:
    """The sign-in page on the pages' one layout (Jinja2 escapes ``next`` and ``error``)."""
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next_path), "error": error},
                                      status_code=status_code, headers={"Cache-Control": "no-store"})


@router.get(LOGIN_PATH)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return _login_page(request, next)


@router.post(LOGIN_PATH)
def login(request: Request, key: Annotated[str, Form(max_length=256)] = "",
          next: Annotated[str, Form(max_length=2048)] = "/") -> Response:
    """Check the key, record a login, give the browser its token in an HttpOnly,
    SameSite=Strict cookie, and go back to the page."""
    try:
        with request.app.state.sessions() as session:
            record = keys.find_key(session, key.strip())
            token = logins.start_login(session, record, COOKIE_MAX_AGE_S) if record is not None else None
    except SQLAlchemyError:
        return _login_page(request, next, "the database is unavailable; try again in a moment", 503)
    if token is None:
        return _login_page(request, next, "that API key is not valid (unknown, mistyped or revoked)", 401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """End the browser's login on the server too, so a copy of its cookie is worthless."""
    login = request.cookies.get(COOKIE)
    if login:
        try:
            with request.app.state.sessions() as session:
                logins.end_login(session, login)
        except SQLAlchemyError:
            return JSONResponse({"detail": [{"field": None, "message": "the database is unavailable; "
                                             "try again in a moment"}]}, status_code=503, headers={"Retry-After": "5"})
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
