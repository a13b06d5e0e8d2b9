"""hpo: hyperparameter optimization of recurrent networks (``hpo.load_model`` reads a fitted model)."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "load_model":  # lazy: importing hpo must not import torch
        from hpo.export import load_model

        return load_model
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
