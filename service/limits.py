"""What one request may ask of the server: body sizes (enforced while the body streams in,
so nothing unbounded is buffered) and a study's size (trials, folds, epochs), each a
per-server cap (``Settings``) below what a spec itself allows."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from hpo.spec import SpecError
from service.errors import problem

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from hpo.spec import StudySpec
    from hpo.settings import Settings

# Python refuses to read longer integers (sys.get_int_max_str_digits); no field accepts them.
MAX_INT_DIGITS = 4300
# Room for multipart boundaries, part headers and the small form fields next to the file.
MULTIPART_OVERHEAD_BYTES = 1024 * 1024


class BodyTooLarge(HTTPException):
    """413: raised from ``receive`` so that whatever is reading the body stops at once."""

    def __init__(self, message: str):
        super().__init__(413, detail=[{"field": "body", "message": message}])


def too_large_message(limit: int, what: str) -> str:
    return f"{what} exceeds the limit of {limit} bytes ({limit / 2**20:.4g} MiB)"


class BodySizeLimitMiddleware:
    """Refuse bodies over a limit: JSON/YAML bodies get ``max_body_bytes``, multipart uploads
    ``max_upload_bytes`` (plus room for the multipart framing).

    A declared ``Content-Length`` over the limit is refused before reading anything; a body
    without one (chunked) is counted as it arrives and refused at the first byte too many.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if headers.get("content-type", "").lower().startswith("multipart/form-data"):
            limit = self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
            refusal = too_large_message(self.max_upload_bytes, "the upload")
        else:
            limit = self.max_body_bytes
            refusal = too_large_message(limit, "the request body")
            if scope["path"].endswith("/predict"):  # large inputs have a way in: say which
                refusal += (f"; send larger inputs as a multipart `file` (NPZ, CSV or TSV, up to "
                            f"{self.max_upload_bytes / 2**20:.4g} MiB) to the same endpoint")
        try:
            declared = int(headers.get("content-length", ""))
        except ValueError:
            declared = None
        if declared is not None and declared > limit:
            body = {"detail": [{"field": "body", "message": refusal}]}
            await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)
            return

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(refusal)
            return message

        await self.app(scope, receive_limited, send)


def check_study_size(spec: StudySpec, settings: Settings) -> None:
    """Refuse a study larger than this server runs: trials, folds, CV repeats, epochs, queued trials.

    Raises:
        SpecError: 422, one item per field over its cap, naming the cap and its setting.
    """
    errors = []
    n_trials = spec.n_trials
    if n_trials > settings.max_n_trials:
        where = ("" if spec.budget.n_trials is not None else f" (the grid's {n_trials} points)"
                 if spec.sampler.name == "grid" else " (the default budget)")
        errors.append(("budget.n_trials", f"{n_trials} trials{where} exceed this server's limit of "
                                          f"{settings.max_n_trials} (HPO_MAX_N_TRIALS)"))
    if len(spec.enqueue_trials) > settings.max_n_trials:
        errors.append(("enqueue_trials", f"{len(spec.enqueue_trials)} queued trials exceed this server's limit "
                                         f"of {settings.max_n_trials} (HPO_MAX_N_TRIALS)"))
    if spec.cv.folds > settings.max_folds:
        errors.append(("cv.folds", f"{spec.cv.folds} folds exceed this server's limit of {settings.max_folds} "
                                   "(HPO_MAX_FOLDS)"))
    if spec.cv.repeats > settings.max_cv_repeats:
        errors.append(("cv.repeats", f"{spec.cv.repeats} repeats exceed this server's limit of "
                                     f"{settings.max_cv_repeats} (HPO_MAX_CV_REPEATS)"))
    if spec.training.max_epochs > settings.max_epochs:
        errors.append(("training.max_epochs", f"{spec.training.max_epochs} epochs exceed this server's limit "
                                              f"of {settings.max_epochs} (HPO_MAX_EPOCHS)"))
    if errors:
        raise SpecError([{"field": field, "message": message} for field, message in errors])


def _int_or_infinity(digits: str) -> int | float:
    """A JSON integer; one too long for Python is beyond every accepted range, so it reads as
    +-infinity, which the field's own check then refuses by name."""
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        return -math.inf if digits.startswith("-") else math.inf
    return int(digits)


def parse_json_body(raw: bytes | str) -> Any:
    """Parse a JSON request body.

    Args:
        raw: the body.

    Returns:
        The parsed value (integers of over ``MAX_INT_DIGITS`` digits as +-infinity).

    Raises:
        HTTPException: 422 (field ``body``) for text that is not JSON or nests too deeply.
    """
    try:
        return json.loads(raw, parse_int=_int_or_infinity)
    except RecursionError:
        raise problem(422, "the body is nested too deeply", field="body") from None
    except json.JSONDecodeError as exc:
        raise problem(422, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", field="body") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise problem(422, f"not valid JSON: {exc}", field="body") from None
