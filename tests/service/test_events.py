"""The Server-Sent Events stream of a study, over real HTTP (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import optuna
import pytest
import sqlalchemy
from fastapi.sse import ServerSentEvent
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.db.models import StudyRecord
from hpo.spec import parse_spec
from hpo.storage import write_trials
from hpo.studies import SURPLUS_ATTR, progress, set_cancelled
from service.events import CatchUp, ChangeTracker, SharedReads, event_id_of, snapshot_reader, trial_key
from service.schemas import StudySummary, TrialOut
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
        def answer() -> dict:
            reads.append(key)
            time.sleep(0.05)
            return {"key": key}
        return answer

    async def many_streams() -> list[dict]:
        shared = SharedReads(max_age_s=0.2)
        first = await asyncio.gather(*(shared.read(k, read(k)) for k in ["a"] * 50 + ["b"] * 50))
        again = await shared.read("a", read("a"))  # still fresh
        await asyncio.sleep(0.25)
        later = await shared.read("a", read("a"))  # stale: read again
        return [*first, again, later]

    snapshots = run_async(many_streams())

    assert sorted(reads) == ["a", "a", "b"]
    assert [s["key"] for s in snapshots] == ["a"] * 50 + ["b"] * 50 + ["a", "a"]


def test_a_stream_catching_up_awaits_a_read_of_its_catch_up_after_the_one_in_flight():
    """Each read starts from the one before; a stream asking for a catch-up while a read
    without it is in flight gets the next read, which reads it (and serves the others)."""
    reads: list[tuple] = []

    def read(previous, catch_ups):
        time.sleep(0.1)
        reads.append((previous, catch_ups))
        return len(reads)

    async def streams() -> list:
        shared = SharedReads(max_age_s=5)
        first = asyncio.ensure_future(shared.snapshot("s", read))
        await asyncio.sleep(0.02)  # the first read is in flight
        caught = asyncio.ensure_future(shared.snapshot("s", read, CatchUp(7)))
        await asyncio.sleep(0.15)  # the read with the catch-up is in flight
        return [await first, await caught, await shared.snapshot("s", read),
                await shared.snapshot("s", read, CatchUp(7))]

    assert run_async(streams()) == [1, 2, 2, 2]
    assert reads == [(None, frozenset()), (1, frozenset({CatchUp(7)}))]


def study_reads(api, study_id: str):
    """The stream's read of a study's snapshots, as its route makes it."""
    cache = api.app.state.trial_cache
    with api.app.state.sessions() as session:
        record = session.get(StudyRecord, study_id)
    return snapshot_reader(lambda: cache.open(record), lambda loaded, tally: StudySummary.of(
        loaded.record, loaded.spec, loaded.progress(tally=tally), dataset_names={}))


class FullComparison:
    """What a stream sent before reads followed each other: at each poll every trial of a full
    read compared with what the client was sent, and the study's progress from that read."""

    def __init__(self, api, storage, study_id: str, resume_after_ms: int | None = None):
        with api.app.state.sessions() as session:
            self.record = session.get(StudyRecord, study_id)
        self.spec = parse_spec(self.record.spec)
        self.storage, self.resume_after_ms = storage, resume_after_ms
        self.keys: dict[int, tuple] = {}
        self.study, self.watermark_ms = None, 0

    def events(self) -> list[str]:
        study = optuna.load_study(study_name=self.record.optuna_study_name, storage=self.storage)
        trials = study.get_trials(deepcopy=False)
        summary = StudySummary.of(self.record, self.spec, progress(study, self.spec, trials=trials), dataset_names={})
        self.watermark_ms = max([self.watermark_ms, *map(event_id_of, trials)])
        out, first = [], self.study is None
        for trial in trials:
            if self.keys.get(trial.number) == trial_key(trial):
                continue
            self.keys[trial.number] = trial_key(trial)
            if not (first and self.resume_after_ms is not None and trial.state.is_finished()
                    and event_id_of(trial) <= self.resume_after_ms):
                out.append(ServerSentEvent(event="trial", data=TrialOut.of(trial, intermediate=True),
                                           id=str(self.watermark_ms)))
        if summary != self.study:
            self.study = summary
            out.append(ServerSentEvent(event="study", data=summary, id=str(self.watermark_ms)))
        return [repr(e) for e in out]


def test_streams_sent_reads_of_what_changed_get_the_events_of_full_reads(api, storage):
    """Each read after the first reads only the trials that may have changed and tallies the
    study from them, and a stream that was sent a read looks only at what changed since (one
    that missed reads, at the reads linked in between; a new one, at a catch-up read with
    it). Through new trials, epochs reported, running trials completing, pruned, failed and
    failed as surplus, a queued trial claimed and the study cancelled, every stream gets the
    events that comparing every trial of a full read gives it, on SQLite and PostgreSQL."""
    study_id = api.post("/api/v1/studies", json=tiny_spec(budget={"n_trials": 100})).json()["id"]
    name = api.get(f"/api/v1/studies/{study_id}").json()["optuna_study_name"]
    study = optuna.load_study(study_name=name, storage=storage)
    running: dict[str, optuna.Trial] = {}

    def ask(key: str, *steps: float) -> None:
        running[key] = study.ask()
        running[key].suggest_float("lr", 1e-4, 1e-1, log=True)
        for step, score in enumerate(steps):
            running[key].report(score, step)

    changes = [
        lambda: ([add_trial(storage, name, value=0.1 * (n % 5), steps=[0.1, 0.2]) for n in range(12)],
                 add_trial(storage, name, state="pruned", steps=[0.1]), add_trial(storage, name, state="failed"),
                 ask("a", 0.3)),
        lambda: (ask("b"), running["a"].report(0.35, 1)),
        lambda: study.tell(running.pop("a"), 0.9),  # a new best
        lambda: None,
        lambda: (study.tell(running.pop("b"), state=TrialState.PRUNED), ask("c", 0.2),
                 study.enqueue_trial({"lr": 0.01})),
        lambda: (running["c"].set_user_attr(SURPLUS_ATTR, True), study.tell(running.pop("c"), state=TrialState.FAIL),
                 ask("queued")),  # claims the queued trial
        lambda: set_cancelled(storage, name, True),
        lambda: (study.tell(running.pop("queued"), 0.9), add_trial(storage, name, value=0.4)),
    ]
    read = study_reads(api, study_id)
    streams = {  # tracker, its full comparison, the polls it makes, when it resumes from which poll's event id
        "every poll": (ChangeTracker(), FullComparison(api, storage, study_id), range(8)),
        "missing polls": (ChangeTracker(), FullComparison(api, storage, study_id), [0, 3, 4, 6, 7]),
        "new at poll 5": (ChangeTracker(), FullComparison(api, storage, study_id), [5, 6, 7]),
    }
    snapshot, event_ids = None, []
    sent: dict[str, list] = {key: [] for key in streams}
    expected: dict[str, list] = {key: [] for key in streams}
    for poll, change in enumerate(changes):
        change()
        if poll == 4:  # a page drawn at poll 2 opens its stream
            streams["resumed at poll 4"] = (ChangeTracker(resume_after_ms=event_ids[2]),
                                            FullComparison(api, storage, study_id, event_ids[2]), [4, 5, 6, 7])
            sent["resumed at poll 4"], expected["resumed at poll 4"] = [], []
        catch_ups = frozenset(tracker.catch_up() for tracker, _, polls in streams.values() if poll == polls[0])
        snapshot = read(snapshot, catch_ups)
        event_ids.append(snapshot.watermark_ms)
        for key, (tracker, full, polls) in streams.items():
            if poll in polls:
                sent[key].append([repr(e) for e in tracker.events(snapshot)])
                expected[key].append(full.events())
    for key in streams:
        assert sent[key] == expected[key], key
    assert len(expected["every poll"][0]) == 16 and expected["every poll"][3] == []  # 15 trials and the study
    assert sum(e.startswith("ServerSentEvent(event='trial'") for e in expected["resumed at poll 4"][0]) < 5


def python_calls(work: Callable[[], object]) -> int:
    """How many Python and C functions ``work`` calls (in this thread): its work, without a clock."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_a_poll_costs_what_changed_not_the_size_of_the_study(api, storage):
    """A poll of a study where nothing changed does the same work, and reads the same rows,
    whether the study has 300 or 1,200 finished trials (it used to work through every
    trial: sort them, key them, tally them); a poll after two trials changed reads those."""
    engine = api.app.state.trial_cache.backend.engine
    statements: list[tuple[str, object]] = []

    @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
    def note(connection, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    def rows_read(poll: Callable[[], object]) -> int:
        statements.clear()
        poll()
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            return sum(len(cursor.execute(statement, parameters).fetchall() if engine.dialect.name == "sqlite"
                           else (cursor.execute(statement, parameters), cursor.fetchall())[1])
                       for statement, parameters in statements)
        finally:
            connection.close()

    costs = {}
    for n_trials in (300, 1200):
        study = api.post("/api/v1/studies", json=tiny_spec(budget={"n_trials": 100})).json()
        trials = [create_trial(state=TrialState.COMPLETE, value=n / n_trials, params={"lr": 0.01},
                               distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
                               intermediate_values={0: 0.4, 1: 0.5}) for n in range(n_trials)]
        write_trials(storage, study["optuna_study_name"], trials)
        for _ in range(2):
            add_trial(storage, study["optuna_study_name"], state="running", steps=[0.1])
        read = study_reads(api, study["id"])
        snapshots = [read(read(None, frozenset()), frozenset())]  # the statements compiled and cached

        def poll() -> None:
            snapshots.append(read(snapshots[-1], frozenset()))

        idle_rows, idle_calls = rows_read(poll), python_calls(poll)
        add_trial(storage, study["optuna_study_name"], steps=[0.1, 0.2])
        costs[n_trials] = idle_calls, idle_rows, rows_read(poll)
    (calls_small, *rows_small), (calls_large, *rows_large) = costs[300], costs[1200]
    assert calls_large < calls_small + 100, costs
    assert rows_large == rows_small and rows_large[0] < 40 and rows_large[1] < rows_large[0] + 30, costs
