"""What a test does when a service it needs is missing (PostgreSQL, Chromium, Playwright)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def services_unavailable(reason: str) -> NoReturn:
    """Skip the calling test, or fail it when the run promised every service
    (``HPO_REQUIRE_SERVICES=1``, as CI sets it).

    Args:
        reason: what is missing, for the skip or failure message.

    Raises:
        pytest.skip.Exception: without the promise.
        pytest.fail.Exception: with it.
    """
    if os.environ.get("HPO_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required (HPO_REQUIRE_SERVICES=1) but unavailable: {reason}")
    pytest.skip(f"unavailable: {reason}")
