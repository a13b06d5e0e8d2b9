"""Uploaded datasets on disk: ``DATA_DIR/datasets/<id>/`` holding ``data.<format>`` and ``meta.json``.

An upload is validated by fully loading it before anything is kept: it is written to a
staging directory inside ``DATA_DIR`` and renamed into place only once it loads, so a
refused or failed upload leaves no dataset directory behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hpo.data.base import DataError
from hpo.data.formats import check_options, inspect_file, resolve_format
from hpo.data.readers import DEFAULT_MAX_UNCOMPRESSED

DEFAULT_MAX_BYTES = 100 * 2**20
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_META = "meta.json"
_STAGING = ".staging"  # sibling of datasets/, on the same filesystem so rename is atomic
# A staged entry untouched this long belongs to no upload in progress (validation is bounded).
STAGING_GRACE_S = 60.0
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")


class DatasetInfo(BaseModel):
    """What the store knows about one uploaded dataset (``created_at`` is ISO 8601, UTC); the
    API's answer (:class:`service.schemas.DatasetOut`) extends it."""

    id: str
    name: str
    format: str
    task: str
    options: dict[str, Any]
    size_bytes: int
    summary: dict[str, Any]
    created_at: str


class DatasetStore:
    """Uploaded datasets under ``data_dir``; safe to share between the service and workers.

    Args:
        data_dir: the service's data directory (created on first save).
        max_bytes: largest accepted upload.
        max_uncompressed: most bytes an uploaded NPZ archive may unpack to.
    """

    def __init__(
        self,
        data_dir: str | Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
    ):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "datasets"
        self.max_bytes = max_bytes
        self.max_uncompressed = max_uncompressed

    def save(
        self,
        filename: str,
        content: bytes,
        *,
        task: str,
        format: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> DatasetInfo:
        """Validate an upload by loading it, then keep it under a new random id.

        Args:
            filename: the uploaded file's name (kept as ``name``; its suffix gives the
                format when ``format`` is None).
            content: the file's bytes.
            task: ``classification``, ``regression`` or ``forecasting``.
            format: ``npz``, ``csv`` or ``tsv``.
            options: ``target_column``, ``text_column``, ``label_column``, ``max_length``;
                a series' ``time_column`` and ``feature_columns`` (see ``hpo.data.forecast.parse_series``).

        Returns:
            The stored dataset's info.

        Raises:
            DataError: when the upload is too large, of an unknown format, or refused by
                its loader (the message starts with the file name).
        """
        name = _clean_name(filename)
        if len(content) > self.max_bytes:
            raise DataError(f"{name}: upload is {len(content)} bytes; at most {self.max_bytes} are accepted")
        fmt = resolve_format(name, format, task)
        opts = check_options(options, task)
        staging = self.data_dir / _STAGING
        staging.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="upload-", dir=staging))
        try:
            data_path = work / f"data.{fmt}"
            data_path.write_bytes(content)
            try:
                summary = inspect_file(
                    data_path, format=fmt, task=task, options=opts, max_uncompressed=self.max_uncompressed
                )
            except DataError as exc:
                raise DataError(f"{name}: {exc}", exc.field) from None
            info = DatasetInfo(
                id=self._new_id(),
                name=name,
                format=fmt,
                task=task,
                options=opts,
                size_bytes=len(content),
                summary=summary,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            (work / _META).write_text(json.dumps(info.model_dump(), indent=2), encoding="utf-8")
            os.rename(work, self.root / info.id)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # gone already when the rename succeeded
        return info

    def clear_staging(self, older_than_s: float = STAGING_GRACE_S) -> int:
        """Remove what killed uploads and deletes left in the staging folder (run at start).

        Args:
            older_than_s: keep entries modified more recently (another process's upload in progress).

        Returns:
            How many entries were removed.
        """
        staging = self.data_dir / _STAGING
        if not staging.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in staging.iterdir():
            try:
                if entry.lstat().st_mtime > cutoff:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except FileNotFoundError:
                continue  # removed meanwhile by its own process
            removed += 1
        return removed

    def get(self, dataset_id: str) -> DatasetInfo:
        """The info of one dataset.

        Raises:
            KeyError: when no dataset has this id (or the id is not ``[A-Za-z0-9_-]{1,64}``).
        """
        info = self._read(dataset_id)
        if info is None:
            raise KeyError(f"unknown dataset id {dataset_id!r}")
        return info

    def list(self) -> list[DatasetInfo]:
        """All datasets, oldest first."""
        if not self.root.is_dir():
            return []
        found = (self._read(d.name) for d in self.root.iterdir())
        return sorted((i for i in found if i is not None), key=lambda i: (i.created_at, i.id))

    def delete(self, dataset_id: str) -> None:
        """Remove a dataset (it disappears at once, then its files are removed).

        Raises:
            KeyError: when no dataset has this id.
        """
        self.get(dataset_id)
        staging = self.data_dir / _STAGING
        staging.mkdir(parents=True, exist_ok=True)
        doomed = staging / f"deleted-{dataset_id}-{secrets.token_hex(4)}"
        try:
            os.rename(self.root / dataset_id, doomed)
        except FileNotFoundError:
            raise KeyError(f"unknown dataset id {dataset_id!r}") from None
        shutil.rmtree(doomed, ignore_errors=True)

    def path_of(self, dataset_id: str) -> Path:
        """The stored data file of a dataset.

        Raises:
            KeyError: when no dataset has this id.
        """
        info = self.get(dataset_id)
        return self.root / info.id / f"data.{info.format}"

    def _read(self, dataset_id: str) -> DatasetInfo | None:
        """A dataset's info, or None for an invalid id, a missing or an unreadable entry."""
        if not _ID.match(dataset_id):
            return None
        try:
            meta = json.loads((self.root / dataset_id / _META).read_text(encoding="utf-8"))
            return DatasetInfo(**meta)
        except (OSError, ValueError, TypeError):
            return None

    def _new_id(self) -> str:
        """A short random url-safe id not used yet."""
        while True:
            dataset_id = secrets.token_urlsafe(8)
            if not (self.root / dataset_id).exists():
                return dataset_id


def _clean_name(filename: str) -> str:
    """The base name of an uploaded file, without directories or control characters."""
    base = re.split(r"[\\/]", filename)[-1]
    return _UNSAFE_NAME.sub("", base).strip()[:200] or "upload"
