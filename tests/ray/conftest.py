"""Fixtures for the Ray tests: one local Ray per session and a 1000-row blob dataset.

There is no ``__init__.py`` in ``tests/`` or here on purpose: with pytest's default
import mode ``tests/`` is put on ``sys.path``, and a package ``tests/ray`` would then
shadow the real ``ray``. Fixtures of ``tests/conftest.py`` (the S3 server, options)
apply here as usual.

Test modules get helpers through fixtures only (no imports between test files), and
those that send their own functions to Ray workers register themselves with
``ray.cloudpickle.register_pickle_by_value``: workers cannot import them by name.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
import psutil
import pytest
import ray.data

from file_dataset.testing import LocalS3Server

IMAGE = "image.bin"
MASK = "mask.bin"
ROWS = 1000


@dataclass(frozen=True)
class BlobDataset:
    """A file DataFrame whose objects are in S3, with the bytes uploaded for each cell.

    Attributes:
        bucket: The bucket.
        frame: The file DataFrame (``id``, ``image.bin``, ``mask.bin``).
        blobs: ``(id, column) -> bytes`` for every non-null cell.
    """

    bucket: str
    frame: pd.DataFrame
    blobs: dict[tuple[str, str], bytes]

    def expected(self, row_id: str, column: str) -> bytes | None:
        return self.blobs.get((row_id, column))


def _row_id(i: int) -> str:
    return f"case-{i:04d}"


def _content(i: int, column: str) -> bytes:
    """Deterministic pseudo-random bytes, 1 to 999 long (different per cell)."""
    rng = random.Random(f"{column}/{i}")
    return rng.randbytes(rng.randint(1, 999))


def _upload(s3_server: LocalS3Server, bucket: str, items: dict[str, bytes]) -> None:
    """Puts ``{key: bytes}`` concurrently (one boto3 client is thread-safe)."""
    client = s3_server.client()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [
            pool.submit(client.put_object, Bucket=bucket, Key=key, Body=body)
            for key, body in items.items()
        ]
        for future in futures:
            future.result()


def _make_blob_dataset(s3_server: LocalS3Server, rows: int = ROWS) -> BlobDataset:
    """Uploads ``rows`` rows of two files each; every 97th row has no mask (null)."""
    bucket = s3_server.create_bucket()
    items: dict[str, bytes] = {}
    blobs: dict[tuple[str, str], bytes] = {}
    records = []
    for i in range(rows):
        rid = _row_id(i)
        record: dict[str, str | None] = {"id": rid}
        for column in (IMAGE, MASK):
            if column == MASK and i % 97 == 3:
                record[column] = None
                continue
            key = f"inputs/{rid}/{column}"
            items[key] = blobs[(rid, column)] = _content(i, column)
            record[column] = f"s3://{bucket}/{key}"
        records.append(record)
    _upload(s3_server, bucket, items)
    return BlobDataset(bucket, pd.DataFrame(records, columns=["id", IMAGE, MASK]), blobs)


@pytest.fixture(scope="session")
def blob_dataset(s3_server: LocalS3Server) -> BlobDataset:
    """The session's 1000-row dataset: two file columns, files under 1 KB."""
    return _make_blob_dataset(s3_server)


@pytest.fixture(scope="session")
def put_objects(s3_server: LocalS3Server) -> Callable[[str, dict[str, bytes]], None]:
    """``put_objects(bucket, {key: bytes})`` uploads concurrently."""
    return functools.partial(_upload, s3_server)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray (2 CPUs) for the whole session.

    Started after ``tests/conftest.py`` removed every ``AWS_*`` variable, so Ray's
    workers inherit no credentials and no endpoint: they only have what ``Options``
    carries. ``address="local"``: always a Ray of its own, never one already running on
    the machine (another test run's, or a user's).
    """
    for attempt in range(1, 4):
        # Ray gives a starting node a fixed 30 s to register (node.py, not configurable
        # in Ray 2.60), which a machine under heavy load can miss: then the Ray
        # processes this attempt started are ended and Ray is started again.
        before = {child.pid for child in psutil.Process().children(recursive=True)}
        try:
            ray.init(
                address="local",
                num_cpus=2,
                object_store_memory=256 * 1024 * 1024,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            break
        except Exception as e:
            if attempt == 3 or "timed out during startup" not in str(e):
                raise
            with contextlib.suppress(Exception):
                ray.shutdown()
            started = [
                child
                for child in psutil.Process().children(recursive=True)
                if child.pid not in before  # not the S3 server
            ]
            for child in started:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            psutil.wait_procs(started, timeout=30)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        ray.shutdown()
