"""Data layer: built-in and uploaded datasets, validated on load, preprocessed per CV fold.

Uploaded files are data, never code: NPZ archives are read with ``allow_pickle=False``
after their declared sizes and dtypes are checked, and text is parsed, never evaluated.
"""

from hpo.data.base import DataError, Dataset, FoldData, Split
from hpo.data.loader import check_dataset_exists, load_dataset
from hpo.data.store import DatasetInfo, DatasetStore

__all__ = ["DataError", "Dataset", "DatasetInfo", "DatasetStore", "FoldData", "Split", "check_dataset_exists",
           "load_dataset"]
