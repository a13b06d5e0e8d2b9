"""What keeps other sites from using a signed-in browser: unsafe requests must come from
this site (CSRF), and no page may be framed or content-sniffed.

A browser sends the login cookie (or, on an open service, nothing at all) with whatever a
foreign page makes it send, so every unsafe request that carries no
``Authorization: Bearer`` header (which a foreign page cannot add without a CORS preflight
this server never grants) must come from this site. ``/login`` is included: a foreign
page must not sign a browser in with the attacker's key. The rule is the one of Go's
``net/http.CrossOriginProtection``: ``Sec-Fetch-Site`` when the browser sends it, else
``Origin`` against ``Host``; a request with neither is not from a browser and passes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})  # "none": typed in the address bar, a bookmark
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # Same-origin requests keep their full Origin and Referer (the check above needs them).
    "Referrer-Policy": "same-origin",
}


def cross_site_reason(method: str, headers: Headers) -> str | None:
    """Why a request must be refused as cross-site, or ``None`` when it may pass.

    Args:
        method: the request's HTTP method.
        headers: its headers.

    Returns:
        A message naming the header and the value that gave it away, or ``None``.
    """
    if method in SAFE_METHODS or headers.get("authorization", "").lower().startswith("bearer "):
        return None
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site.lower() in SAME_SITE_FETCHES:
            return None
        return f"Sec-Fetch-Site is {fetch_site!r}"
    origin = headers.get("origin")
    if origin is None:
        return None
    if origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
        return f"Origin {origin!r} is not this server ({headers.get('host', '')!r})"
    return None


class CrossSiteRequestMiddleware:
    """Refuse, with 403 naming the header, unsafe requests that a foreign page made a browser send."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = cross_site_reason(scope["method"], Headers(scope=scope)) if scope["type"] == "http" else None
        if reason is None:
            await self.app(scope, receive, send)
            return
        message = (f"cross-site request refused: {reason}. Change things from this server's own pages, or "
                   "send the key as `Authorization: Bearer <key>`")
        await JSONResponse({"detail": [{"field": "Origin", "message": message}]}, status_code=403)(
            scope, receive, send)


class SecurityHeadersMiddleware:
    """Add :data:`SECURITY_HEADERS` to every response (those a response sets itself are kept)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
