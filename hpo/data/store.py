"""Uploaded datasets in the database: a row in ``hpo_datasets`` (what the file is) and its bytes
in ``hpo_dataset_chunks`` (rows of at most :data:`CHUNK_BYTES`, in order), so that a worker
anywhere needs nothing but the database URL.

The local data folder is only a cache and a staging area:

- ``DATA_DIR/cache/<sha256>``: a file fetched from the database (or kept from its upload),
  named by the SHA-256 of its bytes and checked against it before each use.
- ``DATA_DIR/.staging/``: an upload being validated, a fetch being written. A finished file
  is renamed into the cache (one atomic rename, on the same filesystem), so two processes
  fetching the same file at once each write their own and the cache never holds half a file.

Bytes are copied in chunks both ways (upload: request -> staging file -> rows; fetch: rows
-> staging file), so memory stays flat whatever the file's size; parsing the file (to
validate an upload, or to train on it) is what takes memory in proportion to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import Session

from hpo.data.base import DataError
from hpo.data.formats import check_options, inspect_file, resolve_format
from hpo.data.readers import DEFAULT_MAX_UNCOMPRESSED
from hpo.db.models import DatasetRecord, dataset_chunks
from hpo.jsonable import finite

DEFAULT_MAX_BYTES = 100 * 2**20
CHUNK_BYTES = 2**20  # one row of hpo_dataset_chunks
_FETCH_BUFFER_CHUNKS = 2  # rows the driver holds at once while a file is fetched
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CACHE = "cache"
_STAGING = ".staging"  # sibling of cache/, on the same filesystem so rename is atomic
_OLD_LAYOUT = "datasets"  # DATA_DIR/datasets/<id>/{meta.json,data.<format>}: before the bytes moved
# A staged entry untouched this long belongs to no upload or fetch in progress (each writes steadily).
STAGING_GRACE_S = 60.0
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")
_DATASETS = DatasetRecord.__table__


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
    """Uploaded datasets in the database at ``engine``, cached under ``data_dir``; safe to share
    between the service and any number of workers, on any machines.

    Args:
        engine: the database (its ``hpo_*`` tables migrated: ``hpo.db.upgrade``).
        data_dir: this machine's cache and staging folder (created on first use).
        max_bytes: largest accepted upload.
        max_uncompressed: most bytes an uploaded NPZ archive may unpack to.
    """

    def __init__(
        self,
        engine: sa.Engine,
        data_dir: str | Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
    ):
        self.engine = engine
        self.data_dir = Path(data_dir)
        self.cache = self.data_dir / _CACHE
        self.staging = self.data_dir / _STAGING
        self.max_bytes = max_bytes
        self.max_uncompressed = max_uncompressed

    def save(
        self,
        filename: str,
        content: bytes | IO[bytes],
        *,
        task: str,
        format: str | None = None,
        options: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> DatasetInfo:
        """Validate an upload by loading it, then keep it (row and bytes, one transaction)
        under a new random id; a refused or failed upload keeps nothing.

        Args:
            filename: the uploaded file's name (kept as ``name``; its suffix gives the
                format when ``format`` is None).
            content: the file's bytes, or a binary file to read them from (read in chunks).
            task: ``classification``, ``regression`` or ``forecasting``.
            format: ``npz``, ``csv`` or ``tsv``.
            options: ``target_column``, ``text_column``, ``label_column``, ``max_length``;
                a series' ``time_column`` and ``feature_columns`` (see ``hpo.data.forecast.parse_series``).
            owner: recorded as the dataset's owner (the API key's name).

        Returns:
            The stored dataset's info.

        Raises:
            DataError: when the upload is too large, of an unknown format, or refused by
                its loader (the message starts with the file name).
        """
        name = _clean_name(filename)
        fmt = resolve_format(name, format, task)
        opts = check_options(options, task)
        source = io.BytesIO(content) if isinstance(content, bytes) else content  # shares the bytes, no copy
        staged = self._staged_file("upload-")
        try:
            with staged.open("wb") as out:
                size, sha256 = _copy(source, out, limit=self.max_bytes, name=name)
            try:
                summary = inspect_file(
                    staged, format=fmt, task=task, options=opts, max_uncompressed=self.max_uncompressed
                )
            except DataError as exc:
                raise DataError(f"{name}: {exc}", exc.field) from None
            record = DatasetRecord(
                id=self._new_id(), name=name, format=fmt, task=task, options=opts, size_bytes=size,
                summary=finite(summary), owner=owner, created_at=datetime.now(UTC), sha256=sha256,
            )
            info = _info(record)
            with Session(self.engine) as session, session.begin():
                session.add(record)
                session.flush()
                _write_chunks(session.connection(), record.id, staged)
            with contextlib.suppress(OSError):  # stored; a copy in the cache only saves a fetch
                self._keep(staged, sha256)
        finally:
            staged.unlink(missing_ok=True)  # gone already when it was kept in the cache
        return info

    def get(self, dataset_id: str) -> DatasetInfo:
        """The info of one dataset.

        Raises:
            KeyError: when no dataset has this id (or the id is not ``[A-Za-z0-9_-]{1,64}``).
        """
        return _info(self._record(dataset_id))

    def list(self) -> list[DatasetInfo]:
        """All datasets, oldest first."""
        with Session(self.engine) as session:
            records = session.scalars(sa.select(DatasetRecord).order_by(DatasetRecord.created_at, DatasetRecord.id))
            return [_info(r) for r in records]

    def delete(self, dataset_id: str) -> None:
        """Remove a dataset: its row and its bytes in one transaction, then this machine's cached copy.

        Raises:
            KeyError: when no dataset has this id.
        """
        with self.engine.begin() as connection:
            sha256 = self.delete_rows(connection, dataset_id)
        self.forget(sha256)

    def delete_rows(self, connection: sa.Connection, dataset_id: str) -> str | None:
        """Delete a dataset's row and bytes in the caller's transaction (it commits).

        Returns:
            The deleted bytes' SHA-256 (for :meth:`forget`, once committed).

        Raises:
            KeyError: when no dataset has this id.
        """
        found = connection.execute(
            sa.delete(_DATASETS).where(_DATASETS.c.id == dataset_id).returning(_DATASETS.c.sha256)
        ).first() if _ID.match(dataset_id) else None
        if found is None:
            raise KeyError(f"unknown dataset id {dataset_id!r}")
        connection.execute(sa.delete(dataset_chunks).where(dataset_chunks.c.dataset_id == dataset_id))
        return found.sha256

    def forget(self, sha256: str | None) -> None:
        """Remove this machine's cached copy of deleted bytes, unless another dataset holds the same."""
        if sha256 is None:
            return
        with self.engine.connect() as connection:
            shared = connection.execute(sa.select(_DATASETS.c.id).where(_DATASETS.c.sha256 == sha256).limit(1)).first()
        if shared is None:
            (self.cache / sha256).unlink(missing_ok=True)

    def path_of(self, dataset_id: str) -> Path:
        """A local copy of a dataset's file: from the cache when its SHA-256 matches, else
        fetched from the database (in chunks) into the cache first.

        Raises:
            KeyError: when no dataset has this id (also: deleted while it was fetched).
            DataError: when its bytes are not in the database (an old upload not imported
                yet), or what was read does not match its SHA-256.
        """
        record = self._record(dataset_id)
        if record.sha256 is None:
            raise DataError(
                f"dataset {dataset_id!r} was uploaded before datasets moved into the database and its file "
                "was not imported; run `hpo datasets import-folder DIR` on the old data folder (or start "
                "`hpo serve` with it as --data-dir)"
            )
        cached = self.cache / record.sha256
        if cached.is_file() and _file_sha256(cached) == record.sha256:
            return cached
        staged = self._staged_file("fetch-")
        try:
            digest, size = hashlib.sha256(), 0
            with staged.open("wb") as out, self.engine.connect() as connection:
                rows = connection.execution_options(yield_per=_FETCH_BUFFER_CHUNKS).execute(
                    sa.select(dataset_chunks.c.data).where(dataset_chunks.c.dataset_id == dataset_id)
                    .order_by(dataset_chunks.c.idx)
                )
                for (data,) in rows:
                    out.write(data)
                    digest.update(data)
                    size += len(data)
            if digest.hexdigest() != record.sha256:
                self._record(dataset_id)  # KeyError when it was deleted meanwhile
                raise DataError(f"dataset {dataset_id!r}: the {size} bytes read from the database do not match "
                                f"its sha256 {record.sha256} ({record.size_bytes} bytes)")
            self._keep(staged, record.sha256)
        finally:
            staged.unlink(missing_ok=True)
        return cached

    def import_folder(self, folder: str | Path) -> dict[str, Any]:
        """Move the datasets an earlier version kept in ``folder/datasets/<id>/`` into the database.

        Only datasets whose row exists and holds no bytes yet are imported: a folder without
        its row was deleted (or belongs to another database), and is never brought back.
        Safe to run again, and from two processes at once (the row is claimed by one
        conditional UPDATE in the transaction that writes its bytes). The folder is left as it was.

        Args:
            folder: an old data folder (``DATA_DIR``, holding ``datasets/``).

        Returns:
            ``{"imported": [ids], "present": [ids already in the database], "skipped": {id: reason}}``.
        """
        report: dict[str, Any] = {"imported": [], "present": [], "skipped": {}}
        root = Path(folder) / _OLD_LAYOUT
        entries = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        for entry in entries:
            dataset_id = entry.name
            try:
                record = self._record(dataset_id)
            except KeyError:
                report["skipped"][dataset_id] = "no row in the database (deleted, or from another database)"
                continue
            if record.sha256 is not None:
                report["present"].append(dataset_id)
                continue
            data = entry / f"data.{record.format}"
            if not data.is_file():
                report["skipped"][dataset_id] = f"no file {data.name} in {entry}"
                continue
            sha256 = _file_sha256(data)
            with self.engine.begin() as connection:
                claimed = connection.execute(
                    sa.update(_DATASETS).where(_DATASETS.c.id == dataset_id, _DATASETS.c.sha256.is_(None))
                    .values(sha256=sha256, size_bytes=data.stat().st_size)
                ).rowcount
                if claimed:
                    _write_chunks(connection, dataset_id, data)
            report["imported" if claimed else "present"].append(dataset_id)
        return report

    def clear_staging(self, older_than_s: float = STAGING_GRACE_S) -> int:
        """Remove what killed uploads and fetches left in the staging folder (run at start).

        Args:
            older_than_s: keep entries modified more recently (another process's upload in progress).

        Returns:
            How many entries were removed.
        """
        if not self.staging.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in self.staging.iterdir():
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

    def _record(self, dataset_id: str) -> DatasetRecord:
        """A dataset's row (every owner's).

        Raises:
            KeyError: for an invalid or unknown id, or a database whose tables were never
                made (a worker reading a database no ``hpo serve`` has migrated).
        """
        if _ID.match(dataset_id):
            with Session(self.engine) as session:
                try:
                    record = session.get(DatasetRecord, dataset_id)
                except sa.exc.DBAPIError:
                    if sa.inspect(self.engine).has_table(_DATASETS.name):
                        raise  # the database itself failed
                    record = None
            if record is not None:
                return record
        raise KeyError(f"unknown dataset id {dataset_id!r}")

    def _staged_file(self, prefix: str) -> Path:
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=prefix, dir=self.staging)
        os.close(fd)
        return Path(name)

    def _keep(self, staged: Path, sha256: str) -> None:
        """Move a complete, checked file into the cache (atomically: readers see all of it or nothing)."""
        self.cache.mkdir(parents=True, exist_ok=True)
        os.replace(staged, self.cache / sha256)

    def _new_id(self) -> str:
        """A short random url-safe id not used yet."""
        while True:
            dataset_id = secrets.token_urlsafe(8)
            with self.engine.connect() as connection:
                if connection.execute(sa.select(_DATASETS.c.id).where(_DATASETS.c.id == dataset_id)).first() is None:
                    return dataset_id


def _copy(source: IO[bytes], out: IO[bytes], *, limit: int, name: str) -> tuple[int, str]:
    """Copy ``source`` to ``out`` in chunks; its size and SHA-256.

    Raises:
        DataError: past ``limit`` bytes (what was copied stays for the caller to remove).
    """
    digest, size = hashlib.sha256(), 0
    while block := source.read(CHUNK_BYTES):
        size += len(block)
        if size > limit:
            raise DataError(f"{name}: upload is larger than {limit} bytes, the most accepted")
        digest.update(block)
        out.write(block)
    return size, digest.hexdigest()


def _write_chunks(connection: sa.Connection, dataset_id: str, path: Path) -> None:
    """Insert a file's bytes as rows of at most :data:`CHUNK_BYTES`, one row in memory at a time."""
    with path.open("rb") as source:
        index = 0
        while block := source.read(CHUNK_BYTES):
            connection.execute(sa.insert(dataset_chunks).values(dataset_id=dataset_id, idx=index, data=block))
            index += 1


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _info(record: DatasetRecord) -> DatasetInfo:
    created = record.created_at if record.created_at.tzinfo else record.created_at.replace(tzinfo=UTC)
    return DatasetInfo(
        id=record.id, name=record.name, format=record.format, task=record.task, options=dict(record.options or {}),
        size_bytes=record.size_bytes, summary=dict(record.summary or {}),
        created_at=created.astimezone(UTC).isoformat(timespec="seconds"),
    )


def _clean_name(filename: str) -> str:
    """The base name of an uploaded file, without directories or control characters."""
    base = re.split(r"[\\/]", filename)[-1]
    return _UNSAFE_NAME.sub("", base).strip()[:200] or "upload"
