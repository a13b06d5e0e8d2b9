"""Uploaded datasets live in the database (chunked rows); a data folder is only a cache that a
process with an empty one fills by fetching, checked against the file's SHA-256."""

from __future__ import annotations

import hashlib
import io
import threading
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa

from hpo.data import DataError, DatasetStore, check_dataset_exists, load_dataset
from hpo.data.store import CHUNK_BYTES
from hpo.db import make_engine, upgrade
from hpo.db.models import dataset_chunks
from hpo.spec import parse_spec


@pytest.fixture
def engine(database_url) -> Iterator[sa.Engine]:
    upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def big_npz(megabytes: float) -> bytes:
    """A valid classification NPZ of about ``megabytes`` MiB of random (incompressible) floats."""
    rows = max(20, int(megabytes * 2**20 / (16 * 16 * 4)))
    buffer = io.BytesIO()
    np.savez(buffer, X=np.random.default_rng(0).normal(size=(rows, 16, 16)).astype(np.float32),
             y=np.arange(rows) % 2)
    return buffer.getvalue()


def chunk_rows(engine: sa.Engine, dataset_id: str) -> list[int]:
    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.length(dataset_chunks.c.data))
                                  .where(dataset_chunks.c.dataset_id == dataset_id)
                                  .order_by(dataset_chunks.c.idx)).scalars().all()


def spec_of(dataset_id: str):
    return parse_spec({"name": "t", "task": "classification", "dataset": {"id": dataset_id}})


def test_a_worker_with_an_empty_folder_fetches_the_file_in_chunks(engine, tmp_path):
    content = big_npz(2.5)
    api = DatasetStore(engine, tmp_path / "api")
    worker = DatasetStore(engine, tmp_path / "worker")  # another machine: nothing in its folder

    info = api.save("big.npz", io.BytesIO(content), task="classification")
    path = worker.path_of(info.id)

    sizes = chunk_rows(engine, info.id)
    assert len(sizes) == 3 and sizes[:2] == [CHUNK_BYTES, CHUNK_BYTES] and sum(sizes) == len(content)
    assert path.read_bytes() == content
    assert path == tmp_path / "worker" / "cache" / hashlib.sha256(content).hexdigest()
    assert load_dataset(spec_of(info.id), worker).n_samples == info.summary["n_samples"]
    assert list((tmp_path / "worker" / ".staging").iterdir()) == []


def test_a_damaged_cached_copy_is_fetched_again(engine, tmp_path):
    store = DatasetStore(engine, tmp_path / "data")
    info = store.save("small.npz", big_npz(0.1), task="classification")
    cached = store.path_of(info.id)
    good = cached.read_bytes()
    cached.write_bytes(good[:-10] + b"x" * 10)  # same size, other bytes

    assert store.path_of(info.id).read_bytes() == good


def test_processes_fetching_at_once_each_see_the_whole_file(engine, tmp_path):
    """Four fetchers (each with its own store and connections, as processes have) on one folder."""
    content = big_npz(2.5)
    info = DatasetStore(engine, tmp_path / "api").save("big.npz", content, task="classification")
    stores = [DatasetStore(engine, tmp_path / "shared") for _ in range(4)]
    start, read = threading.Barrier(len(stores)), []

    def fetch(store: DatasetStore) -> None:
        start.wait()
        read.append(store.path_of(info.id).read_bytes())

    threads = [threading.Thread(target=fetch, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(read) == 4 and all(r == content for r in read)
    assert [p.name for p in (tmp_path / "shared" / "cache").iterdir()] == [hashlib.sha256(content).hexdigest()]
    assert list((tmp_path / "shared" / ".staging").iterdir()) == []


def test_bytes_that_do_not_match_their_sha256_are_never_used(engine, tmp_path):
    store = DatasetStore(engine, tmp_path / "data")
    info = store.save("small.npz", big_npz(0.1), task="classification")
    with engine.begin() as connection:
        connection.execute(sa.update(dataset_chunks).where(dataset_chunks.c.dataset_id == info.id)
                           .values(data=b"tampered"))
    fresh = DatasetStore(engine, tmp_path / "other")

    with pytest.raises(DataError, match="do not match its sha256"):
        fresh.path_of(info.id)
    assert not (tmp_path / "other" / "cache").exists() or list((tmp_path / "other" / "cache").iterdir()) == []


def test_delete_removes_the_rows_and_the_cached_copy(engine, tmp_path):
    api = DatasetStore(engine, tmp_path / "api")
    gone = api.save("a.npz", big_npz(1.5), task="classification")
    kept = api.save("b.npz", big_npz(0.1), task="classification")
    worker = DatasetStore(engine, tmp_path / "worker")
    worker.path_of(gone.id)

    api.delete(gone.id)

    assert chunk_rows(engine, gone.id) == [] and len(chunk_rows(engine, kept.id)) == 1
    assert [p.name for p in (tmp_path / "api" / "cache").iterdir()] == [api.path_of(kept.id).name]
    with pytest.raises(KeyError):
        worker.path_of(gone.id)  # its cached copy is never used again
    with pytest.raises(DataError, match="was deleted"):
        check_dataset_exists(spec_of(gone.id), worker)


def test_a_fetch_holds_at_most_a_few_chunks_in_memory(engine, tmp_path):
    """Python's allocations (the driver's row buffers included) while a 6 MiB file is fetched."""
    info = DatasetStore(engine, tmp_path / "api").save("big.npz", big_npz(6), task="classification")
    worker = DatasetStore(engine, tmp_path / "worker")

    tracemalloc.start()
    try:
        path = worker.path_of(info.id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert path.stat().st_size > 6 * CHUNK_BYTES
    assert peak < 4 * CHUNK_BYTES, f"peak {peak / 2**20:.1f} MiB"


def test_an_id_in_a_database_never_migrated_is_unknown(database_url, tmp_path):
    engine = make_engine(database_url)  # no hpo_* tables: a worker on a database no API has used
    try:
        with pytest.raises(DataError, match="unknown dataset id 'nothere'"):
            load_dataset(spec_of("nothere"), DatasetStore(engine, tmp_path / "data"))
    finally:
        engine.dispose()
