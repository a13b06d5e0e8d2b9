"""A small Python client of the hpo REST API, for scripts and notebooks.

Example::

    from hpo.client import Client

    client = Client("http://127.0.0.1:8000")
    study = client.submit("studies/digits.yaml")
    client.wait(study["id"], progress=True)
    print(client.best(study["id"])["params"])
    client.wait_model(study["id"])                  # the study's own refit (3 seeds), queued as it ended
    print(client.model(study["id"])["kind"])        # "refit" (the fold ensemble until it was ready)
    client.download_model(study["id"], "model.hpo.zip")  # hpo.load_model("model.hpo.zip")
    client.download_model(study["id"], "ensemble.hpo.zip", kind="ensemble")  # the other kind, by name

Every refusal raises :class:`APIError` carrying the HTTP status and the server's
``[{"field": ..., "message": ...}]`` list.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from hpo.spec import StudySpec

FINISHED_STATES = ("completed", "failed", "cancelled")
MODEL_ACTIVE_STATES = ("queued", "running")
API = "/api/v1"


class APIError(Exception):
    """The server refused a request (or answered something that is not the API's JSON).

    Attributes:
        status: the HTTP status code.
        detail: the server's ``[{"field": ..., "message": ...}]`` list.
    """

    def __init__(self, status: int, detail: list[dict[str, Any]]):
        self.status = status
        self.detail = detail
        lines = [f"{d['field']}: {d['message']}" if d.get("field") else str(d.get("message")) for d in detail]
        super().__init__(f"HTTP {status}: " + "; ".join(lines))

    @classmethod
    def from_response(cls, response: httpx.Response) -> APIError:
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, str):
            detail = [{"field": None, "message": detail}]
        elif not (isinstance(detail, list) and all(isinstance(d, dict) and "message" in d for d in detail)):
            text = response.text.strip()[:200] or response.reason_phrase
            detail = [{"field": None, "message": text}]
        return cls(response.status_code, detail)


class Client:
    """The REST API of one hpo server.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer <api_key>`` when given.
        timeout: seconds to wait for each request.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30):
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.is_error:
            raise APIError.from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # ---- studies ---------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any] | StudySpec | str | Path) -> dict[str, Any]:
        """Submit a study.

        Args:
            spec: a spec as a dict, a :class:`~hpo.spec.StudySpec`, or the path of a YAML or
                JSON file (sent as it is; the server validates it).

        Returns:
            The created study (``id``, ``state``, ``optuna_study_name``, ``links``, ...).

        Raises:
            APIError: 422 naming each invalid field.
            OSError: when the file cannot be read.
        """
        if isinstance(spec, StudySpec):
            return self._request("POST", f"{API}/studies", json=spec.model_dump(mode="json"))
        if isinstance(spec, Mapping):
            return self._request("POST", f"{API}/studies", json=dict(spec))
        text = Path(spec).read_text(encoding="utf-8")
        return self._request("POST", f"{API}/studies", content=text.encode("utf-8"),
                             headers={"Content-Type": "application/yaml"})  # JSON is YAML too

    def get(self, study_id: str) -> dict[str, Any]:
        """A study's spec, state, trial counts, best value and ETA.

        Raises:
            APIError: 404 for an unknown id.
        """
        return self._request("GET", f"{API}/studies/{study_id}")

    def studies(self, **params: Any) -> dict[str, Any]:
        """A page of studies: ``{"items": [...], "total": n}`` (params: ``state``, ``limit``, ``offset``)."""
        return self._request("GET", f"{API}/studies", params=params)

    def wait(self, study_id: str, progress: bool = False, poll_s: float = 1.0,
             timeout_s: float | None = None) -> dict[str, Any]:
        """Wait until a study is completed, failed or cancelled.

        Args:
            study_id: the study.
            progress: draw a live progress bar (trials done / budget, best so far, ETA) on stderr.
            poll_s: seconds between polls.
            timeout_s: give up after this many seconds (``None``: wait for ever).

        Returns:
            The study as it finished.

        Raises:
            TimeoutError: when ``timeout_s`` passed first.
            APIError: for an unknown id.
        """
        from hpo.console import follow

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        final = follow(
            lambda: self.get(study_id),
            keep_going=None if deadline is None else (lambda: time.monotonic() < deadline),
            poll_s=poll_s,
            enabled=progress,
        )
        if final["state"] not in FINISHED_STATES:
            raise TimeoutError(
                f"study {study_id} is still {final['state']} after {timeout_s:g} s "
                f"({final['trials']['complete'] + final['trials']['pruned']}/{final['n_trials']} trials)"
            )
        return final

    def best(self, study_id: str) -> dict[str, Any]:
        """The best trial: ``number``, ``value``, ``params``, ``fold_scores``, ``fold_std``, ``metric``.

        Raises:
            APIError: 409 while no trial has completed.
        """
        return self._request("GET", f"{API}/studies/{study_id}/best")

    def trials(self, study_id: str, **params: Any) -> dict[str, Any]:
        """A page of a study's trials.

        Args:
            study_id: the study.
            **params: ``state`` (running | complete | pruned | failed | waiting), ``sort``
                (number | value | best | duration_s | started_at, ``-`` for descending),
                ``limit``, ``offset``, ``include="intermediate"`` (per-epoch scores).

        Returns:
            ``{"items": [...], "total": n, "limit": l, "offset": o}``.
        """
        return self._request("GET", f"{API}/studies/{study_id}/trials", params=params)

    def trial(self, study_id: str, number: int) -> dict[str, Any]:
        """One trial, with its per-epoch scores."""
        return self._request("GET", f"{API}/studies/{study_id}/trials/{number}")

    def cancel(self, study_id: str) -> dict[str, Any]:
        """Cancel a study (running trials stop at their next epoch); returns the study."""
        return self._request("POST", f"{API}/studies/{study_id}/cancel")

    def resume(self, study_id: str) -> dict[str, Any]:
        """Resume a cancelled study; returns the study."""
        return self._request("POST", f"{API}/studies/{study_id}/resume")

    def delete(self, study_id: str) -> None:
        """Delete a study and all its trials."""
        self._request("DELETE", f"{API}/studies/{study_id}")

    # ---- datasets --------------------------------------------------------------------

    def upload_dataset(self, path: str | Path, task: str, **options: Any) -> dict[str, Any]:
        """Upload a dataset file (streamed, not read into memory).

        Args:
            path: an ``.npz``, ``.csv`` or ``.tsv`` file.
            task: ``classification``, ``regression`` or ``forecasting``.
            **options: ``format``, ``target_column``, ``text_column``, ``label_column``, ``max_length``;
                for a series ``time_column`` and ``feature_columns`` (a list of names).

        Returns:
            The stored dataset (``id`` to put in a spec as ``dataset: {id: ...}``, ``summary``, ...).

        Raises:
            APIError: 422 with the reason a file was refused, 413 when it is too large.
        """
        path = Path(path)
        form = {"task": task, **{k: ",".join(v) if isinstance(v, (list, tuple)) else str(v)
                                 for k, v in options.items() if v is not None}}
        with path.open("rb") as file:
            return self._request("POST", f"{API}/datasets", data=form, files={"file": (path.name, file)})

    def datasets(self, **params: Any) -> dict[str, Any]:
        """A page of uploaded datasets."""
        return self._request("GET", f"{API}/datasets", params=params)

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        """One uploaded dataset."""
        return self._request("GET", f"{API}/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str, force: bool = False) -> None:
        """Delete an uploaded dataset.

        Args:
            dataset_id: the dataset's id.
            force: delete it although finished studies still need it for a model.

        Raises:
            APIError: 409 naming the studies while an unfinished study reads it, or (without
                ``force``) while a finished one still needs it for a model.
        """
        self._request("DELETE", f"{API}/datasets/{dataset_id}", params={"force": "true"} if force else None)

    # ---- the final model -------------------------------------------------------------

    def fit_model(self, study_id: str, trial_number: int | None = None, holdout: float = 0.0,
                  seeds: int = 1) -> dict[str, Any]:
        """Queue a refit of the best trial's parameters on all the study's data, once per
        seed (averaged); a worker runs it, and once it is ready the study serves it (the
        fold ensemble until then; follow it with :meth:`model` or :meth:`wait_model`).

        Args:
            study_id: the study.
            trial_number: fit this complete trial instead of the best one.
            holdout: share of rows held out and scored each epoch (0 to 0.5; 0: train on every row).
            seeds: networks trained and averaged (1 to 10).

        Returns:
            The model's state (see :meth:`model`): ``refit`` is the queued job, with the
            trial number and CV score it comes from.

        Raises:
            APIError: 409 while a fit is queued or running, or no trial has completed; 422
                naming ``trial_number``, ``holdout`` or ``seeds``.
        """
        body: dict[str, Any] = {"kind": "refit", "holdout": holdout, "seeds": seeds}
        if trial_number is not None:
            body["trial_number"] = trial_number
        return self._request("POST", f"{API}/studies/{study_id}/model", json=body)

    def model(self, study_id: str) -> dict[str, Any]:
        """The model the study serves and its refit: ``state`` (``ready`` while a model is
        served; else the refit's: none | queued | running | failed), ``kind`` (ensemble |
        refit: the ensemble is served until a refit is ready), ``learned`` and ``model``
        (parameters, epochs, CV score, data fingerprint, versions, the learning check);
        ``refit`` (its ``state``, ``epoch`` / ``epochs`` while it trains, ``reason`` when it
        failed, ``auto`` when the study queued it as it ended); ``archives``: the kinds that
        can be downloaded or predicted with by name."""
        return self._request("GET", f"{API}/studies/{study_id}/model")

    def wait_model(self, study_id: str, progress: bool = False, poll_s: float = 2.0,
                   timeout_s: float | None = None) -> dict[str, Any]:
        """Wait until no fit is pending: the refit is ready or failed (or there is none: never
        queued, or cancelled), and so is the model served.

        Args:
            study_id: the study.
            progress: write "epoch 3/10" lines on stderr as the fit goes.
            poll_s: seconds between polls.
            timeout_s: give up after this many seconds (``None``: wait for ever).

        Returns:
            The model's state as the fit ended; check ``kind`` (what is served) and
            ``refit`` (a failed refit says why in ``reason``; the ensemble is served then).

        Raises:
            TimeoutError: when ``timeout_s`` passed first.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        shown = None
        while True:
            status = self.model(study_id)
            refit = status.get("refit") or {}
            if status["state"] not in MODEL_ACTIVE_STATES and refit.get("state") not in MODEL_ACTIVE_STATES:
                return status
            if progress and refit.get("epochs") and refit.get("epoch") != shown:
                shown = refit.get("epoch")
                print(f"epoch {shown}/{refit['epochs']}", file=sys.stderr)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the refit of study {study_id} is still {refit.get('state', status['state'])} "
                                   f"after {timeout_s:g} s")
            time.sleep(poll_s)

    def download_model(self, study_id: str, path: str | Path | None = None, kind: str | None = None) -> Path:
        """Download the study's model archive (open it with ``hpo.load_model``).

        Args:
            study_id: the study.
            path: the file to write, or a folder to write it into under the server's name
                for it (``<study>.hpo.zip``); ``None``: that name in the current folder.
            kind: ``ensemble`` or ``refit`` (while it is ready); ``None``: the model served.

        Returns:
            The file written (a failed download leaves no file behind).

        Raises:
            APIError: 409 until the model (of that kind) is ready.
        """
        params = {"kind": kind} if kind else None
        with self.http.stream("GET", f"{API}/studies/{study_id}/model/download", params=params) as response:
            if response.is_error:
                response.read()
                raise APIError.from_response(response)
            target = Path(path) if path is not None else Path()
            if target.is_dir():
                target /= _attachment_name(response) or f"{study_id}.hpo.zip"
            partial = target.with_name(f".{target.name}.partial")
            try:
                with partial.open("wb") as file:
                    for chunk in response.iter_bytes():
                        file.write(chunk)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        return target

    def predict(self, study_id: str, inputs: Mapping[str, Any], kind: str | None = None) -> dict[str, Any]:
        """Predict for new data with the model the study serves, or with its ``kind``
        (``ensemble`` or ``refit``, while it is ready; the server applies the training-time
        preprocessing).

        Args:
            study_id: the study.
            inputs: ``{"x": [[[...]]]}`` (numeric sequences), ``{"texts": [...]}`` (text)
                or ``{"series": [[...]]}`` (forecasting: the next ``horizon`` values after
                the series; with ``"rolling": True``, a forecast from every window of it);
                NumPy arrays are sent as lists.

        Returns:
            ``labels`` (typed as the training labels were) and ``probabilities`` with
            ``classes`` (classification), or ``predictions`` in the target's units (rolling:
            one list per window, ``positions[i]`` the first row ``predictions[i]``
            forecasts); ``kind``.

        Raises:
            APIError: 409 until the model is ready; 422 naming the input that does not fit.
        """
        body = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in inputs.items()}
        return self._request("POST", f"{API}/studies/{study_id}/predict", json=body,
                             params={"kind": kind} if kind else None)

    def delete_model(self, study_id: str, kind: str | None = None) -> None:
        """Cancel the study's queued or running refit (a running one stops at the end of its
        epoch), or delete its ready or failed one (the fold ensemble, if kept, is served
        again); without a refit, or with ``kind="ensemble"``, delete the ensemble.

        Raises:
            APIError: 404 when the study has no model (of that kind).
        """
        self._request("DELETE", f"{API}/studies/{study_id}/model", params={"kind": kind} if kind else None)


def _attachment_name(response: httpx.Response) -> str | None:
    """The file name a ``Content-Disposition`` header suggests (a plain name, no folders)."""
    name = response.headers.get("content-disposition", "").partition("filename=")[2].strip().strip('"')
    name = Path(name).name
    return name if name and not name.startswith(".") else None
