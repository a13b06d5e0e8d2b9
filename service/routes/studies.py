"""``/api/v1/studies``: submit, list, inspect, cancel, resume, delete, best trial, live events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from hpo.spec import SpecError, StudySpec, parse_spec, parse_spec_text
from service import catalog, records
from service.auth import PrincipalDep, authenticate, credentials_key
from service.catalog import LoadedStudy, StudyNotFound, TooManyQueued
from service.deps import PageDep, SessionDep, SettingsDep, StorageDep, TrialCacheDep
from service.errors import problem
from service.events import snapshot_reader, study_events
from service.limits import check_study_size, parse_json_body
from service.schemas import BestTrial, ErrorResponse, StudyDetail, StudyPage, StudyState, StudySummary

router = APIRouter(prefix="/studies", tags=["studies"])

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 415, 422)}
SUBMIT_ERRORS = {**ERRORS, 429: {"model": ErrorResponse, "description": "Too many unfinished studies."}}
_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "description": "A study spec, as JSON or as YAML (`Content-Type: application/yaml`).",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/StudySpec"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/StudySpec"}},
        },
    }
}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


MAX_FLOW_NESTING = 64


def _refuse_deep_flow_nesting(text: str) -> None:
    """PyYAML's scanner slows down quadratically with ``[[[[...`` nesting: 20 KB of brackets
    cost it seconds. A spec nests a few levels; this linear count (brackets in quoted
    strings included, hence the generous limit) refuses the rest before YAML sees them."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    if deepest > MAX_FLOW_NESTING:
        raise SpecError([{"field": "body", "message": f"the spec is nested too deeply (more than "
                                                      f"{MAX_FLOW_NESTING} levels of brackets)"}])


def _refuse_yaml_aliases(text: str) -> None:
    """Aliases (``*name``) can expand a small body into an enormous spec; a spec never needs them."""
    try:
        if any(isinstance(token, yaml.AliasToken) for token in yaml.scan(text)):
            raise SpecError([{"field": "body", "message": "YAML aliases (*name) are not accepted in a spec"}])
    except yaml.YAMLError:
        pass  # parse_spec_text names the bad line


async def spec_from_body(request: Request) -> StudySpec:
    """The submitted spec, parsed from JSON or YAML and validated.

    Raises:
        SpecError: 422 naming each bad field.
    """
    media = _media_type(request)
    is_json = media in JSON_TYPES or media.endswith("+json")
    if media and not (is_json or media in YAML_TYPES or media == "text/plain"):
        raise problem(415, f"send the spec as application/json or application/yaml; got {media}", field="body")
    raw = await request.body()
    return await run_in_threadpool(parse_body, raw, is_json)  # parsing 1 MiB of YAML takes a while


def parse_body(raw: bytes, is_json: bool) -> StudySpec:
    """Decode, parse (JSON, or YAML without aliases) and validate a spec.

    Raises:
        SpecError, HTTPException: 422 naming the body or each bad field.
    """
    if not raw.strip():
        raise problem(422, "the body is empty; send a study spec", field="body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise problem(422, f"the body is not UTF-8 text (byte {exc.start})", field="body") from None
    try:
        if is_json:
            return parse_spec(parse_json_body(text))
        _refuse_deep_flow_nesting(text)
        _refuse_yaml_aliases(text)
        return parse_spec_text(text)
    except RecursionError:
        raise problem(422, "the spec is nested too deeply", field="body") from None


def get_loaded_study(study_id: str, session: SessionDep, cache: TrialCacheDep) -> LoadedStudy:
    try:
        return catalog.load(session, cache, study_id)
    except StudyNotFound as exc:
        raise problem(404, str(exc), field="study_id") from None


LoadedDep = Annotated[LoadedStudy, Depends(get_loaded_study)]


def _detail(session: SessionDep, loaded: LoadedStudy) -> StudyDetail:
    names = records.dataset_names(session, [loaded.record])
    return StudyDetail.of(loaded.record, loaded.spec, loaded.progress(), dataset_names=names)


def _check_queue(session: SessionDep, cache: TrialCacheDep, settings: SettingsDep, owner: str | None) -> None:
    try:
        catalog.check_queue(session, cache, owner, settings.max_queued_studies_per_owner)
    except TooManyQueued as exc:
        raise problem(429, str(exc)) from None


@router.post("", status_code=201, response_model=StudyDetail, responses=SUBMIT_ERRORS, openapi_extra=_SPEC_BODY,
             summary="Submit a study")
def submit_study(spec: Annotated[StudySpec, Depends(spec_from_body)], session: SessionDep, storage: StorageDep,
                 cache: TrialCacheDep, settings: SettingsDep, principal: PrincipalDep,
                 response: Response) -> StudyDetail:
    """Validate a spec and queue its study; workers start on it at once. Refused with 422
    past the server's caps on trials, folds and epochs, and with 429 while the caller has
    too many unfinished studies."""
    spec = spec.with_trial_cap(settings.max_n_trials)
    check_study_size(spec, settings)
    _check_queue(session, cache, settings, principal.name)
    loaded = catalog.submit(session, storage, spec, owner=principal.name)
    detail = _detail(session, loaded)
    response.headers["Location"] = detail.links.self
    return detail


@router.get("", response_model=StudyPage, responses=ERRORS, summary="List studies")
def list_studies(session: SessionDep, cache: TrialCacheDep, page: PageDep,
                 state: StudyState | None = None) -> StudyPage:
    """Studies, newest first, optionally only those in one state."""
    studies, total = catalog.list_page(session, cache, limit=page.limit, offset=page.offset, state=state)
    names = records.dataset_names(session, [loaded.record for loaded, _ in studies])
    return StudyPage(items=[StudySummary.of(loaded.record, loaded.spec, prog, dataset_names=names)
                            for loaded, prog in studies],
                     total=total, limit=page.limit, offset=page.offset)


@router.get("/{study_id}", response_model=StudyDetail, responses=ERRORS, summary="A study's state")
def get_study(loaded: LoadedDep, session: SessionDep) -> StudyDetail:
    """The spec, state, trial counts, best value, timing and ETA of a study."""
    return _detail(session, loaded)


@router.post("/{study_id}/cancel", response_model=StudyDetail, responses=ERRORS, summary="Cancel a study")
def cancel_study(loaded: LoadedDep, session: SessionDep, storage: StorageDep) -> StudyDetail:
    """Stop a study: no new trials start; running ones stop at their next epoch."""
    state = loaded.progress().state
    if state in ("completed", "failed"):
        raise problem(409, f"study {loaded.record.id!r} has already {state}; there is nothing to cancel")
    catalog.cancel(storage, loaded)
    return _detail(session, loaded)


@router.post("/{study_id}/resume", response_model=StudyDetail, responses=SUBMIT_ERRORS, summary="Resume a study")
def resume_study(loaded: LoadedDep, session: SessionDep, storage: StorageDep, cache: TrialCacheDep,
                 settings: SettingsDep) -> StudyDetail:
    """Let workers run a cancelled study's remaining trials, or retry a study that failed
    because it could not run (409 for one that failed on its own trials or whose uploaded
    dataset was deleted; 429 while its owner has too many unfinished studies)."""
    if loaded.progress().state in ("cancelled", "failed"):
        _check_queue(session, cache, settings, loaded.record.owner)
    try:
        catalog.resume(session, storage, loaded)
    except catalog.DatasetDeleted as exc:
        raise problem(409, str(exc), field="dataset.id") from None
    return _detail(session, loaded)


@router.delete("/{study_id}", status_code=204, responses=ERRORS, summary="Delete a study")
def delete_study(loaded: LoadedDep, session: SessionDep, cache: TrialCacheDep) -> Response:
    """Delete a study with all its trials (from Optuna's tables too) and its model."""
    catalog.delete(session, cache, loaded)
    return Response(status_code=204)


@router.get("/{study_id}/best", response_model=BestTrial, responses=ERRORS, summary="The best trial")
def best_trial(loaded: LoadedDep) -> BestTrial:
    """The best complete trial: its parameters, CV score and per-fold scores."""
    prog = loaded.progress()
    if prog.best_trial is None:
        raise problem(409, f"no trial of study {loaded.record.id!r} has completed yet (state: {prog.state}, "
                           f"{prog.running} running, {prog.pruned} pruned, {prog.failed} failed)")
    trial = next(t for t in loaded.study.get_trials(deepcopy=False) if t.number == prog.best_trial)
    return BestTrial.of(loaded.record, loaded.spec, trial)


@router.get(
    "/{study_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"description": "`trial`, `study` and `deleted` events (JSON data), heartbeat comments."},
               404: {"model": ErrorResponse}},
    summary="Live events",
)
async def study_event_stream(
    request: Request,
    loaded: LoadedDep,
    cache: TrialCacheDep,
    settings: SettingsDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[str | None, Query(description="Skip trials finished by this event id, like "
                                                          "the `Last-Event-ID` header (which wins when both "
                                                          "are sent): a browser's `EventSource` cannot send "
                                                          "the header on its first connection, so a page "
                                                          "passes the `event_id` of the data it drew.")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """A Server-Sent Events stream of trial and study changes, until the client leaves."""
    study_id, sessions = loaded.record.id, request.app.state.sessions

    def load() -> LoadedStudy:
        with sessions() as session:  # the connection goes back before Optuna's tables are read
            record = catalog.get_record(session, study_id)
        return cache.open(record)

    def read_dataset_names() -> dict[str, str]:
        with sessions() as session:
            return records.dataset_names(session, [loaded.record])

    names = await run_in_threadpool(read_dataset_names)  # read once: an upload is never renamed
    read = snapshot_reader(load, lambda s, tally: StudySummary.of(s.record, s.spec, s.progress(tally=tally),
                                                                 dataset_names=names))
    async for event in study_events(request, read, poll_s=settings.events_poll_s,
                                    heartbeat_s=settings.events_heartbeat_s,
                                    last_event_id=last_event_id_header or last_event_id,
                                    shared=(request.app.state.event_reads, study_id),
                                    authorize=(lambda: authenticate(request), f"credentials {credentials_key(request)}")):
        yield event
