"""Liveness, readiness and Prometheus metrics (outside ``/api/v1``, where probes expect them)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service import metrics
from service.auth import METRICS_PATH
from service.deps import TrialCacheDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> dict[str, str]:
    """200 whenever the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, summary="Readiness")
def readyz(request: Request) -> JSONResponse | dict[str, str]:
    """200 when the database answers and, with embedded workers (``hpo serve --workers N``),
    at least one of them is alive; 503 with the reason otherwise (open to probes: no API key)."""
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return JSONResponse({"status": f"database unreachable: {type(exc).__name__}"}, status_code=503)
    pool = getattr(request.app.state, "worker_pool", None)
    if pool is not None and pool.alive() == 0:
        return JSONResponse({"status": f"no worker process alive (of {len(pool.procs)}); restarting them"},
                            status_code=503)
    return {"status": "ready"}


@router.get(METRICS_PATH, response_class=PlainTextResponse, summary="Prometheus metrics")
def prometheus_metrics(cache: TrialCacheDep) -> PlainTextResponse:
    """Trials and studies by state, trial durations, and the queue of trials still to run, over
    every owner (so an admin key, once keys exist)."""
    return PlainTextResponse(metrics.render(metrics.collect(cache)), media_type=metrics.CONTENT_TYPE)
