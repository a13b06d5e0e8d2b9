"""Running a coroutine from a synchronous test, whatever the session's main thread runs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)`` in a thread of its own.

    The browser tests' session-scoped Playwright (sync API) keeps an event loop running in
    the main thread, where ``asyncio.run`` refuses to start; a fresh thread has none.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
