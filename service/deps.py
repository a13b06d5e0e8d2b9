"""What routes receive through ``Depends``: settings, the caller, a DB session (showing only
the caller's rows), the Optuna storage, the trial cache that studies are read through, the
dataset store, a page window."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from optuna.storages import BaseStorage
from sqlalchemy.orm import Session

from hpo.data import DatasetStore
from service import records
from service.auth import PrincipalDep
from hpo.settings import Settings
from service.errors import problem
from service.trial_cache import TrialCache


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request, principal: PrincipalDep) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        if not principal.admin:
            records.restrict_to_owner(session, principal.name)
        yield session


def get_storage(request: Request) -> BaseStorage:
    return request.app.state.storage


def get_trial_cache(request: Request) -> TrialCache:
    return request.app.state.trial_cache


def get_dataset_store(request: Request) -> DatasetStore:
    return request.app.state.dataset_store


SettingsDep = Annotated[Settings, Depends(get_settings)]
# Closed when the route returns, before the answer is sent: an event stream keeps none open.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StorageDep = Annotated[BaseStorage, Depends(get_storage)]
TrialCacheDep = Annotated[TrialCache, Depends(get_trial_cache)]
DatasetStoreDep = Annotated[DatasetStore, Depends(get_dataset_store)]


# Both databases keep offsets in 64-bit integers; past this no page exists anyway.
MAX_OFFSET = 2**31 - 1


@dataclass
class Page:
    limit: int
    offset: int


def get_page(
    settings: SettingsDep,
    limit: Annotated[int | None, Query(ge=1, description="Items per page (default and maximum: see settings).")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
) -> Page:
    if limit is None:
        limit = settings.default_page_size
    if limit > settings.max_page_size:
        raise problem(422, f"at most {settings.max_page_size} items per page; got {limit}", field="limit")
    return Page(limit=limit, offset=offset)


PageDep = Annotated[Page, Depends(get_page)]
