"""The Server-Sent Events stream of a study, over real HTTP (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import optuna
import pytest

from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from service.events import ChangeTracker, SharedReads, Snapshot
from tests.support.aio import run_async
from tests.support.databases import postgres_admin
from tests.support.servers import ServeProcess
from tests.support.studies import add_trial, tiny_spec


def sse_events(response: httpx.Response) -> Iterator[dict]:
    """Parse a text/event-stream into dicts (``event``, ``data``, ``id``, ``retry``, ``comment``)."""
    event: dict = {}
    for line in response.iter_lines():
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            event["comment"] = line[1:].strip()
        else:
            key, _, value = line.partition(":")
            event[key] = value[1:] if value.startswith(" ") else value


def read_until(events: Iterator[dict], done: Callable[[list[dict]], bool], timeout_s: float = 15) -> list[dict]:
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    for event in events:
        seen.append(event)
        if done(seen):
            return seen
        assert time.monotonic() < deadline, f"timed out; events so far: {seen}"
    raise AssertionError(f"the stream ended; events so far: {seen}")


def named(seen: list[dict], name: str) -> list[dict]:
    return [json.loads(e["data"]) for e in seen if e.get("event") == name]


def test_event_stream_follows_trials_resumes_and_ends_on_delete(live_server, storage):
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        study = http.post("/api/v1/studies", json=tiny_spec()).json()
        optuna_study = optuna.load_study(study_name=study["optuna_study_name"], storage=storage)
        url = study["links"]["events"]

        with http.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            opening = read_until(events, lambda seen: bool(named(seen, "study")))
            assert opening[0].get("retry") == "2000"
            assert named(opening, "study")[0]["state"] == "queued"

            trial = optuna_study.ask()
            trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            trial.report(0.4, 0)
            running = read_until(events, lambda seen: bool(named(seen, "trial")))
            assert named(running, "trial")[0]["state"] == "running"

            optuna_study.tell(trial, 0.75)
            finished = read_until(
                events, lambda seen: any(t["state"] == "complete" for t in named(seen, "trial"))
                and any(s["trials"]["complete"] == 1 for s in named(seen, "study"))
            )
            complete = [t for t in named(finished, "trial") if t["state"] == "complete"][0]
            assert complete["value"] == 0.75 and complete["number"] == 0
            assert complete["intermediate_values"] == [{"step": 0, "value": 0.4}]
            assert named(finished, "study")[-1]["best_value"] == 0.75
            last_id = [e["id"] for e in finished if "id" in e][-1]

            quiet = read_until(events, lambda seen: any("comment" in e for e in seen), timeout_s=5)
            assert any(e["comment"] == "heartbeat" for e in quiet if "comment" in e)

        # Reconnecting with Last-Event-ID: the finished trial is not sent again, new ones are.
        with http.stream("GET", url, headers={"Last-Event-ID": last_id}) as response:
            events = sse_events(response)
            resumed = read_until(events, lambda seen: bool(named(seen, "study")))
            assert named(resumed, "trial") == []
            second = optuna_study.ask()
            second.suggest_float("lr", 1e-4, 1e-1, log=True)
            fresh = read_until(events, lambda seen: bool(named(seen, "trial")))
            assert [t["number"] for t in named(fresh, "trial")] == [1]

            threading.Timer(0.3, lambda: httpx.delete(f"{live_server.url}{study['links']['self']}")).start()
            ending = read_until(events, lambda seen: any(e.get("event") == "deleted" for e in seen))
            assert ending[-1]["event"] == "deleted"
            assert list(events) == []  # the server closed the stream


def test_event_stream_of_an_unknown_study_is_404(live_server):
    response = httpx.get(f"{live_server.url}/api/v1/studies/nope/events", timeout=10)

    assert response.status_code == 404
    assert response.json()["detail"][0]["field"] == "study_id"


def wait_until_idle(live_server, timeout_s: float = 5) -> None:
    """Until the server holds no connection or task (the streams' clients have gone)."""
    state = live_server.server.server_state
    deadline = time.monotonic() + timeout_s
    while (state.connections or state.tasks) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_streams_stop_when_their_clients_leave(live_server):
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        study = http.post("/api/v1/studies", json=tiny_spec()).json()
        for _ in range(10):
            with http.stream("GET", study["links"]["events"]) as response:
                next(response.iter_lines())
        assert http.get("/healthz").status_code == 200

    wait_until_idle(live_server)
    state = live_server.server.server_state
    assert not state.connections and not state.tasks


def test_a_client_leaving_mid_stream_logs_no_error(live_server, storage, caplog):
    """FastAPI's SSE keep-alive task raises BrokenResourceError when the client goes while
    events are still being forwarded; uvicorn logged it as "Exception in ASGI application"
    for most streams a page closed (155 of 190 in bench_load)."""
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        study = http.post("/api/v1/studies", json=tiny_spec()).json()
        for _ in range(60):  # a backlog of events, so that some are in flight when the client goes
            add_trial(storage, study["optuna_study_name"], steps=[0.1, 0.2, 0.3])
        for _ in range(10):
            with http.stream("GET", study["links"]["events"]) as response:
                next(response.iter_lines())
        assert http.get("/healthz").status_code == 200

    wait_until_idle(live_server)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]


def open_streams(url: str, path: str, count: int) -> list[socket.socket]:
    """``count`` event streams held open on raw sockets, each read until its first bytes."""
    host, port = url.removeprefix("http://").split(":")
    streams = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        streams.append(sock)
    for sock in streams:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200"), "a stream was refused"
    return streams


@pytest.mark.postgres
def test_open_streams_hold_no_database_connection(postgres_url, tmp_path):
    """More open streams than the pool has connections (5 + 10 overflow): other requests
    still answer at once, and streams keep no connection idle in a transaction (at most one
    caught mid-poll)."""
    database = postgres_url.rsplit("/", 1)[1]
    with ServeProcess(postgres_url, tmp_path / "data", tmp_path / "serve.log",
                      env={"HPO_EVENTS_POLL_S": "0.2"}) as service:
        study = httpx.post(f"{service.url}/api/v1/studies", json=tiny_spec(), timeout=30).json()
        streams = open_streams(service.url, study["links"]["events"], 30)
        try:
            time.sleep(1)  # every stream has polled a few times
            started = time.monotonic()
            listing = httpx.get(f"{service.url}/api/v1/studies", timeout=30)
            took_s = time.monotonic() - started
            with postgres_admin() as admin:  # a few looks: a poll between two statements is fine
                idle_in_transaction = max((admin.execute(
                    "SELECT query FROM pg_stat_activity WHERE datname = %s AND state = 'idle in transaction'",
                    (database,)).fetchall() for _ in range(5)), key=len)
        finally:
            for sock in streams:
                sock.close()
    assert listing.status_code == 200 and listing.json()["total"] == 1
    assert took_s < 5, f"listing studies took {took_s:.1f} s with 30 streams open"
    assert len(idle_in_transaction) < 3, f"connections idle in a transaction: {idle_in_transaction}"


def test_streams_of_a_study_share_one_read_per_poll():
    reads: list[str] = []

    def read(key: str):
        def snapshot() -> Snapshot:
            reads.append(key)
            time.sleep(0.05)
            return Snapshot(study={"key": key}, trials=[])
        return snapshot

    async def many_streams() -> list[Snapshot]:
        shared = SharedReads(max_age_s=0.2)
        first = await asyncio.gather(*(shared.read(k, read(k)) for k in ["a"] * 50 + ["b"] * 50))
        again = await shared.read("a", read("a"))  # still fresh
        await asyncio.sleep(0.25)
        later = await shared.read("a", read("a"))  # stale: read again
        return [*first, again, later]

    snapshots = run_async(many_streams())

    assert sorted(reads) == ["a", "a", "b"]
    assert [s.study["key"] for s in snapshots] == ["a"] * 50 + ["b"] * 50 + ["a", "a"]


def test_streams_following_linked_reads_send_what_a_full_comparison_sends():
    """Linked reads (what ``SharedReads`` makes) let a stream look only at the trials that
    changed since the read it was sent; a stream that missed a read compares them all. Either
    way, the events are those of comparing every trial, on a study of a few hundred trials."""
    distribution = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}

    def trial(number: int, state: TrialState, steps: int, value: float | None = None):
        made = create_trial(state=state, value=value, params={"lr": 0.01}, distributions=distribution,
                            intermediate_values={s: 0.1 * s for s in range(steps)})
        made.number = number
        return made

    polls = [[trial(n, TrialState.COMPLETE, 3, 0.5) for n in range(300)] + [trial(300, TrialState.RUNNING, 1)]]
    polls.append(polls[-1][:300] + [trial(300, TrialState.RUNNING, 2)])  # a new epoch
    polls.append(polls[-1])  # nothing changed
    polls.append(polls[-1][:300] + [trial(300, TrialState.COMPLETE, 2, 0.9), trial(301, TrialState.RUNNING, 0)])
    polls.append(polls[-1][:301] + [trial(301, TrialState.PRUNED, 1), trial(302, TrialState.COMPLETE, 1, 0.2)])
    studies = ["s0", "s1", "s1", "s2", "s3"]

    def sent(tracker: ChangeTracker, snapshots: list[Snapshot]) -> list[list[str]]:
        return [[repr(e) for e in tracker.events(s)] for s in snapshots]

    linked, previous = [], None
    for trials, study in zip(polls, studies):
        previous = Snapshot(study, trials).follow(previous)
        linked.append(previous)
    assert [len(s.changed) for s in linked] == [301, 1, 0, 2, 2]
    for resume in (None, linked[0].watermark_ms):
        full = sent(ChangeTracker(resume_after_ms=resume), [Snapshot(st, t) for t, st in zip(polls, studies)])
        assert sent(ChangeTracker(resume_after_ms=resume), linked) == full
        assert len(full[0]) == (302 if resume is None else 2) and len(full[2]) == 0
        skipping = sent(ChangeTracker(resume_after_ms=resume), [linked[0], linked[2], linked[3], linked[4]])
        assert skipping == [full[0], full[1] + full[2], full[3], full[4]]
