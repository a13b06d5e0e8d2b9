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
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.sse import ServerSentEvent
from optuna.trial import FrozenTrial
from starlette.concurrency import run_in_threadpool

from service.auth import AuthError
from service.catalog import LoadedStudy, StudyNotFound
from service.schemas import StudySummary, TrialOut

log = logging.getLogger("service")
RETRY_MS = 2000


def event_id_of(trial: FrozenTrial) -> int:
    """The id of a trial's latest event: when it last started or finished, in epoch ms."""
    moments = [m for m in (trial.datetime_start, trial.datetime_complete) if m is not None]
    return int(max(moments).timestamp() * 1000) if moments else 0


def parse_last_event_id(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


@dataclass
class Snapshot:
    study: StudySummary
    trials: list[FrozenTrial]


@dataclass
class ChangeTracker:
    """Remembers what a client was sent, to send only what changed."""

    resume_after_ms: int | None = None
    watermark_ms: int = 0
    trial_keys: dict[int, tuple] = field(default_factory=dict)
    study: StudySummary | None = None

    def events(self, snapshot: Snapshot) -> list[ServerSentEvent]:
        out: list[ServerSentEvent] = []
        first = self.study is None
        for trial in sorted(snapshot.trials, key=lambda t: t.number):
            self.watermark_ms = max(self.watermark_ms, event_id_of(trial))
        for trial in sorted(snapshot.trials, key=lambda t: t.number):
            key = (trial.state, trial.value, len(trial.intermediate_values))
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
    200 open pages of one study cost what one does. A read older than ``max_age_s`` is
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
            entry = (now, asyncio.ensure_future(run_in_threadpool(read)))
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
    """A ``read`` for :func:`study_events`: loads the study afresh each time (it may be deleted).

    The study's counts are derived from the very trials the snapshot sends, so a page that
    applies a poll's trial events together with its study event never shows counts that
    disagree with its trials.
    """

    def read() -> Snapshot:
        loaded = load()
        trials = loaded.study.get_trials(deepcopy=False)
        return Snapshot(study=view(loaded, trials), trials=trials)

    return read
