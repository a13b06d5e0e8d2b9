"""Server-Sent Events of a study: what changed since the last look at the database.

The stream polls the database (the only state there is; every stream of a study shares one
read per poll through :class:`SharedReads`) and sends:

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request
from fastapi.sse import ServerSentEvent
from optuna.trial import FrozenTrial
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class Snapshot:
    """A study as one read saw it, with what every stream needs worked out once per read: the
    trials by number, their keys, the watermark and, once :meth:`follow` has linked it to the
    read before, which trials changed since (a stream that was sent that read looks at those
    only: on a study of 50,000 trials a poll then costs each stream next to nothing).

    Args:
        study: the study's summary.
        trials: its trials.
    """

    def __init__(self, study: StudySummary, trials: list[FrozenTrial]):
        self.study = study
        self.trials = sorted(trials, key=lambda t: t.number)
        self.keys = {t.number: trial_key(t) for t in self.trials}
        self._watermark_ms: int | None = None
        self.previous: Snapshot | None = None
        self.changed: list[FrozenTrial] = self.trials

    @property
    def watermark_ms(self) -> int:
        """The latest event id of its trials."""
        if self._watermark_ms is None:
            self._watermark_ms = max((event_id_of(t) for t in self.trials), default=0)
        return self._watermark_ms

    def follow(self, previous: Snapshot | None) -> Snapshot:
        """Link this read to the one before it (shared by every stream of the study; only the
        latest link is kept) and note the trials that are new or changed since."""
        if previous is not None:
            previous.previous = None  # no chain of old reads kept alive
            self.previous = previous
            self.changed = [t for t in self.trials if previous.keys.get(t.number) != self.keys[t.number]]
            # A trial's times change only with its state (so with its key): only changed trials can move it.
            self._watermark_ms = max([previous.watermark_ms, *(event_id_of(t) for t in self.changed)])
        return self


@dataclass
class ChangeTracker:
    """Remembers what a client was sent, to send only what changed."""

    resume_after_ms: int | None = None
    watermark_ms: int = 0
    trial_keys: dict[int, tuple] = field(default_factory=dict)
    study: StudySummary | None = None
    last: Snapshot | None = None

    def events(self, snapshot: Snapshot) -> list[ServerSentEvent]:
        out: list[ServerSentEvent] = []
        first = self.study is None
        self.watermark_ms = max(self.watermark_ms, snapshot.watermark_ms)
        # The read right after the one this client was sent: only its changed trials can differ.
        candidates = snapshot.changed if self.last is not None and snapshot.previous is self.last else snapshot.trials
        self.last = snapshot
        for trial in candidates:
            key = snapshot.keys[trial.number]
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


class SharedReads:
    """One database read per study and poll interval, shared by all of that study's streams:
    200 open pages of one study cost what one does. Each :class:`Snapshot` read is linked to
    the one before (:meth:`Snapshot.follow`), so streams look only at what changed. A read older than ``max_age_s`` is
    repeated by the next stream that asks; streams asking meanwhile await that same read.

    Args:
        max_age_s: how long a read serves (the streams' poll interval).
    """

    def __init__(self, max_age_s: float):
        self.max_age_s = max_age_s
        self._reads: dict[str, tuple[float, asyncio.Future[Snapshot]]] = {}

    async def read(self, key: str, read: Callable[[], Snapshot]) -> Snapshot:
        """The latest snapshot of study ``key``, read in a thread when none is fresh.

        Raises:
            Whatever ``read`` raised (every stream waiting on that read gets it).
        """
        now = time.monotonic()
        entry = self._reads.get(key)
        if entry is None or (entry[1].done() and now - entry[0] >= self.max_age_s):
            self._forget_older_than(now - 10 * self.max_age_s)
            previous = entry[1].result() if entry and not entry[1].cancelled() and not entry[1].exception() else None

            def read_after() -> Any:
                value = read()
                return value.follow(previous if isinstance(previous, Snapshot) else None) \
                    if isinstance(value, Snapshot) else value

            entry = (now, asyncio.ensure_future(run_in_threadpool(read_after)))
            self._reads[key] = entry
        return await asyncio.shield(entry[1])

    def _forget_older_than(self, moment: float) -> None:
        """Drop finished reads of studies no stream asked about lately (closed pages, deleted studies)."""
        for key in [k for k, (at, future) in self._reads.items() if at < moment and future.done()]:
            del self._reads[key]


async def study_events(
    request: Request,
    read: Callable[[], Snapshot],
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
        read: reads the study's current snapshot (blocking; run in a thread).
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
    yield ServerSentEvent(retry=RETRY_MS)
    last_sent = time.monotonic()
    while not await request.is_disconnected():
        try:
            if authorize:
                await (shared[0].read(authorize[1], authorize[0]) if shared else run_in_threadpool(authorize[0]))
            snapshot = await (shared[0].read(shared[1], read) if shared else run_in_threadpool(read))
        except StudyNotFound:
            yield ServerSentEvent(event="deleted", data={})
            return
        except AuthError as exc:
            if exc.status != 503:  # the key was revoked or the login ended: the client reconnects to a 401
                return
            snapshot = None  # the keys could not be read: a database hiccup, try again at the next poll
        except Exception:  # a database hiccup: keep the stream, try again at the next poll
            log.warning("event stream: reading the study failed; retrying", exc_info=True)
            snapshot = None
        for event in tracker.events(snapshot) if snapshot else []:
            yield event
            last_sent = time.monotonic()
        if time.monotonic() - last_sent >= heartbeat_s:
            yield ServerSentEvent(comment="heartbeat")
            last_sent = time.monotonic()
        await asyncio.sleep(poll_s)


def snapshot_reader(load: Callable[[], LoadedStudy],
                    view: Callable[[LoadedStudy, list[FrozenTrial]], StudySummary]) -> Callable[[], Snapshot]:
    """A ``read`` for :func:`study_events`: loads the study afresh each time (it may be deleted)
    and reads its trials once, for the summary (``view``) and the trial events.

    The study's counts are derived from the very trials the snapshot sends, so a page that
    applies a poll's trial events together with its study event never shows counts that
    disagree with its trials.
    """

    def read() -> Snapshot:
        loaded = load()
        trials = loaded.study.get_trials(deepcopy=False)
        return Snapshot(study=view(loaded, trials), trials=trials)

    return read


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
