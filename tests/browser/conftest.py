"""Fixtures of the browser tests: a real ``hpo serve`` process (API + one embedded worker)
on a fresh SQLite database, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from optuna.storages import RDBStorage

from hpo.storage import open_storage
from tests.support.databases import sqlite_url
from tests.support.servers import ServeProcess
from tests.support.services import services_unavailable

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServeProcess]:
    """One service with one embedded worker for all browser tests (each test makes its own studies)."""
    workdir = tmp_path_factory.mktemp("hpo-serve")
    with ServeProcess(sqlite_url(workdir), workdir, workdir / "serve.log", workers=1) as server:
        yield server


@pytest.fixture(scope="session")
def api_only_server(tmp_path_factory) -> Iterator[ServeProcess]:
    """A service without workers, for pages of trials written by hand: nothing but the test
    writes trials there (a study cancelled right after its submission may still get a
    trial from ``server``'s worker, which looks for new studies every second)."""
    workdir = tmp_path_factory.mktemp("hpo-serve-api-only")
    with ServeProcess(sqlite_url(workdir), workdir, workdir / "serve.log", workers=0) as server:
        yield server


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        services_unavailable(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        services_unavailable("Playwright (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    """A fresh laptop-sized page; JavaScript errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def api(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def storage(server):
    """Optuna's storage on the server's database, for changing a study as a worker does."""
    with opened_storage(server.database_url) as storage:
        yield storage


@pytest.fixture(scope="session")
def api_only_storage(api_only_server):
    """Optuna's storage on ``api_only_server``'s database, for writing trials by hand."""
    with opened_storage(api_only_server.database_url) as storage:
        yield storage


@contextmanager
def opened_storage(database_url: str) -> Iterator[RDBStorage]:
    storage = open_storage(database_url)
    try:
        yield storage
    finally:
        storage.remove_session()
        storage.engine.dispose()
