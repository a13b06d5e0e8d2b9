"""``/api/v1/studies/{id}/model`` and ``/predict``: the study's final model, download it, predict.

The study serves the best trial's fold ensemble, kept by the workers as trials complete,
until a refit on all the data is ready (the study queues its own when it ends, by default;
``POST .../model`` queues one on request), then the refit; either kind can be named with
``?kind=`` while it is stored. The refits are jobs the workers run (``hpo.export.jobs``):
this API only queues them, reads states and archives from the database and removes them
(cancel / delete). Predictions load the archive from the
database (cached per archive sha256) and apply each member's training-time preprocessing.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from hpo.export import (
    InputError, Model, ModelJobConflict, PredictInput, delete_model, inputs_from_file, inputs_from_json, load_model,
    model_archive, model_status, request_model,
)
from hpo.export.fit import MAX_HOLDOUT
from hpo.jsonable import finite
from hpo.spec import MAX_SEEDS
from service.deps import SettingsDep, StorageDep
from service.errors import problem
from service.limits import parse_json_body, too_large_message
from service.routes.studies import ERRORS, LoadedDep
from service.views import API_PREFIX

router = APIRouter(prefix="/studies", tags=["models"])

ModelState = Literal["none", "queued", "running", "ready", "failed"]
ModelKind = Literal["ensemble", "refit"]
KindQuery = Annotated[ModelKind | None, Query(description="`ensemble` or `refit`: that kind, while it is ready; "
                                                           "default: the model the study serves.")]
Label = int | str
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "New data: JSON (`{\"x\": [[[...]]]}` numeric, `{\"texts\": [...]}` text, "
                       "`{\"series\": [[...]]}` forecasting, with `\"rolling\": true` for a forecast from "
                       "every window of the series) or a multipart `file` in the dataset upload formats "
                       "(npz; csv/tsv), with optional `format`, `text_column` and `rolling` fields.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"},
                "format": {"type": "string", "enum": ["npz", "csv", "tsv"]},
                "text_column": {"type": "string"},
                "rolling": {"type": "boolean"},
            }, "required": ["file"]}},
        },
    }
}


class ModelRequest(BaseModel):
    """A refit: the best trial (default) or another complete one, trained again on all the
    data once per seed, with an optional holdout."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["refit"] = Field(default="refit", description="`refit` (the ensemble needs no request: "
                                                                "the workers keep it as trials complete).")
    seeds: int = Field(default=1, ge=1, le=MAX_SEEDS, description="Networks trained, one per seed, and averaged.")
    trial_number: int | None = Field(default=None, ge=0, description="Fit this complete trial instead of the best.")
    holdout: float = Field(default=0.0, ge=0.0, le=MAX_HOLDOUT,
                           description="Share of rows held out and scored each epoch (0: train on every row).")


class ModelLinks(BaseModel):
    self: str
    download: str
    predict: str


class RefitStatus(BaseModel):
    """The study's refit job: queued, running (epoch / epochs), ready, or failed (with why)."""

    state: Literal["queued", "running", "ready", "failed"]
    auto: bool = Field(description="Queued by the study itself when it ended (`final_model.kind: refit`), "
                                   "not on request.")
    requested_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    heartbeat_at: str | None = None
    trial_number: int | None = None
    cv_score: float | None = None
    holdout: float | None = None
    seeds: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    score: float | None = None
    attempts: int | None = None
    worker: str | None = None
    reason: str | None = None


class ArchiveInfo(BaseModel):
    """A stored model that can be downloaded or predicted with by its kind."""

    trial_number: int
    cv_score: float | None = None
    bytes: int
    sha256: str
    learned: bool | None = None
    created_at: str | None = None


class ModelStatus(BaseModel):
    """A study's final model: the one it serves, and its refit's progress."""

    study_id: str
    state: ModelState = Field(description="`ready` while a model is served; else the refit's state (`queued`, "
                                          "`running`, `failed`), or `none` until a trial completes.")
    kind: ModelKind | None = Field(
        default=None, description="The model served: `ensemble` (the best trial's fold models, averaged) until a "
                                  "refit (the configuration trained again on all the data, averaged over `seeds` "
                                  "seeds) is ready; `refit` when one is ready, or is all there is to wait for.")
    refit: RefitStatus | None = Field(
        default=None, description="The refit, when there is one: while it is queued or running (or after it "
                                  "failed) the ensemble is served.")
    archives: dict[ModelKind, ArchiveInfo] | None = Field(
        default=None, description="The kinds that can be downloaded or predicted with (`?kind=`).")
    learned: bool | None = Field(
        default=None, description="Once ready: false when the model scores no better on its own training data "
                                  "than the trivial answer (majority class, training mean or persistence; see "
                                  "`model.learning`).")
    requested_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    heartbeat_at: str | None = None
    trial_number: int | None = Field(default=None, description="The trial whose parameters are fitted.")
    cv_score: float | None = Field(default=None, description="That trial's mean cross-validation score.")
    holdout: float | None = None
    seeds: int | None = None
    epoch: int | None = Field(default=None, description="Epochs done so far.")
    epochs: int | None = Field(default=None, description="Epochs the fit trains for.")
    score: float | None = Field(default=None, description="Last epoch's holdout (or training-sample) score.")
    attempts: int | None = None
    worker: str | None = None
    reason: str | None = Field(default=None, description="Why the fit failed.")
    archive: dict[str, Any] | None = Field(default=None, description="`bytes`, `sha256` of the archive.")
    model: dict[str, Any] | None = Field(
        default=None, description="Once ready: params, epochs (and where they came from), data fingerprint, "
                                  "CV score, trial number, framework versions, training scores.")
    links: ModelLinks


class Prediction(BaseModel):
    """Labels and probabilities (classification) or values in the target's units."""

    study_id: str
    task: str
    kind: ModelKind
    n: int | None = None
    classes: list[Label] | None = Field(default=None, description="As the training labels were typed.")
    labels: list[Label] | None = None
    probabilities: list[list[float]] | None = None
    predictions: list[Any] | None = None
    target: str | None = None
    horizon: int | None = None
    rolling: bool | None = Field(default=None, description="Forecasts from every window: `predictions[i]` "
                                                           "forecasts rows from `positions[i]` on.")
    positions: list[int] | None = Field(default=None, description="Rolling forecasts: the first row each "
                                                                  "forecasts (its window is the rows before it).")


def model_view(study_id: str, status: dict[str, Any] | None) -> dict[str, Any]:
    base = f"{API_PREFIX}/studies/{study_id}"
    view: dict[str, Any] = {"study_id": study_id, "state": "none",
                            "links": {"self": f"{base}/model", "download": f"{base}/model/download",
                                      "predict": f"{base}/predict"}}
    if status is not None:
        fields = set(ModelStatus.model_fields) - {"study_id", "links"}
        view.update({k: finite(v) for k, v in status.items() if k in fields})
        if isinstance(status.get("model"), dict):
            view["learned"] = status["model"].get("learned")
    return view


def _status(storage: StorageDep, loaded: LoadedDep) -> dict[str, Any] | None:
    return model_status(storage, loaded.record.optuna_study_name)


def _ready(storage: StorageDep, loaded: LoadedDep, kind: ModelKind | None) -> tuple[ModelKind, dict[str, Any]]:
    """The kind asked for (default: the one served) and its archive's ``bytes`` / ``sha256``; 409 when not ready."""
    status = _status(storage, loaded)
    if status is None or status["state"] != "ready":
        state = "none" if status is None else status["state"]
        raise problem(409, f"study {loaded.record.id!r} has no model ready (model state: {state}); it is kept as "
                           f"trials complete, or POST {API_PREFIX}/studies/{loaded.record.id}/model to refit one")
    kind = kind or status["kind"]
    if kind not in status["archives"]:
        refit = status.get("refit")
        state = f"refit state: {refit['state']}" if kind == "refit" and refit else "none stored"
        raise problem(409, f"study {loaded.record.id!r} has no {kind} model ready ({state}); it serves its "
                           f"{status['kind']}", field="kind")
    return kind, status["archives"][kind]


def _archive(storage: StorageDep, loaded: LoadedDep, kind: ModelKind) -> tuple[bytes, str]:
    found = model_archive(storage, loaded.record.optuna_study_name, kind)
    if found is None:  # deleted or replaced between the two reads
        raise problem(409, f"the model of study {loaded.record.id!r} is being replaced; try again in a moment")
    return found


@router.post("/{study_id}/model", status_code=202, response_model=ModelStatus, response_model_exclude_none=True,
             responses=ERRORS, summary="Fit the best configuration")
def fit_model(loaded: LoadedDep, storage: StorageDep,
              request: Annotated[ModelRequest | None, Body()] = None) -> dict[str, Any]:
    """Queue a refit of the best trial's parameters on the whole training data (once per
    seed, averaged); a worker runs it, and once it is ready it is the model the study
    serves (the fold ensemble until then). Follow it with `GET .../model` (`refit`: state,
    epoch / epochs)."""
    request = request or ModelRequest()
    try:
        job = request_model(storage, loaded.record.optuna_study_name, trial_number=request.trial_number,
                            holdout=request.holdout, seeds=request.seeds)
    except ModelJobConflict as exc:
        raise problem(409, str(exc)) from None
    except ValueError as exc:
        if request.trial_number is not None:
            raise problem(422, str(exc), field="trial_number") from None
        raise problem(409, str(exc)) from None
    return model_view(loaded.record.id, _status(storage, loaded))


@router.get("/{study_id}/model", response_model=ModelStatus, response_model_exclude_none=True, responses=ERRORS,
            summary="The final model's state")
def get_model(loaded: LoadedDep, storage: StorageDep) -> dict[str, Any]:
    """The model served (`ready`, with its kind, metadata and whether it learned), the
    refit's state (`refit`: queued, running with epoch / epochs, ready, or failed with the
    reason) and the kinds stored (`archives`); without a served model, `state` is the
    refit's (or `none`)."""
    return model_view(loaded.record.id, _status(storage, loaded))


@router.delete("/{study_id}/model", status_code=204, response_class=Response, responses=ERRORS,
               summary="Cancel the fit or delete the model")
def cancel_or_delete_model(loaded: LoadedDep, storage: StorageDep, kind: KindQuery = None) -> Response:
    """Cancel a queued or running refit, or delete a ready or failed one (the fold
    ensemble, if kept, is served again; a study's own refit is not queued again); without
    a refit, or with `?kind=ensemble`, delete the ensemble. A running fit's worker stops at
    the end of the epoch in progress. 404 when there is no model (of that kind)."""
    if delete_model(storage, loaded.record.optuna_study_name, kind) is None:
        raise problem(404, f"study {loaded.record.id!r} has no {kind or 'model'} to cancel or delete")
    return Response(status_code=204)


@router.get("/{study_id}/model/download", response_class=Response, responses={
    200: {"content": {"application/zip": {}}, "description": "The model archive: `manifest.json` + "
                                                             "`model.safetensors`; open with `hpo.load_model`."},
    **ERRORS}, summary="Download the model archive")
def download_model(loaded: LoadedDep, storage: StorageDep, kind: KindQuery = None) -> Response:
    """The `.hpo.zip` archive of the model served, or of `?kind=` (409 until it is ready);
    `X-Model-Kind` says its kind."""
    kind, _ = _ready(storage, loaded, kind)
    blob, sha256 = _archive(storage, loaded, kind)
    filename = f"{loaded.record.optuna_study_name}.hpo.zip".replace('"', "_")
    return Response(blob, media_type="application/zip", headers={
        "ETag": f'"{sha256}"', "X-Model-Kind": kind,
        "Content-Disposition": f'attachment; filename="{filename}"'})


@router.post("/{study_id}/predict", response_model=Prediction, response_model_exclude_none=True,
             responses={**ERRORS, 415: ERRORS[422]}, openapi_extra=_PREDICT_BODY, summary="Predict with the model")
async def predict(request: Request, loaded: LoadedDep, storage: StorageDep, settings: SettingsDep,
                  kind: KindQuery = None) -> dict[str, Any]:
    """Predict for new data with the model the study serves, or with `?kind=` (409 until it
    is ready); the training-time preprocessing is applied. A bad input is a 422 naming the problem."""
    model = await run_in_threadpool(_ready_model, storage, loaded, kind)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        async with request.form(max_part_size=settings.max_upload_bytes) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise problem(422, "required: a multipart `file` with the data", field="file")
            content = await upload.read(settings.max_upload_bytes + 1)
            if len(content) > settings.max_upload_bytes:
                raise problem(413, too_large_message(settings.max_upload_bytes, "the file"), field="file")
            options = {k: form.get(k) for k in ("format", "text_column", "rolling")}
            filename = upload.filename or "upload"
        data = await run_in_threadpool(_file_input, model, filename, content, options)
    elif media == "application/json" or media.endswith("+json"):
        data = _json_input(model, parse_json_body(await request.body()))
    else:
        raise problem(415, f"send application/json or multipart/form-data; got {media or 'no content type'}",
                      field="body")
    try:
        result = await run_in_threadpool(model.predict_dict, data)
    except InputError as exc:
        raise problem(422, str(exc), field=exc.field) from None
    return {"study_id": loaded.record.id, **finite(result)}


def _ready_model(storage: StorageDep, loaded: LoadedDep, kind: ModelKind | None) -> Model:
    """The study's ready model (of ``kind``, default the one served), loaded once per archive version."""
    kind, archive = _ready(storage, loaded, kind)
    try:
        return _cached_model(storage, loaded.record.optuna_study_name, kind, archive["sha256"])
    except KeyError:  # replaced between the two reads
        raise problem(409, f"the model of study {loaded.record.id!r} is being replaced; "
                           "try again in a moment") from None
    except ValueError as exc:
        raise problem(409, f"the stored model archive is unreadable ({exc}); "
                           f"POST {API_PREFIX}/studies/{loaded.record.id}/model to refit one") from None


@functools.lru_cache(maxsize=8)
def _cached_model(storage: Any, study_name: str, kind: str, sha256: str) -> Model:
    """A loaded archive, per version (its sha256).

    Raises:
        KeyError: the stored archive is no longer that version.
        ValueError: it is unreadable.
    """
    found = model_archive(storage, study_name, kind)
    if found is None or found[1] != sha256:
        raise KeyError(sha256)
    return load_model(found[0])


def _json_input(model: Model, body: Any) -> PredictInput:
    try:
        return inputs_from_json(model.preprocessing, body)
    except InputError as exc:
        raise problem(422, str(exc), field=exc.field) from None


def _file_input(model: Model, filename: str, content: bytes, options: dict[str, Any]) -> PredictInput:
    fmt, column, rolling = options.get("format"), options.get("text_column"), options.get("rolling")
    if fmt is not None and (not isinstance(fmt, str) or fmt not in ("npz", "csv", "tsv")):
        raise problem(422, f"format must be npz, csv or tsv; got {fmt!r}", field="format")
    if rolling is not None and rolling not in ("true", "false"):
        raise problem(422, f"rolling must be true or false; got {rolling!r}", field="rolling")
    try:
        return inputs_from_file(model.preprocessing, filename, content, format=fmt,
                                column=column if isinstance(column, str) and column else None,
                                rolling=rolling == "true")
    except InputError as exc:
        raise problem(422, str(exc), field=exc.field) from None
