"""Shared fixtures: one local S3 server (moto, separate process) per test session.

The environment is sealed so that nothing reaches real AWS or a developer's profile:
no AWS_* variables, no config files, no instance metadata lookups. Credentials and the
endpoint reach the code only through ``file_dataset.Options``.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from file_dataset import Options
from file_dataset.testing import LocalS3Server

_SEALED = {
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "BOTO_CONFIG": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _seal_environment() -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    os.environ.update(_SEALED)


_seal_environment()

# A suite started with SIGINT ignored (a background job of a non-interactive shell)
# would not turn a SIGINT into KeyboardInterrupt, which the interrupt tests send; child
# processes then start with Python's own handler too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    """The session's local S3 server."""
    with LocalS3Server() as server:
        yield server


@pytest.fixture(scope="session")
def options(s3_server: LocalS3Server) -> Options:
    """Options pointing at the local S3 server with test credentials."""
    return s3_server.options()


@pytest.fixture
def bucket(s3_server: LocalS3Server) -> str:
    """A fresh, empty bucket for one test."""
    return s3_server.create_bucket()


@pytest.fixture(scope="session")
def s3_client(s3_server: LocalS3Server):  # type: ignore[no-untyped-def]
    """A boto3 client for setting up and checking tests."""
    return s3_server.client()


@pytest.fixture
def put(bucket: str, s3_client) -> Callable[[str, bytes], str]:  # type: ignore[no-untyped-def]
    """Stores an object in the test's bucket: ``put(key, data)`` returns its URL."""

    def put(key: str, data: bytes) -> str:
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"

    return put


@pytest.fixture
def read_object(s3_client) -> Callable[[str], bytes]:  # type: ignore[no-untyped-def]
    """Reads an object back: ``read_object("s3://bucket/key")`` returns its bytes."""

    def read_object(url: str) -> bytes:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())

    return read_object


@pytest.fixture
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private system temp dir for one test, so that leftover temp dirs can be seen."""
    path = tmp_path / "system-tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture
def kernel_copy(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Path], list[int]]:
    """Makes ``os.copy_file_range`` behave as ``kind`` says while it copies ``source``:
    ``copies`` (as it is), ``refuses`` (EXDEV at once), ``fails part-way`` (1,000
    bytes, then EIO), ``sees a change`` (the source's mtime changes after a chunk) or
    ``shrinks`` (1,000 bytes, the source cut to 2,000, then EIO). Returns the counts
    it was asked for, one per call."""
    real = os.copy_file_range

    def install(kind: str, source: Path) -> list[int]:
        calls: list[int] = []

        def copy_file_range(src: int, dst: int, count: int) -> int:
            calls.append(count)
            if kind == "refuses":
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            if kind in ("fails part-way", "shrinks") and len(calls) > 1:
                raise OSError(errno.EIO, "Input/output error")
            copied = real(src, dst, count if kind in ("copies", "sees a change") else 1000)
            if kind == "sees a change":
                os.utime(source, ns=(0, 0))  # rewritten in place: same size, another mtime
            if kind == "shrinks":
                os.truncate(source, 2000)
            return copied

        monkeypatch.setattr(os, "copy_file_range", copy_file_range)
        return calls

    return install


@pytest.fixture
def fake_s3_options() -> Callable[..., Options]:
    """Makes options for a test's own HTTP server on 127.0.0.1 (an S3 that gives answers
    moto cannot): ``make(port, transport, **settings)``, with made-up credentials and
    one attempt unless ``settings`` say otherwise."""

    def make(port: int, transport: str, **settings: object) -> Options:
        return Options(
            session_kwargs={
                "aws_access_key_id": "AKIAFAKES30000000000",
                "aws_secret_access_key": "s" * 40,
                "region_name": "us-east-1",
            },
            s3_client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"},
            transport=transport,
            **{"max_attempts": 1, **settings},  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def broken_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An AWS profile whose credential_process fails (botocore's
    CredentialRetrievalError), and no credentials elsewhere; returns its name."""
    config = tmp_path / "config"
    config.write_text("[profile broken]\nregion = us-east-1\ncredential_process = /bin/false\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return "broken"


@pytest.fixture
def held_by_cycles() -> Iterator[Callable[[], list[str]]]:
    """Turns off the automatic garbage collector for the test, and gives a function
    that says what of a read only the collector would free: the names of this
    library's frames, and "a buffer" for each memoryview of 1 MiB or more, held by
    reference cycles (kept until a collection, which may come much later)."""

    def held() -> list[str]:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found = []
            for thing in gc.garbage:
                if (
                    isinstance(thing, types.FrameType)
                    and "file_dataset" in thing.f_code.co_filename
                ):
                    found.append(thing.f_code.co_name)
                if isinstance(thing, memoryview) and thing.nbytes >= 2**20:
                    found.append("a buffer")
            return found
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    gc.collect()
    gc.disable()
    try:
        yield held
    finally:
        gc.enable()
