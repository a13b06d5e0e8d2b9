"""The new-study form's choices, read from the spec's own types (``hpo.spec``): a choice the
spec gains appears in the form by itself, and nothing is copied into the page's script."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from hpo.spec import (
    BUILTIN_DATASETS, FITTED_FIELDS, METRICS_BY_TASK, OPTIONAL_PARAM_DEFAULTS, PARAM_NAMES, CVSpec, DatasetSpec,
    FinalModelSpec, ModelSpec, PrunerSpec, SamplerSpec, SearchSpace, StudySpec,
)

# Friendlier names of a few choices; any other choice is shown as the spec spells it.
LABELS = {"tpe": "TPE", "cmaes": "CMA-ES", "qmc": "QMC", "gp": "Gaussian process",
          "refit": "refit on all data when the study ends", "ensemble": "fold ensemble only"}


@dataclass(frozen=True)
class Choice:
    value: str
    label: str
    selected: bool


def literal_values(model: type[BaseModel], field: str) -> list[Any]:
    """The values a ``Literal`` field of a spec model accepts (``None`` left out).

    Raises:
        TypeError: the field is not a ``Literal`` (or an optional one).
    """
    annotation = model.model_fields[field].annotation
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is Literal:
            return list(get_args(candidate))
    raise TypeError(f"{model.__name__}.{field} is not a Literal field")


def _choices(values: list[Any], default: Any, labels: dict[str, str] | None = None) -> list[Choice]:
    labels = labels or {}
    return [Choice(str(v), labels.get(v, LABELS.get(v, str(v))), v == default) for v in values]


def _select(model: type[BaseModel], field: str) -> list[Choice]:
    return _choices(literal_values(model, field), model.model_fields[field].default)


def _search_param(space: SearchSpace, name: str) -> dict[str, Any]:
    """A search-space row of the form, as it starts: the spec's default for the parameter
    (an optional one left out starts at ``default``, which the form does not send), its
    kind and, for a categorical one, the values the spec accepts."""
    kind = SearchSpace.kind(name)
    param = getattr(space, name)
    row: dict[str, Any] = {"name": name, "int": kind == "int", "optional": param is None}
    if kind == "categorical":
        row["values"] = list(SearchSpace.allowed(name))
    if param is None:
        return {**row, "modes": ["default", "choices", "fixed"], "mode": "default",
                "default": OPTIONAL_PARAM_DEFAULTS[name]}
    mode = "choices" if param.choices is not None else "fixed" if param.value is not None else "range"
    if f"search_space.{name}" in FITTED_FIELDS:  # sent, it would stop the workers fitting it to the data
        row.update(modes=["default", "range", "choices", "fixed"], mode="default", default="fitted to the data")
    return {
        "modes": ["range", "choices", "fixed"],
        "mode": mode,
        **row,
        "low": None if param.low is None else f"{param.low:g}",
        "high": None if param.high is None else f"{param.high:g}",
        "log": bool(param.log),
        "choices": None if param.choices is None else ", ".join(map(str, param.choices)),
        "value": None if param.value is None else f"{param.value:g}",
    }


@dataclass(frozen=True)
class FormChoices:
    """``selects``: each select's options by spec field; ``script_data``: what the page's
    script needs (metrics per task, built-in datasets' tasks, every search-space parameter's
    row: the five tuned ones, weight decay, then the optional dimensions)."""

    selects: dict[str, list[Choice]]
    script_data: dict[str, Any]


def form_choices() -> FormChoices:
    builtins = list(BUILTIN_DATASETS)
    space = SearchSpace.model_validate({})
    return FormChoices(
        selects={
            "task": _select(StudySpec, "task"),
            "dataset.builtin": _choices(builtins, builtins[0],
                                        {name: f"{name} ({task})" for name, task in BUILTIN_DATASETS.items()}),
            "dataset.format": _select(DatasetSpec, "format"),
            "model.cell": _select(ModelSpec, "cell"),
            "sampler.name": _select(SamplerSpec, "name"),
            "pruner.name": _select(PrunerSpec, "name"),
            "cv.strategy": _select(CVSpec, "strategy"),
            "final_model.kind": _select(FinalModelSpec, "kind"),
        },
        script_data={
            "metrics_by_task": {task: list(metrics) for task, metrics in METRICS_BY_TASK.items()},
            "builtin_tasks": dict(BUILTIN_DATASETS),
            "search_params": [_search_param(space, name) for name in PARAM_NAMES],
        },
    )
