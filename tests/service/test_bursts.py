"""Bursts of concurrent requests against a real ``hpo serve`` with a tiny connection pool:
every request is answered (it waits for a connection, or gets 503 with ``Retry-After``),
never 500, and the client's keep-alive connections stay open."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from process_support import ServeProcess
from service_support import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.service]
STUDIES = "/api/v1/studies"
CLIENTS = 40
REQUESTS_PER_CLIENT = 2
# One connection, a short wait for it: most of the burst finds the pool busy.
SMALL_POOL = {"HPO_DB_POOL_SIZE": "1", "HPO_DB_MAX_OVERFLOW": "0", "HPO_DB_POOL_TIMEOUT_S": "0.05"}


async def burst(base_url: str) -> list[httpx.Response | Exception]:
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


def test_a_burst_gets_answers_or_503_never_500(database_url, tmp_path):
    with ServeProcess(database_url, tmp_path / "data", tmp_path / "serve.log", env=SMALL_POOL) as server:
        httpx.post(f"{server.url}{STUDIES}", json=tiny_spec(), timeout=30).raise_for_status()
        answers = asyncio.run(burst(server.url))
        log = server.output(20_000)

    outcomes = Counter(a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers)
    assert set(outcomes) <= {200, 503}, f"{outcomes}\n{log[-3000:]}"
    assert outcomes[503] > 0, f"the pool never ran dry, so nothing was tested: {outcomes}"
    refused = [a for a in answers if a.status_code == 503]
    assert all(r.headers.get("retry-after", "").isdigit() for r in refused)
    assert all(r.headers.get("connection", "").lower() != "close" for r in refused)
    assert all("try again" in r.json()["detail"][0]["message"] for r in refused)
    assert "Traceback" not in log
