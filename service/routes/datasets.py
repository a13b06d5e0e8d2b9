"""``/api/v1/datasets``: upload a file once, refer to it from specs as ``dataset: {id: ...}``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from hpo.data import DataError
from hpo.spec import Task
from service import datasets, records
from service.auth import PrincipalDep
from service.deps import DatasetStoreDep, PageDep, SessionDep, SettingsDep, TrialCacheDep
from service.errors import problem
from service.limits import too_large_message
from hpo.db.models import DatasetRecord
from service.schemas import DatasetOut, DatasetPage, ErrorResponse

router = APIRouter(prefix="/datasets", tags=["datasets"])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422)}


def _get_record(session: SessionDep, dataset_id: str) -> DatasetRecord:
    record = records.get_dataset(session, dataset_id)
    if record is None:
        raise problem(404, f"no dataset with id {dataset_id!r}", field="dataset_id")
    return record


@router.post("", status_code=201, response_model=DatasetOut, responses=ERRORS, summary="Upload a dataset")
def upload_dataset(
    session: SessionDep,
    store: DatasetStoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    response: Response,
    file: Annotated[UploadFile, File(description="An .npz, .csv or .tsv file.")],
    task: Annotated[Task, Form(description="What the data is for.")],
    format: Annotated[Literal["npz", "csv", "tsv"] | None, Form(description="Default: from the file name.")] = None,
    target_column: Annotated[str | None, Form(description="Regression/forecasting target (csv).")] = None,
    text_column: Annotated[str | None, Form(description="Text to tokenize (csv).")] = None,
    label_column: Annotated[str | None, Form(description="Class labels (csv).")] = None,
    max_length: Annotated[int | None, Form(ge=4, le=1024, description="Longest token sequence kept.")] = None,
    time_column: Annotated[str | None, Form(description="Forecasting: the column that orders the rows (never an "
                                                        "input; times must increase).")] = None,
    feature_columns: Annotated[str | None, Form(
        description="Forecasting: the input columns besides the target, separated by commas (default: every "
                    "numeric one).")] = None,
) -> DatasetOut:
    """Validate a file fully and keep it; a refused file leaves nothing behind."""
    if file.size is not None and file.size > settings.max_upload_bytes:  # counted by the multipart parser
        raise problem(413, too_large_message(settings.max_upload_bytes, "the file"), field="file")
    options = {k: v for k, v in {"target_column": target_column, "text_column": text_column,
                                 "label_column": label_column, "max_length": max_length,
                                 "time_column": time_column, "feature_columns": feature_columns}.items()
               if v is not None}
    try:
        record = datasets.upload(session, store, file.filename, file.file, task=task, format=format, options=options,
                                 owner=principal.name)
    except DataError as exc:
        raise problem(422, str(exc), field=getattr(exc, "field", None) or "file") from None
    response.headers["Location"] = f"/api/v1/datasets/{record.id}"
    return DatasetOut.model_validate(record)


@router.get("", response_model=DatasetPage, responses=ERRORS, summary="List datasets")
def list_datasets(session: SessionDep, page: PageDep) -> DatasetPage:
    rows, total = records.page_of(session, DatasetRecord, page.limit, page.offset)
    return DatasetPage(items=[DatasetOut.model_validate(r) for r in rows], total=total, limit=page.limit,
                       offset=page.offset)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=ERRORS, summary="A dataset")
def get_dataset(session: SessionDep, dataset_id: str) -> DatasetOut:
    return DatasetOut.model_validate(_get_record(session, dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses=ERRORS, summary="Delete a dataset")
def delete_dataset(
    session: SessionDep,
    cache: TrialCacheDep,
    store: DatasetStoreDep,
    dataset_id: str,
    force: Annotated[bool, Query(description="Delete it although finished studies still need it for a model "
                                             "(their refits then fail).")] = False,
) -> Response:
    """Delete a dataset; refused (409, naming the studies) while a queued or running study
    reads it, and, unless ``force=true``, while a finished study still needs it for a model:
    a refit queued or running, or a complete trial but no stored model yet."""
    record = _get_record(session, dataset_id)
    try:
        datasets.delete(session, cache, store, record, force=force)
    except KeyError:
        raise problem(404, f"no dataset with id {dataset_id!r}", field="dataset_id") from None
    except (datasets.DatasetInUse, datasets.DatasetNeededForModels) as exc:
        raise problem(409, str(exc), field="dataset_id") from None
    return Response(status_code=204)
