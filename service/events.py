"""Server-Sent Events of a study: what changed since the last look at the database.

The stream polls the database (the only state there is; every stream of a study shares one
read per poll through :class:`SharedReads`, which reads only what changed since the read
before: ``hpo.changes``) and sends:

- ``trial`` when a trial appears or changes state, value or last reported epoch;
- ``study`` when the study's state, counts or best value change;
- ``deleted`` when the study disappears (then the stream ends);
- a ``: heartbeat`` comment when nothing was sent for a while (keeps proxies from closing it).

Event ids are a watermark (milliseconds of the latest trial start or finish seen). A client
reconnecting with ``Last-Event-ID`` is not sent again the trials that had already finished
by then; running and waiting trials and the study itself are always sent again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request
from fastapi.sse import ServerSentEvent
from optuna.trial import FrozenTrial
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hpo.changes import StudyReading, read_changes
from hpo.storage import read_trials, trial_id_of
from hpo.studies import Tally
from service.auth import AuthError
from service.catalog import LoadedStudy, StudyNotFound
from service.schemas import StudySummary, TrialOut

log = logging.getLogger("service")
RETRY_MS = 2000


def event_id_at(moment: dt.datetime | None) -> int:
    """The event id of a moment (naive local time, as Optuna hands out trial times): epoch
    ms; 0 for none."""
    return int(moment.timestamp() * 1000) if moment else 0


def event_id_of(trial: FrozenTrial) -> int:
    """The id of a trial's latest event: when it last started or finished."""
    moments = [m for m in (trial.datetime_start, trial.datetime_complete) if m is not None]
    return event_id_at(max(moments, default=None))


def parse_last_event_id(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def trial_key(trial: FrozenTrial) -> tuple:
    """What a stream sends a trial again for: its state, value or last reported epoch changed."""
    return trial.state, trial.value, len(trial.intermediate_values)


KEPT_READS = 64  # reads linked before a snapshot: a stream may miss 30 s of them at 0.5 s a poll


@dataclass(frozen=True)
class CatchUp:
    """What a stream that follows no read yet (a new one, or one left behind) asks a read
    for: every trial (``since_ms`` None), or the unfinished ones and those that started or
    finished after event id ``since_ms`` (what a page that drew the study then lacks)."""

    since_ms: int | None


class Snapshot:
    """A study as one read saw it: its summary, the trials new or changed since the read
    before (all a stream that was sent that one looks at: a poll of a study of 50,000 trials
    costs next to nothing), the trials that streams catching up asked for, and the
    watermark. Linked to the reads before it (the latest :data:`KEPT_READS`), so that a
    stream that missed some looks at what changed since the one it was sent.

    Args:
        study: the study's summary, from ``reading``'s tally.
        reading: what the read found (the next read starts from it).
        changed: the trials new or changed since the reading before, in number order.
        caught_up: the trials of each catch-up asked for, read before ``reading``.
        previous: the snapshot of the reading before, when there was one.
    """

    def __init__(self, study: StudySummary, reading: StudyReading, changed: list[FrozenTrial],
                 caught_up: dict[CatchUp, list[FrozenTrial]], previous: Snapshot | None):
        self.study = study
        self.reading: StudyReading | None = reading
        self.changed = changed
        self.caught_up = caught_up
        self.watermark_ms = event_id_at(reading.tally.last_event)
        self.previous = previous
        if previous is not None:
            previous.reading = None  # read from once
            oldest = self
            for _ in range(KEPT_READS):
                oldest = oldest.previous
                if oldest is None:
                    return
            oldest.previous = None

    def changes_since(self, earlier: Snapshot) -> list[FrozenTrial] | None:
        """The trials new or changed since ``earlier`` (their latest versions, in number
        order), or None when ``earlier`` is not among the reads linked before this one."""
        walked: list[list[FrozenTrial]] = []
        snapshot: Snapshot | None = self
        while snapshot is not earlier:
            if snapshot is None:
                return None
            walked.append(snapshot.changed)
            snapshot = snapshot.previous
        return latest_versions(reversed(walked))


def latest_versions(batches: Iterable[list[FrozenTrial]]) -> list[FrozenTrial]:
    """The trials of ``batches`` (oldest first), each in its latest version, in number order."""
    by_number = {t.number: t for batch in batches for t in batch}
    return [by_number[n] for n in sorted(by_number)]


@dataclass
class ChangeTracker:
    """Remembers what a client was sent, to send only what changed."""

    resume_after_ms: int | None = None
    watermark_ms: int = 0
    trial_keys: dict[int, tuple] = field(default_factory=dict)
    study: StudySummary | None = None
    last: Snapshot | None = None

    def catch_up(self) -> CatchUp:
        """What this client needs when it follows no read: every trial, or those the event
        id it resumes from leaves out."""
        return CatchUp(self.resume_after_ms)

    def events(self, snapshot: Snapshot) -> list[ServerSentEvent] | None:
        """The events that bring the client to ``snapshot``, or None when it cannot: the
        client follows no read linked before it, and it holds no catch-up for the client
        (ask a read for :meth:`catch_up`)."""
        changes = snapshot.changes_since(self.last) if self.last is not None else None
        if changes is None:
            caught = snapshot.caught_up.get(self.catch_up())
            if caught is None:
                return None
            changes = latest_versions([caught, snapshot.changed])
        out: list[ServerSentEvent] = []
        first = self.study is None
        self.watermark_ms = max(self.watermark_ms, snapshot.watermark_ms)
        self.last = snapshot
        for trial in changes:
            key = trial_key(trial)
            if self.trial_keys.get(trial.number) == key:
                continue
            self.trial_keys[trial.number] = key
            already_seen = (
                first and self.resume_after_ms is not None and trial.state.is_finished()
                and event_id_of(trial) <= self.resume_after_ms
            )
            if not already_seen:
                out.append(_event("trial", TrialOut.of(trial, intermediate=True), self.watermark_ms))
        if snapshot.study != self.study:
            self.study = snapshot.study
            out.append(_event("study", snapshot.study, self.watermark_ms))
        return out


def _event(name: str, data: StudySummary | TrialOut, event_id: int) -> ServerSentEvent:
    return ServerSentEvent(event=name, data=data, id=str(event_id))


# Reads a study's snapshot after the one given (none: the first), reading the catch-ups given first.
SnapshotRead = Callable[[Snapshot | None, frozenset[CatchUp]], Snapshot]


@dataclass
class _Read:
    started: float
    future: asyncio.Future
    catch_ups: frozenset[CatchUp] = frozenset()


class SharedReads:
    """One database read per study and poll interval, shared by all of that study's streams:
    200 open pages of one study cost what one does. Each :class:`Snapshot` read starts from
    the one before, and streams look only at what changed. A read older than ``max_age_s``
    is repeated by the next stream that asks; streams asking meanwhile await that same read.
    A stream that needs a catch-up awaits a read that reads it (the next one, unless the
    one in flight does), shared with the others that need the same.

    Args:
        max_age_s: how long a read serves (the streams' poll interval).
    """

    def __init__(self, max_age_s: float):
        self.max_age_s = max_age_s
        self._reads: dict[str, _Read] = {}
        self._latest: dict[str, Snapshot] = {}
        self._wanted: dict[str, set[CatchUp]] = {}

    async def read(self, key: str, read: Callable[[], Any]) -> Any:
        """What ``read`` answers, read in a thread when no answer under ``key`` is fresh.

        Raises:
            Whatever ``read`` raised (every stream waiting on that read gets it).
        """
        entry = self._reads.get(key)
        if entry is None or (entry.future.done() and time.monotonic() - entry.started >= self.max_age_s):
            entry = self._start(key, read, frozenset())
        return await asyncio.shield(entry.future)

    async def snapshot(self, key: str, read: SnapshotRead, catch_up: CatchUp | None = None) -> Snapshot:
        """The latest snapshot of study ``key`` (with ``catch_up`` read, when given), read in
        a thread when none is fresh.

        Raises:
            Whatever ``read`` raised (every stream waiting on that read gets it).
        """
        while True:
            entry = self._reads.get(key)
            if entry is not None and (catch_up is None or catch_up in entry.catch_ups) and (
                    not entry.future.done() or time.monotonic() - entry.started < self.max_age_s):
                return await asyncio.shield(entry.future)
            if entry is None or entry.future.done():
                catch_ups = frozenset(self._wanted.pop(key, set()) | ({catch_up} if catch_up is not None else set()))

                def read_next(previous: Snapshot | None = self._latest.get(key)) -> Snapshot:
                    snapshot = read(previous, catch_ups)
                    self._latest[key] = snapshot  # before the read counts as done: the next one starts from it
                    return snapshot

                return await asyncio.shield(self._start(key, read_next, catch_ups).future)
            if catch_up is not None:
                self._wanted.setdefault(key, set()).add(catch_up)
            await asyncio.wait([entry.future])  # the read in flight lacks the catch-up: the next one reads it

    def _start(self, key: str, read: Callable[[], Any], catch_ups: frozenset[CatchUp]) -> _Read:
        now = time.monotonic()
        self._forget_older_than(now - 10 * self.max_age_s)
        entry = _Read(now, asyncio.ensure_future(run_in_threadpool(read)), catch_ups)
        self._reads[key] = entry
        return entry

    def _forget_older_than(self, moment: float) -> None:
        """Drop finished reads of studies no stream asked about lately (closed pages, deleted studies)."""
        for key in [k for k, entry in self._reads.items() if entry.started < moment and entry.future.done()]:
            del self._reads[key]
            self._latest.pop(key, None)
            self._wanted.pop(key, None)


async def study_events(
    request: Request,
    read: SnapshotRead,
    *,
    poll_s: float,
    heartbeat_s: float,
    last_event_id: str | None = None,
    shared: tuple[SharedReads, str] | None = None,
    authorize: tuple[Callable[[], Any], str] | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """The event stream of one study until the client leaves or the study is deleted
    (FastAPI's ``EventSourceResponse`` writes the events out).

    Holds no database connection between polls: each ``read`` opens and closes its own.

    Args:
        request: to notice the client leaving.
        read: reads the study's next snapshot (blocking; run in a thread): see :func:`snapshot_reader`.
        poll_s: seconds between reads of the database.
        heartbeat_s: seconds of silence before a keep-alive comment.
        last_event_id: the ``Last-Event-ID`` a reconnecting client sent.
        shared: the app's :class:`SharedReads` and the study's key in it (each stream reads
            on its own without it).
        authorize: a check of the client's credentials (blocking; raises ``AuthError`` once they
            are revoked) and a key naming them, run before each poll's read (shared, like the
            reads, by the streams of the same credentials).
    """
    tracker = ChangeTracker(resume_after_ms=parse_last_event_id(last_event_id))
    reads, key = shared or (SharedReads(max_age_s=poll_s), "")
    yield ServerSentEvent(retry=RETRY_MS)
    last_sent = time.monotonic()
    while not await request.is_disconnected():
        events: list[ServerSentEvent] | None = []
        try:
            if authorize:
                await reads.read(authorize[1], authorize[0])
            events = tracker.events(await reads.snapshot(key, read, None if tracker.last else tracker.catch_up()))
            if events is None:  # left behind: catch up
                events = tracker.events(await reads.snapshot(key, read, tracker.catch_up()))
        except StudyNotFound:
            yield ServerSentEvent(event="deleted", data={})
            return
        except AuthError as exc:
            if exc.status != 503:  # the key was revoked or the login ended: the client reconnects to a 401
                return
            # the keys could not be read: a database hiccup, try again at the next poll
        except Exception:  # a database hiccup: keep the stream, try again at the next poll
            log.warning("event stream: reading the study failed; retrying", exc_info=True)
        for event in events or []:
            yield event
            last_sent = time.monotonic()
        if time.monotonic() - last_sent >= heartbeat_s:
            yield ServerSentEvent(comment="heartbeat")
            last_sent = time.monotonic()
        await asyncio.sleep(poll_s)


def snapshot_reader(load: Callable[[], LoadedStudy],
                    view: Callable[[LoadedStudy, Tally], StudySummary]) -> SnapshotRead:
    """A ``read`` for :func:`study_events`: loads the study afresh each time (it may be
    deleted), reads what changed since the snapshot before (``hpo.changes.read_changes``:
    the trials then unfinished and the newer ones) and the study's summary from their tally
    (``view``). The first read starts from a first reading of its own.

    The study's counts are derived from the very trials the snapshot sends, so a page that
    applies a poll's trial events together with its study event never shows counts that
    disagree with its trials. A catch-up is read before the changes, after the reading they
    follow: a stream sent both has every trial as the changes left it.
    """

    def read(previous: Snapshot | None, catch_ups: frozenset[CatchUp]) -> Snapshot:
        loaded = load()

        def changes(before: StudyReading | None) -> StudyReading:
            try:
                return read_changes(loaded.storage, loaded.study_id, loaded.spec.direction, before)
            except KeyError:  # the study was deleted since it was loaded
                raise StudyNotFound(loaded.record.id) from None

        before = previous.reading if previous is not None and previous.reading is not None else changes(None)
        caught_up = {catch_up: _caught_up(loaded, catch_up) for catch_up in catch_ups}
        reading = changes(before)
        keys = {trial_id_of(t): trial_key(t) for t in before.unfinished.values()}
        changed = [t for t in reading.trials if keys.get(trial_id_of(t)) != trial_key(t)]
        return Snapshot(view(loaded, reading.tally), reading, changed, caught_up,
                        previous if previous is not None and before is previous.reading else None)

    return read


def _caught_up(loaded: LoadedStudy, catch_up: CatchUp) -> list[FrozenTrial]:
    """Every trial (through the trial cache), or the unfinished ones and those that started or
    finished since the event id (read narrowly; from a millisecond earlier: event ids are
    whole milliseconds)."""
    if catch_up.since_ms is None:
        return loaded.study.get_trials(deepcopy=False)
    since = dt.datetime.fromtimestamp(catch_up.since_ms / 1000) - dt.timedelta(milliseconds=1)
    return read_trials(loaded.storage, loaded.study_id, changed_since=since)


class LeftStreamsMiddleware:
    """Drops the error FastAPI's event streams raise when their client has gone.

    A client that leaves while FastAPI's SSE keep-alive task forwards an event makes that
    task raise ``anyio.BrokenResourceError`` (FastAPI 0.165, discussion #15725): nothing is
    lost (the client is gone), yet it was logged as an unhandled error for most closed pages.
    Only that error, and only once an event stream's response has started, is dropped.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streaming = False

        async def watch(message: Message) -> None:
            nonlocal streaming
            if message["type"] == "http.response.start":
                streaming = any(name == b"content-type" and value.startswith(b"text/event-stream")
                                for name, value in message.get("headers", []))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except* (anyio.BrokenResourceError, anyio.ClosedResourceError):
            if not streaming:
                raise
