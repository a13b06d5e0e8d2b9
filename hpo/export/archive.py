"""A fitted model as a file: ``manifest.json`` (spec, params, preprocessing) + safetensors weights.

The archive is a zip of exactly two members. Nothing in it is code: the weights are read
with safetensors (never pickle), the manifest is JSON validated field by field, and the
weights' sha256 recorded in the manifest is checked before they are used, so a truncated,
damaged or altered archive is refused with a ``ValueError`` naming the problem.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from hpo.data.forecast import SeriesScaling
from hpo.data.sequences import SequenceScaling
from hpo.data.text import TextVocabulary
from hpo.export.inputs import PredictInput, prepare
from hpo.model import Architecture, predict_in_chunks

FORMAT = "hpo-model"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"
ARCHIVE_SUFFIX = ".hpo.zip"
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_WEIGHTS_BYTES = 8 * 2**30
Preprocessing = SequenceScaling | TextVocabulary | SeriesScaling
_PREPROCESSING: dict[str, type[Preprocessing]] = {
    c.kind: c for c in (SequenceScaling, TextVocabulary, SeriesScaling)  # type: ignore[misc]
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetInfo(_Strict):
    """How outputs become answers: class names, or ``original = output * std + mean``."""

    class_names: list[str] | None = None
    mean: float | None = None
    std: float | None = Field(default=None, gt=0)


class WeightsInfo(_Strict):
    file: Literal["model.safetensors"] = WEIGHTS_NAME
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Manifest(_Strict):
    """Everything about a fitted model except its weights (``manifest.json``)."""

    format: Literal["hpo-model"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    task: Literal["classification", "regression", "forecasting"]
    spec: dict[str, Any]
    params: dict[str, Any]
    architecture: Architecture
    preprocessing: dict[str, Any]
    target: TargetInfo
    training: dict[str, Any]
    source: dict[str, Any] | None = None
    data_fingerprint: str
    versions: dict[str, str]
    weights: WeightsInfo | None = None  # filled in when the archive is written
    created_at: str


class Model:
    """A fitted network with the preprocessing its training data went through.

    Get one from :func:`load_model` (an archive) or ``hpo.export.fit_model``. Inputs are
    raw: the training-time scaling, vocabulary or windowing is applied here, and outputs
    come back as class labels / probabilities, or values in the target's original units.

    Args:
        manifest: the model's description (see :class:`Manifest`).
        weights: the network's tensors by ``state_dict`` name.
        device: where to run the network.

    Raises:
        ValueError: when the weights do not fit the manifest's architecture.
    """

    def __init__(self, manifest: Manifest, weights: dict[str, torch.Tensor], device: str | torch.device = "cpu"):
        self.manifest = manifest
        self.device = torch.device(device)
        kind = manifest.preprocessing.get("kind")
        if kind not in _PREPROCESSING:
            raise ValueError(f"manifest: preprocessing.kind must be one of {', '.join(_PREPROCESSING)}; got {kind!r}")
        try:
            self.preprocessing: Preprocessing = _PREPROCESSING[kind].from_dict(manifest.preprocessing)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"manifest: preprocessing is incomplete ({type(exc).__name__}: {exc})") from None
        self._check_coherent()
        self.network = manifest.architecture.build()
        try:
            self.network.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[:3]
            raise ValueError(f"the weights do not fit the manifest's architecture: {' '.join(first)}") from None
        self.network.to(self.device).eval()
        self._weights = weights

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def classes(self) -> list[str] | None:
        """Class labels in output order (classification), else None."""
        return self.manifest.target.class_names

    def predict(self, x: Any, lengths: Any = None) -> np.ndarray:
        """Predict for raw inputs.

        Args:
            x: numeric models: sequences ``[n, T, F]`` (``[n, T]`` for one feature), or a
                list of sequences of different lengths when training ones varied;
                text models: a list of strings; forecasting: one series ``[rows, C]``
                (``[rows]`` for one column), of which the last ``lookback`` rows are read.
            lengths: numeric models only: true lengths ``[n]`` of zero-padded ``x``.

        Returns:
            Class labels ``[n]`` (classification); values ``[n]`` (``[n, k]`` for k
            targets) in original units (regression); the next ``horizon`` values
            ``[horizon]`` of the target column (forecasting).

        Raises:
            InputError: (a ``ValueError``) naming what is wrong with the input.
        """
        outputs = self._forward(PredictInput(x, lengths))
        if self.classes is not None:
            return np.array(self.classes)[outputs.argmax(1)]
        target = self.manifest.target
        values = outputs.astype(np.float64) * target.std + target.mean
        if self.task == "forecasting":
            return values[0]
        return values[:, 0] if values.shape[1] == 1 else values

    def predict_proba(self, x: Any, lengths: Any = None) -> np.ndarray:
        """Class probabilities ``[n, n_classes]`` (columns in :attr:`classes` order); see :meth:`predict`.

        Raises:
            ValueError: for a model that does not classify, or a bad input.
        """
        if self.classes is None:
            raise ValueError(f"predict_proba needs a classification model; this one does {self.task}")
        return _softmax(self._forward(PredictInput(x, lengths)))

    def predict_dict(self, data: PredictInput) -> dict[str, Any]:
        """Predictions as JSON-able data: labels and probabilities, or values.

        Raises:
            InputError: naming what is wrong with the input.
        """
        outputs = self._forward(data)
        if self.classes is not None:
            return {
                "task": self.task,
                "n": len(outputs),
                "classes": self.classes,
                "labels": [self.classes[i] for i in outputs.argmax(1)],
                "probabilities": _softmax(outputs).tolist(),
            }
        values = outputs.astype(np.float64) * self.manifest.target.std + self.manifest.target.mean
        if self.task == "forecasting":
            assert isinstance(self.preprocessing, SeriesScaling)
            return {"task": self.task, "target": self.preprocessing.target,
                    "horizon": self.preprocessing.horizon, "predictions": values[0].tolist()}
        predictions = values[:, 0] if values.shape[1] == 1 else values
        return {"task": self.task, "n": len(values), "predictions": predictions.tolist()}

    def save(self, path: str | Path) -> dict[str, Any]:
        """Write the archive (to a temporary file, then renamed into place).

        Returns:
            ``{"bytes": size, "sha256": of the archive file, "weights_sha256": of the weights}``.
        """
        return save_archive(self.manifest, self._weights, path)

    def _forward(self, data: PredictInput) -> np.ndarray:
        """Raw network outputs ``[n, out_dim]`` for raw inputs."""
        x, lengths = prepare(self.preprocessing, data)
        return predict_in_chunks(self.network, x, lengths, self.device).float().cpu().numpy()

    def _check_coherent(self) -> None:
        """Refuse a manifest whose parts contradict each other (e.g. a hand-edited one)."""
        arch, target, pre = self.manifest.architecture, self.manifest.target, self.preprocessing
        problems = []
        if (arch.n_features is None) == (arch.vocab_size is None):
            problems.append("architecture needs exactly one of n_features or vocab_size")
        if isinstance(pre, TextVocabulary) and arch.vocab_size != pre.size:
            problems.append(f"vocab_size {arch.vocab_size} differs from the vocabulary's {pre.size} ids")
        if isinstance(pre, (SequenceScaling, SeriesScaling)):
            n_features = pre.n_features if isinstance(pre, SequenceScaling) else len(pre.columns)
            if arch.n_features != n_features:
                problems.append(f"n_features {arch.n_features} differs from the scaling's {n_features}")
        if self.task == "classification":
            if not target.class_names or len(target.class_names) != arch.out_dim:
                problems.append(f"classification needs {arch.out_dim} class_names in target")
        elif target.mean is None or target.std is None:
            problems.append(f"{self.task} needs target mean and std")
        if (self.task == "forecasting") != isinstance(pre, SeriesScaling):
            problems.append(f"preprocessing {pre.kind} does not fit task {self.task}")
        if isinstance(pre, SeriesScaling) and arch.out_dim != pre.horizon:
            problems.append(f"out_dim {arch.out_dim} differs from horizon {pre.horizon}")
        if problems:
            raise ValueError("manifest: " + "; ".join(problems))


def _softmax(outputs: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(outputs).double(), dim=1).numpy()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def plain_state_dict(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of a network's tensors, names as ``SequenceModel`` has them (a compiled
    wrapper's ``_orig_mod.`` prefix dropped)."""
    network = getattr(network, "_orig_mod", network)
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in network.state_dict().items()}


def save_archive(manifest: Manifest, weights: dict[str, torch.Tensor], path: str | Path) -> dict[str, Any]:
    """Write ``manifest`` and ``weights`` as an archive at ``path`` (temp file + rename).

    Returns:
        ``{"bytes": size, "sha256": of the archive file, "weights_sha256": of the weights}``.
    """
    path = Path(path)
    blob = save_safetensors(weights, metadata={"format": FORMAT})
    manifest = manifest.model_copy(
        update={"weights": WeightsInfo(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=".tmp-", suffix=ARCHIVE_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file, zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST_NAME, json.dumps(manifest.model_dump(mode="json"), indent=2))
            archive.writestr(WEIGHTS_NAME, blob)
        digest = hashlib.sha256(Path(temp_name).read_bytes()).hexdigest()
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return {"bytes": path.stat().st_size, "sha256": digest, "weights_sha256": manifest.weights.sha256}


def read_archive(source: str | Path | bytes) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """The manifest and weights of an archive, every check passed.

    Raises:
        ValueError: naming the problem: not a zip (or truncated), unexpected or missing
            members, an invalid manifest, weights that fail their sha256, unreadable weights.
    """
    where = "archive" if isinstance(source, bytes) else str(source)
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if set(members) != {MANIFEST_NAME, WEIGHTS_NAME}:
                raise ValueError(f"{where}: an hpo model archive holds exactly {MANIFEST_NAME} and {WEIGHTS_NAME}; "
                                 f"found {', '.join(sorted(members)) or 'nothing'}")
            for name, limit in ((MANIFEST_NAME, MAX_MANIFEST_BYTES), (WEIGHTS_NAME, MAX_WEIGHTS_BYTES)):
                if members[name].file_size > limit:
                    raise ValueError(f"{where}: {name} would unpack to {members[name].file_size} bytes; "
                                     f"at most {limit} are accepted")
            manifest_bytes = archive.read(MANIFEST_NAME)
            blob = archive.read(WEIGHTS_NAME)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise ValueError(f"{where}: not a readable hpo model archive (truncated or damaged zip: {exc})") from None
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file") from None
    try:
        manifest = Manifest.model_validate(json.loads(manifest_bytes))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ValueError(f"{where}: {MANIFEST_NAME}: {field}: {first['msg']} "
                         f"({exc.error_count()} problem(s)); is it an hpo model archive of format version "
                         f"{FORMAT_VERSION}?") from None
    if manifest.weights is None:
        raise ValueError(f"{where}: {MANIFEST_NAME} records no weights sha256")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.weights.sha256:
        raise ValueError(f"{where}: {WEIGHTS_NAME} has sha256 {digest[:12]}..., the manifest records "
                         f"{manifest.weights.sha256[:12]}...: the archive was altered or damaged")
    try:
        weights = load_safetensors(blob)
    except (SafetensorError, ValueError) as exc:
        raise ValueError(f"{where}: {WEIGHTS_NAME} is not readable safetensors ({exc})") from None
    return manifest, weights


def load_model(source: str | Path | bytes, device: str | torch.device = "cpu") -> Model:
    """Load a model archive written by ``hpo model fit`` or the service's workers.

    Only JSON and safetensors are read: nothing in the archive is executed or unpickled.

    Args:
        source: the archive's path (or its bytes).
        device: where to run the network.

    Returns:
        The model; call ``.predict(X)`` (and ``.predict_proba(X)`` for classification).

    Raises:
        ValueError: when the archive is missing, truncated, altered or not an hpo model.
    """
    manifest, weights = read_archive(source)
    try:
        return Model(manifest, weights, device)
    except ValueError as exc:
        where = "archive" if isinstance(source, bytes) else str(source)
        raise ValueError(f"{where}: {exc}") from None

