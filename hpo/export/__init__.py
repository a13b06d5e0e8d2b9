"""From best parameters to a model: the final model, its archive, prediction.

- ``fit.py``: a model from the best trial's fold networks (``ensemble_model``), or from
  the configuration trained again on all the data, once per seed (``fit_model``,
  ``fit_study_model``).
- ``ensemble.py``: the workers keep the best trial's fold models as trials complete.
- ``archive.py``: the ``.hpo.zip`` archive (``manifest.json`` + safetensors weights) and
  ``Model`` / ``load_model``, which predict from raw inputs.
- ``inputs.py``: new data (arrays, JSON bodies, uploaded files) checked and preprocessed.
- ``store.py``: the model tables (archives, refit jobs) beside Optuna's.
- ``jobs.py``: what a study serves; refits as jobs the workers run (``queue_final_refit``
  when a study ends, ``request_model``, ``delete_model``, ``run_pending_model_jobs``).
- ``commands.py``: ``hpo model fit | status | download | predict``.

Names are imported on first use, so the command line can register its commands without
loading PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.export.archive import Manifest, Model, load_model
    from hpo.export.fit import ensemble_model, fit_model, fit_study_model
    from hpo.export.inputs import InputError, PredictInput, inputs_from_file, inputs_from_json
    from hpo.export.jobs import (
        ModelJobConflict, claim_job, delete_model, model_archive, model_job, model_status, models_of,
        queue_final_refit, remove_models, request_model, run_pending_model_jobs,
    )

_HOMES = {
    "archive": ("Manifest", "Model", "load_model"),
    "fit": ("ensemble_model", "fit_model", "fit_study_model"),
    "inputs": ("InputError", "PredictInput", "inputs_from_file", "inputs_from_json"),
    "jobs": ("ModelJobConflict", "claim_job", "delete_model", "model_archive", "model_job", "model_status",
             "models_of", "queue_final_refit", "remove_models", "request_model", "run_pending_model_jobs"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'hpo.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hpo.export.{_MODULE_OF[name]}"), name)
