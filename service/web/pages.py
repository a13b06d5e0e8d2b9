"""The browser pages and their assets, all shipped with the package (no CDN: the machine
running the service may be offline).

Pages are Jinja2 templates sharing one layout (``templates/base.html``: header and
navigation); their scripts (``static/*.js``, ES modules) fetch the JSON API. The new-study
form's choices come from the spec (:mod:`service.web.form`). ``plotly.min.js`` is served
from the installed ``plotly`` package.
"""

from __future__ import annotations

import gzip
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import plotly
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from service.auth import DASHBOARD_PREFIX, PrincipalDep, admin_only_reason
from service.deps import StorageDep
from service.errors import problem
from service.routes.studies import LoadedDep
from service.templating import templates
from service.web.form import form_choices

STATIC_DIR = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
ASSETS = "/assets"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
# Our assets change with the package; the browser asks again (cheap, 304 by ETag) each load.
REVALIDATE = "no-cache"
PLOTLY_MAX_AGE_S = 7 * 24 * 3600

router = APIRouter(include_in_schema=False)
_gzip_lock = threading.Lock()

FORM = form_choices()


def page(request: Request, name: str, **context: Any) -> HTMLResponse:
    """A page of ``templates/`` (each extends ``base.html``)."""
    return templates.TemplateResponse(request, name, context, headers={"Cache-Control": REVALIDATE})


@router.get("/")
def studies_page(request: Request) -> HTMLResponse:
    return page(request, "studies.html")


@router.get("/new")
def new_study_page(request: Request) -> HTMLResponse:
    return page(request, "new.html", form=FORM)


@router.get("/studies/{study_id}")
def study_page(study_id: str, request: Request) -> HTMLResponse:
    # The script reads the id from the address and asks the API.
    return page(request, "study.html")


@router.get("/studies/{study_id}/dashboard")
def study_in_dashboard(loaded: LoadedDep, storage: StorageDep, principal: PrincipalDep) -> RedirectResponse:
    """To the study's page in optuna-dashboard, which names studies by Optuna's internal id
    (admins only, as the dashboard: it shows every owner's studies)."""
    if not principal.admin:
        raise problem(403, admin_only_reason(DASHBOARD_PREFIX), field="Authorization")
    optuna_id = storage.get_study_id_from_name(loaded.record.optuna_study_name)
    return RedirectResponse(f"{DASHBOARD_PREFIX}/studies/{optuna_id}", status_code=303)


def plotly_gzipped() -> bytes:
    """Plotly's bundle gzipped, compressed once per process (0.13 s of CPU: the service does
    it in the background at start-up, so that the first page opened does not wait for it)."""
    with _gzip_lock:
        return _plotly_gzipped()


@lru_cache(maxsize=1)
def _plotly_gzipped() -> bytes:
    return gzip.compress(PLOTLY_JS.read_bytes(), compresslevel=6)


@router.get(f"{ASSETS}/plotly.min.js")
def plotly_js(request: Request) -> Response:
    """Plotly's bundle from the installed package (gzipped when the browser accepts it:
    4.6 MB becomes 1.4 MB). Its address carries plotly's version, so it is cached a week."""
    headers = {"Cache-Control": f"public, max-age={PLOTLY_MAX_AGE_S}", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(plotly_gzipped(), media_type="text/javascript", headers={**headers, "Content-Encoding": "gzip"})
    return FileResponse(PLOTLY_JS, media_type="text/javascript", headers=headers)


@router.get(ASSETS + "/{name}")
def asset(name: str) -> FileResponse:
    """A file of ``static/`` (by bare name: nothing outside that folder is reachable)."""
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise problem(404, f"no asset named {name!r}", field="name")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers={"Cache-Control": REVALIDATE})
