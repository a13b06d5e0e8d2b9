"""The interactive API docs (``/docs``, ``/redoc``) render on a machine without internet: their
scripts and styles come from the service itself, never from a CDN."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.browser


# What the docs need to work; ReDoc's footer also shows Redocly's logo from its site (an image).
NEEDED = {"document", "script", "stylesheet", "font", "fetch", "xhr"}


def offline(page, server) -> list[str]:
    """Block every request that leaves the server under test; returns the blocked URLs of
    the kinds the docs need to work."""
    own = urlsplit(server.url).netloc
    blocked: list[str] = []

    def route(route):
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:
            if route.request.resource_type in NEEDED:
                blocked.append(route.request.url)
            route.abort()

    page.route("**/*", route)
    return blocked


def test_swagger_ui_renders_the_operations_offline(server, page):
    blocked = offline(page, server)
    page.goto(f"{server.url}/docs")
    # An operation of each router, drawn by Swagger UI from /openapi.json.
    page.wait_for_selector("#operations-studies-submit_study_api_v1_studies_post", timeout=30_000)
    page.wait_for_selector(".opblock-tag-section >> text=datasets")
    assert blocked == [], f"/docs asked for outside resources: {blocked}"


def test_redoc_renders_the_operations_offline(server, page):
    blocked = offline(page, server)
    page.goto(f"{server.url}/redoc")
    page.locator("h2", has_text="Submit a study").wait_for(timeout=30_000)
    assert page.locator("redoc").count() == 1
    assert blocked == [], f"/redoc asked for outside resources: {blocked}"
