"""Bursts of concurrent requests against a real ``hpo serve`` with a tiny connection pool:
every request is answered (it waits for a connection, or gets 503 with ``Retry-After``),
never 500, and the client's keep-alive connections stay open."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.support.aio import run_async
from tests.support.servers import ServeProcess
from tests.support.studies import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.service]
STUDIES = "/api/v1/studies"
CLIENTS = 40
REQUESTS_PER_CLIENT = 2
# One connection, a short wait for it: most of the burst finds the pool busy.
SMALL_POOL = {"HPO_DB_POOL_SIZE": "1", "HPO_DB_MAX_OVERFLOW": "0", "HPO_DB_POOL_TIMEOUT_S": "0.05"}
# Two requests at a time, a short wait for a turn: most of the burst is turned away at once.
FEW_TURNS = {"HPO_MAX_ACTIVE_REQUESTS": "2", "HPO_QUEUE_TIMEOUT_S": "0.05"}


async def burst(base_url: str) -> list[httpx.Response | Exception]:
    """``CLIENTS`` clients at once, each sending ``REQUESTS_PER_CLIENT`` list requests in turn."""
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
        async def client() -> list[httpx.Response | Exception]:
            answers: list[httpx.Response | Exception] = []
            for _ in range(REQUESTS_PER_CLIENT):
                try:
                    answers.append(await http.get(STUDIES))
                except httpx.TransportError as exc:  # a dropped connection counts against the server
                    answers.append(exc)
            return answers

        return [a for answers in await asyncio.gather(*(client() for _ in range(CLIENTS))) for a in answers]


def run_burst(database_url: str, folder, env: dict[str, str]) -> tuple[list[httpx.Response | Exception], str]:
    with ServeProcess(database_url, folder / "data", folder / "serve.log", env=env) as server:
        httpx.post(f"{server.url}{STUDIES}", json=tiny_spec(), timeout=30).raise_for_status()
        answers = run_async(burst(server.url))
        return answers, server.output(20_000)


def assert_answered_or_503(answers: list[httpx.Response | Exception], log: str) -> list[httpx.Response]:
    """Every answer is a 200 or a 503 with ``Retry-After`` (at least one: the limit was reached),
    no connection was dropped, no traceback logged. Returns the 503s."""
    outcomes = Counter(a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers)
    assert set(outcomes) <= {200, 503}, f"{outcomes}\n{log[-3000:]}"
    assert outcomes[503] > 0, f"the limit was never reached, so nothing was tested: {outcomes}"
    refused = [a for a in answers if a.status_code == 503]
    assert all(r.headers.get("retry-after", "").isdigit() for r in refused)
    assert all(r.headers.get("connection", "").lower() != "close" for r in refused)
    assert all("try again" in r.json()["detail"][0]["message"] for r in refused)
    assert "Traceback" not in log
    return refused


def test_a_burst_on_a_small_pool_gets_answers_or_503_never_500(database_url, tmp_path):
    answers, log = run_burst(database_url, tmp_path, SMALL_POOL)

    assert_answered_or_503(answers, log)


def test_a_burst_beyond_the_active_requests_waits_a_bounded_time_then_503(sqlite_url, tmp_path):
    answers, log = run_burst(sqlite_url, tmp_path, FEW_TURNS)

    refused = assert_answered_or_503(answers, log)
    assert any("server is busy" in r.json()["detail"][0]["message"] for r in refused)
