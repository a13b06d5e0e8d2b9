"""Bounded waits under bursts: at most ``max_active_requests`` requests are worked on at once;
the others wait for a turn, at most ``queue_timeout_s``, then get 503 with ``Retry-After``.

Without it a burst queues without limit for the request threads and the database pool, and
clients wait minutes. A request's turn ends when its answer starts, so an event stream
holds one only until its headers are sent. The probes never wait: they say whether the
process lives and the database answers, not how busy the server is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("service")
UNQUEUED_PATHS = frozenset({"/healthz", "/readyz"})
RETRY_AFTER_S = 2


class Activity:
    """How many requests are being worked on, for background work that waits for a quiet
    moment (the trial cache's warming at start-up must not take the first requests' CPU)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._last_end = time.monotonic()

    def started(self) -> None:
        with self._lock:
            self._active += 1

    def ended(self) -> None:
        with self._lock:
            self._active -= 1
            self._last_end = time.monotonic()

    def wait_quiet(self, quiet_s: float, poll_s: float = 0.05) -> None:
        """Return once no request has been worked on for ``quiet_s`` seconds (blocking)."""
        while True:
            with self._lock:
                quiet_for = 0.0 if self._active else time.monotonic() - self._last_end
            if quiet_for >= quiet_s:
                return
            time.sleep(max(poll_s, quiet_s - quiet_for))


class AdmissionMiddleware:
    """Admit at most ``max_active`` requests at once; others wait up to ``queue_timeout_s``.

    Args:
        app: the application.
        max_active: requests worked on at once.
        queue_timeout_s: how long a request waits for its turn before a 503.
        activity: told when an admitted request starts and when its answer starts.
    """

    def __init__(self, app: ASGIApp, *, max_active: int, queue_timeout_s: float, activity: Activity):
        self.app = app
        self.queue_timeout_s = queue_timeout_s
        self._turns = asyncio.Semaphore(max_active)
        self._activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNQUEUED_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self._turns.acquire(), self.queue_timeout_s)
        except TimeoutError:
            log.warning("busy: %s %s waited %.1f s for a turn", scope["method"], scope["path"], self.queue_timeout_s)
            body = {"detail": [{"field": None, "message": "the server is busy; try again in a moment"}]}
            await JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})(scope, receive, send)
            return
        holding = True
        self._activity.started()

        def release() -> None:
            nonlocal holding
            if holding:
                holding = False
                self._turns.release()
                self._activity.ended()

        async def send_and_release(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()  # the work is done; a streamed body (events) needs no turn
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()
