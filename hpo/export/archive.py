"""A fitted model as a file: ``manifest.json`` (spec, params, members) + safetensors weights.

A model is one or more networks (members) whose answers are averaged: the best trial's
fold models (``kind: ensemble``, each member with its fold's preprocessing) or networks
refitted on all the data with different seeds (``kind: refit``). The archive is a zip of
exactly two files. Nothing in it is code: the weights are read
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

from hpo.data.base import DataError
from hpo.data.forecast import SeriesScaling
from hpo.data.sequences import SequenceScaling
from hpo.data.text import TextVocabulary
from hpo.export.inputs import InputError, PredictInput, check_rolling, input_field, prepare
from hpo.model import Architecture, predict_in_chunks

FORMAT = "hpo-model"
# Version 3 added a series' forecast_target (difference models); a version-2 archive reads as before.
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"
ARCHIVE_SUFFIX = ".hpo.zip"
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_WEIGHTS_BYTES = 8 * 2**30
MAX_MEMBERS = 64
Preprocessing = SequenceScaling | TextVocabulary | SeriesScaling
_PREPROCESSING: dict[str, type[Preprocessing]] = {
    c.kind: c for c in (SequenceScaling, TextVocabulary, SeriesScaling)  # type: ignore[misc]
}
ModelKind = Literal["ensemble", "refit"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetScale(_Strict):
    """How a member's outputs become values: ``original = output * std + mean``."""

    mean: float
    std: float = Field(gt=0)


class MemberInfo(_Strict):
    """One network of the model, with the preprocessing its training rows went through.

    An ensemble's members are the best trial's fold models (each fitted, scaler or
    vocabulary included, on its fold's training part); a refit's are one network per seed,
    all trained on every row.
    """

    architecture: Architecture
    preprocessing: dict[str, Any]
    target: TargetScale | None = None
    seed: int
    fold: int | None = Field(default=None, ge=0, description="The CV fold it was trained on (ensembles).")
    epochs: int | None = Field(default=None, ge=1)


class LearningCheck(_Strict):
    """Whether the model beat the trivial answer on its own training rows.

    ``score`` and ``baseline`` are the members' mean accuracy (classification; baseline:
    always the majority class) or RMSE in the target's units (baseline: the training mean
    for regression, the last observed value for forecasting)."""

    learned: bool
    metric: Literal["accuracy", "rmse"]
    score: float
    baseline: float
    baseline_name: Literal["majority class", "training mean", "persistence"]
    rows: int = Field(ge=0)


class WeightsInfo(_Strict):
    file: Literal["model.safetensors"] = WEIGHTS_NAME
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Manifest(_Strict):
    """Everything about a fitted model except its weights (``manifest.json``).

    Member ``i``'s tensors are stored as ``members.<i>.<state_dict name>``.
    """

    format: Literal["hpo-model"] = FORMAT
    format_version: Literal[2, 3] = FORMAT_VERSION
    kind: ModelKind
    task: Literal["classification", "regression", "forecasting"]
    spec: dict[str, Any]
    params: dict[str, Any]
    classes: list[int] | list[str] | None = Field(
        default=None, description="Class labels in output order, with the type the training labels had.")
    members: list[MemberInfo] = Field(min_length=1, max_length=MAX_MEMBERS)
    training: dict[str, Any]
    learning: LearningCheck | None = None
    source: dict[str, Any] | None = None
    data_fingerprint: str
    versions: dict[str, str]
    weights: WeightsInfo | None = None  # filled in when the archive is written
    created_at: str


class _Member:
    """A member ready to predict: its network, preprocessing and target scale."""

    def __init__(self, info: MemberInfo, weights: dict[str, torch.Tensor], device: torch.device, where: str):
        kind = info.preprocessing.get("kind")
        if kind not in _PREPROCESSING:
            raise ValueError(f"{where}.preprocessing.kind must be one of {', '.join(_PREPROCESSING)}; got {kind!r}")
        try:
            self.preprocessing: Preprocessing = _PREPROCESSING[kind].from_dict(info.preprocessing)
        except (KeyError, TypeError, DataError) as exc:
            raise ValueError(f"{where}.preprocessing is incomplete ({type(exc).__name__}: {exc})") from None
        self.target = info.target
        self.network = info.architecture.build()
        try:
            self.network.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[:3]
            raise ValueError(f"{where}: the weights do not fit the manifest's architecture: "
                             f"{' '.join(first)}") from None
        self.network.to(device).eval()

    @torch.inference_mode()
    def answer(self, data: PredictInput) -> np.ndarray:
        """Class probabilities ``[n, C]``, or values ``[n, out_dim]`` in the target's units
        (a difference forecast added to its window's last value), for raw inputs."""
        prepared = prepare(self.preprocessing, data)
        outputs = predict_in_chunks(self.network, prepared.x, prepared.lengths).float().cpu().numpy()
        if self.target is None:
            return _softmax(outputs)
        values = outputs.astype(np.float64) * self.target.std + self.target.mean
        return values if prepared.base is None else values + prepared.base[:, None]


class Model:
    """A fitted model: one or more networks with the preprocessing their training data went through.

    Get one from :func:`load_model` (an archive) or ``hpo.export.fit_model``. Inputs are
    raw: each member applies its own training-time scaling, vocabulary or windowing, and
    the members' answers are averaged (class probabilities, or values in the target's
    original units). ``kind`` says whether the members are the best trial's fold models
    (``ensemble``) or networks refitted on every row with different seeds (``refit``).

    Args:
        manifest: the model's description (see :class:`Manifest`).
        weights: the members' tensors, named ``members.<i>.<state_dict name>``.
        device: where to run the networks.

    Raises:
        ValueError: when the weights do not fit the manifest, or its parts contradict each other.
    """

    def __init__(self, manifest: Manifest, weights: dict[str, torch.Tensor], device: str | torch.device = "cpu"):
        self.manifest = manifest
        self.device = torch.device(device)
        per_member: list[dict[str, torch.Tensor]] = [{} for _ in manifest.members]
        for name, tensor in weights.items():
            index, _, rest = name.removeprefix("members.").partition(".")
            if not name.startswith("members.") or not index.isdigit() or int(index) >= len(per_member) or not rest:
                raise ValueError(f"weights: unexpected tensor {name!r}; the manifest lists "
                                 f"{len(per_member)} member(s), stored as members.<i>.<name>")
            per_member[int(index)][rest] = tensor
        self.members = [_Member(info, per_member[i], self.device, f"manifest: members.{i}")
                        for i, info in enumerate(manifest.members)]
        self._check_coherent()
        self._weights = weights

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def kind(self) -> str:
        """``ensemble`` (the best trial's fold models) or ``refit`` (refitted on every row)."""
        return self.manifest.kind

    @property
    def classes(self) -> list[int] | list[str] | None:
        """Class labels in output order (classification), else None."""
        return self.manifest.classes

    @property
    def preprocessing(self) -> Preprocessing:
        """What the model reads (every member reads the same fields and shapes)."""
        return self.members[0].preprocessing

    def predict(self, x: Any, lengths: Any = None, *, rolling: bool = False) -> np.ndarray:
        """Predict for raw inputs.

        Args:
            x: numeric models: sequences ``[n, T, F]`` (``[n, T]`` for one feature), or a
                list of sequences of different lengths when training ones varied;
                text models: a list of strings; forecasting: one series ``[rows, C]``
                (``[rows]`` for one column), of which the last ``lookback`` rows are read.
            lengths: numeric models only: true lengths ``[n]`` of zero-padded ``x``;
                required for zero-padded sequences when training ones varied in length.
            rolling: forecasting only: forecast from every window of the series, each
                from the true rows before it.

        Returns:
            Class labels ``[n]`` (as the training labels were typed); values ``[n]``
            (``[n, k]`` for k targets) in original units (regression); the next
            ``horizon`` values ``[horizon]`` of the target column (forecasting), or with
            ``rolling`` ``[rows - lookback + 1, horizon]``: row ``i`` forecasts rows
            ``lookback + i`` onwards from the rows before them (the last one forecasts
            past the series' end, as without ``rolling``).

        Raises:
            InputError: (a ``ValueError``) naming what is wrong with the input.
        """
        answer = self._answer(PredictInput(x, lengths, check_rolling(rolling)))
        if self.classes is not None:
            return np.array(self.classes)[answer.argmax(1)]
        if self.task == "forecasting":
            return answer if rolling else answer[0]
        return answer[:, 0] if answer.shape[1] == 1 else answer

    def predict_proba(self, x: Any, lengths: Any = None) -> np.ndarray:
        """Class probabilities ``[n, n_classes]`` (columns in :attr:`classes` order; the
        members' mean); see :meth:`predict`.

        Raises:
            ValueError: for a model that does not classify, or a bad input.
        """
        if self.classes is None:
            raise ValueError(f"predict_proba needs a classification model; this one does {self.task}")
        return self._answer(PredictInput(x, lengths))

    def predict_dict(self, data: PredictInput) -> dict[str, Any]:
        """Predictions as JSON-able data: labels and probabilities, or values.

        Raises:
            InputError: naming what is wrong with the input.
        """
        answer = self._answer(data)
        if not np.isfinite(answer).all():  # e.g. values near float32's limit, far beyond the training data's
            raise InputError(input_field(self.preprocessing), "the model's outputs overflow for these values; send "
                             "finite values on the scale of the training data")
        if self.classes is not None:
            return {
                "task": self.task,
                "kind": self.kind,
                "n": len(answer),
                "classes": self.classes,
                "labels": [self.classes[i] for i in answer.argmax(1)],
                "probabilities": answer.tolist(),
            }
        if self.task == "forecasting":
            scaling = self.preprocessing
            assert isinstance(scaling, SeriesScaling)
            forecast = {"task": self.task, "kind": self.kind, "target": scaling.target, "horizon": scaling.horizon}
            if not data.rolling:
                return {**forecast, "predictions": answer[0].tolist()}
            # Window i reads rows [i, i + lookback): its forecast starts at row lookback + i.
            return {**forecast, "rolling": True, "n": len(answer),
                    "positions": list(range(scaling.lookback, scaling.lookback + len(answer))),
                    "predictions": answer.tolist()}
        predictions = answer[:, 0] if answer.shape[1] == 1 else answer
        return {"task": self.task, "kind": self.kind, "n": len(answer), "predictions": predictions.tolist()}

    def to_bytes(self) -> tuple[bytes, Manifest]:
        """The archive as bytes, and the manifest it holds (weights' sha256 filled in)."""
        return archive_bytes(self.manifest, self._weights)

    def save(self, path: str | Path) -> dict[str, Any]:
        """Write the archive (to a temporary file, then renamed into place).

        Returns:
            ``{"bytes": size, "sha256": of the archive file, "weights_sha256": of the weights}``.
        """
        blob, manifest = self.to_bytes()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=".tmp-", suffix=ARCHIVE_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(blob)
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        assert manifest.weights is not None
        return {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                "weights_sha256": manifest.weights.sha256}

    def _answer(self, data: PredictInput) -> np.ndarray:
        """The members' mean answer: probabilities ``[n, C]``, or values ``[n, out_dim]`` in original units."""
        return np.mean([member.answer(data) for member in self.members], axis=0)

    def _check_coherent(self) -> None:
        """Refuse a manifest whose parts contradict each other (e.g. a hand-edited one)."""
        problems = []
        first = self.members[0].preprocessing
        for i, (info, member) in enumerate(zip(self.manifest.members, self.members, strict=True)):
            arch, pre, where = info.architecture, member.preprocessing, f"members.{i}"
            if (arch.n_features is None) == (arch.vocab_size is None):
                problems.append(f"{where}: architecture needs exactly one of n_features or vocab_size")
            if isinstance(pre, TextVocabulary) and arch.vocab_size != pre.size:
                problems.append(f"{where}: vocab_size {arch.vocab_size} differs from the vocabulary's {pre.size} ids")
            if isinstance(pre, (SequenceScaling, SeriesScaling)):
                n_features = pre.n_features if isinstance(pre, SequenceScaling) else len(pre.columns)
                if arch.n_features != n_features:
                    problems.append(f"{where}: n_features {arch.n_features} differs from the scaling's {n_features}")
            if self.task == "classification":
                if not self.classes or len(self.classes) != arch.out_dim:
                    problems.append(f"{where}: classification needs {arch.out_dim} classes")
            elif info.target is None:
                problems.append(f"{where}: {self.task} needs a target mean and std")
            if (self.task == "forecasting") != isinstance(pre, SeriesScaling):
                problems.append(f"{where}: preprocessing {pre.kind} does not fit task {self.task}")
            if isinstance(pre, SeriesScaling) and arch.out_dim != pre.horizon:
                problems.append(f"{where}: out_dim {arch.out_dim} differs from horizon {pre.horizon}")
            if _reads(pre) != _reads(first):
                problems.append(f"{where}: reads {_reads(pre)}, members.0 reads {_reads(first)}")
        if problems:
            raise ValueError("manifest: " + "; ".join(problems))


def _reads(preprocessing: Preprocessing) -> tuple[Any, ...]:
    """What a member accepts as input (every member of a model must accept the same)."""
    if isinstance(preprocessing, SequenceScaling):
        return ("numeric", preprocessing.n_features, preprocessing.steps)
    if isinstance(preprocessing, SeriesScaling):
        return ("series", tuple(preprocessing.columns), preprocessing.target, preprocessing.lookback,
                preprocessing.horizon)
    return ("text",)


def _softmax(outputs: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(outputs).double(), dim=1).numpy()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def archive_bytes(manifest: Manifest, weights: dict[str, torch.Tensor]) -> tuple[bytes, Manifest]:
    """``manifest`` and ``weights`` as archive bytes (a zip of the two members).

    The weights are stored, not deflated, as ``torch.save`` stores its tensors: float
    weights shrink by a tenth at most, and deflating them took longer than anything else in
    keeping a trial's fold ensemble but its learning check (0.35 s of CPU for 5 MB).

    Returns:
        ``(archive bytes, the manifest as written: the weights' sha256 and size filled in)``.
    """
    blob = save_safetensors(weights, metadata={"format": FORMAT})
    manifest = manifest.model_copy(
        update={"weights": WeightsInfo(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_NAME, json.dumps(manifest.model_dump(mode="json"), indent=2))
        archive.writestr(WEIGHTS_NAME, blob, compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue(), manifest


def member_weights(networks: list[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The networks' tensors as an archive stores them: ``members.<i>.<name>`` (CPU copies;
    a compiled wrapper's ``_orig_mod.`` prefix dropped)."""
    weights = {}
    for i, network in enumerate(networks):
        network = getattr(network, "_orig_mod", network)
        for name, tensor in network.state_dict().items():
            weights[f"members.{i}.{name}"] = tensor.detach().to("cpu", copy=True).contiguous()
    return weights


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
                         f"{' or '.join(map(str, READABLE_VERSIONS))}?") from None
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

