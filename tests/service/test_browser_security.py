"""A signed-in browser against a real ``hpo serve``: the cookie holds a server-side login (not
the key), revoking the key ends its logins and closes its open event streams, foreign pages
cannot make the browser change anything (``/login`` included), and every answer carries the
anti-framing and anti-sniffing headers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import httpx
import pytest

from service import keys
from service.auth import COOKIE
from tests.support.servers import ServeProcess
from tests.support.studies import tiny_spec

pytestmark = [pytest.mark.service]
STUDIES = "/api/v1/studies"
EVIL = "http://evil.example"
POLL_S = 0.2
STREAM_CLOSE_S = 5.0  # generous: one poll is POLL_S, the machine may be busy


@dataclass
class Server:
    url: str
    database_url: str
    admin_key: str


@pytest.fixture(scope="module")
def server(module_database, tmp_path_factory) -> Iterator[Server]:
    url, folder = module_database
    _, admin_key = keys.create_key(url, "root", admin=True)
    env = {"HPO_EVENTS_POLL_S": str(POLL_S), "HPO_EVENTS_HEARTBEAT_S": "0.5"}
    with ServeProcess(url, folder / "data", folder / "serve.log", env=env) as process:
        yield Server(process.url, url, admin_key)


def new_key(server: Server, name: str) -> tuple[str, str]:
    record, token = keys.create_key(server.database_url, name)
    return record.id, token


def sign_in(server: Server, token: str) -> httpx.Client:
    """A client holding the login cookie of ``token``, as a browser would after ``/login``."""
    browser = httpx.Client(base_url=server.url, timeout=30)
    answer = browser.post("/login", data={"key": token, "next": "/"}, headers={"Origin": server.url})
    assert answer.status_code == 303, answer.text
    return browser


def test_the_cookie_is_a_login_ended_by_logout(server):
    _, token = new_key(server, "ann")
    with closing(sign_in(server, token)) as browser:
        cookie = browser.cookies[COOKIE]
        assert token not in cookie and token.split("_")[1] not in cookie  # neither the key nor its id
        assert browser.get(STUDIES).status_code == 200

        assert browser.post("/logout", headers={"Origin": server.url}).status_code in (200, 303)
    replayed = httpx.get(f"{server.url}{STUDIES}", cookies={COOKIE: cookie})
    assert replayed.status_code == 401, "a copy of a signed-out cookie must be worthless"
    assert "sign in again" in replayed.json()["detail"][0]["message"]


def test_revoking_a_key_ends_its_logins_and_closes_its_streams(server):
    key_id, token = new_key(server, "ben")
    study = httpx.post(f"{server.url}{STUDIES}", json=tiny_spec(), headers={"Authorization": f"Bearer {token}"},
                       timeout=30).json()
    events = f"{STUDIES}/{study['id']}/events"
    browser = sign_in(server, token)
    script = httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {token}"})
    ended: dict[str, float] = {}

    def follow(name: str, client: httpx.Client) -> None:
        with client.stream("GET", events) as stream:
            assert stream.status_code == 200
            for _ in stream.iter_lines():  # heartbeats keep coming until the server ends the stream
                if name not in opened:
                    opened.add(name)
        ended[name] = time.monotonic()

    opened: set[str] = set()
    threads = [threading.Thread(target=follow, args=(name, client), daemon=True)
               for name, client in (("cookie", browser), ("bearer", script))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(opened) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert opened == {"cookie", "bearer"}

    keys.revoke_key(server.database_url, key_id)
    revoked_at = time.monotonic()
    for thread in threads:
        thread.join(STREAM_CLOSE_S)
    try:
        assert set(ended) == {"cookie", "bearer"}, f"streams still open {STREAM_CLOSE_S} s after the revocation"
        assert max(ended.values()) - revoked_at < STREAM_CLOSE_S
        assert browser.get(STUDIES).status_code == 401
        assert browser.get(events).status_code == 401  # the browser's EventSource reconnects to a refusal
    finally:
        browser.close()
        script.close()


def test_foreign_pages_cannot_act_for_a_signed_in_browser(server):
    _, token = new_key(server, "cat")
    with closing(sign_in(server, token)) as browser:
        study = browser.post(STUDIES, json=tiny_spec(), headers={"Origin": server.url})
        assert study.status_code == 201, study.text
        cancel = f"{STUDIES}/{study.json()['id']}/cancel"
        csv = b"text,label\n" + b"".join(b"msg %d,%s\n" % (i, b"spam" if i % 2 else b"ham") for i in range(24))
        attempts = {
            "text/plain submit": lambda h: browser.post(STUDIES, content=b"name: x\ntask: classification\n"
                                                        b"dataset: {builtin: digits}\n",
                                                        headers={**h, "Content-Type": "text/plain"}),
            "cancel": lambda h: browser.post(cancel, headers=h),
            "multipart upload": lambda h: browser.post("/api/v1/datasets", files={"file": ("s.csv", csv)},
                                                       data={"task": "classification"}, headers=h),
            "delete": lambda h: browser.delete(f"{STUDIES}/{study.json()['id']}", headers=h),
        }
        for what, attempt in attempts.items():
            for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                            {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"}):
                refused = attempt(headers)
                assert refused.status_code == 403, (what, headers, refused.text)
                assert refused.json()["detail"][0]["field"] == "Origin"
        assert browser.get(f"{STUDIES}/{study.json()['id']}").json()["state"] == "queued"  # nothing happened

        assert attempts["cancel"]({"Origin": server.url, "Sec-Fetch-Site": "same-origin"}).status_code == 200

    # Login CSRF: a foreign page must not sign the browser in with the attacker's key.
    forged = httpx.post(f"{server.url}/login", data={"key": token, "next": "/"}, headers={"Origin": EVIL})
    assert forged.status_code == 403 and COOKIE not in forged.cookies
    # A script's key in the Authorization header cannot come from a foreign page: it passes.
    scripted = httpx.post(f"{server.url}{STUDIES}", json=tiny_spec(name="scripted"),
                          headers={"Authorization": f"Bearer {token}", "Origin": EVIL}, timeout=30)
    assert scripted.status_code == 201, scripted.text


@pytest.mark.parametrize("path", ["/", "/login", "/new", "/studies/nope", STUDIES, "/assets/app.css",
                                  "/api/v1/nope", "/healthz"])
def test_every_answer_forbids_framing_and_sniffing(server, path):
    answer = httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {server.admin_key}"})

    assert answer.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "same-origin"
