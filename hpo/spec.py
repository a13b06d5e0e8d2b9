"""StudySpec: the one contract shared by the CLI, the HTTP service and the workers.

A spec is data, never code: it is parsed from YAML or JSON, validated by pydantic, and
nothing in it is evaluated or unpickled. Every refusal names the field path and what is
accepted, e.g. ``search_space.lr: low (0.1) must be < high (0.001)``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Task = Literal["classification", "regression", "forecasting"]
Cell = Literal["rnn", "lstm", "gru"]
Metric = Literal["accuracy", "f1_macro", "loss", "rmse", "mae"]

BUILTIN_DATASETS: dict[str, Task] = {
    "digits": "classification",
    "sms_spam": "classification",
    "airline": "forecasting",
}
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "loss"),
    "regression": ("rmse", "mae"),
    "forecasting": ("rmse", "mae"),
}
MAXIMIZED_METRICS = ("accuracy", "f1_macro")
# What a forecasting network learns when the spec does not say: see README, training.forecast_target.
DEFAULT_FORECAST_TARGET = "difference"
MAX_GRID_SIZE = 100_000


class SpecError(ValueError):
    """A spec was refused. ``errors`` holds one ``{"field": path, "message": text}`` each."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("\n".join(f"{e['field']}: {e['message']}" for e in errors))


class _Strict(BaseModel):
    # NaN and infinity are never a setting (JSON's NaN/Infinity, YAML's .inf, a 1e400).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DatasetSpec(_Strict):
    """Where the data comes from: exactly one of ``builtin``, ``path`` or ``id``."""

    builtin: Literal["digits", "sms_spam", "airline"] | None = None
    path: str | None = None
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    format: Literal["npz", "csv", "tsv"] | None = None
    target_column: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    # Forecasting column roles: time orders the rows and is never an input; features are the other inputs.
    time_column: str | None = None
    feature_columns: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, max_length=1000)
    max_length: int = Field(default=64, ge=4, le=1024)

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("builtin", "path", "id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of builtin (digits | sms_spam | airline), path or id"
                + (f"; got {', '.join(given)}" if given else "")
            )
        if self.path is not None and self.format is None:
            suffix = Path(self.path).suffix.lower().lstrip(".")
            if suffix not in ("npz", "csv", "tsv"):
                raise ValueError(
                    f"format: cannot tell the format of {self.path!r}; set format to npz, csv or tsv"
                )
            self.format = suffix
        return self


class ModelSpec(_Strict):
    cell: Cell = "lstm"
    num_layers: int = Field(default=1, ge=1, le=4)
    bidirectional: bool = False
    embedding_dim: int = Field(default=64, ge=4, le=1024)


class ParamSpec(_Strict):
    """One hyperparameter: a range (``low``/``high``/``log``), ``choices``, or a fixed ``value``.

    ``grid`` lists the values the grid sampler visits for a range.
    """

    low: float | None = None
    high: float | None = None
    log: bool | None = None
    choices: list[Any] | None = Field(default=None, min_length=1)
    value: Any = None
    grid: list[Any] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.value is not None:
            if self.choices is not None or self.low is not None or self.high is not None:
                raise ValueError("value fixes the parameter; do not also give low/high or choices")
            return self
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if len({json.dumps(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices must be distinct; got {self.choices}")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices or value)")
        for bound in ("low", "high"):
            if not math.isfinite(getattr(self, bound)):
                raise ValueError(f"{bound} must be a finite number; got {getattr(self, bound)}")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be < high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0; got low ({self.low:g})")
        return self

    @property
    def fixed(self) -> bool:
        return self.value is not None


# name -> (kind, default, allowed bounds). kind: float | int | categorical.
_PARAMS: dict[str, tuple[str, dict[str, Any], tuple[float, float] | tuple[Any, ...]]] = {
    "lr": ("float", {"low": 1e-4, "high": 1e-1, "log": True}, (1e-7, 10.0)),
    "batch_size": ("int", {"choices": [16, 32, 64, 128, 256]}, (1, 65536)),
    "hidden_size": ("int", {"low": 16, "high": 256, "log": True}, (1, 4096)),
    "dropout": ("float", {"low": 0.0, "high": 0.5, "log": False}, (0.0, 0.95)),
    "clip_norm": ("float", {"low": 0.1, "high": 10.0, "log": True}, (1e-4, 1e4)),
    "weight_decay": ("float", {"value": 0.0}, (0.0, 1.0)),
    "cell": ("categorical", {}, ("rnn", "lstm", "gru")),
    "num_layers": ("int", {}, (1, 4)),
    "bidirectional": ("categorical", {}, (False, True)),
    "summary": ("categorical", {}, ("last", "mean", "max", "attention")),
    "frontend": ("categorical", {}, ("none", "conv", "pool")),
    "frontend_stride": ("int", {}, (1, 64)),
    "optimizer": ("categorical", {}, ("adam", "adamw", "rmsprop", "sgd")),
    "lr_schedule": ("categorical", {}, ("none", "cosine", "plateau")),
    "class_weighting": ("categorical", {}, ("none", "balanced")),
}
TUNED_PARAMS = ("lr", "batch_size", "hidden_size", "dropout", "clip_norm")
PARAM_NAMES = tuple(_PARAMS)
# What an optional entry left out of the search space means (as hpo.train builds the trial).
OPTIONAL_PARAM_DEFAULTS = {
    "cell": "model.cell", "num_layers": "model.num_layers", "bidirectional": "model.bidirectional",
    "summary": "last", "frontend": "none; long sequences: fitted", "frontend_stride": "4", "optimizer": "adam",
    "lr_schedule": "none", "class_weighting": "none",
}
# Fields that, left out of a spec, are fitted to the data by the workers (hpo.fitting).
FITTED_FIELDS = (
    "search_space.batch_size", "search_space.frontend", "training.max_epochs", "training.patience", "cv.folds",
    "training.lookback", "pruner.n_warmup_steps",
)


class SearchSpace(_Strict):
    """The searched hyperparameters. The five tuned ones always exist (defaults apply to
    anything left out; a partial entry such as ``lr: {low: 1e-3}`` narrows the default);
    the others are searched only when given, else they keep their default: ``cell``,
    ``num_layers`` and ``bidirectional`` as in ``model``, ``weight_decay`` 0, ``summary``
    ``last`` (the last hidden state; or ``mean``, ``max``, ``attention`` pooling over
    steps), ``frontend`` ``none`` (or a strided ``conv`` / average ``pool`` that shortens
    the sequence ``frontend_stride`` times before the recurrent layer), ``optimizer``
    ``adam`` (or ``adamw``, ``rmsprop``, ``sgd`` with momentum 0.9), ``lr_schedule``
    ``none`` (or ``cosine``, ``plateau``), ``class_weighting`` ``none`` (or ``balanced``)."""

    lr: ParamSpec
    batch_size: ParamSpec
    hidden_size: ParamSpec
    dropout: ParamSpec
    clip_norm: ParamSpec
    weight_decay: ParamSpec
    cell: ParamSpec | None = None
    num_layers: ParamSpec | None = None
    bidirectional: ParamSpec | None = None
    summary: ParamSpec | None = None
    frontend: ParamSpec | None = None
    frontend_stride: ParamSpec | None = None
    optimizer: ParamSpec | None = None
    lr_schedule: ParamSpec | None = None
    class_weighting: ParamSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        for name, (_, default, _) in _PARAMS.items():
            given = filled.get(name)
            if not default:
                if given is not None and not isinstance(given, dict):
                    filled[name] = {"value": given}  # `summary: mean` is shorthand for a fixed value
                continue
            if given is None:
                filled[name] = dict(default)
            elif isinstance(given, dict) and not ({"choices", "value"} & given.keys()):
                range_default = {k: v for k, v in default.items() if k in ("low", "high", "log")}
                filled[name] = {**range_default, **given}
            elif not isinstance(given, dict):
                filled[name] = {"value": given}  # `dropout: 0.1` is shorthand for a fixed value
        return filled

    @model_validator(mode="after")
    def _in_bounds(self) -> SearchSpace:
        errors = []
        if self.frontend_stride is not None and self.frontend is None:
            errors.append({"field": "search_space.frontend_stride",
                           "message": "applies to a frontend; give search_space.frontend too (conv | pool)"})
        for name, param in self.items():
            kind, _, allowed = _PARAMS[name]
            for v in _declared_values(param):
                try:
                    _check_value(name, kind, allowed, v)
                except ValueError as exc:
                    errors.append({"field": f"search_space.{name}", "message": str(exc).split(": ", 1)[1]})
                    break
        if errors:
            raise SpecError(errors)
        return self

    def items(self) -> list[tuple[str, ParamSpec]]:
        return [(n, getattr(self, n)) for n in PARAM_NAMES if getattr(self, n) is not None]

    @staticmethod
    def kind(name: str) -> str:
        return _PARAMS[name][0]

    @staticmethod
    def allowed(name: str) -> tuple[Any, ...]:
        """A parameter's accepted values (categorical) or its accepted ``(low, high)`` bounds."""
        return _PARAMS[name][2]


def _declared_values(param: ParamSpec) -> list[Any]:
    if param.value is not None:
        return [param.value]
    if param.choices is not None:
        return list(param.choices)
    return [param.low, param.high, *(param.grid or [])]


def _check_value(name: str, kind: str, allowed: tuple, v: Any) -> None:
    if kind == "categorical":
        if not any(v == a and type(v) is type(a) for a in allowed):  # 1 is not True
            raise ValueError(f"{name}: {v!r} is not one of {', '.join(map(str, allowed))}")
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name}: {v!r} is not a number")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{name}: {v!r} is not a finite number")
    lo, hi = allowed
    if not (lo <= v <= hi):  # before the integer check: a 400-digit integer has no float
        raise ValueError(f"{name}: {_short(v)} is outside the accepted range [{lo:g}, {hi:g}]")
    if kind == "int" and v != int(v):
        raise ValueError(f"{name}: {v!r} is not an integer")


def _short(v: int | float) -> str:
    """A number for a message: at most 20 characters of it."""
    text = repr(v)
    return text if len(text) <= 20 else f"{text[:8]}...({len(text)} digits)"


# What numpy, scikit-learn and Optuna's samplers accept as a seed.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class SamplerSpec(_Strict):
    name: Literal["tpe", "random", "grid", "cmaes", "qmc", "gp"] = "tpe"
    seed: Seed | None = 0
    n_startup_trials: int | None = Field(default=None, ge=0, le=10_000)
    grid_points: int | None = Field(default=None, ge=1, le=1000)


class PrunerSpec(_Strict):
    name: Literal["none", "median", "hyperband", "successive_halving", "wilcoxon"] = "median"
    n_startup_trials: int = Field(default=5, ge=0, le=100_000)
    n_warmup_steps: int = Field(default=1, ge=0, le=1000)
    min_resource: int = Field(default=1, ge=1, le=1000)
    reduction_factor: int = Field(default=3, ge=2, le=100)
    p_threshold: float = Field(default=0.1, gt=0.0, lt=1.0)


class CVSpec(_Strict):
    """How trials are scored: ``folds``-fold CV, repeated ``repeats`` times with the rows
    shuffled anew each time (``folds x repeats`` fold-runs, each validating on its own
    rows); within each fold-run, ``inner_holdout`` of the training rows (the latest ones for
    time series) decide early stopping and the epoch, and its validation rows are scored once
    with that epoch's weights."""

    folds: int = Field(default=5, ge=2, le=20)
    repeats: int = Field(default=1, ge=1, le=10)
    strategy: Literal["stratified", "kfold", "timeseries"] | None = None
    shuffle: bool = True
    seed: Seed = 0
    inner_holdout: float = Field(default=0.2, ge=0.05, le=0.5)


class TrainingSpec(_Strict):
    max_epochs: int = Field(default=20, ge=1, le=1000)
    patience: int | None = Field(default=3, ge=1, le=1000)
    metric: Metric | None = None
    lookback: int = Field(default=12, ge=1, le=10_000)
    horizon: int = Field(default=1, ge=1, le=1000)
    # Forecasting: the network learns the value (level) or its change from the window's last
    # value (difference, added back when predicting); default difference for forecasting.
    forecast_target: Literal["level", "difference"] | None = None
    seed: Seed = 0


MAX_TIMEOUT_S = 366 * 24 * 3600  # a year: a longer wall-clock budget is a mistake, not a deadline


class BudgetSpec(_Strict):
    n_trials: int | None = Field(default=None, ge=1, le=100_000)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)


DEFAULT_N_TRIALS = 20
MAX_SEEDS = 10  # networks a refit trains and averages, at most
DEFAULT_REFIT_SEEDS = 3


class FinalModelSpec(_Strict):
    """The model a study serves when it ends. The best trial's fold ensemble is served as
    soon as the study ends either way; with ``refit`` (the default) a worker then trains the
    best trial's parameters again on all the data, once per seed (``seeds``, default 3), and
    that refit is served once it is ready (the ensemble until then, or if it fails)."""

    kind: Literal["refit", "ensemble"] = "refit"
    seeds: int | None = Field(default=None, ge=1, le=MAX_SEEDS, strict=True)

    @model_validator(mode="after")
    def _seeds_of_a_refit(self) -> FinalModelSpec:
        if self.kind == "ensemble" and self.seeds is not None:
            raise SpecError([{"field": "final_model.seeds",
                              "message": "applies to kind refit (the ensemble has one network per fold); "
                                         "leave it out or set kind: refit"}])
        if self.kind == "refit" and self.seeds is None:
            self.seeds = DEFAULT_REFIT_SEEDS
        return self


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class StudySpec(_Strict):
    """A whole study: what to tune, on which data, how to score it, and how long to try."""

    # The pattern stays in the JSON schema; the validator below says it in words.
    name: str = Field(json_schema_extra={"pattern": NAME_PATTERN})
    task: Task = "classification"
    dataset: DatasetSpec
    model: ModelSpec = ModelSpec()
    search_space: SearchSpace = Field(default_factory=lambda: SearchSpace.model_validate({}))
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    cv: CVSpec = CVSpec()
    training: TrainingSpec = TrainingSpec()
    budget: BudgetSpec = BudgetSpec()
    final_model: FinalModelSpec = FinalModelSpec()
    enqueue_trials: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)
    fit_to_data: list[Literal[FITTED_FIELDS]] | None = None  # type: ignore[valid-type]

    @field_validator("name")
    @classmethod
    def _name_in_words(cls, name: str) -> str:
        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"{name!r} is not a study name: use 1 to 128 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        return name

    @model_validator(mode="before")
    @classmethod
    def _left_out(cls, data: Any) -> Any:
        """Record which of ``FITTED_FIELDS`` the spec leaves out: the workers fit those to the data."""
        if not isinstance(data, dict) or data.get("fit_to_data") is not None:
            return data
        left_out = []
        for path in FITTED_FIELDS:
            section, name = path.split(".")
            given = data.get(section)
            if not isinstance(given, dict) or name not in given:
                left_out.append(path)
        if "search_space.frontend" in left_out and isinstance(data.get("search_space"), dict) \
                and data["search_space"].get("frontend_stride") is not None:
            left_out.remove("search_space.frontend")
        return {**data, "fit_to_data": left_out}

    @model_validator(mode="after")
    def _coherent(self) -> StudySpec:
        errors: list[tuple[str, str]] = []
        builtin_task = BUILTIN_DATASETS.get(self.dataset.builtin or "")
        if builtin_task and builtin_task != self.task:
            errors.append(("task", f"dataset {self.dataset.builtin} is a {builtin_task} dataset; got task {self.task}"))
        if self.dataset.format == "npz" and self.task == "forecasting":
            errors.append(("dataset.format", "forecasting reads a csv series; got npz"))
        for role in ("time_column", "feature_columns"):
            if self.task != "forecasting" and getattr(self.dataset, role) is not None:
                errors.append((f"dataset.{role}", f"a column role of a forecasting series; {self.task} has none"))
        if self.task != "classification" and self.search_space.class_weighting is not None:
            errors.append(("search_space.class_weighting", f"weights classes; {self.task} has none"))

        strategy = self.cv.strategy or _default_strategy(self.task)
        if self.task == "forecasting" and strategy != "timeseries":
            errors.append(("cv.strategy", f"forecasting needs timeseries (never train on the future); got {strategy}"))
        if self.task != "classification" and strategy == "stratified":
            errors.append(("cv.strategy", f"stratified needs class labels; use kfold or timeseries for {self.task}"))
        self.cv.strategy = strategy
        if self.cv.repeats > 1 and strategy == "timeseries":
            errors.append(("cv.repeats", "time-ordered folds are the same every repeat; repeats apply to stratified "
                                         f"and kfold folds, give 1 for timeseries (got {self.cv.repeats})"))
        elif self.cv.repeats > 1 and not self.cv.shuffle:
            errors.append(("cv.repeats", "each repeat shuffles the rows anew; with cv.shuffle false every repeat "
                                         f"would be the same folds (got {self.cv.repeats}): give 1 or shuffle true"))

        if self.task == "forecasting":
            self.training.forecast_target = self.training.forecast_target or DEFAULT_FORECAST_TARGET
        elif self.training.forecast_target is not None:
            errors.append(("training.forecast_target", f"applies to forecasting; {self.task} has no series to "
                                                       "difference (leave it out)"))

        metric = self.training.metric or METRICS_BY_TASK[self.task][0]
        if metric not in METRICS_BY_TASK[self.task]:
            errors.append(("training.metric", f"{self.task} accepts {' | '.join(METRICS_BY_TASK[self.task])}; got {metric}"))
        self.training.metric = metric

        if self.sampler.name == "grid":
            try:
                size = math.prod(len(v) for v in self.grid().values())
            except ValueError as exc:
                errors.append(tuple(str(exc).split(": ", 1)))  # type: ignore[arg-type]
            else:
                if size > MAX_GRID_SIZE:
                    errors.append(("sampler.grid_points", f"the grid has {size} points; at most {MAX_GRID_SIZE} are accepted"))
                elif self.budget.n_trials is not None and self.budget.n_trials > size:
                    errors.append(("budget.n_trials", f"{self.budget.n_trials} exceeds the grid's {size} points"))
        for i, params in enumerate(self.enqueue_trials):
            for name, v in params.items():
                if name not in PARAM_NAMES:
                    errors.append((f"enqueue_trials.{i}.{name}", f"unknown parameter; accepted: {', '.join(PARAM_NAMES)}"))
                    continue
                kind, _, allowed = _PARAMS[name]
                try:
                    _check_value(name, kind, allowed, v)
                except ValueError as exc:
                    errors.append((f"enqueue_trials.{i}.{name}", str(exc).split(": ", 1)[1]))
        if errors:
            raise SpecError([{"field": f, "message": m} for f, m in errors])
        return self

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.training.metric in MAXIMIZED_METRICS else "minimize"

    @property
    def n_trials(self) -> int:
        """The trial budget: as given, else every grid point for grid search, else 20 (a
        budget of ``timeout_s`` alone is made a cap by :meth:`with_trial_cap` when the study
        is submitted)."""
        if self.budget.n_trials is not None:
            return self.budget.n_trials
        if self.sampler.name == "grid":
            return math.prod(len(v) for v in self.grid().values())
        return DEFAULT_N_TRIALS

    def with_trial_cap(self, max_n_trials: int) -> StudySpec:
        """The spec as its study runs: a wall-clock budget alone (``budget.timeout_s`` without
        ``budget.n_trials``, not a grid) starts trials until its time ends, up to
        ``max_n_trials`` (the server's ``HPO_MAX_N_TRIALS``), written into ``budget.n_trials``
        so that every worker counts to the same number. Any other spec is returned as it is."""
        if self.budget.timeout_s is None or self.budget.n_trials is not None or self.sampler.name == "grid":
            return self
        return self.model_copy(update={"budget": self.budget.model_copy(update={"n_trials": max_n_trials})})

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's values per parameter.

        Raises:
            ValueError: ``"search_space.NAME.grid: ..."`` when a range has neither ``grid``
                values nor ``sampler.grid_points``.
        """
        grid: dict[str, list[Any]] = {}
        points = self.sampler.grid_points
        for name, p in self.search_space.items():
            if p.value is not None:
                grid[name] = [p.value]
            elif p.choices is not None:
                grid[name] = list(p.choices)
            elif p.grid is not None:
                grid[name] = list(p.grid)
            elif points is None:
                raise ValueError(
                    f"search_space.{name}.grid: the grid sampler needs grid values for this range, "
                    "or sampler.grid_points to spread that many points over it"
                )
            else:
                space = np.geomspace if p.log else np.linspace
                values = space(p.low, p.high, points)
                if self.search_space.kind(name) == "int":
                    grid[name] = sorted({int(round(v)) for v in values})
                else:
                    grid[name] = [float(f"{v:.6g}") for v in values]
        return grid


def _default_strategy(task: str) -> str:
    return {"classification": "stratified", "regression": "kfold", "forecasting": "timeseries"}[task]


def _errors_from_validation(exc: ValidationError) -> list[dict[str, str]]:
    errors = []
    for err in exc.errors():
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, SpecError):
            errors.extend(ctx_error.errors)
            continue
        path = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        errors.append({"field": path or "spec", "message": message})
    return errors


def parse_spec(data: Any) -> StudySpec:
    """Validate a spec given as a dict (already parsed from YAML or JSON).

    Raises:
        SpecError: listing every problem with its field path.
    """
    if not isinstance(data, dict):
        raise SpecError([{"field": "spec", "message": f"a spec is a mapping of fields; got {type(data).__name__}"}])
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_errors_from_validation(exc)) from None
    except SpecError:
        raise


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe loader, reading an integer too long for Python (over 4,300 digits) as
    +-infinity: beyond every accepted range, so the field's own check refuses it by name."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int | float:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            return -math.inf if str(node.value).lstrip().startswith("-") else math.inf


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def parse_spec_text(text: str) -> StudySpec:
    """Parse and validate a spec written in YAML or JSON (JSON is valid YAML).

    Raises:
        SpecError: for unparseable text (naming the line) or invalid fields.
    """
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "spec"
        raise SpecError([{"field": where, "message": f"not valid YAML/JSON: {getattr(exc, 'problem', exc)}"}]) from None
    return parse_spec(data)


def load_spec(path: str | Path) -> StudySpec:
    """Read a spec file (YAML or JSON).

    Raises:
        SpecError: when the file cannot be read or the spec is invalid.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([{"field": "spec", "message": f"cannot read {path}: {exc}"}]) from None
    return parse_spec_text(text)
