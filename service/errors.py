"""One error shape for every refusal: ``{"detail": [{"field": "cv.folds", "message": "..."}]}``.

Routes raise :func:`problem`; FastAPI's own validation errors and ``SpecError`` are turned
into the same shape here. Anything unexpected is logged and answered with a 500 that
carries no traceback.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from hpo.spec import SpecError

log = logging.getLogger("service")

# Where FastAPI found a bad value; the client only needs the field's own path.
_LOCATION_PREFIXES = ("body", "query", "path", "header", "cookie")


def problem(status_code: int, message: str, field: str | None = None,
            headers: dict[str, str] | None = None) -> HTTPException:
    """An ``HTTPException`` carrying one ``{"field", "message"}`` item (raise it)."""
    return HTTPException(status_code, detail=[{"field": field, "message": message}], headers=headers)


def error_items(detail: Any) -> list[dict[str, Any]]:
    """Normalize an exception's detail (a string, a list of items, anything) to the item list."""
    if isinstance(detail, list) and all(isinstance(d, dict) and "message" in d for d in detail):
        return [{"field": d.get("field"), "message": str(d["message"])} for d in detail]
    return [{"field": None, "message": str(detail)}]


def field_path(loc: tuple | list) -> str:
    """``("body", "cv", "folds")`` -> ``"cv.folds"``; ``("query", "limit")`` -> ``"limit"``."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in _LOCATION_PREFIXES:
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_items(exc: RequestValidationError) -> list[dict[str, Any]]:
    items = []
    for err in exc.errors():
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error")
            message = f"not valid JSON: {reason}" if reason else "not valid JSON"
            items.append({"field": "body", "message": message})
            continue
        if err.get("type") == "missing":
            message = "required"
        items.append({"field": field_path(err.get("loc", ())), "message": message})
    return items


async def _http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"detail": error_items(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": validation_items(exc)}, status_code=422)


async def _spec_error(request: Request, exc: SpecError) -> JSONResponse:
    return JSONResponse({"detail": error_items(exc.errors)}, status_code=422)


# No space left, quota exceeded, file size limit: the disk is full for this write.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


async def _os_error(request: Request, exc: OSError) -> JSONResponse:
    """A full data disk is a 507 (what was being written is removed by its writer); any other OSError goes on
    to the 500 handler."""
    if exc.errno not in _DISK_FULL_ERRNOS:
        raise exc
    log.error("data disk full on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": [{"field": None, "message": "the server's data disk has no space left; nothing was kept. "
                                               "Try again once an operator has freed space"}]},
        status_code=507,
    )


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database is restarting, unreachable or locked: a retryable 503, not a 500."""
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse(
        {"detail": [{"field": None, "message": "the database is unavailable; try again in a moment"}]},
        status_code=503, headers={"Retry-After": "5"},
    )


async def _server_busy(request: Request, exc: Exception) -> JSONResponse:
    """Every pooled connection stayed busy for ``db_pool_timeout_s``: a retryable 503, not a 500
    (answered here, not re-raised, so the client's keep-alive connection stays open)."""
    log.warning("no free database connection for %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": [{"field": None, "message": "the server is busy (every database connection is in use); "
                                               "try again in a moment"}]},
        status_code=503, headers={"Retry-After": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": [{"field": None, "message": "internal error; the server log has the details"}]},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the one shape."""
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(SpecError, _spec_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(StorageInternalError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _server_busy)
    app.add_exception_handler(Exception, _unexpected)
