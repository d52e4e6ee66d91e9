"""The same behaviour whichever transport carries the bytes (obstore or boto3)."""

from __future__ import annotations

import contextlib
import errno
import http.server
import logging
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
from botocore.config import Config
from botocore.exceptions import CredentialRetrievalError

import file_dataset
from file_dataset import Options
from file_dataset.testing import LocalS3Server

KiB = 1024
MiB = 1024 * KiB


def _endpoint_options(endpoint: str, transport: str, **kwargs: Any) -> Options:
    """Options for a test server at ``endpoint`` (test credentials, us-east-1)."""
    return Options(
        session_kwargs={
            "aws_access_key_id": "test-key",
            "aws_secret_access_key": "test-secret",
            "region_name": "us-east-1",
        },
        s3_client_kwargs={"endpoint_url": endpoint},
        transport=transport,
        **kwargs,
    )


@pytest.fixture(params=["obstore", "boto3"])
def transport_options(s3_server: LocalS3Server, request: pytest.FixtureRequest) -> Options:
    """Small thresholds, so an 11 MiB object takes the ranged-GET and multipart paths."""
    return s3_server.options(
        transport=request.param, part_size=5 * MiB, multipart_threshold=5 * MiB
    )


def test_round_trip_of_awkward_empty_and_large_objects(
    transport_options: Options,
    bucket: str,
    put: Callable[[str, bytes], str],
    read_object: Callable[[str], bytes],
    tmp_path: Path,
) -> None:
    large = bytes(range(256)) * (11 * MiB // 256) + b"tail"
    row = {
        "awkward.txt": put("dir/a b+c%20é%.txt", b"awkward"),
        "empty.bin": put("empty", b""),
        "large.bin": put("large", large),
        "none.bin": None,
    }
    table = file_dataset.reader(row, transport_options).into_blob_table()
    assert table.to_pylist() == [
        {"awkward.txt": b"awkward", "empty.bin": b"", "large.bin": large, "none.bin": None}
    ]
    sizes = file_dataset.reader(row, transport_options).into_size_table()
    assert sizes.to_pylist() == [
        {"awkward.txt": 7, "empty.bin": 0, "large.bin": len(large), "none.bin": None}
    ]
    with file_dataset.reader(row, transport_options).into_temp_dir() as tmp:
        assert sorted(p.name for p in tmp.iterdir()) == ["awkward.txt", "empty.bin", "large.bin"]
        assert (tmp / "large.bin").read_bytes() == large
        assert (tmp / "empty.bin").read_bytes() == b""
        written = file_dataset.write_files(
            {"large.bin": tmp / "large.bin", "é x.txt": tmp / "awkward.txt"},
            f"s3://{bucket}/out/",
            "row 1",
            transport_options,
        )
    assert written == {
        "large.bin": f"s3://{bucket}/out/row 1/large.bin",
        "é x.txt": f"s3://{bucket}/out/row 1/é x.txt",
    }
    assert read_object(written["large.bin"]) == large
    assert read_object(written["é x.txt"]) == b"awkward"


# Valid S3 keys that obstore's Path would change ("/a" -> "a", "a/" -> "a") or refuse.
ODD_KEYS = ["/lead", "trail/", "a//b", "a/./b", "a/../b", ".", "..", "tab\tkey", "many///"]


def test_keys_obstore_would_normalise_are_read_and_written_verbatim(
    transport_options: Options,
    bucket: str,
    put: Callable[[str, bytes], str],
    read_object: Callable[[str], bytes],
    tmp_path: Path,
) -> None:
    """Each odd key sits beside the key it would be confused with, holding other bytes,
    so reading the wrong object fails the test as surely as an error does."""
    put("lead", b"not /lead")
    put("trail", b"not trail/")
    large = bytes(range(256)) * (11 * MiB // 256)  # ranged GETs and a multipart upload
    row = {f"f{i}": put(key, key.encode() * 3) for i, key in enumerate(ODD_KEYS)}
    row["large"] = put("big//large", large)
    expected = {f"f{i}": key.encode() * 3 for i, key in enumerate(ODD_KEYS)}
    expected["large"] = large

    assert file_dataset.reader(row, transport_options).into_blob_table().to_pylist() == [expected]
    sizes = file_dataset.reader(row, transport_options).into_size_table().to_pylist()
    assert sizes == [{name: len(data) for name, data in expected.items()}]
    with file_dataset.reader(row, transport_options).into_temp_dir() as tmp:
        assert {p.name: p.read_bytes() for p in tmp.iterdir()} == expected
        written = file_dataset.write_files(
            {"small.bin": tmp / "f0", "large.bin": tmp / "large"},
            f"s3://{bucket}//out/./x/",
            "1",
            transport_options,
        )
    assert written == {
        "small.bin": f"s3://{bucket}//out/./x/1/small.bin",
        "large.bin": f"s3://{bucket}//out/./x/1/large.bin",
    }
    assert read_object(written["small.bin"]) == b"/lead" * 3
    assert read_object(written["large.bin"]) == large
    assert read_object(f"s3://{bucket}/lead") == b"not /lead"


def test_a_key_too_long_for_a_url_is_an_error_naming_its_row_not_a_crash(
    transport_options: Options, bucket: str
) -> None:
    """S3 keys have at most 1,024 bytes; some servers hold longer ones. From 65,503
    characters obstore panicked (pyo3's PanicException, a BaseException: no row id, and
    `except Exception` missed it). Keys over 1,024 bytes now go through boto3."""
    frame = pd.DataFrame({"id": ["r1"], "f.bin": [f"s3://{bucket}/" + "k" * 70_000]})
    for read in ("into_size_table", "into_blob_table"):
        with pytest.raises(file_dataset.TransferError) as info:
            getattr(file_dataset.reader(frame, transport_options), read)()
        assert "(row id 'r1', column 'f.bin')" in str(info.value)
        assert info.value.status == 414  # the server's "URI Too Long"


def test_an_obstore_panic_is_a_transfer_error() -> None:
    """A safety net for other panics than the long key's."""
    from file_dataset._s3_obstore import _unpanicked
    from file_dataset._urls import parse_url

    class PanicException(BaseException):  # pyo3's, which cannot be imported
        pass

    def panics(store: Any) -> None:
        raise PanicException("request valid: InvalidUri(TooLong)")

    with pytest.raises(file_dataset.TransferError) as info:
        _unpanicked(panics, None, parse_url("s3://bkt/key"), "read")  # type: ignore[arg-type]
    assert str(info.value) == (
        "cannot read s3://bkt/key: obstore failed inside (request valid: "
        "InvalidUri(TooLong)); transport='boto3' may read it"
    )
    assert isinstance(info.value.__cause__, PanicException)

    for text in (  # tokio's runtime could not make its epoll descriptor
        'Unable to build Tokio runtime: Os { code: 24, kind: Uncategorized, message: "Too '
        'many open files" }',
        "Unable to build Tokio runtime: Too many open files (os error 24)",
    ):

        def no_descriptor(store: Any, text: str = text) -> None:
            raise PanicException(text)

        with pytest.raises(file_dataset.TransferError) as info:
            _unpanicked(no_descriptor, None, parse_url("s3://bkt/key"), "read")  # type: ignore[arg-type]
        assert info.value.errno == errno.EMFILE
        assert "too many open files" in str(info.value)
        assert "ulimit -n" in str(info.value)


def test_missing_object_names_url_row_and_column(
    transport_options: Options, bucket: str, put: Callable[[str, bytes], str]
) -> None:
    frame = pd.DataFrame(
        {"id": ["a", "b"], "x.bin": [put("here", b"1"), f"s3://{bucket}/not/here"]}
    )
    for read in ("into_blob_table", "into_size_table"):
        with pytest.raises(FileNotFoundError) as raised:
            getattr(file_dataset.reader(frame, transport_options), read)()
        message = str(raised.value)
        assert f"s3://{bucket}/not/here" in message
        assert "'b'" in message
        assert "'x.bin'" in message


def test_missing_bucket_is_not_found(transport_options: Options) -> None:
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-here/k"):
        file_dataset.reader(
            {"k": "s3://no-such-bucket-here/k"}, transport_options
        ).into_blob_table()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_unsigned_requests_read_without_any_credentials(
    s3_server: LocalS3Server,
    transport: str,
    put: Callable[[str, bytes], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The README's public-bucket recipe (s3fs's anon=True): no credentials anywhere.
    A large object's later parts are not presigned then (obstore, asked to sign, looked
    for credentials in the instance metadata service, for every part)."""
    import json

    from botocore import UNSIGNED

    url = put("public/open.bin", b"open data")
    bucket = url.split("/")[2]
    public = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject"],
                "Resource": f"arn:aws:s3:::{bucket}/public/*",
            }
        ],
    }
    s3_server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(public))
    client_kwargs = {"endpoint_url": s3_server.endpoint_url, "region_name": "us-east-1"}
    unsigned = Options(
        s3_client_kwargs={**client_kwargs, "config": Config(signature_version=UNSIGNED)},
        transport=transport,
    )
    table = file_dataset.reader({"open.bin": url}, unsigned).into_blob_table()
    assert table.column("open.bin").to_pylist() == [b"open data"]
    with file_dataset.reader({"open.bin": url}, unsigned).into_temp_dir() as folder:
        assert (folder / "open.bin").read_bytes() == b"open data"
    large = os.urandom(6 * MiB)
    row = {"large.bin": put("public/large.bin", large)}
    in_parts = unsigned.replace(part_size=5 * MiB, multipart_threshold=5 * MiB)
    with caplog.at_level(logging.DEBUG, logger="file_dataset.signed"):
        table = file_dataset.reader(row, in_parts).into_blob_table()
    assert table.column("large.bin").to_pylist() == [large]
    assert not [r for r in caplog.records if r.name == "file_dataset.signed"]
    signed = Options(s3_client_kwargs=client_kwargs, transport=transport)
    with pytest.raises(file_dataset.TransferError):  # the same without it: no credentials
        file_dataset.reader({"open.bin": url}, signed).into_blob_table()


def test_a_missing_folder_key_or_versioned_url_says_why(
    transport_options: Options, put: Callable[[str, bytes], str]
) -> None:
    """A prefix given for an object, or an s3fs-style ?versionId=, named no reason."""
    url = put("year=2024/a.mha", b"a").rpartition("/")[0] + "/"  # objects under it
    for read in ("into_blob_table", "into_size_table"):
        with pytest.raises(FileNotFoundError) as info:
            getattr(file_dataset.reader({"a.mha": url}, transport_options), read)()
        assert info.value.url == url
        assert str(info.value).endswith(
            "; a key ending in '/' names a folder marker object, not the objects under "
            "that prefix (this library lists nothing)"
        )
        assert ".;" not in str(info.value)
    versioned = put("v.mha", b"v") + "?versionId=3HL4kqtJlcpXroDTDmJ"
    with pytest.raises(FileNotFoundError) as info:
        file_dataset.reader({"v.mha": versioned}, transport_options).into_blob_table()
    assert str(info.value).endswith(
        "; '?versionId=' is read as part of the key (only latest versions are read)"
    )
    signed = put("s.mha", b"s") + "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab12"
    with pytest.raises(FileNotFoundError) as info:  # helper-111
        file_dataset.reader({"s.mha": signed}, transport_options).into_blob_table()
    assert str(info.value).endswith(
        "; a signed URL's query is read as part of the key: an s3:// URL names the key "
        "alone, and the Options' credentials sign the request"
    )
    assert "ab12" not in str(info.value)
    with pytest.raises(FileNotFoundError) as info:  # no hint: the bucket is what is missing
        file_dataset.reader({"d": "s3://no-such-bucket-24/d/"}, transport_options).into_blob_table()
    assert str(info.value).endswith(": the bucket does not exist")


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_large_first_response_streams_into_place(
    s3_server: LocalS3Server,
    transport: str,
    put: Callable[[str, bytes], str],
) -> None:
    """Default thresholds: the first 8 MiB come in one response, streamed in chunks
    straight into the object's buffer or file, then ranged parts."""
    options = s3_server.options(transport=transport)
    data = bytes(range(251)) * (19 * MiB // 251)  # not a multiple of the chunk size
    row = {"big.bin": put("streamed", data)}
    blob = file_dataset.reader(row, options).into_blob_table().column("big.bin")
    assert blob.to_pylist() == [data]
    with file_dataset.reader(row, options).into_temp_dir() as tmp:
        assert [p.name for p in tmp.iterdir()] == ["big.bin"]
        assert (tmp / "big.bin").read_bytes() == data


def test_a_short_tail_is_read_with_the_part_before_it(
    transport_options: Options, put: Callable[[str, bytes], str]
) -> None:
    """With 5 MiB parts after a first GET of 5 MiB, 10 MiB + 100 bytes is read in two
    GETs (the second of 5 MiB + 100 bytes), not three, the last of 100 bytes."""
    from file_dataset._transfer import _ranges

    assert _ranges(5 * MiB, 10 * MiB + 100, 5 * MiB) == [(5 * MiB, 10 * MiB + 100)]
    assert _ranges(16 * MiB, 40 * MiB + 1, 8 * MiB) == [
        (16 * MiB, 24 * MiB),
        (24 * MiB, 32 * MiB),
        (32 * MiB, 40 * MiB + 1),
    ]
    assert _ranges(0, 9 * MiB, 8 * MiB) == [(0, 8 * MiB), (8 * MiB, 9 * MiB)]  # 1/8: kept
    data = os.urandom(10 * MiB + 100)
    row = {"f.bin": put("tail.bin", data)}
    assert file_dataset.reader(row, transport_options).into_blob_table()["f.bin"][0].as_py() == data
    with file_dataset.reader(row, transport_options).into_temp_dir() as tmp:
        assert (tmp / "f.bin").read_bytes() == data


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the right headers but only half the body, then hangs up."""

    sizes: ClassVar[dict[str, int]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        total = self.sizes[self.path.split("?")[0].rsplit("/", 1)[-1]]
        start, end = 0, total - 1
        if rng := self.headers.get("Range"):
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last), total - 1)
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        length = end - start + 1
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"x" * (length // 2))
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def truncating_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_child_forked_after_obstore_was_used_goes_through_boto3(
    s3_server: LocalS3Server, put: Callable[[str, bytes], str], bucket: str
) -> None:
    """obstore's runtime does not survive fork(): a forked child (multiprocessing's
    default on Linux, DataLoader workers) would wait for its threads for ever and could
    crash the parent. Such a child reads and writes through boto3 instead."""
    import multiprocessing

    url = put("forked.bin", b"read in a forked child")
    options = s3_server.options()  # "auto": obstore in this process
    row = {"f.bin": url}
    assert file_dataset.reader(row, options).into_blob_table().to_pylist() == [
        {"f.bin": b"read in a forked child"}
    ]
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        from file_dataset._backend import backend_for
        from file_dataset._urls import parse_url

        said: list[str] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("file_dataset").addHandler(handler)
        logging.getLogger("file_dataset").setLevel(logging.INFO)
        got: dict[str, Any] = {"backend": type(backend_for(parse_url(url), options)).__name__}
        got["read"] = file_dataset.reader(row, options).into_blob_table().to_pylist()
        written = file_dataset.write_files(
            {"f.bin": Path(__file__)}, f"s3://{bucket}/from-child", "1", options
        )
        got["written"] = written["f.bin"]
        got["said"] = [line for line in said if "fork" in line]
        forced = s3_server.options(transport="obstore")
        try:
            file_dataset.reader(row, forced).into_blob_table()
        except RuntimeError as e:
            got["forced"] = str(e)
            got["forced_notes"] = getattr(e, "__notes__", [])
        # every row would fail the same way: the call ends (it dropped every row)
        frame = pd.DataFrame({"id": ["r1", "r2"], "f.bin": [url, url]})
        pipeline = file_dataset.Pipeline(
            lambda i, o: {"g.bin": i / "f.bin"}, {"into_path": f"s3://{bucket}/p"}, forced
        )
        try:
            got["pipeline"] = pipeline(frame).to_dict("list")
        except RuntimeError as e:
            got["pipeline"] = str(e)
        got["pipeline_failures"] = [(f.id, f.stage) for f in pipeline.last_failures]
        send.send(got)

    process = context.Process(target=child)
    process.start()
    try:
        assert receive.poll(120), "the forked child did not answer"
        got = receive.recv()
    finally:
        process.join(timeout=120)
        if process.is_alive():
            process.kill()
    assert process.exitcode == 0
    assert got["backend"] == "S3Backend"
    # said once (at INFO: it is correct, only slower), not per transfer or options
    assert got["said"] == [
        "file_dataset: this process was forked from one that had used obstore, whose "
        "runtime does not survive fork(): its S3 requests go through boto3 (more CPU per "
        "request); start it with 'spawn' or 'forkserver' to keep obstore"
    ]
    assert got["read"] == [{"f.bin": b"read in a forked child"}]
    assert got["written"] == f"s3://{bucket}/from-child/1/f.bin"
    assert "forked from one that had already used obstore" in got["forced"]
    assert got["forced_notes"] == []  # not one object's failure ("raised by the transfer")
    assert "forked from one that had already used obstore" in got["pipeline"]
    assert got["pipeline_failures"] == [("r1", "read")]
    assert file_dataset.reader({"w": got["written"]}, options).into_blob_table().to_pylist() == [
        {"w": Path(__file__).read_bytes()}
    ]


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_a_child_forked_while_another_thread_holds_a_lock_of_ours_works(
    s3_server: LocalS3Server, put: Callable[[str, bytes], str], transport: str
) -> None:
    """A parent thread making a client (or a store) at the moment of a fork left the
    child a lock held for ever: its first transfer waited on it for ever."""
    import multiprocessing

    from file_dataset import _options, _s3_obstore

    url = put("forked-lock.bin", b"read while a lock was held")
    options = s3_server.options(transport=transport, max_concurrency=3)  # new: no client yet
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        send.send(file_dataset.reader({"f": url}, options).into_blob_table().to_pylist())

    locks = [_options._CREATE_LOCK, _options._Runtime._registry_lock, _s3_obstore._STORES_LOCK]
    for lock in locks:  # as another thread of the parent would hold them
        lock.acquire()
    try:
        process = context.Process(target=child)
        process.start()
    finally:
        for lock in locks:
            lock.release()
    try:
        answered = receive.poll(60)
    finally:
        process.kill()  # a child waiting for ever does not end by itself
        process.join()
    assert answered, "the forked child waited for ever on a lock held at the fork"
    assert receive.recv() == [{"f": b"read while a lock was held"}]


_FORK_DURING_IMPORT = r'''
import importlib, importlib.abc, importlib.machinery, os, signal, sys, threading

import file_dataset  # noqa: F401  (its fork hook is registered here)

NAME = sys.argv[1]
started, release = threading.Event(), threading.Event()


class Slow(importlib.abc.MetaPathFinder):
    """Holds the import of NAME half-way until `release` (a thread importing it at
    the moment of a fork)."""

    def find_spec(self, name, path, target=None):
        if name != NAME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                started.set()
                release.wait(60)
                real.exec_module(module)

        spec.loader = Loader()
        return spec


sys.meta_path.insert(0, Slow())
threading.Thread(target=importlib.import_module, args=(NAME,), daemon=True).start()
assert started.wait(60)
os.register_at_fork(before=release.set)  # runs before the hooks registered earlier
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a child waiting for ever on the import's lock is killed
    importlib.import_module(NAME)
    os._exit(0)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
'''


@pytest.mark.parametrize("module", ["file_dataset._s3", "file_dataset._s3_obstore"])
def test_a_fork_while_a_thread_imports_a_transport_leaves_the_child_able_to_use_it(
    module: str, tmp_path: Path
) -> None:
    """A transport's module is imported on the first transfer, by the thread making it;
    a fork() during that import left the child a module lock held for ever, so the
    child's first transfer hung (helper-93: 2 of 2 pools forked during the parent's
    first transfers). The script holds the import half-way at the fork, in a fresh
    process (this one has imported both already)."""
    script = tmp_path / "fork_during_import.py"
    script.write_text(_FORK_DURING_IMPORT)
    done = subprocess.run(
        [sys.executable, str(script), module], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"  # the child's exit code: it imported the module


_FIRST_TRANSFER_IMPORTS = r"""
import pickle, sys
import file_dataset
from file_dataset import _backend
options, url = pickle.loads(open(sys.argv[1], "rb").read())
_backend._import_transports_before_fork()  # what every fork runs first
before = set(sys.modules)
assert file_dataset.reader({"f": url}, options).into_blob_table().to_pylist() == [{"f": b"x"}]
print(sorted(set(sys.modules) - before))
"""


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_first_transfer_imports_nothing_that_a_fork_has_not(
    transport: str, s3_server: LocalS3Server, put: Callable[[str, bytes], str], tmp_path: Path
) -> None:
    """A fork during any import a first transfer makes on its thread (ours, or boto3's
    own lazy ``boto3.s3.inject`` as its first client is made: helper-96) left the child
    that module's lock held for ever. So the imports made before each fork must be all
    that a first transfer imports, in a fresh process."""
    given = tmp_path / "given.pickle"
    given.write_bytes(pickle.dumps((s3_server.options(transport=transport), put("lazy", b"x"))))
    script = tmp_path / "first_transfer.py"
    script.write_text(_FIRST_TRANSFER_IMPORTS)
    done = subprocess.run(
        [sys.executable, str(script), str(given)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_refreshable_credentials_of_an_assumed_role_read(
    transport: str,
    s3_server: LocalS3Server,
    put: Callable[[str, bytes], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """botocore dates refreshable credentials in local time (dateutil's tzlocal), and
    obstore takes only datetime.timezone.utc: every read through obstore with an
    instance role, SSO or an assumed role failed as "access denied"."""
    endpoint = s3_server.options().s3_client_kwargs["endpoint_url"]
    config = tmp_path / "config"
    config.write_text(
        "[profile src]\naws_access_key_id = AKIAEXAMPLESRC12345\n"
        "aws_secret_access_key = source-secret-source-secret\nregion = us-east-1\n"
        "[profile role]\nrole_arn = arn:aws:iam::123456789012:role/reader\n"
        "source_profile = src\nregion = us-east-1\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", endpoint)  # moto answers AssumeRole
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    url = put("assumed/a.txt", b"read with an assumed role")
    large = os.urandom(6 * MiB)  # its second part is a presigned GET with obstore
    options = Options(
        {"profile_name": "role"},
        {"endpoint_url": endpoint},
        transport=transport,
        part_size=5 * MiB,
        multipart_threshold=5 * MiB,
    )
    with caplog.at_level(logging.DEBUG):
        assert file_dataset.reader({"f": url}, options).into_blob_table().to_pylist() == [
            {"f": b"read with an assumed role"}
        ]
        row = {"g": put("assumed/large.bin", large)}
        assert file_dataset.reader(row, options).into_blob_table()["g"].to_pylist() == [large]
    signed = [r.getMessage() for r in caplog.records if r.name == "file_dataset.signed"]
    assert [m.split(": ", 1)[1].split(" in ")[0] for m in signed] == (
        [f"{MiB} of {MiB} bytes"] if transport == "obstore" else []
    )
    # botocore logs STS's answer, with the role's credentials, before anything here knows
    # them; they were left whole in that DEBUG line.
    logged = "\n".join(logging.Formatter().format(record) for record in caplog.records)
    assert "<SecretAccessKey>***</SecretAccessKey>" in logged
    assert re.search(r"<(SecretAccessKey|SessionToken|AccessKeyId)>[^*]", logged) is None
    assert "source-secret-source-secret" not in logged


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_missing_credentials_name_the_operation_that_needed_them(
    s3_server: LocalS3Server, transport: str, tmp_path: Path
) -> None:
    """The test environment has no credentials anywhere (see conftest)."""
    options = Options(
        s3_client_kwargs={"endpoint_url": s3_server.endpoint_url}, transport=transport
    )
    url = "s3://some-bucket/k.bin"
    local = tmp_path / "k.bin"
    local.write_bytes(b"payload")
    attempts = {
        "read": lambda: file_dataset.reader({"k.bin": url}, options).into_blob_table(),
        "head": lambda: file_dataset.reader({"k.bin": url}, options).into_size_table(),
        "write": lambda: file_dataset.write_files(
            {"k.bin": local}, "s3://some-bucket/o", "1", options
        ),
    }
    for operation, attempt in attempts.items():
        with pytest.raises(file_dataset.TransferError) as raised:
            attempt()
        assert raised.value.operation == operation
        assert f"cannot {operation} s3://some-bucket/" in str(raised.value)
        assert "Unable to locate credentials" in str(raised.value)


class _BadSignatureHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request as S3 answers a bad signature: 403 with a body quoting the
    access key id and the canonical request, session token included (as text and bytes).
    """

    def log_message(self, *args: object) -> None:
        pass

    def _refuse(self) -> None:
        key_id = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization", ""))
        token = self.headers.get("x-amz-security-token", "")
        canonical = (
            f"GET\n{self.path}\n\nhost:{self.headers['Host']}\nx-amz-security-token:{token}\n"
        )
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>SignatureDoesNotMatch</Code>"
            "<Message>The request signature we calculated does not match the signature you "
            f"provided.</Message><AWSAccessKeyId>{key_id.group(1) if key_id else ''}"
            f"</AWSAccessKeyId><CanonicalRequest>{canonical}</CanonicalRequest>"
            f"<CanonicalRequestBytes>{' '.join(f'{b:02x}' for b in canonical.encode())}"
            "</CanonicalRequestBytes></Error>"
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _refuse


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_no_file_descriptor_left_is_said_so_not_taken_for_the_network(
    transport: str, s3_server: LocalS3Server, put: Callable[[str, bytes], str]
) -> None:
    """Before, with obstore: "could not connect to the endpoint (... error sending
    request)" for every object at ulimit -n 64 (3 of 3 runs of a helper); the real
    cause was deep in obstore's debug text. The process here keeps two descriptors
    free for 32 transfers at once."""
    import json
    import subprocess
    import sys

    urls = [put(f"fd/{i}", bytes([i]) * 100) for i in range(64)]
    options = s3_server.options(transport=transport, max_concurrency=32, max_attempts=1)
    script = f"""
import json, os, pickle, resource
import file_dataset

options = pickle.loads({pickle.dumps(options)!r})
urls = {urls!r}
assert file_dataset.reader({{"f": urls[0]}}, options).into_blob_table().num_rows == 1
free = len(os.listdir("/proc/self/fd")) + 2
resource.setrlimit(resource.RLIMIT_NOFILE, (free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
frame = {{"id": [str(i) for i in range(64)], "f": urls}}
import pandas as pd
failed = []
try:
    file_dataset.reader(pd.DataFrame(frame), options).into_blob_table()
except file_dataset.TransferError as e:
    failed.append([str(e), e.errno, e.unreachable, e.url, e.row_id, free])
try:  # the local files need descriptors too
    file_dataset.reader(pd.DataFrame(frame), options).into_temp_dir()
except file_dataset.TransferError as e:
    failed.append([str(e), e.errno, e.unreachable, e.url, e.row_id, free])
print(json.dumps(failed))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    (message, code, unreachable, url, row_id, free), in_files = json.loads(done.stdout)
    assert (code, unreachable) == (errno.EMFILE, False)
    assert url == urls[int(row_id)]
    advice = (
        f"too many open files: this process has no file descriptor left (its limit is "
        f"ulimit -n, now {free}); lower Options(max_concurrency=...) or raise the limit"
    )
    assert message == f"cannot read {url} (row id '{row_id}', column 'f'): {advice}"
    # Out of descriptors for a socket or for the local file: the same advice (a local
    # file said "Too many open files" alone).
    message, code, unreachable, url, row_id, _ = in_files
    assert (code, unreachable) == (errno.EMFILE, False)
    assert message.startswith(f"cannot read {url} (row id '{row_id}', column 'f'): ")
    assert message.endswith(advice)


class _RefusingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every HEAD with ``head`` and every GET with ``get`` (status, S3 code),
    the code in the body, which a HEAD's answer does not have; ``seen`` lists the
    requests by method."""

    head: ClassVar[tuple[int, str]] = (400, "ExpiredToken")
    get: ClassVar[tuple[int, str]] = (400, "ExpiredToken")
    message: ClassVar[str] = "Refused."
    seen: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _refuse(self) -> None:
        self.seen.append(self.command)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # a PUT's body
        status, code = self.head if self.command == "HEAD" else self.get
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>{self.message}</Message></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _refuse

    def _start_upload(self, upload_id: str) -> None:
        """Answers a CreateMultipartUpload with ``upload_id``."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = (
            b"<InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>k</Key>"
            b"<UploadId>%s</UploadId></InitiateMultipartUploadResult>" % upload_id.encode()
        )
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def _fake_s3(
    handler: type[http.server.BaseHTTPRequestHandler],
    transport: str,
    scheme: str = "http",
    config: Config | None = None,
    tls: tuple[Path, Path] | None = None,
    **kwargs: Any,
) -> Iterator[Options]:
    """Runs ``handler`` as an S3 server of its own; yields options that reach it by
    ``scheme`` with made-up credentials (one attempt unless ``kwargs`` say otherwise),
    and the client ``config`` if given. With ``tls`` (a certificate and its key, see
    :func:`_self_signed`), the server speaks HTTPS and the options trust it."""
    import ssl

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    verify: dict[str, Any] = {}
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme, verify = "https", {"verify": str(tls[0])}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Options(
            session_kwargs={
                "aws_access_key_id": "AKIAFAKES30000000000",
                "aws_secret_access_key": "s" * 40,
                "aws_session_token": "fake-token" * 4,
                "region_name": "us-east-1",
            },
            s3_client_kwargs={
                "endpoint_url": f"{scheme}://127.0.0.1:{server.server_address[1]}",
                **({"config": config} if config else {}),
                **verify,
            },
            transport=transport,
            **{"max_attempts": 1, **kwargs},
        )
    finally:
        server.shutdown()
        server.server_close()


def _size_through(handler: type[_RefusingHandler], transport: str) -> BaseException:
    """The error of into_size_table of s3://bkt/img.mha (row p01) from ``handler``."""
    handler.seen = []
    frame = pd.DataFrame({"id": ["p01"], "img.mha": ["s3://bkt/img.mha"]})
    with (
        _fake_s3(handler, transport) as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.reader(frame, options).into_size_table()
    return raised.value


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_head_refused_without_a_reason_names_the_reason_s3_gives_a_get(transport: str) -> None:
    """Before: into_size_table (and so read_file_dataset's planning) raised a plain
    TransferError, "400: Bad Request", for an expired token, where a read raised
    ObjectAccessDeniedError naming ExpiredToken (a helper's finding)."""

    class Expired(_RefusingHandler):
        pass

    error = _size_through(Expired, transport)
    assert isinstance(error, file_dataset.ObjectAccessDeniedError)
    assert (error.operation, error.url, error.row_id) == ("head", "s3://bkt/img.mha", "p01")
    assert (error.errno, error.status) == (errno.EACCES, 400)
    assert str(error) == (
        "cannot head s3://bkt/img.mha (row id 'p01', column 'img.mha'): access denied "
        "(ExpiredToken: Refused.); the temporary credentials have expired (credentials "
        "given in the Options, as Options.default() freezes them, are not refreshed: "
        "Options.default(freeze_credentials=False) lets each process refresh its own)"
    )
    assert error.credentials_failed
    assert Expired.seen[0] == "HEAD"
    assert "GET" in Expired.seen  # (twice with obstore: its read of an empty object)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_head_refused_with_a_bare_403_names_the_reason_s3_gives_a_get(transport: str) -> None:
    """A HEAD's 403 has no body: into_size_table said "access denied (403)", and
    credentials_failed stayed False for an unknown access key, which a read names
    (helper-102). The one-byte GET that asks again for other 4xx answers asks for a
    403 too."""

    class Unknown(_RefusingHandler):
        head = get = (403, "InvalidAccessKeyId")
        message = "The AWS Access Key Id you provided does not exist in our records."

    error = _size_through(Unknown, transport)
    assert isinstance(error, file_dataset.ObjectAccessDeniedError)
    assert (error.operation, error.status, error.row_id) == ("head", 403, "p01")
    assert str(error) == (
        "cannot head s3://bkt/img.mha (row id 'p01', column 'img.mha'): access denied "
        "(InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our "
        "records.); check the credentials in Options"
    )
    assert error.credentials_failed
    assert Unknown.seen[:2] == ["HEAD", "GET"]


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_an_access_denied_error_keeps_what_s3_said(transport: str, tmp_path: Path) -> None:
    """Before: "access denied (AccessDenied); check the credentials in Options" for a
    bucket policy's or a KMS key's denial too; S3's message, which names the action and
    the resource, was only in the chained cause, which pickling (Ray) drops."""
    kms = (
        "User: arn:aws:iam::111122223333:user/etl is not authorized to perform: "
        "kms:Decrypt on resource: arn:aws:kms:us-east-1:111122223333:key/k1"
    )
    hint = (
        "check the credentials in Options and what they may do (the bucket's policy, the "
        "KMS key of an encrypted object, request_payer=True for a requester-pays bucket)"
    )

    class Denied(_RefusingHandler):
        head = get = (403, "AccessDenied")  # a HEAD's answer has no body: a bare 403
        message = kms

    local = tmp_path / "x.bin"
    local.write_bytes(b"x")
    with _fake_s3(Denied, transport) as options:
        with pytest.raises(file_dataset.ObjectAccessDeniedError) as read:
            file_dataset.reader({"img.mha": "s3://bkt/img.mha"}, options).into_blob_table()
        with pytest.raises(file_dataset.ObjectAccessDeniedError) as written:
            file_dataset.write_files({"x.bin": local}, "s3://bkt/out", "r1", options)
        Denied.message = "Access Denied"  # what S3 says when it says nothing more
        with pytest.raises(file_dataset.ObjectAccessDeniedError) as bare:
            file_dataset.reader({"img.mha": "s3://bkt/img.mha"}, options).into_blob_table()
        with pytest.raises(file_dataset.ObjectAccessDeniedError) as sized:
            file_dataset.reader({"img.mha": "s3://bkt/img.mha"}, options).into_size_table()
        with pytest.raises(file_dataset.ObjectAccessDeniedError) as bare_write:
            file_dataset.write_files({"x.bin": local}, "s3://bkt/out", "r1", options)
    assert str(read.value) == (
        f"cannot read s3://bkt/img.mha (column 'img.mha'): access denied (AccessDenied: "
        f"{kms}); {hint}"
    )
    assert str(pickle.loads(pickle.dumps(read.value))) == str(read.value)
    assert not read.value.credentials_failed
    assert str(written.value) == (
        f"cannot write s3://bkt/out/r1/x.bin (row id 'r1', column 'x.bin'): access denied "
        f"(AccessDenied: {kms}); {hint}"
    )
    # A bare denial of a read may be a missing key (no s3:ListBucket): said for reads
    # and HEADs (whose answer has no body), not for writes nor a policy's denial above.
    missing = (
        ", or whether the object exists: to credentials that may not list the bucket "
        "(s3:ListBucket), S3 answers 403, not 404, for a missing key"
    )
    assert str(bare.value) == (
        f"cannot read s3://bkt/img.mha (column 'img.mha'): access denied (AccessDenied); "
        f"{hint}{missing}"
    )
    assert str(sized.value).endswith(f"{hint}{missing}")
    assert str(sized.value).startswith("cannot head s3://bkt/img.mha (column 'img.mha'): ")
    assert str(bare_write.value).endswith(f"(AccessDenied); {hint}")


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_s3s_code_is_read_from_its_answer_not_from_a_key_that_quotes_one(transport: str) -> None:
    """obstore quotes the key, unescaped, before the answer's body in its error: a key
    holding <Code>ExpiredToken</Code> made a 404 an expired-token error (with
    credentials_failed set, which ends a Pipeline call; a regression hunt's finding)."""

    class Missing(_RefusingHandler):
        get = (404, "NoSuchKey")

    key = "x<Code>ExpiredToken</Code>/img.mha"
    with (
        _fake_s3(Missing, transport) as options,
        pytest.raises(file_dataset.ObjectNotFoundError) as raised,
    ):
        file_dataset.reader({"img.mha": f"s3://bkt/{key}"}, options).into_blob_table()
    assert not raised.value.credentials_failed
    assert str(raised.value).endswith("): NoSuchKey: Refused.")


def test_a_code_inside_the_message_of_s3s_answer_is_not_its_code() -> None:
    from file_dataset._s3_obstore import _s3_code

    text = (
        "Object at location k not found: Error performing GET http://h/b/k in 2ms - Server "
        "returned non-2xx status code: 404 Not Found: <?xml version='1.0'?><Error><Message>"
        "<![CDATA[no <Code>ExpiredToken</Code> here]]></Message><Code>NoSuchKey</Code></Error>"
    )
    assert _s3_code(text, "s3://b/k") == ("NoSuchKey", "no <Code>ExpiredToken</Code> here")
    # Not well-formed: searched as before.
    assert _s3_code("code: 403: <Error><Code>AccessDenied</Code><Message>a & b", "s3://b/k")[0] == (
        "AccessDenied"
    )


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_clock_s3_finds_skewed_fails_every_request_and_says_so(transport: str) -> None:
    class Skewed(_RefusingHandler):
        get = (403, "RequestTimeTooSkewed")
        message = "The difference between the request time and the current time is too large."

    with (
        _fake_s3(Skewed, transport) as options,
        pytest.raises(file_dataset.ObjectAccessDeniedError) as raised,
    ):
        file_dataset.reader({"f": "s3://bkt/k"}, options).into_blob_table()
    assert raised.value.credentials_failed  # a Pipeline call ends on it
    assert str(raised.value).endswith(
        "access denied (RequestTimeTooSkewed: The difference between the request time and "
        "the current time is too large.); this machine's clock differs from S3's by more "
        "than 15 minutes, and requests are signed with the time: set the clock right (NTP)"
    )


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_only_a_4xx_head_is_asked_again_and_only_a_4xx_get_replaces_it(transport: str) -> None:
    """A regression hunt found the first version doubling the retries of a 5xx or a
    throttle (88.9 s instead of 44 with boto3's), and raising a GET's unrelated 5xx or
    connection error in place of the HEAD's 400."""

    class Unavailable(_RefusingHandler):
        head = (503, "SlowDown")

    error = _size_through(Unavailable, transport)
    assert (type(error), error.status) == (file_dataset.TransferError, 503)
    assert set(Unavailable.seen) == {"HEAD"}
    # as boto3 says it (obstore's own line was "Generic S3 error: Error performing HEAD
    # http://... - Server returned non-2xx status code: 503")
    assert str(error).endswith("(row id 'p01', column 'img.mha'): 503: Service Unavailable")

    class BadThenBroken(_RefusingHandler):
        get = (500, "InternalError")

    error = _size_through(BadThenBroken, transport)
    assert (type(error), error.status) == (file_dataset.TransferError, 400)
    assert "GET" in BadThenBroken.seen
    assert "InternalError" not in str(error)


class _RefusingHeads(_RefusingHandler):
    """A gateway that refuses HEAD (405, no body) and answers a ranged GET: the object
    holds ``size`` bytes of ``x``."""

    head = (405, "MethodNotAllowed")
    size: ClassVar[int] = 12345

    def do_GET(self) -> None:
        self.seen.append("GET")
        asked = re.fullmatch(r"bytes=0-(\d+)", self.headers.get("Range") or "")
        end = min(self.size - 1, int(asked.group(1))) if asked else self.size - 1
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes 0-{end}/{self.size}")
        self.send_header("Content-Length", str(end + 1))
        self.send_header("ETag", '"e"')
        self.end_headers()
        self.wfile.write(b"x" * (end + 1))


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_size_refused_by_head_is_read_from_a_get(transport: str) -> None:
    """Before: the one-byte GET that asks why a HEAD got a bare 4xx was answered, with
    the size, and the HEAD's error ("405: Method Not Allowed") was raised anyway (a
    request-count audit's finding)."""
    _RefusingHeads.seen = []
    frame = pd.DataFrame({"id": ["p01"], "img.mha": ["s3://bkt/img.mha"]})
    with _fake_s3(_RefusingHeads, transport) as options:
        sizes = file_dataset.reader(frame, options).into_size_table()
    assert sizes.to_pydict() == {"id": ["p01"], "img.mha": [12345]}
    assert _RefusingHeads.seen[0] == "HEAD"
    assert "GET" in _RefusingHeads.seen


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_an_endpoint_that_never_answers_is_unreachable_on_both_transports(
    transport: str,
) -> None:
    """A connection accepted and never answered (a firewall, a wrong VPC endpoint): the
    error says so, and unreachable is set on both transports (boto3 set it for a
    connect timeout, obstore, which cannot tell the two timeouts apart, never)."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel), never answers
    try:
        options = Options(
            session_kwargs={
                "aws_access_key_id": "AKIASILENT0000000000",
                "aws_secret_access_key": "s" * 40,
                "region_name": "us-east-1",
            },
            s3_client_kwargs={
                "endpoint_url": f"http://127.0.0.1:{listener.getsockname()[1]}",
                "config": Config(connect_timeout=1, read_timeout=1),
            },
            transport=transport,
            max_attempts=1,
        )
        with pytest.raises(file_dataset.TransferError) as raised:
            file_dataset.reader({"f": "s3://bkt/k"}, options).into_blob_table()
    finally:
        listener.close()
    assert raised.value.unreachable
    assert raised.value.status is None
    assert str(raised.value).startswith("cannot read s3://bkt/k (column 'f'): ")


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_failed_tls_handshake_is_unreachable_on_both_transports(transport: str) -> None:
    """An https endpoint that speaks plain HTTP (or a bad certificate, a dead proxy):
    boto3's SSLError and ProxyConnectionError were not counted as no answer, so a
    Pipeline on a wrong https endpoint dropped every row in turn with boto3 and stopped
    with obstore (a regression hunt's finding)."""
    with (
        _fake_s3(_RefusingHandler, transport, scheme="https") as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.reader({"f": "s3://bkt/k"}, options).into_blob_table()
    assert raised.value.unreachable
    assert raised.value.status is None


class _CutFirstAnswerHandler(http.server.BaseHTTPRequestHandler):
    """Serves one empty object. A Range on it is answered 416 with S3's error body; the
    first such answer is cut half-way (the connection reset), as a flaky network does.
    """

    protocol_version = "HTTP/1.1"
    cut: ClassVar[list[bool]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.headers.get("Range"):
            body = (
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidRange</Code>"
                b"<Message>The requested range is not satisfiable</Message></Error>"
            )
            self.send_response(416)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Range", "bytes */0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not self.cut:
                self.cut.append(True)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                # a reset (RST), not a clean end: linger 0, then close
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True
                return
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("ETag", '"d41d8cd98f00b204e9800998ecf8427e"')
        self.send_header("Last-Modified", "Wed, 02 Dec 2026 12:00:00 GMT")
        self.end_headers()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_an_empty_object_whose_416_answer_is_cut_is_read_again(transport: str) -> None:
    """Before: obstore failed at once ("could not be read whole, even after resuming
    it"), and boto3 raised urllib3's raw ProtocolError (no URL, not a FileDatasetError):
    neither retried an error answer cut short (a soak test's finding)."""
    _CutFirstAnswerHandler.cut = []
    with _fake_s3(_CutFirstAnswerHandler, transport, max_attempts=8) as options:
        table = file_dataset.reader({"e": "s3://bkt/empty"}, options).into_blob_table()
    assert table.column("e").to_pylist() == [b""]
    assert _CutFirstAnswerHandler.cut == [True]


class _NoUploadIdHandler(http.server.BaseHTTPRequestHandler):
    """Answers CreateMultipartUpload with 200 and an empty body, as an answer whose
    headers were cut short reads (http.client takes the end of the connection for the
    end of the headers)."""

    posts: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.posts.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_create_multipart_answer_without_an_upload_id_is_a_transfer_error(
    transport: str, tmp_path: Path
) -> None:
    """Before: a raw KeyError: 'UploadId', naming nothing (a soak test's finding). It is
    asked again up to max_attempts times, as botocore does for an answer it lost."""
    _NoUploadIdHandler.posts = []
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * (6 * MiB))
    multipart = {"max_attempts": 3, "part_size": 5 * MiB, "multipart_threshold": 5 * MiB}
    with (
        _fake_s3(_NoUploadIdHandler, transport, **multipart) as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.write_files({"big.bin": source}, "s3://bkt/out", "r1", options)
    assert str(raised.value) == (
        "cannot write s3://bkt/out/r1/big.bin (row id 'r1', column 'big.bin'): the "
        "server's answer to CreateMultipartUpload gave no UploadId"
    )
    assert _NoUploadIdHandler.posts == ["/bkt/out/r1/big.bin?uploads"] * 3


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_failed_first_read_of_a_key_naming_range_is_not_taken_for_an_empty_object(
    transport: str,
) -> None:
    """Before, with obstore: any error whose text held "416" or "Range" (the key, a
    time, a request id) was taken for the 416 of an empty object, and the whole object
    was read in one GET (a regression hunt's finding: a 500 for DateRange.bin)."""

    class Unavailable(_RefusingHandler):
        get = (500, "InternalError")
        ranges: ClassVar[list[bool]] = []

        def do_GET(self) -> None:
            self.ranges.append(bool(self.headers.get("Range")))
            self._refuse()

    Unavailable.ranges = []
    with (
        _fake_s3(Unavailable, transport) as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.reader({"f": "s3://bkt/DateRange.bin"}, options).into_blob_table()
    assert raised.value.status == 500
    assert Unavailable.ranges == [True]  # no GET of the whole object


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_key_that_quotes_emfile_is_not_taken_for_it(
    transport: str, s3_server: LocalS3Server, bucket: str
) -> None:
    """Before, with obstore: a missing object whose key held "Too many open files" or
    "os error 24" was reported as out of file descriptors (errno EMFILE), since
    obstore's error quotes the key (a regression hunt's finding)."""
    options = s3_server.options(transport=transport, max_attempts=1)
    for key in ("logs/Too many open files.txt", "logs/os error 24 (Too many open files)"):
        with pytest.raises(file_dataset.ObjectNotFoundError) as raised:
            file_dataset.reader({"f": f"s3://{bucket}/{key}"}, options).into_blob_table()
        assert (raised.value.errno, raised.value.status) == (errno.ENOENT, 404)


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_credentials_that_fail_to_load_are_a_transfer_error(
    transport: str, broken_profile: str
) -> None:
    """Before: botocore's CredentialRetrievalError escaped raw (not a FileDatasetError)
    with boto3, and with "auto" after this session's first FIPS change (a regression
    hunt's finding). No request is sent: the credentials fail first."""
    options = Options(
        {"profile_name": broken_profile},
        {"endpoint_url": "http://127.0.0.1:9"},
        transport=transport,
        max_attempts=1,
    )
    with pytest.raises(file_dataset.TransferError) as raised:
        file_dataset.reader({"f": "s3://bkt/k"}, options).into_blob_table()
    assert str(raised.value).startswith(
        "cannot read s3://bkt/k (column 'f'): CredentialRetrievalError: "
    )
    assert raised.value.credentials_failed


def _prints_no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str) -> None:
    """Profile "banner": a credential_process that prints ``said`` and exits 0."""
    script = tmp_path / "login.sh"
    script.write_text(f"#!/bin/sh\necho '{said}'\n")
    script.chmod(0o755)
    config = tmp_path / "config"
    config.write_text(f"[profile banner]\nregion = us-east-1\ncredential_process = {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_a_credential_process_that_prints_no_json_is_failed_credentials(
    transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that prints a banner and exits 0: botocore's json.loads raised a bare
    JSONDecodeError, not a FileDatasetError, naming no URL, and a Pipeline dropped
    every row with it (helper-111)."""
    _prints_no_credentials(tmp_path, monkeypatch, "null")  # AttributeError (helper-112)
    null_options = Options(
        {"profile_name": "banner"}, {"endpoint_url": "http://127.0.0.1:9"}, transport=transport
    )
    with pytest.raises(file_dataset.TransferError, match="its output is not the JSON") as null:
        file_dataset.reader({"f": "s3://bkt/k"}, null_options).into_size_table()
    assert null.value.credentials_failed
    _prints_no_credentials(tmp_path, monkeypatch, "Token expired, run: corp-login")
    options = Options(
        {"profile_name": "banner"},
        {"endpoint_url": "http://127.0.0.1:9"},
        transport=transport,
        max_attempts=1,
    )
    _fails_as_credentials(
        options,
        "custom-process: its output is not the JSON of credentials (JSONDecodeError: "
        "Expecting value: line 1 column 1 (char 0))",
        "banner",
        monkeypatch,
    )


def _fails_as_credentials(
    options: Options, reason: str, profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read with ``options`` fails as credentials for ``reason``, and so does
    Options.default() with AWS_PROFILE=``profile``."""
    with pytest.raises(file_dataset.TransferError) as raised:
        file_dataset.reader({"f": "s3://bkt/k"}, options).into_blob_table()
    assert str(raised.value) == (
        "cannot read s3://bkt/k (column 'f'): CredentialRetrievalError: Error when "
        f"retrieving credentials from {reason}"
    )
    assert raised.value.credentials_failed
    monkeypatch.setenv("AWS_PROFILE", profile)
    with pytest.raises(CredentialRetrievalError) as default:
        Options.default()
    assert str(default.value) == f"Error when retrieving credentials from {reason}"


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_token_with_a_line_break_from_the_environment_is_failed_credentials(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_SESSION_TOKEN=$(cat token.txt) keeps the file's line break: obstore panicked
    (InvalidHeaderValue, suggesting transport="boto3"), boto3's error quoted the token
    (helper-111). Refused before any request, without the value."""
    token = "IQoJtokenFROMaFILE0123"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLEENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secretEXAMPLEfromENV")
    monkeypatch.setenv("AWS_SESSION_TOKEN", token + "\n")
    options = Options(
        s3_client_kwargs={"endpoint_url": "http://127.0.0.1:9"}, transport=transport, max_attempts=1
    )
    with pytest.raises(file_dataset.TransferError) as raised:
        file_dataset.reader({"f": "s3://bkt/k"}, options).into_blob_table()
    assert str(raised.value) == (
        "cannot read s3://bkt/k (column 'f'): CredentialRetrievalError: Error when retrieving "
        "credentials from env: the credentials found hold white space or a control character "
        "(a line break read from a file into AWS_SESSION_TOKEN, say): credentials have none; "
        "strip it"
    )
    assert raised.value.credentials_failed
    with pytest.raises(
        ValueError, match=r"^Options.default\(\): the credentials found hold"
    ) as info:
        Options.default()
    assert token not in str(info.value)


def test_a_credential_process_that_prints_its_secret_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its stderr, quoted by botocore, showed "SecretAccessKey: <secret>" (YAML) in
    the error, and Options.default() raised it unmasked (helper-111)."""
    script = tmp_path / "login.sh"
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    script.write_text(
        f"#!/bin/sh\necho 'failed; had:' >&2\necho 'SecretAccessKey: {secret}' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    config = tmp_path / "config"
    config.write_text(f"[profile said]\nregion = us-east-1\ncredential_process = {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    options = Options({"profile_name": "said"}, {"endpoint_url": "http://127.0.0.1:9"})
    with pytest.raises(file_dataset.TransferError) as raised:
        file_dataset.reader({"f": "s3://bkt/k"}, options).into_blob_table()
    assert "SecretAccessKey: ***" in str(raised.value)
    assert secret not in "".join(traceback.format_exception(raised.value))
    monkeypatch.setenv("AWS_PROFILE", "said")
    with pytest.raises(CredentialRetrievalError) as default_raised:
        Options.default()
    assert "SecretAccessKey: ***" in str(default_raised.value)
    assert secret not in "".join(traceback.format_exception(default_raised.value))


def test_credentials_that_fail_to_refresh_inside_obstore_are_said_as_boto3_says_them(
    s3_server: LocalS3Server,
) -> None:
    """Temporary credentials that botocore cannot refresh any more (an expired SSO
    login) failed inside obstore's credential provider, and were reported as
    ObjectAccessDeniedError "access denied (forbidden)", though nothing was sent."""
    import obstore
    from botocore.exceptions import CredentialRetrievalError
    from obstore.store import S3Store

    from file_dataset._s3_obstore import translate_error

    def expired_login() -> dict[str, Any]:
        raise CredentialRetrievalError(provider="custom-process", error_msg="run aws sso login")

    store = S3Store(
        "bkt",
        endpoint=s3_server.endpoint_url,
        region="us-east-1",
        credential_provider=expired_login,  # type: ignore[arg-type]
        client_options={"allow_http": True},
    )
    with pytest.raises(Exception) as obstores:
        obstore.get(store, "k")
    with pytest.raises(file_dataset.TransferError) as ours:
        translate_error(obstores.value, "s3://bkt/k", "read")
    assert not isinstance(ours.value, PermissionError)
    assert ours.value.credentials_failed
    assert str(ours.value) == (
        "cannot read s3://bkt/k: CredentialRetrievalError: Error when retrieving "
        "credentials from custom-process: run aws sso login"
    )


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_credentials_quoted_by_a_bad_signature_answer_are_masked(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    # obstore quotes S3's error body in its error, which is chained to ours: the session
    # token and key id reached tracebacks, and Ray's task errors and logs. botocore's
    # DEBUG log quotes the body too, where the token was left as hex bytes.
    key_id, secret, token = "AKIALEAKCHECK0000000", "SECRETLEAKCHECK" + "x" * 25, "TOKENLEAK" * 8
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadSignatureHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        options = Options(
            session_kwargs={
                "aws_access_key_id": key_id,
                "aws_secret_access_key": secret,
                "aws_session_token": token,
                "region_name": "us-east-1",
            },
            s3_client_kwargs={"endpoint_url": f"http://127.0.0.1:{server.server_address[1]}"},
            transport=transport,
            max_attempts=1,
        )
        frame = pd.DataFrame({"id": ["p01"], "img.mha": ["s3://bkt/img.mha"]})
        with (
            caplog.at_level(logging.DEBUG),
            pytest.raises(file_dataset.ObjectAccessDeniedError) as raised,
        ):
            file_dataset.reader(frame, options).into_blob_table()
    finally:
        server.shutdown()
        server.server_close()
    error = raised.value
    assert str(error).startswith("cannot read s3://bkt/img.mha (row id 'p01', column 'img.mha')")
    assert "SignatureDoesNotMatch" in str(error)
    shown = "".join(traceback.format_exception(error)) + repr(pickle.loads(pickle.dumps(error)))
    shown += "\n".join(logging.Formatter().format(record) for record in caplog.records)
    assert error.__cause__ is not None
    if transport == "boto3":  # the log did quote the body
        assert "<CanonicalRequestBytes>***</CanonicalRequestBytes>" in shown
        # botocore's ClientError, chained, kept S3's parsed body in .response
        assert error.__cause__.response["Error"]["AWSAccessKeyId"] == "***"  # type: ignore[attr-defined]
        assert error.__cause__.response["Error"]["Code"] == "SignatureDoesNotMatch"  # type: ignore[attr-defined]
    shown += _everything_held(error)
    for leaked in (key_id, secret, token, token.encode().hex(" ")[:60]):
        assert leaked not in shown


def _everything_held(error: BaseException) -> str:
    """The attributes, arguments and pickles of an error and of all it chains to."""
    held = []
    seen: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in seen:
        seen.append(link)
        held += [repr(link.args), repr(vars(link)), repr(pickle.dumps(link))]
        held.append(repr(getattr(link, "response", "")))
        link = link.__cause__ or link.__context__
    for link in seen:  # what a handler walking the other way would see
        if link.__context__ is not None and link.__context__ not in seen:
            held.append(repr(link.__context__.args))
    return "\n".join(held)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_password_in_the_endpoint_is_in_no_error_a_pipeline_raises(
    transport: str, tmp_path: Path
) -> None:
    """The destination check's error chained a masked copy, but kept the original
    (the endpoint, password and all) as its __context__."""
    with socket.socket() as closed:  # a port with nothing listening on it
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    options = Options(
        # distinctive: the process masks the credentials it has used in every message
        session_kwargs={
            "aws_access_key_id": "AKIDPASSWORDTEST0001",
            "aws_secret_access_key": "secret-of-the-password-test-0123456789",
        },
        s3_client_kwargs={"endpoint_url": f"http://user:PASSWORDLEAK@127.0.0.1:{port}"},
        transport=transport,
        max_attempts=1,
    )
    (tmp_path / "in").write_bytes(b"in")
    frame = pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]})
    pipeline = file_dataset.Pipeline(lambda i, o: {}, {"into_path": "s3://bkt/out"}, options)
    with pytest.raises(file_dataset.TransferError) as raised:
        pipeline(frame)
    assert raised.value.unreachable
    shown = "".join(traceback.format_exception(raised.value)) + _everything_held(raised.value)
    assert "PASSWORDLEAK" not in shown
    assert "127.0.0.1" in shown


def test_signed_urls_in_cells_are_masked_in_messages() -> None:
    signed = (
        "https://scans.s3.amazonaws.com/p01/image.mha?AWSAccessKeyId=AKIALEAKCHECK0000000"
        "&Signature=ou5%2Bsecret&Expires=1796209736"
    )
    v4 = (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIALEAKCHECK0000000%2F2025"
        "&X-Amz-Security-Token=TOKENLEAK&X-Amz-Signature=abcd1234"
    )
    for cell in (signed, v4, "file:///x?Signature=abcd1234"):
        with pytest.raises(ValueError) as raised:
            file_dataset.reader({"a": cell}).into_blob_table()
        for leaked in ("AKIALEAKCHECK0000000", "ou5%2Bsecret", "TOKENLEAK", "abcd1234"):
            assert leaked not in str(raised.value)
    with pytest.raises(ValueError) as raised:
        file_dataset.reader({"a": signed}).into_blob_table()
    assert "image.mha?AWSAccessKeyId=***&Signature=***&Expires=1796209736" in str(raised.value)


@pytest.mark.parametrize("attempts", [1, 2])
@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_an_endpoint_that_does_not_answer_says_so(
    transport: str, attempts: int, tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = _endpoint_options(f"http://127.0.0.1:{port}", transport, max_attempts=attempts)
    url = "s3://some-bucket/some/key.bin"
    with pytest.raises(file_dataset.TransferError) as raised:
        file_dataset.reader(pd.DataFrame({"id": ["r7"], "x.bin": [url]}), options).into_blob_table()
    message = str(raised.value)
    assert re.search(r"could not connect to the endpoint", message, re.IGNORECASE), message
    assert all(part in message for part in (url, "'r7'", "'x.bin'")), message
    assert f"http://127.0.0.1:{port}/some-bucket/some/key.bin" in message  # the endpoint
    assert "test-secret" not in message
    if transport == "obstore":  # its first line said only "error sending request"
        assert "error sending request: tcp connect error: Connection refused" in message
    (tmp_path / "out.bin").write_bytes(b"payload")
    with pytest.raises(file_dataset.TransferError, match=r"(?i)could not connect"):
        file_dataset.write_files(
            {"out.bin": tmp_path / "out.bin"}, "s3://some-bucket/out", "r7", options
        )


@pytest.fixture
def counting_endpoint() -> Iterator[tuple[str, list[socket.socket]]]:
    """An endpoint that accepts connections and reads requests, but never answers; and
    the connections made to it so far."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    done.set()
    socket.create_connection(server.getsockname()).close()  # wakes the accept() under way
    thread.join()
    server.close()
    for conn in accepted:
        conn.close()


@pytest.fixture
def silent_endpoint(counting_endpoint: tuple[str, list[socket.socket]]) -> str:
    """An endpoint that accepts connections and reads requests, but never answers."""
    return counting_endpoint[0]


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_the_configs_read_timeout_ends_the_wait_for_a_silent_endpoint(
    silent_endpoint: str, transport: str
) -> None:
    """Before, the obstore transport ignored the Config's timeouts (300 s a request)."""
    options = _endpoint_options(silent_endpoint, transport, max_attempts=1)
    options = Options(
        options.session_kwargs,
        {**options.s3_client_kwargs, "config": Config(connect_timeout=1, read_timeout=1)},
        transport=transport,
        max_attempts=1,
    )
    url = "s3://some-bucket/k.bin"
    for method in ("into_blob_table", "into_size_table"):
        with pytest.raises(file_dataset.TransferError) as raised:
            getattr(
                file_dataset.reader(pd.DataFrame({"id": ["r1"], "k": [url]}), options), method
            )()
        message = str(raised.value)
        assert message.startswith(
            f"cannot {'head' if method == 'into_size_table' else 'read'} {url} "
            "(row id 'r1', column 'k'): "
        )
        if transport == "obstore":
            assert "the endpoint did not answer in time (" in message
            assert (
                "the limits are connect_timeout and read_timeout of the Options' Config" in message
            )
        else:
            assert "Read timeout on endpoint URL" in message


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_the_configs_retry_budget_is_honoured_by_both_transports(
    counting_endpoint: tuple[str, list[socket.socket]], transport: str
) -> None:
    """Before, obstore made max_attempts (8) tries whatever the Config's retries said."""
    endpoint, accepted = counting_endpoint
    base = _endpoint_options(endpoint, transport)
    config = Config(retries={"total_max_attempts": 2}, connect_timeout=1, read_timeout=1)
    options = base.replace(s3_client_kwargs={"endpoint_url": endpoint, "config": config})
    with pytest.raises(file_dataset.TransferError, match=r"cannot read s3://some-bucket/k.bin"):
        file_dataset.reader({"k": "s3://some-bucket/k.bin"}, options).into_blob_table()
    assert len(accepted) == 2


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"])
def test_an_endpoint_in_the_environment_does_not_override_the_options(
    transport: str,
    variable: str,
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """obstore also reads AWS_* variables, and AWS_ENDPOINT_URL_S3 won over the endpoint
    given to it: reads came from, and writes went to, another server."""
    s3_client.put_object(Bucket=bucket, Key="in/k.bin", Body=b"from the options' server")
    options = s3_server.options(transport=transport)
    monkeypatch.setenv(variable, "http://127.0.0.1:9")  # the discard port: nothing there
    url = f"s3://{bucket}/in/k.bin"
    table = file_dataset.reader({"k": url}, options).into_blob_table()
    assert table.column("k").to_pylist() == [b"from the options' server"]
    assert file_dataset.reader({"k": url}, options).into_size_table().column("k").to_pylist() == [
        24
    ]
    (tmp_path / "o.bin").write_bytes(b"written")
    written = file_dataset.write_files(
        {"o.bin": tmp_path / "o.bin"}, f"s3://{bucket}/w", 1, options
    )
    assert written == {"o.bin": f"s3://{bucket}/w/1/o.bin"}
    assert s3_client.get_object(Bucket=bucket, Key="w/1/o.bin")["Body"].read() == b"written"


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_password_in_the_endpoint_never_reaches_a_message_or_its_cause(
    silent_endpoint: str, transport: str
) -> None:
    """obstore quotes the request's URL, userinfo included, in its errors."""
    endpoint = silent_endpoint.replace("http://", "http://user:pw-CANARY-99@")
    options = Options(
        _endpoint_options(endpoint, transport).session_kwargs,
        {"endpoint_url": endpoint, "config": Config(connect_timeout=1, read_timeout=1)},
        transport=transport,
        max_attempts=1,
    )
    with pytest.raises(file_dataset.TransferError) as raised:
        file_dataset.reader({"k": "s3://some-bucket/k.bin"}, options).into_size_table()
    shown = "".join(traceback.format_exception(raised.value))
    assert "s3://some-bucket/k.bin" in shown
    assert "pw-CANARY-99" not in shown
    if transport == "obstore":
        assert "http://***@127.0.0.1:" in shown  # the cause is kept, masked


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("size", [1000, 12 * MiB])
def test_a_truncated_body_is_an_error_not_garbage(
    truncating_server: str, transport: str, size: int, tmp_path: Path
) -> None:
    """Object buffers are not zero-filled, so a short body must never pass as complete:
    both the one-request path and the ranged-part path raise, naming the URL."""
    _TruncatingHandler.sizes = {"obj.bin": size}
    options = _endpoint_options(
        truncating_server, transport, part_size=5 * MiB, multipart_threshold=5 * MiB, max_attempts=1
    )
    row = {"obj.bin": "s3://bucket/obj.bin"}
    with pytest.raises(OSError, match=r"s3://bucket/obj\.bin"):
        file_dataset.reader(row, options).into_blob_table()
    with pytest.raises(OSError, match=r"s3://bucket/obj\.bin"):
        file_dataset.reader(row, options).download_to(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


class _KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``size`` bytes per object over HTTP/1.1 keep-alive; counts connections."""

    protocol_version = "HTTP/1.1"
    size = 6 * MiB
    connections = 0

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1

    def do_GET(self) -> None:
        data = bytes(range(256)) * (self.size // 256)
        start, end = 0, len(data) - 1
        if rng := self.headers.get("Range"):
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last), len(data) - 1)
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        self.wfile.write(data[start : end + 1])


def test_boto3_transport_reuses_connections_after_whole_bodies(tmp_path: Path) -> None:
    """A body read to its end leaves its connection for the next request: one thread
    reads three objects (a first response and a ranged part each, into memory and
    into files) over one connection. The boto3 transport reads bodies below urllib3,
    so it hands each connection back itself. (obstore's pool is hyper's, which may
    open a second connection while the first is being handed back.)"""
    transport = "boto3"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _KeepAliveHandler.connections = 0
    try:
        options = _endpoint_options(
            f"http://127.0.0.1:{server.server_address[1]}",
            transport,
            max_concurrency=1,
            part_size=5 * MiB,
            multipart_threshold=5 * MiB,
        )
        row = {f"{name}.bin": f"s3://bucket/{name}" for name in "abc"}
        expected = bytes(range(256)) * (_KeepAliveHandler.size // 256)
        assert file_dataset.reader(row, options).into_blob_table().to_pylist() == [
            dict.fromkeys(row, expected)
        ]
        file_dataset.reader(row, options).download_to(tmp_path)
        assert [(tmp_path / name).read_bytes() == expected for name in row] == [True] * 3
        assert _KeepAliveHandler.connections == 1
    finally:
        server.shutdown()
        server.server_close()


def test_a_body_that_keeps_breaking_says_so(truncating_server: str) -> None:
    """Every response stops half-way: each transport resumes up to max_attempts
    responses, then says what happened (obstore's own words are kept too)."""
    _TruncatingHandler.sizes = {"obj.bin": 1000}
    for transport, words in [
        ("obstore", "could not be read whole, even after resuming it"),
        ("boto3", "connection closed after"),
    ]:
        options = _endpoint_options(truncating_server, transport, max_attempts=3)
        with pytest.raises(file_dataset.TransferError, match=r"s3://bucket/obj\.bin") as raised:
            file_dataset.reader({"obj.bin": "s3://bucket/obj.bin"}, options).into_blob_table()
        assert words in str(raised.value)


class _StallingHandler(_TruncatingHandler):
    """Sends the headers and half the body, then nothing until the test ends."""

    release = threading.Event()

    def do_GET(self) -> None:
        start, end = 0, 999
        if rng := self.headers.get("Range"):
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last), 999)
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/1000")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", '"stalled"')
        self.end_headers()
        self.wfile.write(b"s" * ((end - start + 1) // 2))
        self.wfile.flush()
        self.release.wait()


def test_a_body_that_stalls_says_so_not_that_the_connection_closed() -> None:
    """Before: boto3 said "connection closed after 0 of 1000 bytes", obstore that
    "connections dropped": people chasing a stall looked for what drops connections."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    _StallingHandler.release.clear()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for transport in ("obstore", "boto3"):
            endpoint = f"http://127.0.0.1:{server.server_address[1]}"
            options = _endpoint_options(endpoint, transport, max_attempts=2).replace(
                s3_client_kwargs={"endpoint_url": endpoint, "config": Config(read_timeout=1)}
            )
            with pytest.raises(file_dataset.TransferError) as raised:
                file_dataset.reader({"s.bin": "s3://bucket/s.bin"}, options).into_blob_table()
            assert str(raised.value).startswith(
                "cannot read s3://bucket/s.bin (column 's.bin'): the endpoint stopped sending "
                "the body part-way: nothing arrived within the read_timeout of the Options' "
                "Config, in each of up to max_attempts responses"
            )
            assert raised.value.status is None
    finally:
        _StallingHandler.release.set()
        server.shutdown()
        server.server_close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no system trusts, and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "file-dataset test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "private-ca.pem", folder / "private-ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def _tls_in_front_of(endpoint: str, cert: Path, key: Path) -> Iterator[str]:
    """An HTTPS endpoint (``cert``) that passes every connection on to ``endpoint``."""
    import ssl
    import urllib.parse

    target = urllib.parse.urlsplit(endpoint)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def handle(client: socket.socket) -> None:
        try:
            secure = context.wrap_socket(client, server_side=True)
        except OSError:  # a client that does not trust the certificate hangs up
            client.close()
            return
        upstream = socket.create_connection((target.hostname or "", target.port or 80))
        threading.Thread(target=pipe, args=(secure, upstream), daemon=True).start()
        pipe(upstream, secure)

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                client, _ = listener.accept()
                threading.Thread(target=handle, args=(client,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_a_private_ca_from_a_profile_or_the_environment_is_honoured_and_carried(
    s3_server: LocalS3Server,
    put: Callable[[str, bytes], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: a profile's ca_bundle was ignored by "auto" (obstore, which does not
    trust it, "could not connect"), and Options.default() did not carry AWS_CA_BUNDLE
    to Ray workers (CERTIFICATE_VERIFY_FAILED there)."""
    cert, key = _self_signed(tmp_path)
    url = put("tls/secret.bin", b"over TLS")
    keys = s3_server.options().session_kwargs
    with _tls_in_front_of(s3_server.endpoint_url, cert, key) as https:
        (tmp_path / "config").write_text(
            f"[profile private]\nendpoint_url = {https}\nca_bundle = {cert}\n"
            f"region = us-east-1\naws_access_key_id = {keys['aws_access_key_id']}\n"
            f"aws_secret_access_key = {keys['aws_secret_access_key']}\n"
        )
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
        profile = Options(session_kwargs={"profile_name": "private"})  # transport "auto"
        table = file_dataset.reader({"s.bin": url}, profile).into_blob_table()
        assert table.column("s.bin").to_pylist() == [b"over TLS"]

        monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
        monkeypatch.setenv("AWS_ENDPOINT_URL", https)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        for name in ("aws_access_key_id", "aws_secret_access_key"):
            monkeypatch.setenv(name.upper(), keys[name])
        frozen = Options.default()
        assert frozen.s3_client_kwargs == {"endpoint_url": https, "verify": str(cert)}
        import certifi

        for public in (certifi.where(), str(tmp_path / "no-such.pem")):  # nothing to carry
            monkeypatch.setenv("AWS_CA_BUNDLE", public)
            assert Options.default().s3_client_kwargs == {"endpoint_url": https}
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        for name in ("AWS_ENDPOINT_URL", "AWS_CA_BUNDLE"):  # as on a worker elsewhere
            monkeypatch.delenv(name)
        carried = pickle.loads(pickle.dumps(frozen))
        table = file_dataset.reader({"s.bin": url}, carried).into_blob_table()
        assert table.column("s.bin").to_pylist() == [b"over TLS"]
        for transport, said in [  # the CA is what makes it work
            ("obstore", "TLS: the server's certificate is not trusted; obstore trusts the "),
            ("boto3", "CERTIFICATE_VERIFY_FAILED"),
        ]:
            untrusting = Options(
                session_kwargs=keys,
                s3_client_kwargs={"endpoint_url": https},
                max_attempts=1,
                transport=transport,
            )
            with pytest.raises(file_dataset.TransferError) as raised:
                file_dataset.reader({"s.bin": url}, untrusting).into_blob_table()
            assert said in str(raised.value)


def test_transport_is_chosen_once_per_options_object_and_override(
    s3_server: LocalS3Server,
    put: Callable[[str, bytes], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backend is picked once per Options object (not per object read), and the
    FILE_DATASET_TRANSPORT override still switches it, also for Options already used."""
    from file_dataset._backend import _BACKENDS, backend_for
    from file_dataset._local import LocalBackend
    from file_dataset._s3 import S3Backend
    from file_dataset._s3_obstore import ObstoreS3Backend
    from file_dataset._urls import parse_url

    # The cache is emptied whole when full: with the entries of earlier tests, one of
    # the calls below could empty it and make the next backend a new one (CI, once).
    _BACKENDS.clear()
    monkeypatch.delenv("FILE_DATASET_TRANSPORT", raising=False)
    url = put("chosen.bin", b"chosen once")
    local = tmp_path / "local.bin"
    local.write_bytes(b"local bytes")
    row = {"s3.bin": url, "local.bin": str(local)}
    options = s3_server.options()
    loc = parse_url(url)

    first = backend_for(loc, options)
    assert type(first) is ObstoreS3Backend
    assert backend_for(loc, options) is first
    assert backend_for(loc, s3_server.options()) is not first  # an equal, other object
    assert type(backend_for(parse_url(str(local)), options)) is LocalBackend
    odd = parse_url(url.replace("chosen.bin", "a//b"))  # obstore would rewrite it: boto3
    assert type(backend_for(odd, options)) is S3Backend
    assert backend_for(loc, options) is first
    assert file_dataset.reader(row, options).into_blob_table().to_pylist() == [
        {"s3.bin": b"chosen once", "local.bin": b"local bytes"}
    ]

    monkeypatch.setenv("FILE_DATASET_TRANSPORT", "boto3")
    assert type(backend_for(loc, options)) is S3Backend
    assert file_dataset.reader(row, options).into_blob_table().to_pylist() == [
        {"s3.bin": b"chosen once", "local.bin": b"local bytes"}
    ]
    monkeypatch.delenv("FILE_DATASET_TRANSPORT")
    assert backend_for(loc, options) is first


def test_the_transport_override_takes_any_case_and_says_when_it_is_ignored(
    s3_server: LocalS3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, FILE_DATASET_TRANSPORT=BOTO3 (or a misspelt value) was ignored without a
    word: obstore carried the transfers of a run meant to measure boto3."""
    from file_dataset._backend import backend_for
    from file_dataset._s3 import S3Backend
    from file_dataset._s3_obstore import ObstoreS3Backend
    from file_dataset._urls import parse_url

    options = s3_server.options()
    loc = parse_url("s3://bucket/key")
    monkeypatch.setenv("FILE_DATASET_TRANSPORT", " BOTO3 ")
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        assert type(backend_for(loc, options)) is S3Backend
        monkeypatch.setenv("FILE_DATASET_TRANSPORT", "boto-3")
        assert type(backend_for(loc, options)) is ObstoreS3Backend  # the options' "auto"
        assert type(backend_for(loc, s3_server.options())) is ObstoreS3Backend
    assert [r.getMessage() for r in caplog.records] == [
        "FILE_DATASET_TRANSPORT='boto-3' is not one of auto, obstore, boto3: ignored, so "
        "the options' transport applies"
    ]


def test_equal_options_objects_share_one_store_and_identity_caches_stay_bounded(
    s3_server: LocalS3Server,
    put: Callable[[str, bytes], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ray worker unpickles a new, equal Options for every task: each must find the
    process's store without rehashing per request, and the caches by identity (which
    hold their options alive) must not grow with every task."""
    from file_dataset import _backend, _s3_obstore

    monkeypatch.delenv("FILE_DATASET_TRANSPORT", raising=False)
    monkeypatch.setattr(_backend, "_MAX_BY_IDENTITY", 8)  # every cache by identity
    url = put("shared.bin", b"one store for equal options")
    bucket = url.split("/")[2]
    row = {"shared.bin": url}
    first = s3_server.options()
    assert file_dataset.reader(row, first).into_blob_table().to_pylist() == [
        {"shared.bin": b"one store for equal options"}
    ]
    store = _s3_obstore.store_for(first, bucket)
    for _ in range(20):
        options = s3_server.options()  # equal to first, a new object (as in a Ray task)
        assert file_dataset.reader(row, options).into_blob_table().to_pylist() == [
            {"shared.bin": b"one store for equal options"}
        ]
        assert _s3_obstore.store_for(options, bucket) is store
        assert len(_s3_obstore._SERVES) <= 8
        assert len(_backend._BACKENDS) <= 8


def test_options_values_the_process_forgets_let_go_of_their_stores(
    s3_server: LocalS3Server, put: Callable[[str, bytes], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: obstore stores were kept by options value, up to 256 of them, each with
    its pool of open connections: a service making new options as its credentials
    rotated ran out of file descriptors after 17 rotations of 64 objects (helper-86),
    while the boto3 transport's connections went with the 8 runtimes kept."""
    from file_dataset import _options, _s3_obstore

    monkeypatch.delenv("FILE_DATASET_TRANSPORT", raising=False)
    url = put("rotated.bin", b"rotated")
    bucket = url.split("/")[2]
    used = []
    for i in range(_options._MAX_RUNTIMES + 4):  # a new value each time (as new keys)
        options = s3_server.options(transport="obstore", max_concurrency=4 + i)
        assert file_dataset.reader({"f": url}, options).into_blob_table().to_pylist() == [
            {"f": b"rotated"}
        ]
        used.append((options, options._live(), _s3_obstore.store_for(options, bucket)))
    live = list(_options._Runtime._registry.values())
    assert sum(len(runtime.stores) for runtime in live) <= _options._MAX_RUNTIMES
    forgotten = [runtime for _, runtime, _ in used if runtime not in live]
    assert len(forgotten) >= 4
    assert all(runtime.retired and runtime.stores == {} for runtime in forgotten)
    # Options still held by the caller get a new runtime, and a new store, when used.
    first, runtime, store = used[0]
    assert first._live() is not runtime
    assert _s3_obstore.store_for(first, bucket) is not store
    assert file_dataset.reader({"f": url}, first).into_blob_table().to_pylist() == [
        {"f": b"rotated"}
    ]


def test_options_in_use_keep_the_stores_of_the_buckets_used_last(
    s3_server: LocalS3Server, put: Callable[[str, bytes], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: one shared Options kept an obstore store (~100 KB, and an idle
    connection) for every bucket name it was asked about, missing ones included, for
    as long as it was used: a service reading URLs its users name grew without bound
    (helper-134: 2,000 bucket names, +210 MB)."""
    from file_dataset import _s3_obstore

    monkeypatch.delenv("FILE_DATASET_TRANSPORT", raising=False)
    monkeypatch.setattr(_s3_obstore, "_STORES_KEPT", 4, raising=False)
    url = put("kept.bin", b"the bucket in use")
    bucket = url.split("/")[2]
    options = s3_server.options(transport="obstore")
    row = {"kept.bin": url}
    assert file_dataset.reader(row, options).into_blob_table().to_pylist() == [
        {"kept.bin": b"the bucket in use"}
    ]
    store = _s3_obstore.store_for(options, bucket)
    for n in range(12):
        missing = f"s3://no-such-bucket-{n}-{os.getpid()}/x.bin"
        with pytest.raises(FileNotFoundError) as info:
            file_dataset.reader({"x.bin": missing}, options).into_blob_table()
        assert missing in str(info.value)
        # the bucket in use between them keeps its store
        assert file_dataset.reader(row, options).into_blob_table().to_pylist() == [
            {"kept.bin": b"the bucket in use"}
        ]
        assert len(options._live().stores) <= 4
    assert _s3_obstore.store_for(options, bucket) is store
    assert bucket in options._live().stores


class _ReplacingProxy(http.server.BaseHTTPRequestHandler):
    """Forwards every request to moto. When moto has answered the request that
    :meth:`triggers` picks (by default the first part of ``key``), it runs ``replace``
    (by default: overwrite that object with new bytes of the same size) before passing
    the answer on.

    So the object changes between its first response and its later parts, as when
    another writer replaces it during a read.
    """

    protocol_version = "HTTP/1.1"
    upstream = ""
    key = ""
    replace: ClassVar[list[Callable[[], None]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        import http.client
        import urllib.parse

        target = urllib.parse.urlsplit(self.upstream)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(target.hostname or "", target.port)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
        resp = conn.getresponse()
        data = self.passed_on(resp.read())
        conn.close()
        if self.triggers():
            for replace in self.replace:
                replace()
        self.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        # A HEAD's answer has no body, but announces the object's length.
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        how = self.cut()
        if how is None:
            self.wfile.write(data)
            return
        # Half the body, then hang up: a clean close ("fin") or a reset ("rst").
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if how == "rst":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def cut(self) -> str | None:
        """How to cut this response short ("fin" or "rst"), or None to send it whole."""
        return None

    def passed_on(self, data: bytes) -> bytes:
        """The body to pass on for moto's ``data`` (by default, the same bytes)."""
        return data

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Answers this request here, as S3 would, instead of forwarding it."""
        if length := int(self.headers.get("Content-Length") or 0):
            self.rfile.read(length)
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def triggers(self) -> bool:
        """Whether this request is the one after which the object is replaced."""
        first_part = (self.headers.get("Range") or "").startswith("bytes=0-")
        return self.command == "GET" and first_part and self.path.split("?")[0].endswith(self.key)

    def _dispatch(self) -> None:
        self._forward()  # looked up on the instance, so a subclass may override it

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _dispatch


@contextlib.contextmanager
def _proxy(
    handler: type[_ReplacingProxy], s3_server: LocalS3Server, transport: str, **kwargs: Any
) -> Iterator[Options]:
    """Runs ``handler`` in front of moto; yields options that go through it (5 MiB parts
    unless ``kwargs`` say otherwise)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Options(
            session_kwargs=s3_server.options().session_kwargs,
            s3_client_kwargs={"endpoint_url": f"http://127.0.0.1:{server.server_address[1]}"},
            transport=transport,
            **{"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, **kwargs},
        )
    finally:
        server.shutdown()
        server.server_close()


class _NoChecksumHeaders(_ReplacingProxy):
    """A server that answers 501 to any checksum header (older MinIO, Ceph, proxies)."""

    def _forward(self) -> None:
        if any(name.lower().startswith("x-amz-checksum") for name in self.headers):
            body = b"<Error><Code>NotImplemented</Code><Message>checksums</Message></Error>"
            self.answer(501, body)
            return
        super()._forward()


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_a_server_refusing_checksum_headers_works_with_the_readme_config(
    s3_server: LocalS3Server, transport: str, bucket: str, tmp_path: Path
) -> None:
    """The README's recipe for 501 NotImplemented on x-amz-checksum-* headers, and
    "auto" keeps obstore with it (it sends no such header)."""
    from file_dataset._backend import backend_for
    from file_dataset._s3_obstore import ObstoreS3Backend
    from file_dataset._urls import Location

    small, large = b"small" * 200, bytes(range(256)) * (11 * MiB // 256)
    (tmp_path / "small.bin").write_bytes(small)
    (tmp_path / "large.bin").write_bytes(large)
    files = {"small.bin": tmp_path / "small.bin", "large.bin": tmp_path / "large.bin"}

    class Handler(_NoChecksumHeaders):
        upstream = s3_server.endpoint_url

    with _proxy(Handler, s3_server, transport) as proxied:
        quiet = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        options = proxied.replace(s3_client_kwargs={**proxied.s3_client_kwargs, "config": quiet})
        written = file_dataset.write_files(files, f"s3://{bucket}/quiet", "r1", options)
        table = file_dataset.reader(written, options).into_blob_table()
        assert table.to_pylist() == [{"small.bin": small, "large.bin": large}]
        chosen = backend_for(Location("s3", bucket, "quiet/r1/small.bin"), options)
        assert isinstance(chosen, ObstoreS3Backend) == (transport == "auto")
        if transport == "boto3":  # without the Config, boto3 asks for checksums
            with pytest.raises(file_dataset.TransferError) as raised:
                file_dataset.reader(written, proxied).into_blob_table()
            assert raised.value.status == 501


def test_an_upload_that_declared_no_checksum_lists_none_at_completion(tmp_path: Path) -> None:
    """With request_checksum_calculation="when_required" the upload declares no
    checksum; a server that answers each part with a CRC32 unasked had it listed at
    completion all the same, the mismatched shape (helper-106)."""

    class Echoing(_RefusingHandler):
        completions: ClassVar[list[bytes]] = []
        seen: ClassVar[list[str]] = []

        def _answer(self, status: int, body: bytes, **headers: str) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if "uploads" in self.path.partition("?")[2].split("&"):
                self._answer(
                    200,
                    b"<InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>k</Key>"
                    b"<UploadId>u1</UploadId></InitiateMultipartUploadResult>",
                )
                return
            self.completions.append(body)
            self._answer(
                200,
                b'<CompleteMultipartUploadResult><ETag>"e-2"</ETag>'
                b"</CompleteMultipartUploadResult>",
            )

        def do_PUT(self) -> None:
            self.seen.append(self.command)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            number = self.path.partition("partNumber=")[2].partition("&")[0]
            self._answer(200, b"", ETag=f'"p{number}"', **{"x-amz-checksum-crc32": "AAAAAA=="})

    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 * MiB))
    with _fake_s3(Echoing, "boto3", part_size=5 * MiB, multipart_threshold=5 * MiB) as given:
        quiet = Config(request_checksum_calculation="when_required")
        options = given.replace(s3_client_kwargs={**given.s3_client_kwargs, "config": quiet})
        written = file_dataset.write_files({"big.bin": source}, "s3://bkt/out", "r1", options)
    assert written == {"big.bin": "s3://bkt/out/r1/big.bin"}
    (completion,) = Echoing.completions
    assert Echoing.seen == ["PUT"] * 3  # 5 + 5 + 1 MiB
    for n in (1, 2, 3):
        part = f'<Part><ETag>"p{n}"</ETag><PartNumber>{n}</PartNumber></Part>'
        assert part.encode() in completion
    assert b"Checksum" not in completion


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("if_match", ["honoured", "ignored"])
def test_an_object_replaced_during_its_read_is_an_error_never_a_mix(
    s3_server: LocalS3Server,
    transport: str,
    if_match: str,
    bucket: str,
    s3_client,  # type: ignore[no-untyped-def]
    system_tmp: Path,
) -> None:
    """The later parts of a large object are asked for with If-Match: the first part's
    ETag. Without it, the result would be 5 MiB of one version and 6 of another. Some
    S3-compatible servers ignore If-Match: the later part's ETag is then compared (it
    was not, and the bytes came back spliced from two versions)."""
    size = 11 * MiB
    versions = iter(bytes([i]) * size for i in range(1, 100))
    s3_client.put_object(Bucket=bucket, Key="big", Body=bytes([0]) * size)

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url
        key = "/big"
        replace: ClassVar[list[Callable[[], None]]] = [
            lambda: s3_client.put_object(Bucket=bucket, Key="big", Body=next(versions))
        ]

        def _forward(self) -> None:
            if if_match == "ignored":
                del self.headers["If-Match"]
            super()._forward()

    url = f"s3://{bucket}/big"
    with _proxy(Handler, s3_server, transport) as proxied:
        frame = pd.DataFrame({"id": ["r1"], "big.bin": [url]})
        for read in ("into_blob_table", "into_temp_dir"):
            with pytest.raises(file_dataset.TransferError) as raised:
                getattr(file_dataset.reader(frame, proxied), read)()
            message = str(raised.value)
            assert "changed while it was being read" in message
            assert url in message
            assert "row id 'r1', column 'big.bin'" in message
        assert list(system_tmp.iterdir()) == []  # no partial file, no temp dir
    # Read directly, the object is whole: one version, every byte the same.
    data = file_dataset.reader({"big.bin": url}, s3_server.options()).into_blob_table()
    blob = data.column("big.bin")[0].as_py()
    assert len(blob) == size
    assert blob == blob[:1] * size


class _ReframingProxy(_ReplacingProxy):
    """Passes moto's answers on, re-framed as some S3-compatible servers frame them:
    GET bodies without a Content-Length (ended by closing the connection), and ETags
    made weak (``W/"..."``), as the class attributes say."""

    no_length = False
    weak_etags = False

    def _forward(self) -> None:
        import http.client
        import urllib.parse

        if self.command != "GET":
            super()._forward()
            return
        target = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname or "", target.port)
        conn.request("GET", self.path, headers=dict(self.headers.items()))
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() in ("transfer-encoding", "connection", "content-length"):
                continue
            if name.lower() == "etag" and self.weak_etags:
                value = f"W/{value}"
            self.send_header(name, value)
        if self.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_body_without_a_content_length_is_read_whole_or_refused(
    s3_server: LocalS3Server, transport: str, put: Callable[[str, bytes], str]
) -> None:
    """A body ended by closing the connection (legal HTTP/1.1) read as empty through
    the boto3 transport, with no error, for objects of every size."""
    objects = {f"o{size}": bytes(range(251)) * (size // 251) + b"!" for size in (0, 1024, MiB)}
    rows = {name: put(name, data) for name, data in objects.items()}

    class Handler(_ReframingProxy):
        upstream = s3_server.endpoint_url
        no_length = True

    with _proxy(Handler, s3_server, transport) as proxied:
        reader = file_dataset.reader(rows, proxied)
        if transport == "boto3":
            assert reader.into_blob_table().to_pylist() == [objects]
        else:  # obstore refuses such answers: an error, never wrong bytes
            with pytest.raises(file_dataset.TransferError, match="Content-Length"):
                reader.into_blob_table()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_weak_etags_do_not_fail_large_reads(
    s3_server: LocalS3Server, transport: str, put: Callable[[str, bytes], str]
) -> None:
    """If-Match never matches a weak ETag: every read above the multipart threshold
    failed with "the object changed". The ETags are compared instead."""
    data = bytes(range(251)) * (11 * MiB // 251)
    row = {"big.bin": put("big", data)}

    class Handler(_ReframingProxy):
        upstream = s3_server.endpoint_url
        weak_etags = True

    with _proxy(Handler, s3_server, transport) as proxied:
        assert file_dataset.reader(row, proxied).into_blob_table().to_pylist() == [
            {"big.bin": data}
        ]


def test_odd_answers_of_the_boto3_transport_are_transfer_errors_or_read_right(
    s3_server: LocalS3Server, put: Callable[[str, bytes], str]
) -> None:
    """A HEAD without Content-Length raised KeyError, a total of "*" ValueError, and a
    416 without an S3 error code (an empty object's Range) was an error."""
    rows = {"one.bin": put("one", b"x" * 1024), "empty.bin": put("empty", b"")}

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url

        def _forward(self) -> None:
            if self.command == "HEAD":  # no Content-Length
                self.send_response(200)
                self.send_header("ETag", '"e"')
                self.end_headers()
            elif self.path.split("?")[0].endswith("/one"):
                self.answer(206, b"x" * 1024, {"Content-Range": "bytes 0-1023/*", "ETag": '"e"'})
            elif self.path.split("?")[0].endswith("/empty") and self.headers.get("Range"):
                self.answer(416, b"")  # no XML body, so no error code
            else:
                super()._forward()

    with _proxy(Handler, s3_server, "boto3") as proxied:
        with pytest.raises(file_dataset.TransferError, match="gave no Content-Length"):
            file_dataset.reader(rows, proxied).into_size_table()
        with pytest.raises(file_dataset.TransferError, match=r"did not say the object's size"):
            file_dataset.reader({"one.bin": rows["one.bin"]}, proxied).into_blob_table()
        empty = file_dataset.reader({"empty.bin": rows["empty.bin"]}, proxied)
        assert empty.into_blob_table().to_pylist() == [{"empty.bin": b""}]


def test_a_local_file_rewritten_during_its_read_is_an_error(tmp_path: Path) -> None:
    """Local files get the same guarantee: the later parts check the file's identity."""
    from file_dataset._local import LocalBackend
    from file_dataset._urls import parse_url

    path = tmp_path / "big.bin"
    path.write_bytes(b"a" * 1000)
    loc = parse_url(str(path))
    backend = LocalBackend()
    first, total, tag = backend.read_first(loc, 100)
    assert (bytes(first or b""), total) == (b"a" * 100, 1000)
    view = memoryview(bytearray(900))
    backend.read_into(loc, 100, view, tag)  # unchanged: reads
    assert bytes(view) == b"a" * 900
    os.utime(path, ns=(0, 0))  # rewritten in place: same size, another mtime
    with pytest.raises(file_dataset.TransferError, match="changed while it was being read"):
        backend.read_into(loc, 100, view, tag)
    with pytest.raises(file_dataset.TransferError, match="changed while it was being read"):
        list(backend.read_chunks(loc, 100, 900, tag))
    assert b"".join(backend.read_chunks(loc, 100, 900)) == b"a" * 900  # no tag, no check


def _assert_changed_and_nothing_written(
    error: Exception,
    src: Path,
    s3_client,  # type: ignore[no-untyped-def]
    bucket: str,
) -> None:
    """``error`` says that ``src`` changed during its upload; nothing is in the bucket."""
    message = str(error)
    assert "changed while it was being uploaded; nothing was written" in message
    assert str(src) in message
    assert "row id 'r1', column 'big.bin'" in message
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_local_file_changed_during_its_multipart_upload_writes_nothing(
    s3_server: LocalS3Server,
    transport: str,
    bucket: str,
    s3_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The upload is completed only if the file is still the version whose parts were
    sent; here it is rewritten once the first part has reached the server."""
    src = tmp_path / "big.bin"
    src.write_bytes(b"a" * (11 * MiB))
    rewrites = [b"b" * (11 * MiB)]  # once: the second upload goes through unchanged

    def rewrite() -> None:  # atomically, so that no part can see a truncated file
        if rewrites:
            (tmp_path / "new").write_bytes(rewrites.pop())
            os.replace(tmp_path / "new", src)

    class Handler(_ReplacingProxy):
        replace: ClassVar[list[Callable[[], None]]] = [rewrite]

        def triggers(self) -> bool:
            return self.command == "PUT" and "partNumber=1&" in self.path + "&"

    Handler.upstream = s3_server.endpoint_url
    with _proxy(Handler, s3_server, transport) as proxied:
        with pytest.raises(file_dataset.TransferError) as raised:
            file_dataset.write_files({"big.bin": src}, f"s3://{bucket}/out", "r1", proxied)
        _assert_changed_and_nothing_written(raised.value, src, s3_client, bucket)
        # Unchanged, the same file goes up whole.
        written = file_dataset.write_files({"big.bin": src}, f"s3://{bucket}/out", "r1", proxied)
    got = s3_client.get_object(Bucket=bucket, Key="out/r1/big.bin")["Body"].read()
    assert written == {"big.bin": f"s3://{bucket}/out/r1/big.bin"}
    assert got == b"b" * (11 * MiB)


class _LostCompletion(_ReplacingProxy):
    """Hangs up without answering the first ``lose[0]`` CompleteMultipartUpload
    requests, once moto has acted on them: as when the connection drops after S3 has
    completed the upload. A later completion of an upload already completed is
    answered ``NoSuchUpload``, as S3 does (moto would complete it again). With
    ``abort`` set, the upload is aborted instead (by someone else: nothing is
    written); with ``arrives`` false, the lost completions are not passed on at all.
    """

    lose: ClassVar[list[int]] = [1]
    abort: ClassVar[list[Callable[[str], None]]] = []
    completed: ClassVar[set[str]] = set()
    arrives = True  # False: a lost completion never reached moto either

    def _forward(self) -> None:
        import http.client
        import urllib.parse

        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        upload_id = (query.get("uploadId") or [""])[0]
        if self.command != "POST" or not upload_id:
            super()._forward()
            return
        if self.lose[0] <= 0:
            if upload_id in self.completed:
                body = b"<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>"
                self.answer(404, body)
            else:
                super()._forward()
            return
        self.lose[0] -= 1
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if upload_id in self.completed or not self.arrives:
            pass
        elif self.abort:
            self.abort[0](upload_id)
            self.completed.add(upload_id)  # (moto answers 500 to a completion after it)
        else:
            target = urllib.parse.urlsplit(self.upstream)
            conn = http.client.HTTPConnection(target.hostname or "", target.port)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            assert conn.getresponse().read().startswith(b"<?xml")  # completed
            conn.close()
            self.completed.add(upload_id)
        self.connection.shutdown(socket.SHUT_RDWR)  # and the answer is lost
        self.close_connection = True


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("lost", ["first answer", "every answer"])
def test_a_multipart_upload_whose_completion_was_not_heard_is_written(
    s3_server: LocalS3Server,
    transport: str,
    lost: str,
    bucket: str,
    s3_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The answer to CompleteMultipartUpload is lost after the server completed the
    upload. botocore asks again, and the server no longer knows the upload
    (NoSuchUpload), or every answer is lost (a dropped connection). The object is
    written, and the call says so: before, it raised "no such upload" (or the dropped
    connection) for a file that was stored whole."""
    src = tmp_path / "big.bin"
    data = bytes(range(256)) * (11 * MiB // 256)
    src.write_bytes(data)

    class Handler(_LostCompletion):
        lose: ClassVar[list[int]] = [1 if lost == "first answer" else 99]
        completed: ClassVar[set[str]] = set()

    Handler.upstream = s3_server.endpoint_url
    with _proxy(Handler, s3_server, transport, max_attempts=3) as proxied:
        written = file_dataset.write_files({"big.bin": src}, f"s3://{bucket}/out", "r1", proxied)
    assert written == {"big.bin": f"s3://{bucket}/out/r1/big.bin"}
    assert Handler.lose[0] == (0 if lost == "first answer" else 96)  # 3 attempts
    assert s3_client.get_object(Bucket=bucket, Key="out/r1/big.bin")["Body"].read() == data
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_completion_that_never_arrived_is_an_error_though_the_same_bytes_are_there(
    s3_server: LocalS3Server,
    bucket: str,
    s3_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """Every CompleteMultipartUpload is lost before it reaches the server, and the key
    already holds the very same file (an earlier run's): its ETag is the one these
    parts make, but this upload was never completed. The upload, still open, is seen
    (ListParts), so the call fails and aborts it, rather than counting the old object
    as written and leaving the upload's parts stored (helper-149)."""
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * (11 * MiB // 256))

    class Handler(_LostCompletion):
        lose: ClassVar[list[int]] = [0]
        completed: ClassVar[set[str]] = set()
        arrives = False

    Handler.upstream = s3_server.endpoint_url
    url = f"s3://{bucket}/out/r1/big.bin"
    with _proxy(Handler, s3_server, "boto3", max_attempts=2) as proxied:
        file_dataset.write_files({"big.bin": src}, f"s3://{bucket}/out", "r1", proxied)
        before = s3_client.head_object(Bucket=bucket, Key="out/r1/big.bin")
        Handler.lose[0] = 99
        with pytest.raises(file_dataset.TransferError) as raised:
            file_dataset.write_files({"big.bin": src}, f"s3://{bucket}/out", "r1", proxied)
    assert url in str(raised.value)
    assert "row id 'r1', column 'big.bin'" in str(raised.value)
    assert Handler.lose[0] == 97  # both attempts lost
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    after = s3_client.head_object(Bucket=bucket, Key="out/r1/big.bin")
    assert after["LastModified"] == before["LastModified"]
    assert after["ETag"] == before["ETag"]


def test_a_lost_completion_checked_as_the_call_stops_says_the_file_may_be_written(
    s3_server: LocalS3Server,
    bucket: str,
    s3_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The answer to big.bin's CompleteMultipartUpload is lost after moto completed
    it; while the HEAD that checks its object waits for its answer, an earlier file
    of the call (a.bin) is refused, which stops big.bin's job and cuts that HEAD. The
    error then says that big.bin may be written. Before (helper-149), the cut HEAD
    took the job for one stopped before its end, "nothing written", and the note
    left out a file that was stored."""
    data = bytes(range(256)) * (11 * MiB // 256)
    files = {"a.bin": tmp_path / "a.bin", "big.bin": tmp_path / "big.bin"}
    files["a.bin"].write_bytes(b"small")
    files["big.bin"].write_bytes(data)
    head_waits = threading.Event()

    class Handler(_LostCompletion):
        lose: ClassVar[list[int]] = [1]
        completed: ClassVar[set[str]] = set()

        def _forward(self) -> None:
            if self.command == "PUT" and self.path.split("?")[0].endswith("/a.bin"):
                assert head_waits.wait(20)
                denied = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
                self.answer(403, denied)
                return
            if self.command == "HEAD" and self.path.split("?")[0].endswith("/big.bin"):
                head_waits.set()  # no answer: held until the client gives up
                self.close_connection = True
                self.connection.settimeout(20)
                with contextlib.suppress(OSError):
                    self.connection.recv(1)
                return
            super()._forward()

    Handler.upstream = s3_server.endpoint_url
    with (
        _proxy(Handler, s3_server, "boto3", max_attempts=1) as proxied,
        pytest.raises(file_dataset.ObjectAccessDeniedError) as raised,
    ):
        file_dataset.write_files(files, f"s3://{bucket}/out", "r1", proxied)
    assert f"s3://{bucket}/out/r1/a.bin" in str(raised.value)
    notes = getattr(raised.value, "__notes__", [])
    assert any("may be written" in note and "'big.bin'" in note for note in notes), notes
    assert s3_client.get_object(Bucket=bucket, Key="out/r1/big.bin")["Body"].read() == data


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_multipart_upload_aborted_before_its_completion_is_still_an_error(
    s3_server: LocalS3Server,
    transport: str,
    bucket: str,
    s3_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The other side of the test above: the upload vanished without being completed
    (aborted by someone else), and the key holds another object. The HEAD that looks
    for the upload's object finds another ETag, so the call still fails, naming the
    file, and the object there is left as it was."""
    s3_client.put_object(Bucket=bucket, Key="out/r1/big.bin", Body=b"the old object")
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * (11 * MiB // 256))

    def abort_upload(upload_id: str) -> None:
        s3_client.abort_multipart_upload(Bucket=bucket, Key="out/r1/big.bin", UploadId=upload_id)

    class Handler(_LostCompletion):
        lose: ClassVar[list[int]] = [1]
        abort: ClassVar[list[Callable[[str], None]]] = [abort_upload]
        completed: ClassVar[set[str]] = set()

    Handler.upstream = s3_server.endpoint_url
    with (
        _proxy(Handler, s3_server, transport, max_attempts=3) as proxied,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.write_files({"big.bin": src}, f"s3://{bucket}/out", "r1", proxied)
    message = str(raised.value)
    assert "NoSuchUpload" in message
    assert f"s3://{bucket}/out/r1/big.bin" in message
    assert "row id 'r1', column 'big.bin'" in message
    got = s3_client.get_object(Bucket=bucket, Key="out/r1/big.bin")["Body"].read()
    assert got == b"the old object"
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_local_file_cut_short_during_a_parts_upload_fails_at_once(
    s3_server: LocalS3Server,
    bucket: str,
    s3_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The file is truncated once the second part's request has begun, so its body
    ends before its Content-Length. The server then waited for the missing bytes until
    the client's read_timeout, for every attempt (499 s with botocore's defaults
    against moto), and the error said "read timeout", not what happened."""
    src = tmp_path / "big.bin"
    src.write_bytes(b"a" * (48 * MiB))

    class Handler(_ReplacingProxy):
        def _forward(self) -> None:
            if self.command == "PUT" and "partNumber=2&" in self.path + "&":
                with open(src, "r+b") as f:
                    f.truncate(5)
            super()._forward()

    Handler.upstream = s3_server.endpoint_url
    config = Config(read_timeout=5, retries={"total_max_attempts": 2})
    with _proxy(
        Handler,
        s3_server,
        "boto3",  # multipart uploads always go through boto3
        part_size=16 * MiB,
        multipart_threshold=16 * MiB,
        max_concurrency=1,
    ) as proxied:
        proxied = proxied.replace(s3_client_kwargs={**proxied.s3_client_kwargs, "config": config})
        with pytest.raises(file_dataset.TransferError) as raised:
            file_dataset.write_files({"big.bin": src}, f"s3://{bucket}/cut", "r1", proxied)
    _assert_changed_and_nothing_written(raised.value, src, s3_client, bucket)


@pytest.mark.parametrize("destination", ["s3", "local"])
def test_a_local_file_changed_while_read_for_a_single_write_writes_nothing(
    options: Options,
    bucket: str,
    s3_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    destination: str,
) -> None:
    """A write in one request reads the file first and checks that its version did not
    change meanwhile. The change is simulated: the version seen after the read differs."""
    from file_dataset import _backend, _local

    src = tmp_path / "small.bin"
    src.write_bytes(b"x" * 1000)
    versions = iter(["before", "after"])
    for module in (_backend, _local):
        monkeypatch.setattr(module, "file_version", lambda stat: next(versions))
    into = f"s3://{bucket}/out" if destination == "s3" else str(tmp_path / "out")
    with pytest.raises(file_dataset.TransferError, match="changed while it was being uploaded"):
        file_dataset.write_files({"small.bin": src}, into, "r1", options)
    if destination == "s3":
        assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    else:
        assert list((tmp_path / "out").rglob("*.bin*")) == []  # no file, no temporary


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_connection_dropped_mid_body_is_resumed_where_it_stopped(
    s3_server: LocalS3Server,
    transport: str,
    how: str,
    bucket: str,
    put: Callable[[str, bytes], str],
) -> None:
    """The first response for each object stops half-way (closed or reset); the read
    asks for the rest only, and returns every byte. (A reset can discard bytes that
    had arrived, even the headers, so then the read resumes anywhere up to the half.)"""

    def resumed_at(seen: list[str]) -> int:
        # the later parts (from 5 MiB on) may be asked for before the resume
        starts = [int(r.removeprefix("bytes=").partition("-")[0]) for r in seen[1:]]
        [again] = [start for start in starts if start < 5 * MiB]
        return again

    def expected_resume(sent: int) -> range:
        return range(sent, sent + 1) if how == "fin" else range(sent + 1)

    small = bytes(range(256)) * 40
    large = bytes(range(251)) * (11 * MiB // 251)  # a first response and two parts
    row = {"small.bin": put("small", small), "large.bin": put("large", large)}
    ranges: dict[str, list[str]] = {"small": [], "large": []}

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url

        def cut(self) -> str | None:
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            if self.command != "GET" or name not in ranges:
                return None
            ranges[name].append(self.headers.get("Range") or "")
            return how if len(ranges[name]) == 1 else None

    with _proxy(Handler, s3_server, transport) as proxied:
        blobs = file_dataset.reader(row, proxied).into_blob_table()
        assert blobs.to_pylist() == [{"small.bin": small, "large.bin": large}]
        assert ranges["small"][0].startswith("bytes=0-")
        assert resumed_at(ranges["small"]) in expected_resume(len(small) // 2)
        for name in ranges:
            ranges[name].clear()
        with file_dataset.reader(row, proxied).into_temp_dir() as tmp:
            assert (tmp / "small.bin").read_bytes() == small
            assert (tmp / "large.bin").read_bytes() == large
        assert resumed_at(ranges["large"]) in expected_resume(5 * MiB // 2)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_dropped_streamed_first_response_is_resumed_into_place(
    s3_server: LocalS3Server, transport: str, put: Callable[[str, bytes], str]
) -> None:
    """Default thresholds: the first 8 MiB stream straight into the object's buffer or
    file. That response stops half-way; the rest of it is asked for from there, and
    the object comes out whole both ways."""
    data = bytes(range(251)) * (17 * MiB // 251)
    row = {"big.bin": put("big", data)}
    ranges: list[str] = []

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url

        def cut(self) -> str | None:
            if self.command != "GET" or not self.path.split("?")[0].endswith("/big"):
                return None
            ranges.append(self.headers.get("Range") or "")
            return "fin" if ranges[-1].startswith("bytes=0-") else None

    defaults = Options()
    kwargs = {"part_size": defaults.part_size, "multipart_threshold": defaults.multipart_threshold}
    with _proxy(Handler, s3_server, transport, **kwargs) as proxied:
        blobs = file_dataset.reader(row, proxied).into_blob_table()
        assert blobs.column("big.bin").to_pylist() == [data]
        first = defaults.multipart_threshold
        assert ranges[0] == f"bytes=0-{first - 1}"
        assert f"bytes={first // 2}-{first - 1}" in ranges
        ranges.clear()
        with file_dataset.reader(row, proxied).into_temp_dir() as tmp:
            assert (tmp / "big.bin").read_bytes() == data
        assert f"bytes={first // 2}-{first - 1}" in ranges


@pytest.mark.parametrize("size", [1000, 9 * MiB])
def test_bytes_that_do_not_match_the_servers_checksum_are_an_error(
    s3_server: LocalS3Server, size: int, put: Callable[[str, bytes], str], tmp_path: Path
) -> None:
    """moto sends an object's CRC32 with a GET that covers all of it. A proxy changes
    one byte of each body (same length): the boto3 transport's reads, in memory and to
    files, fail naming the URL and keep nothing, both for a small object and for one
    streamed into place. (obstore does not look at checksums; see the README.)"""
    data = bytes(range(251)) * (size // 251)
    row = {"obj.bin": put("obj", data)}

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url

        def passed_on(self, data: bytes) -> bytes:
            if self.command != "GET" or not data:
                return data
            return bytes([data[0] ^ 1]) + data[1:]

    # 9 MiB: one GET, streamed into place (S3 sends no checksum with a ranged part)
    kwargs = {"part_size": 8 * MiB, "multipart_threshold": 16 * MiB}
    with _proxy(Handler, s3_server, "boto3", **kwargs) as proxied:
        error = re.escape(row["obj.bin"]) + ".*do not match the checksum the server sent"
        with pytest.raises(file_dataset.TransferError, match=error):
            file_dataset.reader(row, proxied).into_blob_table()
        with pytest.raises(file_dataset.TransferError, match=error):
            file_dataset.reader(row, proxied).download_to(tmp_path / "out")
        assert list(tmp_path.rglob("*.bin*")) == []
    assert file_dataset.reader(row, s3_server.options(transport="boto3")).into_blob_table()[
        "obj.bin"
    ].to_pylist() == [data]


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_server_that_ignores_a_range_is_an_error_not_garbage(
    s3_server: LocalS3Server, transport: str, put: Callable[[str, bytes], str]
) -> None:
    """The later parts' Range header is dropped on the way, so moto sends the whole
    object from byte 0: taking that as the part would shift every byte."""
    data = bytes(range(251)) * (11 * MiB // 251)
    row = {"big.bin": put("big", data)}

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url

        def _forward(self) -> None:
            if not (self.headers.get("Range") or "bytes=0-").startswith("bytes=0-"):
                del self.headers["Range"]
            super()._forward()

    with _proxy(Handler, s3_server, transport) as proxied:
        for read in ("into_blob_table", "into_temp_dir"):
            with pytest.raises(file_dataset.TransferError, match=r"s3://.*/big"):
                getattr(file_dataset.reader(row, proxied), read)()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_first_response_shorter_than_its_range_is_an_error_not_a_hole(
    s3_server: LocalS3Server,
    transport: str,
    put: Callable[[str, bytes], str],
    tmp_path: Path,
    system_tmp: Path,
) -> None:
    """The first GET answers "bytes 0-5242879/11534336" with a body 100,000 bytes short
    (and a Content-Length to match). The later parts start at 5 MiB, so the boto3
    transport left those bytes unfilled, in tables and in files, and said nothing."""
    data = bytes(range(251)) * (11 * MiB // 251)
    row = {"big.bin": put("big", data)}

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url

        def passed_on(self, data: bytes) -> bytes:
            first = (self.headers.get("Range") or "").startswith("bytes=0-")
            return data[:-100_000] if self.command == "GET" and first else data

    with _proxy(Handler, s3_server, transport) as proxied:
        reader = file_dataset.reader(row, proxied)
        with pytest.raises(file_dataset.TransferError) as raised:
            reader.into_blob_table()
        assert "s3://" in str(raised.value)
        assert "/big" in str(raised.value)
        dest = tmp_path / "dest"
        dest.mkdir()
        with pytest.raises(file_dataset.TransferError, match=r"s3://.*/big"):
            reader.into_temp_dir(dir=dest)
    assert list(dest.iterdir()) == []
    assert list(system_tmp.iterdir()) == []


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_bucket_in_another_region_is_followed_there(
    s3_server: LocalS3Server,
    transport: str,
    s3_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The proxy answers as S3 does for a bucket of eu-west-1: a request signed for
    any other region gets 301 PermanentRedirect naming the bucket's region. The options'
    client is in us-east-1; reads, sizes and writes still reach the bucket, and after
    the first redirect every request is signed for eu-west-1."""
    name = f"eu-bucket-{transport}-{os.getpid()}"
    s3_client.create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    data = {f"k{i}": bytes([i]) * (100 + i) for i in range(20)}
    for key, value in data.items():
        s3_client.put_object(Bucket=name, Key=key, Body=value)
    signed_for: list[str] = []
    redirected_paths: set[str] = set()

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url

        def _forward(self) -> None:
            if self.path.split("?")[0].split("/")[1] != name:
                super()._forward()
                return
            scope = (self.headers.get("Authorization") or "").split("Credential=")[-1]
            region = scope.split("/")[2] if scope.count("/") >= 4 else ""
            signed_for.append(region)
            if region != "eu-west-1":
                redirected_paths.add(f"{self.command} {self.path}")
            if region == "eu-west-1":
                super()._forward()
                return
            body = (
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PermanentRedirect</Code>"
                b"<Message>The bucket you are attempting to access must be addressed using "
                b"the specified endpoint.</Message></Error>"
            )
            headers = {"x-amz-bucket-region": "eu-west-1", "Content-Type": "application/xml"}
            self.answer(301, body, headers)

    with _proxy(Handler, s3_server, transport) as proxied:
        assert proxied.s3_client().meta.region_name == "us-east-1"
        frame = pd.DataFrame({"id": list(range(20)), "f": [f"s3://{name}/{key}" for key in data]})
        blobs = file_dataset.reader(frame, proxied).into_blob_table()
        assert blobs.column("f").to_pylist() == list(data.values())
        after_first_read = len(signed_for)
        sizes = file_dataset.reader(frame, proxied).into_size_table()
        assert sizes.column("f").to_pylist() == [len(v) for v in data.values()]
        (tmp_path / "out.bin").write_bytes(b"written in eu-west-1")
        written = file_dataset.write_files(
            {"out.bin": tmp_path / "out.bin"}, f"s3://{name}/out", "r1", proxied
        )
    assert written == {"out.bin": f"s3://{name}/out/r1/out.bin"}
    got = s3_client.get_object(Bucket=name, Key="out/r1/out.bin")["Body"].read()
    assert got == b"written in eu-west-1"
    # Redirected at first, then signed for the bucket's region. obstore learns the region
    # once per process, so every request after the first read (20 HEADs and a PUT) is
    # signed for it; boto3 learns it once per client, and there is a client per pool
    # thread. (The first read's requests race each other, so their order is not checked;
    # requests are counted once per method and path, as a transport may resend one whose
    # connection dropped.)
    assert signed_for[0] == "us-east-1"
    redirected = len(redirected_paths)
    if transport == "obstore":
        assert signed_for[after_first_read:] == ["eu-west-1"] * (len(signed_for) - after_first_read)
        assert len(signed_for) - after_first_read >= 21
        assert redirected <= 20 + 1  # the first wave of requests, and one HEAD of the bucket
    else:
        assert redirected <= proxied.max_concurrency + 1


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_requester_pays_bucket_needs_and_gets_the_header(
    s3_server: LocalS3Server,
    transport: str,
    s3_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The proxy answers as S3 does for a requester-pays bucket: 403 AccessDenied to any
    request that does not say ``x-amz-request-payer: requester``."""
    name = f"payer-bucket-{transport}-{os.getpid()}"
    s3_client.create_bucket(Bucket=name)
    big = bytes(range(251)) * (11 * MiB // 251)  # ranged reads, multipart writes
    s3_client.put_object(Bucket=name, Key="small", Body=b"small")
    s3_client.put_object(Bucket=name, Key="big", Body=big)
    refused: list[str] = []

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url

        def _forward(self) -> None:
            in_bucket = self.path.split("?")[0].split("/")[1] == name
            if not in_bucket or self.headers.get("x-amz-request-payer") == "requester":
                super()._forward()
                return
            refused.append(f"{self.command} {self.path}")
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            self.answer(403, body)

    row = {"small": f"s3://{name}/small", "big": f"s3://{name}/big"}
    with _proxy(Handler, s3_server, transport) as proxied:
        # (one object: once a call has failed, the requests it gave up may still reach
        # the proxy, and be refused, after it returned)
        with pytest.raises(PermissionError, match=f"s3://{name}/small"):
            file_dataset.reader({"small": row["small"]}, proxied).into_blob_table()
        assert refused
        refused.clear()
        paying = Options(
            session_kwargs=proxied.session_kwargs,
            s3_client_kwargs=proxied.s3_client_kwargs,
            transport=transport,
            part_size=5 * MiB,
            multipart_threshold=5 * MiB,
            request_payer=True,
        )
        assert file_dataset.reader(row, paying).into_blob_table().to_pylist() == [
            {"small": b"small", "big": big}
        ]
        sizes = file_dataset.reader(row, paying).into_size_table().to_pylist()
        assert sizes == [{"small": 5, "big": len(big)}]
        with file_dataset.reader(row, paying).into_temp_dir() as tmp:
            assert (tmp / "big").read_bytes() == big
            written = file_dataset.write_files(
                {"big.bin": tmp / "big", "small.bin": tmp / "small"}, f"s3://{name}/out", 1, paying
            )
    assert refused == []
    assert s3_client.get_object(Bucket=name, Key="out/1/big.bin")["Body"].read() == big
    assert written["small.bin"] == f"s3://{name}/out/1/small.bin"


class _VirtualHostProxy(_ReplacingProxy):
    """An HTTP proxy (``HTTP_PROXY``) for ``<bucket>.localhost``, which needs no DNS:
    each request goes on to moto path-style, ``/<bucket>/<key>``; its host is kept."""

    seen: ClassVar[list[str]] = []
    queries: ClassVar[list[str]] = []

    def _forward(self) -> None:
        import urllib.parse

        target = urllib.parse.urlsplit(self.path)  # absolute: http://host:port/path
        self.seen.append(target.netloc)
        self.queries.append(target.query)
        host = target.hostname or ""
        bucket = f"/{host.removesuffix('.localhost')}" if host.endswith(".localhost") else ""
        self.path = bucket + target.path + (f"?{target.query}" if target.query else "")
        del self.headers["Host"]  # moto checks no signature: the host becomes moto's own
        super()._forward()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_virtual_host_addressing_reaches_the_bucket_the_url_names(
    transport: str,
    s3_server: LocalS3Server,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With addressing_style="virtual" and an endpoint of its own, obstore was given the
    plain endpoint: it sent s3://mine/other/data.bin to <endpoint>/other/data.bin, read
    bucket "other"'s object and wrote into that bucket. A large object's later parts
    (with obstore, GETs of URLs it presigns) go to the bucket's host too."""
    import urllib.parse

    class Handler(_VirtualHostProxy):
        upstream = s3_server.endpoint_url
        seen: ClassVar[list[str]] = []
        queries: ClassVar[list[str]] = []

    port = urllib.parse.urlsplit(s3_server.endpoint_url).port
    with _proxy(Handler, s3_server, transport) as proxied:
        for variable in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(variable, proxied.s3_client_kwargs["endpoint_url"])
        for variable in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(variable, raising=False)
        s3_client.create_bucket(Bucket="mine")
        s3_client.create_bucket(Bucket="other")
        s3_client.put_object(Bucket="mine", Key="other/data.bin", Body=b"mine's object")
        s3_client.put_object(Bucket="other", Key="data.bin", Body=b"another bucket's object")
        large = bytes(range(256)) * (12 * MiB // 256)
        s3_client.put_object(Bucket="mine", Key="other/large.bin", Body=large)
        s3_client.put_object(Bucket="other", Key="large.bin", Body=b"another large object")
        options = s3_server.options(
            transport=transport,
            max_attempts=1,
            part_size=5 * MiB,
            multipart_threshold=5 * MiB,
            s3_client_kwargs={
                "endpoint_url": f"http://localhost:{port}",
                "config": Config(s3={"addressing_style": "virtual"}),
            },
        )
        url = "s3://mine/other/data.bin"
        table = file_dataset.reader(
            {"f": url, "g": "s3://mine/other/large.bin"}, options
        ).into_blob_table()
        assert table["f"].to_pylist() == [b"mine's object"]
        assert table["g"].to_pylist() == [large]
        signed = [query for query in Handler.queries if "X-Amz-Signature=" in query]
        assert len(signed) == (2 if transport == "obstore" else 0)  # parts 2 and 3
        (tmp_path / "f").write_bytes(b"written")
        file_dataset.write_files({"f": tmp_path / "f"}, "s3://mine/other", "w", options)
        assert s3_client.get_object(Bucket="mine", Key="other/w/f")["Body"].read() == b"written"
        assert "Contents" not in s3_client.list_objects_v2(Bucket="other", Prefix="w/")
        assert set(Handler.seen) == {f"mine.localhost:{port}"}


@pytest.mark.parametrize(
    ("bucket", "config", "endpoint"),
    [
        ("scans", None, "https://scans.s3.eu-west-1.amazonaws.com"),
        ("scans.v2", None, "https://s3.eu-west-1.amazonaws.com"),  # dotted: as boto3, by path
        ("scans", Config(s3={"addressing_style": "path"}), "https://s3.eu-west-1.amazonaws.com"),
    ],
    ids=["virtual", "dotted", "path-asked"],
)
def test_obstore_addresses_aws_buckets_as_boto3_does(
    bucket: str, config: Config | None, endpoint: str
) -> None:
    """Before: always by path (s3.<region>.amazonaws.com/<bucket>), where boto3 uses
    the bucket's own host name. No request is sent: this is the store's setting."""
    from file_dataset._s3_obstore import store_for

    options = Options(
        {
            "aws_access_key_id": "AKIDEXAMPLE",
            "aws_secret_access_key": "s",
            "region_name": "eu-west-1",
        },
        {"config": config} if config else None,
        transport="obstore",
    )
    store = store_for(options, bucket)
    assert store.config["endpoint"] == endpoint
    assert (
        store.config.get("virtual_hosted_style_request")
        == str(bucket == "scans" and not config).lower()
    )


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_options_made_after_the_environment_changed_resolve_it_afresh(
    transport: str,
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Options built by hand resolve endpoint and credentials from the environment.
    Before, a new Options() equal to an earlier one took the earlier one's clients (and
    obstore store): after AWS_ENDPOINT_URL (or keys, or a profile file) changed in a
    notebook, it still went to the old server, as the old identity."""
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"on the first server")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
    }.items():
        monkeypatch.setenv(name, value)
    row = {"f": f"s3://{bucket}/k"}
    first = Options(transport=transport, max_attempts=1)
    assert file_dataset.reader(row, first).into_blob_table()["f"].to_pylist() == [
        b"on the first server"
    ]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port
    with pytest.raises(file_dataset.TransferError, match=r"127\.0\.0\.1:9\b"):
        file_dataset.reader(row, Options(transport=transport, max_attempts=1)).into_blob_table()
    # options already in use keep what they resolved
    assert file_dataset.reader(row, first).into_size_table()["f"].to_pylist() == [19]
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    again = Options(transport=transport, max_attempts=1)
    assert file_dataset.reader(row, again).into_blob_table()["f"].to_pylist() == [
        b"on the first server"
    ]


def test_an_archived_object_is_not_called_access_denied(
    transport_options: Options, bucket: str, s3_client: Any
) -> None:
    """S3 answers 403 InvalidObjectState for a Glacier object: it was reported as
    "access denied; check the credentials" (a PermissionError), which they were not."""
    s3_client.put_object(Bucket=bucket, Key="cold", Body=b"frozen", StorageClass="GLACIER")
    with pytest.raises(file_dataset.TransferError) as info:
        file_dataset.reader({"f": f"s3://{bucket}/cold"}, transport_options).into_blob_table()
    assert not isinstance(info.value, PermissionError)
    assert str(info.value).startswith(
        f"cannot read s3://{bucket}/cold (column 'f'): the object is archived"
    )
    assert "InvalidObjectState" in str(info.value)
    assert "credentials" not in str(info.value)


def test_writes_to_an_object_lock_bucket_send_the_checksum_it_demands(
    s3_server: LocalS3Server, s3_client: Any, tmp_path: Path
) -> None:
    """A bucket with Object Lock and a default retention takes a PUT only with a
    checksum or Content-MD5: obstore sends neither, and every write failed with the
    default transport (boto3 sends a CRC32)."""
    s3_client.create_bucket(Bucket="locked", ObjectLockEnabledForBucket=True)
    s3_client.put_object_lock_configuration(
        Bucket="locked",
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    options = s3_server.options(transport="obstore")
    for row in ("1", "2"):  # the second goes straight to boto3
        (tmp_path / "out.txt").write_bytes(f"row {row}".encode())
        written = file_dataset.write_files(
            {"out.txt": tmp_path / "out.txt"}, "s3://locked/res", row, options
        )
        assert written == {"out.txt": f"s3://locked/res/{row}/out.txt"}
        body = s3_client.get_object(Bucket="locked", Key=f"res/{row}/out.txt")["Body"].read()
        assert body == f"row {row}".encode()


def _url_boto3_sends(options: Options) -> str:
    """The URL of boto3's HeadObject for s3://scans/k, caught before it is sent."""
    sent: list[str] = []

    def refuse(request: Any, **_: Any) -> Any:
        sent.append(request.url)
        raise RuntimeError("not sent")

    client = options.s3_client()
    client.meta.events.register_first("before-send.s3.HeadObject", refuse)
    with contextlib.suppress(RuntimeError):
        client.head_object(Bucket="scans", Key="k")
    (url,) = sent
    return url


@pytest.mark.parametrize("where", ["environment", "profile"])
@pytest.mark.parametrize(
    ("setting", "endpoint"),
    [
        ("use_fips_endpoint", "https://scans.s3-fips.eu-west-1.amazonaws.com/k"),
        ("use_dualstack_endpoint", "https://scans.s3.dualstack.eu-west-1.amazonaws.com/k"),
    ],
)
def test_fips_or_dual_stack_requests_go_by_boto3(
    where: str, setting: str, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: "auto" took obstore, which sent them to s3.<region>.amazonaws.com, so a
    FIPS-bound deployment silently left FIPS; after a first fix, still so when the
    profile in the AWS config file asked for it. boto3's endpoint rules decide the
    host (virtual-hosted, per region); no request is sent here."""
    from file_dataset._backend import backend_for
    from file_dataset._s3 import S3Backend
    from file_dataset._urls import parse_url

    config = tmp_path / "config"
    config.write_text("[profile p]\nregion = eu-west-1\n")
    for name in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    if where == "environment":
        monkeypatch.setenv(f"AWS_{setting.upper()}", "TRUE")
    else:
        config.write_text(f"[profile p]\nregion = eu-west-1\n{setting} = true\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    options = Options(
        {"profile_name": "p", "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s"}
    )
    assert type(backend_for(parse_url("s3://scans/k"), options)) is S3Backend
    assert _url_boto3_sends(options) == endpoint


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_put_that_s3_stopped_waiting_for_is_made_again(transport: str, tmp_path: Path) -> None:
    """S3 answers 400 RequestTimeout when a PUT's body stalls; botocore retries it.
    Before, with obstore (which does not), the write failed at once and a Pipeline
    dropped the row (helper-102)."""

    class Stalled(_RefusingHandler):
        bodies: ClassVar[list[bytes]] = []

        def do_PUT(self) -> None:
            self.seen.append(self.command)
            self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            if len(self.seen) == 1:
                body = (
                    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>RequestTimeout"
                    b"</Code><Message>Your socket connection to the server was not read "
                    b"from or written to within the timeout period.</Message></Error>"
                )
                self.send_response(400)
                self.send_header("Content-Type", "application/xml")
            else:
                body = b""
                self.send_response(200)
                self.send_header("ETag", '"e"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    Stalled.seen = []
    source = tmp_path / "out.bin"
    source.write_bytes(b"row one's output")
    with _fake_s3(Stalled, transport, max_attempts=3) as options:
        written = file_dataset.write_files({"out.bin": source}, "s3://bkt/res", "r1", options)
    assert written == {"out.bin": "s3://bkt/res/r1/out.bin"}
    assert Stalled.seen == ["PUT", "PUT"]
    assert Stalled.bodies[-1].endswith(b"row one's output")  # boto3 may frame it


@pytest.mark.parametrize("budget", ["max_attempts", "Config"])
@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_put_that_s3_stopped_waiting_for_is_not_made_again_with_one_attempt(
    transport: str, budget: str, tmp_path: Path
) -> None:
    """``max_attempts=1`` asks for no second request; the obstore transport made one
    through boto3 all the same."""

    class Stalled(_RefusingHandler):  # every PUT: 400 RequestTimeout
        get = (400, "RequestTimeout")
        message = "Your socket connection to the server was not read from or written to."
        seen: ClassVar[list[str]] = []

    source = tmp_path / "out.bin"
    source.write_bytes(b"row one's output")
    with _fake_s3(Stalled, transport, max_attempts=1 if budget == "max_attempts" else 8) as given:
        options = given
        if budget == "Config":  # the budget the client resolves (helper-110)
            one = Config(retries={"total_max_attempts": 1})
            options = given.replace(s3_client_kwargs={**given.s3_client_kwargs, "config": one})
        with pytest.raises(file_dataset.TransferError, match="RequestTimeout") as caught:
            file_dataset.write_files({"out.bin": source}, "s3://bkt/res", "r1", options)
    assert "s3://bkt/res/r1/out.bin" in str(caught.value)
    assert Stalled.seen == ["PUT"]


@pytest.mark.parametrize("transport", ["auto", "obstore"])
def test_s3_express_directory_buckets_go_by_boto3(transport: str) -> None:
    """Before: obstore served them, addressing the region's general endpoint with a
    plain signature, where boto3 resolves the bucket's zonal endpoint
    (<bucket>.s3express-<zone>.<region>.amazonaws.com) and its session signature
    (helper-102). No request is sent here."""
    from file_dataset._backend import backend_for
    from file_dataset._s3 import S3Backend
    from file_dataset._s3_obstore import ObstoreS3Backend
    from file_dataset._urls import parse_url

    options = Options(
        {
            "aws_access_key_id": "AKIDEXAMPLE",
            "aws_secret_access_key": "s",
            "region_name": "us-east-1",
        },
        transport=transport,
    )
    express = parse_url("s3://training--use1-az4--x-s3/shard/0001.tar")
    assert type(backend_for(express, options)) is S3Backend
    general = parse_url("s3://training/shard/0001.tar")
    assert type(backend_for(general, options)) is ObstoreS3Backend


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize(
    "message",
    [
        "<![CDATA[The specified key does not exist.]]>",
        "The key &lt;a&amp;b&gt; does not exist.",
        "\n    The key &lt;a&amp;b&gt; does not exist.\n  ",
    ],
    ids=["cdata", "entities", "indented"],
)
def test_the_servers_message_is_read_as_xml(transport: str, message: str) -> None:
    """Before, with obstore: a message in a CDATA section (moto 5.1's) was lost, the
    error saying only "NoSuchKey", and entities stayed encoded; the line breaks of an
    indented body stayed in the message with both transports (helpers' findings)."""

    class Missing(_RefusingHandler):
        def do_GET(self) -> None:
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code>"
                f"<Message>{message}</Message><Key>p07/image.mha</Key></Error>"
            ).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    frame = pd.DataFrame({"id": ["p07"], "image.mha": ["s3://bkt/p07/image.mha"]})
    with (
        _fake_s3(Missing, transport) as options,
        pytest.raises(file_dataset.ObjectNotFoundError) as raised,
    ):
        file_dataset.reader(frame, options).into_blob_table()
    expected = (
        "The specified key does not exist."
        if "CDATA" in message
        else "The key <a&b> does not exist."
    )
    assert raised.value.reason == f"NoSuchKey: {expected}"
    assert str(raised.value) == (
        "cannot read s3://bkt/p07/image.mha (row id 'p07', column 'image.mha'): "
        f"NoSuchKey: {expected}"
    )


class _QuirkyRangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``data`` as s3://bkt/obj.bin in one of the ways S3-compatible servers
    differ from S3: ``mode`` "ignore-range" (200 and the whole object for any Range),
    "no-content-range" (206 without Content-Range) or "chunked" (ranges answered
    chunked, without Content-Length)."""

    protocol_version = "HTTP/1.1"
    data = b""
    mode = ""
    requests: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        self.requests.append(self.headers.get("Range", ""))
        start, end = (int(wanted[1]), int(wanted[2])) if wanted else (0, len(self.data) - 1)
        end = min(end, len(self.data) - 1)
        if self.mode == "ignore-range" or not wanted:
            self.send_response(200)
            body = self.data
        else:
            self.send_response(206)
            body = self.data[start : end + 1]
            if self.mode != "no-content-range":
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(self.data)}")
        self.send_header("ETag", '"v1"')
        if self.mode == "old-date":  # RFC 850, which HTTP/1.1 readers must still take
            self.send_header("Last-Modified", "Friday, 04-Dec-26 03:21:46 GMT")
        if self.mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for at in range(0, len(body), 1 << 20):
                piece = body[at : at + (1 << 20)]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.mark.parametrize("mode", ["ignore-range", "chunked"])
def test_a_server_that_ignores_range_or_answers_chunked_is_read_whole_with_boto3(
    mode: str, tmp_path: Path
) -> None:
    """Before: above multipart_threshold, the whole object that a server ignoring Range
    sent for the first part was taken for the first part, and the next parts were
    refused ("answered with the whole object"); ranges answered chunked were refused
    ("with a body of None bytes"), though the README sends such servers to boto3
    (a helper's finding)."""
    _QuirkyRangeHandler.data = bytes(range(256)) * (11 * 4096 + 7)  # 11 MiB and a bit
    _QuirkyRangeHandler.mode = mode
    _QuirkyRangeHandler.requests = []
    frame = pd.DataFrame({"id": ["r1"], "obj.bin": ["s3://bkt/obj.bin"]})
    five = 5 * 1024 * 1024
    with _fake_s3(
        _QuirkyRangeHandler, "boto3", part_size=five, multipart_threshold=five
    ) as options:
        table = file_dataset.reader(frame, options).into_blob_table()
        assert table.column("obj.bin")[0].as_py() == _QuirkyRangeHandler.data
        with file_dataset.reader(frame, options).into_temp_dir(dir=tmp_path) as folder:
            assert (folder / "r1" / "obj.bin").read_bytes() == _QuirkyRangeHandler.data
    if mode == "ignore-range":  # one GET per read: the first answer had it all
        assert _QuirkyRangeHandler.requests == [f"bytes=0-{five - 1}"] * 2
    else:  # three ranges per read
        assert len(_QuirkyRangeHandler.requests) == 6
    # obstore (the default) refuses such answers: its error points to boto3
    with (
        _fake_s3(
            _QuirkyRangeHandler, "obstore", part_size=five, multipart_threshold=five
        ) as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.reader(frame, options).into_blob_table()
    assert raised.value.reason.endswith(
        "(obstore refuses such an answer, which some S3-compatible servers and proxies "
        'give; Options(transport="boto3") reads from them)'
    )


def test_a_last_modified_in_an_older_date_format_points_obstore_users_to_boto3() -> None:
    """obstore refuses it ("Invalid last modified ..."), and its error did not say that
    boto3 reads from such a server, as for the other answers it refuses (helper-101)."""
    _QuirkyRangeHandler.data = b"dated the old way"
    _QuirkyRangeHandler.mode = "old-date"
    frame = pd.DataFrame({"id": ["r1"], "obj.bin": ["s3://bkt/obj.bin"]})
    with _fake_s3(_QuirkyRangeHandler, "boto3") as options:
        table = file_dataset.reader(frame, options).into_blob_table()
    assert table.column("obj.bin").to_pylist() == [b"dated the old way"]
    with (
        _fake_s3(_QuirkyRangeHandler, "obstore") as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.reader(frame, options).into_blob_table()
    assert "Invalid last modified 'Friday, 04-Dec-26 03:21:46 GMT'" in raised.value.reason
    assert raised.value.reason.endswith('Options(transport="boto3") reads from them)')


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_partial_answer_without_content_range_is_an_error(transport: str, tmp_path: Path) -> None:
    """Before, with boto3: a 206 without Content-Range was taken for the whole object,
    so an 11 MiB object came back as its first 5 MiB, without an error (a helper's
    finding). obstore refused it already."""
    _QuirkyRangeHandler.data = bytes(range(256)) * (11 * 4096 + 7)
    _QuirkyRangeHandler.mode = "no-content-range"
    frame = pd.DataFrame({"id": ["r1"], "obj.bin": ["s3://bkt/obj.bin"]})
    five = 5 * 1024 * 1024
    with _fake_s3(
        _QuirkyRangeHandler, transport, part_size=five, multipart_threshold=five
    ) as options:
        with pytest.raises(file_dataset.TransferError) as raised:
            file_dataset.reader(frame, options).into_blob_table()
        assert raised.value.row_id == "r1"
        assert raised.value.column == "obj.bin"
        with pytest.raises(file_dataset.TransferError):
            file_dataset.reader(frame, options).into_temp_dir(dir=tmp_path).__enter__()
    assert list(tmp_path.iterdir()) == []
    if transport == "boto3":
        assert "206 (part of the object) with a body of 5242880 bytes but no Content-Range" in (
            raised.value.reason
        )


def test_obstore_requests_are_logged_at_debug(
    s3_server: LocalS3Server,
    bucket: str,
    put: Callable[[str, bytes], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """obstore logs nothing to Python itself: each of its requests gets one DEBUG line."""
    options = s3_server.options(transport="obstore")
    url = put("logged/a.bin", b"abc")
    signed = put("logged/scan.mha?X-Amz-Signature=0123abcd&X-Amz-Credential=AKIDX", b"s")
    missing = f"s3://{bucket}/logged/missing.bin"
    source = tmp_path / "out.bin"
    source.write_bytes(b"out")
    with caplog.at_level(logging.INFO, logger="file_dataset"):
        table = file_dataset.reader({"a.bin": url}, options).into_blob_table()
    assert table.column("a.bin").to_pylist() == [b"abc"]
    assert not [r for r in caplog.records if r.name == "file_dataset.obstore"]
    with caplog.at_level(logging.DEBUG, logger="file_dataset"):
        file_dataset.reader({"a.bin": url}, options).into_size_table()
        file_dataset.reader({"s.mha": signed}, options).into_size_table()
        file_dataset.write_files({"out.bin": source}, f"s3://{bucket}/logged", "1", options)
        with pytest.raises(FileNotFoundError):
            file_dataset.reader({"m.bin": missing}, options).into_blob_table()
    lines = [r.getMessage() for r in caplog.records if r.name == "file_dataset.obstore"]
    assert [line.split(": ")[0] for line in lines] == [
        f"obstore HEAD {url}",
        f"obstore HEAD s3://{bucket}/logged/scan.mha?X-Amz-Signature=***&X-Amz-Credential=***",
        f"obstore PUT s3://{bucket}/logged/1/out.bin",
        f"obstore GET {missing}",
    ]
    assert [line.split(": ")[1].split(" in ")[0] for line in lines] == [
        "answered",
        "answered",
        "answered",
        "failed (FileNotFoundError)",
    ]
    assert all(re.search(r" in \d+\.\d ms$", line) for line in lines)


def test_config_settings_given_as_none_are_botocores_defaults_and_keep_obstore(
    s3_server: LocalS3Server, put: Callable[[str, bytes], str]
) -> None:
    """``Config(x=None)`` is botocore's default for ``x``, as if not given."""
    from file_dataset._backend import backend_for
    from file_dataset._s3_obstore import ObstoreS3Backend
    from file_dataset._urls import parse_url

    url = put("none-config/a.bin", b"abc")
    nones = Config(
        request_checksum_calculation=None, response_checksum_validation=None, user_agent=None
    )
    options = s3_server.options(s3_client_kwargs={"config": nones})
    assert type(backend_for(parse_url(url), options)) is ObstoreS3Backend
    assert file_dataset.reader({"a.bin": url}, options).into_blob_table().to_pylist() == [
        {"a.bin": b"abc"}
    ]
    agent = s3_server.options(s3_client_kwargs={"config": Config(user_agent="mine")})
    assert type(backend_for(parse_url(url), agent)) is not ObstoreS3Backend


@pytest.mark.parametrize("transport", ["auto", "obstore", "boto3"])
@pytest.mark.parametrize(
    "setting",
    ["retries", "max_pool_connections", "tcp_keepalive", "connect_timeout", "read_timeout"],
)
def test_a_config_setting_of_none_reads_on_every_transport(
    s3_server: LocalS3Server, put: Callable[[str, bytes], str], transport: str, setting: str
) -> None:
    """None pool size broke every boto3 request; None timeouts (no timeout, for
    botocore) broke obstore's; None retries dropped the adaptive mode."""
    from file_dataset._backend import backend_for
    from file_dataset._s3 import S3Backend
    from file_dataset._urls import parse_url

    url = put(f"none-setting/{setting}.bin", setting.encode())
    options = s3_server.options(
        s3_client_kwargs={"config": Config(**{setting: None})}, transport=transport
    )
    table = file_dataset.reader({"a.bin": url}, options).into_blob_table()
    assert table.to_pylist() == [{"a.bin": setting.encode()}]
    config = options.s3_client().meta.config
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 8}
    assert config.max_pool_connections == 64
    assert config.tcp_keepalive is True
    if setting.endswith("_timeout"):
        assert getattr(config, setting) is None  # boto3 waits for ever, as asked
        if transport == "auto":  # obstore cannot be told "no timeout"
            assert type(backend_for(parse_url(url), options)) is S3Backend


class _ResettingHandler(http.server.BaseHTTPRequestHandler):
    """Resets the connection (RST, no answer) on a GET of ``reset``; serves the rest."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.split("?")[0].endswith("/reset"):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()  # with SO_LINGER 0: a reset, not a clean close
            return
        body = self.path.encode()  # short: a first GET's range covers it whole
        ranged = bool(self.headers.get("Range"))
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_connection_reset_after_connecting_is_not_an_unreachable_endpoint(
    transport: str, tmp_path: Path
) -> None:
    """With obstore, a request reset before its answer (by a proxy, say) was "could not
    connect to the endpoint" and ``unreachable``, which ends a Pipeline call: a
    helper's call over a frame whose first object was reset raised, while with boto3
    the row was dropped and the others written."""
    with _fake_s3(_ResettingHandler, transport, max_attempts=2) as options:
        with pytest.raises(file_dataset.TransferError) as info:
            file_dataset.reader({"f": "s3://bucket/reset"}, options).into_blob_table()
        assert info.value.unreachable is False
        assert "could not connect" not in str(info.value)
        if transport == "obstore":
            assert "the connection was closed before an answer came" in str(info.value)

        def copy(input_dir: Path, output_dir: Path) -> dict[str, Path]:
            return {"g": input_dir / "f"}

        pipeline = file_dataset.Pipeline(copy, {"into_path": tmp_path / "out"}, options)
        frame = pd.DataFrame({"id": ["1", "2"], "f": ["s3://bucket/reset", "s3://bucket/ok"]})
        assert pipeline(frame)["id"].tolist() == ["2"]
        assert [(f.id, f.stage) for f in pipeline.last_failures] == [("1", "read")]
        assert (tmp_path / "out" / "2" / "g").read_bytes() == b"/bucket/ok"


def test_obstores_waits_between_attempts_grow_as_boto3s_do() -> None:
    """obstore's waits (object_store: each drawn between init_backoff and base times the
    previous) hardly grew with base 2: 8 attempts against a throttling server ended in
    1.2-2.7 s where boto3's took 32 s, so obstore failed rows boto3 rides out. The mean
    of the default 7 waits is now within boto3's range (its standard mode: a mean of
    ~35 s, each wait at most 20 s)."""
    from file_dataset._s3_obstore import _BACKOFF

    init = _BACKOFF["init_backoff"].total_seconds()
    cap = _BACKOFF["max_backoff"].total_seconds()
    waits, wait = [], init
    for _ in range(7):  # the default max_attempts=8
        waits.append(wait)
        wait = min(cap, (init + _BACKOFF["base"] * wait) / 2)  # the mean of the next draw
    assert 20 <= sum(waits) <= 45
    assert cap == 20


class _ProxyErrorPageHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request as a proxy does when the upstream fails: 502 with a
    224 KB HTML page."""

    page = ("<html><body>" + "<p>upstream connect error or disconnect</p>" * 5000).encode()

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.page)

    do_GET = do_HEAD = do_PUT = _answer


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_an_error_page_is_not_carried_whole_into_tracebacks(transport: str) -> None:
    """Before: obstore's error (the page, quoted twice: 448,776 characters) was chained
    as it is, so every traceback and logged exception held it."""
    with (
        _fake_s3(_ProxyErrorPageHandler, transport) as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.reader({"img.mha": "s3://bkt/img.mha"}, options).into_blob_table()
    assert raised.value.status == 502
    assert str(raised.value).startswith("cannot read s3://bkt/img.mha (column 'img.mha'): ")
    shown = "".join(traceback.format_exception(raised.value))
    assert len(shown) < 12_000, len(shown)
    assert "upstream connect error" in shown or transport == "boto3"  # boto3 keeps no body


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_later_parts_are_asked_for_with_if_match(
    s3_server: LocalS3Server, transport: str, bucket: str, s3_client: Any
) -> None:
    """The later parts of a large read ask for the first answer's version (If-Match):
    the ETag check alone would miss a server that honours If-Match but sends no ETag
    with range answers."""
    s3_client.put_object(Bucket=bucket, Key="big", Body=b"x" * (11 * MiB))
    seen: list[tuple[str, str | None]] = []

    class Handler(_ReplacingProxy):
        upstream = s3_server.endpoint_url
        key = "/big"
        replace: ClassVar[list[Callable[[], None]]] = []

        def _forward(self) -> None:
            rng = self.headers.get("Range") or ""
            if self.command == "GET" and rng and not rng.startswith("bytes=0-"):
                seen.append((rng, self.headers.get("If-Match")))
            super()._forward()

    with _proxy(Handler, s3_server, transport) as proxied:
        frame = pd.DataFrame({"id": ["r1"], "big.bin": [f"s3://{bucket}/big"]})
        file_dataset.reader(frame, proxied).into_blob_table()
    etag = s3_client.head_object(Bucket=bucket, Key="big")["ETag"]
    assert seen, "the object was read in parts"
    assert all(tag is not None and tag.strip('"') == etag.strip('"') for _, tag in seen), seen


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_server_failure_given_up_on_says_its_status_and_retries(transport: str) -> None:
    """Before: "SlowDown: Please reduce your request rate." on both transports, with
    nothing to say that it was a 503, retried."""

    class Throttling(_RefusingHandler):
        head = (503, "SlowDown")
        get = (503, "SlowDown")
        message = "Please reduce your request rate."

    Throttling.seen = []
    with (
        _fake_s3(Throttling, transport, max_attempts=2) as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.reader({"img.mha": "s3://bkt/img.mha"}, options).into_blob_table()
    assert Throttling.seen == ["GET", "GET"]
    assert str(raised.value) == (
        "cannot read s3://bkt/img.mha (column 'img.mha'): SlowDown: Please reduce your "
        "request rate. (503 after 1 retry)"
    )
    assert raised.value.status == 503


def test_a_cause_copied_to_be_masked_or_cut_keeps_its_type() -> None:
    """A chain that had to be cut (or masked) was chained as a RuntimeError copy when
    the error's type takes no text (botocore's), so a handler testing for
    NoCredentialsError missed it; a ClientError's own long S3 message was not cut."""
    from botocore.exceptions import ClientError, NoCredentialsError

    from file_dataset._errors import masked_cause

    try:
        raise NoCredentialsError() from ValueError("x" * 5000)
    except NoCredentialsError as error:
        copy = masked_cause(error)
    assert type(copy) is NoCredentialsError
    assert str(copy) == "Unable to locate credentials"
    assert copy.__cause__ is None  # the long chain is left out
    from botocore.exceptions import EndpointConnectionError

    secret = EndpointConnectionError(endpoint_url="http://user:pa55word@host:9000/b")
    masked = masked_cause(secret)
    for shown in (masked, pickle.loads(pickle.dumps(masked))):  # rebuilt from its kwargs
        assert type(shown) is EndpointConnectionError
        assert str(shown) == 'Could not connect to the endpoint URL: "http://***@host:9000/b"'
    long = ClientError(
        {"Error": {"Code": "SlowDown", "Message": "m" * 10_000}, "ResponseMetadata": {}},
        "GetObject",
    )
    cut = masked_cause(long)
    assert isinstance(cut, ClientError)
    assert len(str(cut)) < 4_200
    assert cut.response["Error"]["Message"].endswith("... (10000 characters)")


def test_a_multipart_upload_that_could_not_be_aborted_says_so(tmp_path: Path) -> None:
    """A part failed and so did the abort: the error said only the part's failure,
    nothing of an upload whose parts stay stored, and billed (helper-111 D2)."""

    class Failing(_RefusingHandler):
        get = (500, "InternalError")
        seen: ClassVar[list[str]] = []

        def do_POST(self) -> None:
            self.seen.append(self.command)
            self._start_upload("up-7")

        do_DELETE = _RefusingHandler._refuse

    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(6 * MiB))
    with (
        _fake_s3(Failing, "boto3", part_size=5 * MiB, multipart_threshold=5 * MiB) as options,
        pytest.raises(file_dataset.TransferError, match="InternalError") as raised,
    ):
        file_dataset.write_files({"big.bin": source}, "s3://bkt/out", "r1", options)
    assert "DELETE" in Failing.seen
    assert (
        "file_dataset: the multipart upload 'up-7' of s3://bkt/out/r1/big.bin could not be "
        "aborted (" in "".join(raised.value.__notes__)
    )


@pytest.mark.parametrize("abort", [(500, "InternalError"), (404, "NoSuchUpload")])
@pytest.mark.parametrize("transport", ["boto3", "obstore"])
def test_an_upload_stopped_by_another_files_failure_that_cannot_be_aborted_says_so(
    transport: str, abort: tuple[int, str], tmp_path: Path
) -> None:
    """The note on an upload that could not be aborted went to that file's own
    failure; an upload stopped because an earlier file failed has none (it was
    ``CallStopped``, never raised), so its open upload went unmentioned. An abort
    answered NoSuchUpload leaves nothing stored (helper-147: an upload completed as the
    other file failed got a note that its parts stay stored)."""
    refused = threading.Event()  # a.bin's PUT has been refused

    class Handler(_RefusingHandler):
        get = (403, "AccessDenied")
        seen: ClassVar[list[str]] = []

        def do_PUT(self) -> None:
            if "uploadId=" not in self.path:
                self._refuse()  # a.bin, in one request
                refused.set()
                return
            self.seen.append("part")
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            assert refused.wait(timeout=60)  # a safety net: the refusal comes at once
            self.send_response(200)
            self.send_header("ETag", '"e"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            self.seen.append("create")
            self._start_upload("up-9")

        def do_DELETE(self) -> None:
            self.get = abort
            self._refuse()

    files = {"a.bin": tmp_path / "a.bin", "m.bin": tmp_path / "m.bin"}
    files["a.bin"].write_bytes(b"a" * 1000)
    files["m.bin"].write_bytes(os.urandom(6 * MiB))
    with (
        _fake_s3(Handler, transport, part_size=5 * MiB, multipart_threshold=5 * MiB) as options,
        pytest.raises(file_dataset.ObjectAccessDeniedError) as raised,
    ):
        file_dataset.write_files(files, "s3://bkt/out", "r1", options)
    assert raised.value.url == "s3://bkt/out/r1/a.bin"
    assert "DELETE" in Handler.seen
    said = "file_dataset: the multipart upload 'up-9' of s3://bkt/out/r1/m.bin could not be "
    assert (said in "".join(getattr(raised.value, "__notes__", []))) == (abort[0] == 500)


@pytest.mark.parametrize("transport", ["boto3", "obstore"])
def test_the_uploads_stopped_by_a_failure_are_aborted_together(
    transport: str, tmp_path: Path
) -> None:
    """Four multipart uploads under way when the first file's PUT is refused: their
    aborts were made one after another on the calling thread, so the error waited
    for each answer in turn (12 aborts answered in 0.25 s each: 3.9 s, helper-145).
    Here each abort is answered only once all four have arrived (the server gives up
    waiting after 10 s, a safety net): all four arrive together, each upload is
    aborted once, and the error is the first file's, with no note."""
    uploads = 4
    created = threading.Semaphore(0)  # one release per CreateMultipartUpload answered
    lock = threading.Lock()
    arrived = threading.Event()  # every abort has arrived

    class Handler(_RefusingHandler):
        get = (403, "AccessDenied")
        aborted: ClassVar[list[str]] = []
        waiting: ClassVar[list[int]] = [0]  # aborts arrived and not answered
        together: ClassVar[list[int]] = []  # for each abort, how many had arrived

        def do_PUT(self) -> None:
            if "uploadId=" not in self.path:  # a.bin, in one request
                for _ in range(uploads):
                    assert created.acquire(timeout=60)  # a safety net: they come at once
                self._refuse()
                return
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("ETag", '"e"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            key = self.path.partition("?")[0].rpartition("/")[2]
            self._start_upload(f"up-{key}")
            created.release()

        def do_DELETE(self) -> None:
            with lock:
                self.aborted.append(self.path.partition("uploadId=")[2])
                self.waiting[0] += 1
                if self.waiting[0] == uploads:
                    arrived.set()
            arrived.wait(timeout=10)  # (on the code before, each gave up after 10 s)
            with lock:
                self.together.append(self.waiting[0])
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    files = {"a.bin": tmp_path / "a.bin"}
    files["a.bin"].write_bytes(b"a" * 16_384)
    for n in range(uploads):
        files[f"m{n}.bin"] = tmp_path / f"m{n}.bin"
        files[f"m{n}.bin"].write_bytes(os.urandom(6 * MiB))
    with (
        _fake_s3(Handler, transport, part_size=5 * MiB, multipart_threshold=5 * MiB) as options,
        pytest.raises(file_dataset.ObjectAccessDeniedError) as raised,
    ):
        file_dataset.write_files(files, "s3://bkt/out", "r1", options)
    assert raised.value.url == "s3://bkt/out/r1/a.bin"
    assert not [n for n in getattr(raised.value, "__notes__", []) if "abort" in n]
    assert sorted(Handler.aborted) == [f"up-m{n}.bin" for n in range(uploads)]
    assert Handler.together == [uploads] * uploads  # before: [1, 2, 3, 4]


def test_a_file_refused_on_its_own_is_not_named_as_maybe_written(tmp_path: Path) -> None:
    """The first file's PUT fails (500, one attempt) after the second file's PUT was
    refused (403) on its own: the call raises the first file's error, and its note
    named the second as "may be written", though S3 refused it (helper-150). A 4xx
    answer stores nothing: no note."""
    refused = threading.Event()  # b.bin's PUT has been refused

    class Handler(_RefusingHandler):
        def do_PUT(self) -> None:
            if self.path.endswith("/b.bin"):
                self.get = (403, "AccessDenied")
                self._refuse()
                refused.set()
                return
            assert refused.wait(timeout=60)  # a safety net: the refusal comes at once
            self.get = (500, "InternalError")
            self._refuse()

    files = {"a.bin": tmp_path / "a.bin", "b.bin": tmp_path / "b.bin"}
    for path in files.values():
        path.write_bytes(b"x" * 1000)
    with (
        _fake_s3(Handler, "boto3") as options,
        pytest.raises(file_dataset.TransferError, match="InternalError") as raised,
    ):
        file_dataset.write_files(files, "s3://bkt/out", "r1", options)
    assert raised.value.url == "s3://bkt/out/r1/a.bin"
    assert not [n for n in getattr(raised.value, "__notes__", []) if "b.bin" in n]


def _expiring_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, later: str) -> None:
    """Profile "expiring": a credential_process whose first answer ends in 5 minutes (so
    botocore runs it again before each use) and whose later runs print ``later``:
    ``"banner"`` (a login banner), or ``"stale"`` (credentials that ended an hour ago)."""
    count = tmp_path / "count"
    count.write_text("0")
    answer = (
        'echo \'{"Version": 1, "AccessKeyId": "AKIDPROCESS", '
        '"SecretAccessKey": "processSecretValue", '
        '"Expiration": "\'$(date -u -d "WHEN" +%Y-%m-%dT%H:%M:%SZ)\'"}\'\n'
    )
    script = tmp_path / "login.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {count}); echo $((n + 1)) > {count}\n"
        'if [ "$n" -ge 1 ]; then\n'
        + (answer.replace("WHEN", "-1 hour") if later == "stale" else "echo 'Token expired'\n")
        + "exit 0; fi\n"
        + answer.replace("WHEN", "+5 min")
    )
    script.chmod(0o755)
    config = tmp_path / "config"
    config.write_text(f"[profile expiring]\nregion = us-east-1\ncredential_process = {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize(
    ("later", "reason"),
    [
        (
            "banner",
            "custom-process: its output is not the JSON of credentials (JSONDecodeError: "
            "Expecting value: line 1 column 1 (char 0))",
        ),
        (
            "stale",
            "custom-process: RuntimeError: Credentials were refreshed, but the refreshed "
            "credentials are still expired.",
        ),
    ],
    ids=["banner", "stale"],
)
def test_a_credential_process_that_fails_on_a_refresh_is_failed_credentials(
    transport: str,
    later: str,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_server: LocalS3Server,
) -> None:
    """Its first run gives credentials that expire, a later run fails: the refresh,
    inside a request's signing or obstore's provider, raised a bare JSONDecodeError
    (helper-112) or RuntimeError, which a Pipeline took for one row's failure."""
    bucket = s3_server.create_bucket()
    for i in range(3):
        s3_server.client().put_object(Bucket=bucket, Key=f"k{i}", Body=b"x")
    _expiring_process(tmp_path, monkeypatch, later)
    options = Options(
        {"profile_name": "expiring"},
        {"endpoint_url": s3_server.endpoint_url},
        transport=transport,
        max_attempts=1,
    )
    frame = pd.DataFrame({"id": ["r0", "r1", "r2"], "f": [f"s3://{bucket}/k{i}" for i in range(3)]})
    pipeline = file_dataset.Pipeline(lambda i, o: {}, {"into_path": tmp_path / "out"}, options)
    with pytest.raises(file_dataset.TransferError) as raised:
        pipeline(frame)
    row = str(raised.value.row_id)  # the first row read after the refresh: r0 or r1
    assert str(raised.value) == (
        f"cannot read s3://{bucket}/k{row[1]} (row id '{row}', column 'f'): "
        f"CredentialRetrievalError: Error when retrieving credentials from {reason}"
    )
    assert raised.value.credentials_failed
    assert [failure.id for failure in pipeline.last_failures] == [row]
    assert int((tmp_path / "count").read_text()) >= 2  # loaded, then refreshed


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_credential_process_that_cannot_be_run_is_failed_credentials(
    transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that is not there: boto3 raised a bare FileNotFoundError, and obstore's
    error said the object was not found."""
    config = tmp_path / "config"
    config.write_text(
        "[profile gone]\nregion = us-east-1\ncredential_process = /opt/corp/bin/aws-login\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    options = Options(
        {"profile_name": "gone"}, {"endpoint_url": "http://127.0.0.1:9"}, transport=transport
    )
    _fails_as_credentials(
        options,
        "custom-process: its command cannot be run (FileNotFoundError: [Errno 2] No such "
        "file or directory: '/opt/corp/bin/aws-login')",
        "gone",
        monkeypatch,
    )


class _StsRefusing(http.server.BaseHTTPRequestHandler):
    """An STS endpoint that refuses every AssumeRole, as when the role's trust changed."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = (
            b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>"
            b"User: arn:aws:iam::123456789012:user/base is not authorized to perform: "
            b"sts:AssumeRole</Message></Error><RequestId>r1</RequestId></ErrorResponse>"
        )
        self.send_response(403)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _role_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str) -> None:
    """The default profile assumes a role, by the lines ``role`` (with a role_arn unless
    they give one); no other credentials."""
    config = tmp_path / "config"
    if not role.startswith("role_arn"):
        role = f"role_arn = arn:aws:iam::123456789012:role/r\n{role}"
    config.write_text(
        f"[default]\nregion = us-east-1\n{role}\n[profile base]\naws_access_key_id = AKIDBASE\n"
        "aws_secret_access_key = baseSecretValue\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize(
    ("role", "reason"),
    [
        (  # InvalidConfigError, which a Pipeline took for each row's failure
            "source_profile = nosuch",
            'The source_profile "nosuch" referenced in the profile "default" does not exist.',
        ),
        (  # a bare FileNotFoundError (boto3; into_temp_dir blamed its own temp file) or
            # ObjectNotFoundError (obstore), each row dropped
            "web_identity_token_file = /var/run/secrets/eks/token",
            "CredentialRetrievalError: Error when retrieving credentials from "
            "assume-role-with-web-identity: FileNotFoundError: [Errno 2] No such file or "
            "directory: '/var/run/secrets/eks/token'",
        ),
        (  # STS's 403: an ObjectAccessDeniedError blaming the bucket's policy (boto3), or
            # a bare ClientError naming no URL (obstore), each row dropped
            "source_profile = base",
            "CredentialRetrievalError: Error when retrieving credentials from AssumeRole: "
            "An error occurred (AccessDenied) when calling the AssumeRole operation: User: "
            "arn:aws:iam::123456789012:user/base is not authorized to perform: sts:AssumeRole",
        ),
        (  # a ParamValidationError, each row dropped (helper-116)
            "role_arn = not-an-arn\nsource_profile = base",
            "CredentialRetrievalError: Error when retrieving credentials from assume-role: "
            "ParamValidationError: Parameter validation failed:\nInvalid length for "
            "parameter RoleArn, value: 10, valid min length: 20",
        ),
    ],
    ids=["source_profile", "web_identity", "sts_refuses", "role_arn"],
)
def test_a_role_whose_credentials_cannot_be_had_ends_a_pipeline(
    transport: str,
    role: str,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_server: LocalS3Server,
) -> None:
    """helper-114: each of these dropped every row of a Pipeline, which returned."""
    bucket = s3_server.create_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    _role_profile(tmp_path, monkeypatch, role)
    sts = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StsRefusing)
    threading.Thread(target=sts.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{sts.server_address[1]}")
    try:
        options = Options(
            s3_client_kwargs={"endpoint_url": s3_server.endpoint_url},
            transport=transport,
            max_attempts=1,
        )
        frame = pd.DataFrame({"id": ["r0", "r1"], "f": [f"s3://{bucket}/k"] * 2})
        pipeline = file_dataset.Pipeline(lambda i, o: {}, {"into_path": tmp_path / "o"}, options)
        with pytest.raises(file_dataset.TransferError) as raised:
            pipeline(frame)
    finally:
        sts.shutdown()
        sts.server_close()
    assert str(raised.value).startswith(f"cannot read s3://{bucket}/k (row id 'r0', column 'f'): ")
    assert str(raised.value).endswith(reason)
    assert raised.value.credentials_failed
    assert [failure.id for failure in pipeline.last_failures] == ["r0"]


class _SecondPutRefused(_RefusingHandler):
    """Takes a PUT of a key ending in ``o1.bin``; refuses others as InvalidAccessKeyId.

    With ``late`` set, the PUT of ``o1.bin`` is answered only after a refusal was sent.
    """

    get = (403, "InvalidAccessKeyId")
    seen: ClassVar[list[str]] = []
    late: ClassVar[bool] = False
    refused: ClassVar[threading.Event] = threading.Event()

    def _refuse(self) -> None:
        super()._refuse()
        self.wfile.flush()
        self.refused.set()

    def do_PUT(self) -> None:
        if not self.path.split("?")[0].endswith("o1.bin"):
            self._refuse()
            return
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.late:
            self.refused.wait(timeout=30)
        self.seen.append("PUT o1")
        self.send_response(200)
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("late", [False, True], ids=["before", "after"])
def test_credentials_refused_after_a_file_of_the_row_was_written_say_so(
    transport: str, late: bool, tmp_path: Path
) -> None:
    """Credentials that fail part-way (refused, or a refresh that fails) left out the
    note that other files of the row are written (helper-116), also for a file whose
    answer came after the failure (helper-117)."""
    sources = {}
    for name in ("o1.bin", "o2.bin"):
        sources[name] = tmp_path / name
        sources[name].write_bytes(name.encode())
    _SecondPutRefused.seen = []
    _SecondPutRefused.late = late
    _SecondPutRefused.refused = threading.Event()
    with (
        _fake_s3(_SecondPutRefused, transport, max_concurrency=1 + late) as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.write_files(sources, "s3://bkt/out", "r1", options)
    assert raised.value.credentials_failed
    assert "PUT o1" in _SecondPutRefused.seen
    assert raised.value.__notes__[-1] == (
        "file_dataset.write_files: 1 other file(s) of row id 'r1' are written already "
        "under s3://bkt/out/r1/ ('o1.bin'; each whole, none half-written: a rerun of the "
        "row overwrites them)"
    )


def test_a_setting_botocore_refuses_is_not_failed_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """InvalidConfigError is failed credentials only from a role's profile (helper-116);
    from a setting, it ends a Pipeline's call too."""
    monkeypatch.setenv("AWS_REQUEST_MIN_COMPRESSION_SIZE_BYTES", "abc")
    options = Options(
        {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secretEXAMPLE"},
        {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
    )
    with pytest.raises(file_dataset.TransferError) as raised:
        file_dataset.reader({"f": "s3://bkt/k"}, options).into_blob_table()
    assert str(raised.value).startswith(
        "cannot read s3://bkt/k (column 'f'): InvalidConfigError: Invalid value \"abc\" for "
        "request_min_compression_size_bytes"
    )
    assert not raised.value.credentials_failed
    # a Pipeline stops at its first row (before, it dropped each)
    pipeline = file_dataset.Pipeline(lambda i, o: {}, {"into_path": tmp_path}, options)
    frame = pd.DataFrame({"id": ["r0", "r1"], "f": ["s3://bkt/k0", "s3://bkt/k1"]})
    with pytest.raises(file_dataset.TransferError) as stopped:
        pipeline(frame)
    assert stopped.value.row_id == "r0"
    assert "botocore refuses a setting of these options" in stopped.value.__notes__[0]
    assert [failure.id for failure in pipeline.last_failures] == ["r0"]


class _QuotingHandler(_RefusingHandler):
    """Answers 503 SlowDown, 404 NoSuchKey or 400 InvalidRequest, quoting the request's
    session token and credential scope in the message, as some gateways do."""

    seen: ClassVar[list[str]] = []
    message = (
        "slow; token fake-tokenfake-tokenfake-tokenfake-token, "
        "Credential=AKIAFAKES30000000000/20260101/us-east-1/s3/aws4_request"
    )


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("answer", [(503, "SlowDown"), (404, "NoSuchKey"), (400, "InvalidRequest")])
def test_a_servers_message_quoting_the_credentials_is_masked(
    transport: str, answer: tuple[int, str]
) -> None:
    """helper-128: the boto3 transport put S3's message in the error as it came (obstore
    masked it): a token or key id a gateway echoed reached messages and tracebacks."""
    _QuotingHandler.get = _QuotingHandler.head = answer
    with (
        _fake_s3(_QuotingHandler, transport) as options,
        pytest.raises(file_dataset.TransferError) as raised,
    ):
        file_dataset.reader({"a.bin": "s3://bkt/a.bin"}, options).into_blob_table()
    text = "".join(traceback.format_exception(raised.value))
    assert "fake-token" not in text
    assert "AKIAFAKES30000000000" not in text
    assert "s3://bkt/a.bin" in str(raised.value)


class _RangesHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``data`` to ranged GETs (keep-alive); subclasses answer them."""

    protocol_version = "HTTP/1.1"
    data = b""

    def log_message(self, *args: object) -> None:
        pass

    def asked(self) -> tuple[int, int, int]:
        """The range asked for, (first byte, last byte, object size)."""
        total = len(self.data)
        first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
        return int(first), min(int(last), total - 1), total

    def answer(self, start: int, end: int, total: int, etag: str) -> None:
        """Sends the headers of a 206 answer of bytes ``start``-``end``."""
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", "Wed, 02 Dec 2026 12:00:00 GMT")
        self.end_headers()

    def refuse(self, status: int, code: str) -> None:
        """Sends an S3 error answer (its body too)."""
        body = f"<Error><Code>{code}</Code><Message>{code}.</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


class _HoldingFirstBodyHandler(_RangesHandler):
    """Serves ``data`` (ranged GETs, one ETag), but holds the body of a response from
    byte 0 after its first 64 KiB until a later part has been asked for (or 20 s have
    passed), like a first response that is still arriving on a slow S3 connection.
    ``held`` records, per first response, whether a later part came while it waited."""

    later_asked = threading.Event()
    held: ClassVar[list[bool]] = []
    starts: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        start, end, total = self.asked()
        self.starts.append(start)
        if start:
            self.later_asked.set()
        self.answer(start, end, total, '"held-body-1"')
        body = memoryview(self.data)[start : end + 1]
        if start == 0:
            self.wfile.write(body[: 64 * KiB])
            self.wfile.flush()
            self.held.append(self.later_asked.wait(20))
            body = body[64 * KiB :]
        self.wfile.write(body)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("into", ["blobs", "temp dir"])
@pytest.mark.parametrize(
    ("part", "starts"),
    [(8 * MiB, [0, 8 * MiB, 16 * MiB]), (5 * MiB, [0, 5 * MiB, 10 * MiB, 15 * MiB])],
)
def test_a_large_objects_later_parts_are_asked_for_while_its_first_body_arrives(
    transport: str, into: str, part: int, starts: list[int]
) -> None:
    """The later ranged GETs of a large object go out once the first response's headers
    have told its size, not after its body was read: on S3 (about 90 MB/s per
    connection) waiting for a 16 MiB first body before asking for the rest made a lone
    64 MiB object take 0.28-0.30 s instead of 0.18-0.19 s (benchmark's S3-like server).
    Before, this server waited 20 s for a later request that never came."""
    data = os.urandom(20 * MiB + 12345)  # the tail goes with the last part
    _HoldingFirstBodyHandler.data = data
    _HoldingFirstBodyHandler.later_asked = threading.Event()
    _HoldingFirstBodyHandler.held = []
    _HoldingFirstBodyHandler.starts = []
    settings = {"part_size": part, "multipart_threshold": part}
    with _fake_s3(_HoldingFirstBodyHandler, transport, **settings) as options:
        row = {"f.bin": "s3://bkt/big.bin"}
        if into == "blobs":
            got = file_dataset.reader(row, options).into_blob_table()["f.bin"][0].as_py()
        else:
            with file_dataset.reader(row, options).into_temp_dir() as folder:
                got = (folder / "f.bin").read_bytes()
    assert got == data
    assert _HoldingFirstBodyHandler.held == [True]
    assert sorted(_HoldingFirstBodyHandler.starts) == starts


class _ShortFirstRangeHandler(_RangesHandler):
    """Answers a range from byte 0 with only its first half, under a Content-Range that
    says so (consistent, but not what was asked for); other ranges as asked."""

    def do_GET(self) -> None:
        start, end, total = self.asked()
        if start == 0:
            end = end // 2
        self.answer(start, end, total, '"short-1"')
        self.wfile.write(self.data[start : end + 1])


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_first_answer_shorter_than_the_range_asked_for_is_an_error(transport: str) -> None:
    """helper-139: boto3 took such an answer and went on from the end of the range it
    had asked for, so the bytes between were never read (no error; a hole of whatever
    the buffer held). obstore refused it already."""
    _ShortFirstRangeHandler.data = os.urandom(20 * MiB)
    with (
        _fake_s3(_ShortFirstRangeHandler, transport) as options,
        pytest.raises(file_dataset.TransferError, match=re.escape("s3://bkt/big.bin")),
    ):
        file_dataset.reader({"big.bin": "s3://bkt/big.bin"}, options).into_blob_table()


def _failure_reading(
    handler: type[_RangesHandler],
    transport: str,
    into: str,
    tmp_path: Path,
    source: pd.DataFrame | dict[str, str],
    **settings: Any,
) -> file_dataset.TransferError:
    """The error of reading ``source`` from ``handler`` into blobs or a temp dir
    (``download_to(tmp_path)``), which must be left without a file."""
    with _fake_s3(handler, transport, **settings) as options:
        reader = file_dataset.reader(source, options)
        read = reader.into_blob_table if into == "blobs" else partial(reader.download_to, tmp_path)
        with pytest.raises(file_dataset.TransferError) as raised:
            read()
    assert [path for path in tmp_path.rglob("*") if not path.is_dir()] == []
    return raised.value


class _CutFirstBodyHandler(_RangesHandler):
    """Sends the first 64 KiB of a response from byte 0, then hangs up; serves other
    ranges whole. ``starts`` records every range's first byte."""

    starts: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        start, end, total = self.asked()
        self.starts.append(start)
        self.answer(start, end, total, '"cut-1"')
        if start == 0:
            self.wfile.write(self.data[: 64 * KiB])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(self.data[start : end + 1])


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("into", ["blobs", "temp dir"])
def test_a_failed_first_body_skips_the_parts_not_yet_started(
    transport: str, into: str, tmp_path: Path
) -> None:
    """helper-140: once the parts went out with the first response, a first body that
    failed for good no longer stopped them: the rest of the object (392 MiB of 400 MiB)
    was read before the error came. With one connection the parts wait for the first
    GET, so none of them is made now."""
    _CutFirstBodyHandler.data = os.urandom(20 * MiB)
    _CutFirstBodyHandler.starts = []
    settings = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "max_concurrency": 1}
    row = {"big.bin": "s3://bkt/big.bin"}
    error = _failure_reading(_CutFirstBodyHandler, transport, into, tmp_path, row, **settings)
    assert "s3://bkt/big.bin" in str(error)
    assert _CutFirstBodyHandler.starts == [0]


class _OneMissingHandler(_RangesHandler):
    """Serves ``big.bin`` (``size`` bytes, made up on the fly) and a 404 for
    ``missing.bin``, in this order: the 404 waits until big.bin's first response has
    begun, and that response's rest waits until the 404 is sent. Each response of
    big.bin is sent in 1 MiB pieces; ``sent`` records, per response (by first byte),
    how many bytes went out before it ended or the client hung up."""

    size = 0
    begun = threading.Event()
    missing_sent = threading.Event()
    sent: ClassVar[dict[int, int]] = {}
    piece = bytes(range(256)) * (MiB // 256)

    def asked(self) -> tuple[int, int, int]:
        first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
        return int(first), min(int(last), self.size - 1), self.size

    def do_GET(self) -> None:
        if self.path.split("?")[0].endswith("/missing.bin"):
            self.begun.wait(20)
            self.refuse(404, "NoSuchKey")
            self.missing_sent.set()
            return
        start, end, total = self.asked()
        self.answer(start, end, total, '"one-missing-1"')
        self.sent[start] = 0
        self.close_connection = True
        try:
            while self.sent[start] < end + 1 - start:
                n = min(MiB, end + 1 - start - self.sent[start])
                self.wfile.write(self.piece[:n])
                self.wfile.flush()
                self.sent[start] += n
                if start == 0 and not self.begun.is_set():
                    self.begun.set()
                    self.missing_sent.wait(20)
        except OSError:  # the client hung up
            pass


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("into", ["blobs", "temp dir"])
def test_a_failure_stops_the_other_transfers_of_the_call(
    transport: str, into: str, tmp_path: Path
) -> None:
    """Once one object has failed, the bodies of the objects after it (in the call's
    order) stop at their next chunk and their requests not yet made are not made: the
    call fails with the first failure in that order anyway. Before, they ran to their
    end first: one missing object among 64 large ones on the benchmark's
    S3-like server waited for up to 456 more 8 MiB GETs (2.9 s) before its error came.
    Here big.bin's first response (64 MiB) and its seven 16 MiB parts were all sent
    whole before the error; now 3-4 MiB of the first response are (what the sockets'
    buffers take), and no part, or one cut short."""
    _OneMissingHandler.size = 64 * MiB + 7 * 16 * MiB
    _OneMissingHandler.begun = threading.Event()
    _OneMissingHandler.missing_sent = threading.Event()
    _OneMissingHandler.sent = {}
    frame = pd.DataFrame(
        {"id": ["r1", "r2"], "f.bin": ["s3://bkt/missing.bin", "s3://bkt/big.bin"]}
    )
    settings = {"part_size": 16 * MiB, "multipart_threshold": 64 * MiB, "max_concurrency": 2}
    error = _failure_reading(_OneMissingHandler, transport, into, tmp_path, frame, **settings)
    assert isinstance(error, file_dataset.ObjectNotFoundError)
    assert error.row_id == "r1"
    assert error.column == "f.bin"
    assert "s3://bkt/missing.bin" in str(error)
    sent = dict(_OneMissingHandler.sent)
    assert 0 < sent.pop(0) < 64 * MiB  # the first response was cut
    # at most one part began (on the connection the 404 freed), and it was cut too
    assert len(sent) <= 1
    assert all(n < 16 * MiB for n in sent.values())


class _FailsLateHandler(_RangesHandler):
    """Serves ``late.bin`` (``data``), whose later parts get a 500, and a 404 for
    ``missing.bin``, in this order in time: the 404 once late.bin's first response has
    gone out, the 500s once the 404 has."""

    first_sent = threading.Event()
    missing_sent = threading.Event()

    def do_GET(self) -> None:
        if self.path.split("?")[0].endswith("/missing.bin"):
            self.first_sent.wait(20)
            self.refuse(404, "NoSuchKey")
            self.missing_sent.set()
            return
        start, end, total = self.asked()
        if start:
            self.missing_sent.wait(20)
            self.refuse(500, "InternalError")
            return
        self.answer(start, end, total, '"fails-late-1"')
        self.wfile.write(self.data[start : end + 1])
        self.wfile.flush()
        self.first_sent.set()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("into", ["blobs", "temp dir"])
def test_the_error_raised_is_the_first_in_the_calls_order_not_in_time(
    transport: str, into: str, tmp_path: Path
) -> None:
    """Row r2's object is missing (a 404, first in time); row r1's fails later, in its
    parts (a 500). The error is r1's, as it would be one row at a time: a failure
    stops only the rows after it, so the same input always names the same row (a
    first version stopped every row, and which error came out varied from run to run:
    helper-143 saw the later row's in 3 to 11 of 20 calls)."""
    _FailsLateHandler.data = os.urandom(24 * MiB)
    _FailsLateHandler.first_sent = threading.Event()
    _FailsLateHandler.missing_sent = threading.Event()
    frame = pd.DataFrame(
        {"id": ["r1", "r2"], "f.bin": ["s3://bkt/late.bin", "s3://bkt/missing.bin"]}
    )
    settings = {"part_size": 8 * MiB, "multipart_threshold": 8 * MiB, "max_concurrency": 2}
    error = _failure_reading(_FailsLateHandler, transport, into, tmp_path, frame, **settings)
    assert error.row_id == "r1"
    assert error.status == 500
    assert "s3://bkt/late.bin" in str(error)
    assert _FailsLateHandler.missing_sent.is_set()


class _FailingPartsHandler(_RangesHandler):
    """Serves a range from byte 0 of ``data``; answers every later range with a 500
    (an S3 error), or with ``cut`` set, sends half its body and hangs up."""

    cut = False

    def do_GET(self) -> None:
        start, end, total = self.asked()
        if start == 0 or self.cut:
            self.answer(start, end, total, '"failing-parts-1"')
            body = self.data[start : end + 1]
            self.wfile.write(body if start == 0 else body[: len(body) // 2])
            self.close_connection = start != 0
            return
        body = b"<Error><Code>InternalError</Code><Message>Internal error.</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("into", ["blobs", "temp dir"])
@pytest.mark.parametrize("failure", ["a part's 500", "a part cut short", "no server"])
def test_a_failed_transfer_lets_go_of_its_frames_without_the_garbage_collector(
    transport: str,
    into: str,
    failure: str,
    tmp_path: Path,
    held_by_cycles: Callable[[], list[str]],
) -> None:
    """An error kept in a variable of a frame its traceback holds was a reference
    cycle: with it every frame the error passed through, a large object's buffer among
    their variables, stayed until a garbage collection. Ours (obstore's failures with
    no S3 code of their own: a 500, no answer), and urllib3's and botocore's (a cut
    body, no answer), which keep the errors they raise."""
    _FailingPartsHandler.data = os.urandom(11 * MiB)
    _FailingPartsHandler.cut = failure == "a part cut short"
    settings = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB}
    with _fake_s3(_FailingPartsHandler, transport, **settings) as options:
        if failure == "no server":
            with socket.socket() as unused:  # a port nothing listens on
                unused.bind(("127.0.0.1", 0))
                port = unused.getsockname()[1]
            endpoint = {"endpoint_url": f"http://127.0.0.1:{port}"}
            options = options.replace(s3_client_kwargs=endpoint)
        reader = file_dataset.reader({"big.bin": "s3://bkt/big.bin"}, options)
        read = reader.into_blob_table if into == "blobs" else partial(reader.download_to, tmp_path)
        with pytest.raises(file_dataset.TransferError, match=re.escape("s3://bkt/big.bin")) as info:
            read()
        assert info.value.unreachable is (failure == "no server")
        if transport == "boto3" and failure == "no server":
            # botocore's error keeps the library's frames in its traceback, no others'
            cause = info.value.__cause__
            assert type(cause).__name__ == "EndpointConnectionError"
            frames = traceback.extract_tb(cause.__traceback__)
            assert frames[0].name == "read_first"
            assert {Path(frame.filename).parent.name for frame in frames} == {"file_dataset"}
            del cause
        del info, reader, read
    assert held_by_cycles() == []
    assert [path for path in tmp_path.rglob("*") if not path.is_dir()] == []


class _SignedPartsHandler(_RangesHandler):
    """Serves ``data`` to ranged GETs (ETag ``"signed-1"``, ``If-Match`` honoured) and
    records each as (first byte, presigned or not, ``If-Match``). A presigned GET gets
    ``status`` instead, if set, or, with ``cut``, only the first half of its body before
    the connection closes."""

    requests: ClassVar[list[tuple[int, bool, str | None]]] = []
    paths: ClassVar[list[str]] = []
    status = 0
    cut = False
    replaced = False  # presigned GETs get another version, If-Match ignored
    reset = False  # presigned GETs get no answer: the connection closes

    @classmethod
    def serve(cls, data: bytes, **faults: Any) -> type[_SignedPartsHandler]:
        """Set for a test: ``data``, these ``faults`` (the others off), no requests."""
        cls.data, cls.requests, cls.paths = data, [], []
        for name, off in (("status", 0), ("cut", False), ("replaced", False), ("reset", False)):
            setattr(cls, name, faults.pop(name, off))
        assert not faults, faults
        return cls

    def do_GET(self) -> None:
        start, end, total = self.asked()
        signed = "X-Amz-Signature=" in self.path
        self.requests.append((start, signed, self.headers.get("If-Match")))
        if signed:
            self.paths.append(self.path)
        if signed and self.status:
            codes = {400: "RequestTimeout", 403: "AccessDenied", 429: "SlowDown"}
            self.refuse(self.status, codes.get(self.status, "SlowDown"))
            return
        if signed and self.reset:
            self.close_connection = True
            return
        if signed and self.replaced:
            self.answer(start, end, total, '"signed-2"')
            self.wfile.write(bytes(end - start + 1))
            return
        if self.headers.get("If-Match", '"signed-1"') != '"signed-1"':
            self.refuse(412, "PreconditionFailed")
            return
        self.answer(start, end, total, '"signed-1"')
        body = memoryview(self.data)[start : end + 1]
        if signed and self.cut:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)


def _read_signed(
    transport: str, status: int = 0, cut: bool = False, reads: int = 1, **settings: Any
) -> list[list[tuple[int, bool, str | None]]]:
    """Reads a 20 MiB object (8 MiB parts) ``reads`` times through
    :class:`_SignedPartsHandler`, checks its bytes, returns each read's requests,
    sorted."""
    data = os.urandom(20 * MiB + 12345)
    handler = _SignedPartsHandler.serve(data, status=status, cut=cut)
    made = []
    with _fake_s3(handler, transport, part_size=8 * MiB, **settings) as options:
        for _ in range(reads):
            handler.requests = []
            table = file_dataset.reader({"f.bin": "s3://bkt/big.bin"}, options).into_blob_table()
            assert table["f.bin"][0].as_py() == data
            made.append(sorted(handler.requests))
    return made


# The requests of a read whose later parts were each asked for presigned, then by obstore.
_EACH_PART_BOTH_WAYS = [
    (0, False, None),
    (8 * MiB, False, '"signed-1"'),
    (8 * MiB, True, '"signed-1"'),
    (16 * MiB, False, '"signed-1"'),
    (16 * MiB, True, '"signed-1"'),
]


@pytest.mark.parametrize("transport", ["auto", "obstore", "boto3"])
def test_a_large_objects_later_parts_are_presigned_gets_of_that_version(transport: str) -> None:
    """With obstore, each later part of an object read into memory is one GET of a
    presigned URL (Signature Version 4), with the first answer's ETag in If-Match; the
    first part is obstore's own GET. The boto3 transport sends its own GETs."""
    [requests] = _read_signed(transport)
    signed = transport != "boto3"
    assert requests == [
        (0, False, None),
        (8 * MiB, signed, '"signed-1"'),
        (16 * MiB, signed, '"signed-1"'),
    ]
    if signed:
        assert all("X-Amz-Algorithm=AWS4-HMAC-SHA256" in p for p in _SignedPartsHandler.paths)
        assert all("X-Amz-Credential=AKIAFAKES30000000000" in p for p in _SignedPartsHandler.paths)


def test_a_bucket_that_refuses_a_presigned_get_is_read_by_the_transport_from_then_on() -> None:
    """A 403 to a presigned GET (a bucket policy that refuses them, say) costs one
    request per part then under way: those parts, and every later one of the bucket,
    go by obstore."""
    first, second = _read_signed("obstore", status=403, reads=2)
    transport = [(0, False, None), (8 * MiB, False, '"signed-1"'), (16 * MiB, False, '"signed-1"')]
    assert [r for r in first if not r[1]] == transport
    assert 1 <= len([r for r in first if r[1]]) <= 2
    assert second == transport


@pytest.mark.parametrize("status", [429, 503])
def test_a_throttled_presigned_get_leaves_the_bucket_to_the_transport_for_a_while(
    status: int,
) -> None:
    """A 429 or 503 (SlowDown): the part goes by obstore, with its retries and their
    waits, and so do the bucket's next parts for a while: a throttling server gets no
    second request per part (helper-148)."""
    first, second = _read_signed("obstore", status=status, reads=2, max_attempts=3)
    transport = [(0, False, None), (8 * MiB, False, '"signed-1"'), (16 * MiB, False, '"signed-1"')]
    assert [r for r in first if not r[1]] == transport
    assert 1 <= len([r for r in first if r[1]]) <= 2  # (the parts already under way)
    assert second == transport


def test_a_presigned_get_answered_400_leaves_that_part_only_to_the_transport() -> None:
    """A 400 (RequestTimeout, ExpiredToken) says something of that request, not of
    presigned URLs: the part goes by obstore, and the next parts are presigned again."""
    for requests in _read_signed("obstore", status=400, reads=2, max_attempts=3):
        assert requests == _EACH_PART_BOTH_WAYS


def test_a_presigned_get_cut_short_is_resumed_by_the_transport_where_it_stopped() -> None:
    """The bytes a presigned GET gave before its connection closed are kept; obstore
    reads the rest of the part, from that byte, of the same version."""
    [requests] = _read_signed("obstore", cut=True)
    tail = 20 * MiB + 12345 - 16 * MiB
    assert requests == [
        (0, False, None),
        (8 * MiB, True, '"signed-1"'),
        (12 * MiB, False, '"signed-1"'),
        (16 * MiB, True, '"signed-1"'),
        (16 * MiB + tail // 2, False, '"signed-1"'),
    ]


def test_options_without_a_read_timeout_send_no_presigned_get() -> None:
    """``read_timeout=None`` is no timeout at all to urllib3 (obstore, forced, waits
    a day): such options keep obstore's GETs (helper-148)."""
    [requests] = _read_signed("obstore", config=Config(read_timeout=None))
    assert [r[:2] for r in requests] == [(0, False), (8 * MiB, False), (16 * MiB, False)]


def test_options_paying_as_requester_send_no_presigned_get() -> None:
    """The requester-pays header must be signed: such reads keep obstore's GETs."""
    [requests] = _read_signed("obstore", request_payer=True)
    assert [r[:2] for r in requests] == [(0, False), (8 * MiB, False), (16 * MiB, False)]


def test_presigned_gets_leave_no_credential_in_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """urllib3 logs each request's path at DEBUG, the presigned query with it (key id,
    session token, signature): the project's filter masks them."""
    with caplog.at_level(logging.DEBUG):
        [requests] = _read_signed("obstore")
    assert [r[0] for r in requests if r[1]] == [
        8 * MiB,
        16 * MiB,
    ]  # the presigned GETs were sent, and logged:
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "X-Amz-Signature=" in text
    assert "signed GET s3://bkt/big.bin bytes" in text
    for secret in ("AKIAFAKES30000000000", "s" * 40, "fake-token" * 4):
        assert secret not in text
    assert not re.search(r"X-Amz-Signature=[0-9a-f]{16}", text)


def test_a_presigned_get_of_another_version_is_not_taken_and_the_bucket_kept() -> None:
    """A server that ignores If-Match and answers a presigned GET with another version:
    its bytes are not taken, the transport's GET (with If-Match) reads the part, and
    the next read of the bucket is presigned again (a version says nothing of the way).
    """
    data = os.urandom(20 * MiB)
    handler = _SignedPartsHandler.serve(data, replaced=True)
    row = {"f.bin": "s3://bkt/big.bin"}
    with _fake_s3(handler, "obstore", part_size=8 * MiB) as options:
        assert file_dataset.reader(row, options).into_blob_table()["f.bin"][0].as_py() == data
        first = sorted(handler.requests)
        handler.replaced, handler.requests = False, []
        assert file_dataset.reader(row, options).into_blob_table()["f.bin"][0].as_py() == data
    later = [(8 * MiB, True, '"signed-1"'), (16 * MiB, True, '"signed-1"')]
    assert first == _EACH_PART_BOTH_WAYS
    assert sorted(handler.requests) == [(0, False, None), *later]


def test_a_presigned_get_without_an_answer_holds_no_buffer_until_a_collection(
    held_by_cycles: Callable[[], list[str]],
) -> None:
    """helper-148: urllib3 keeps the error of a request that got no answer in a frame
    of its own; the dropped error's traceback then held the reading frames, the
    object's buffer among them (and the presigned URL), until a garbage collection."""
    data = os.urandom(20 * MiB)
    handler = _SignedPartsHandler.serve(data, reset=True)
    row = {"f.bin": "s3://bkt/big.bin"}
    with _fake_s3(handler, "obstore", part_size=8 * MiB) as options:
        table = file_dataset.reader(row, options).into_blob_table()
        assert table["f.bin"][0].as_py() == data
        del table
        assert [r[:2] for r in sorted(handler.requests)] == [
            (0, False),
            (8 * MiB, False),
            (8 * MiB, True),
            (16 * MiB, False),
            (16 * MiB, True),
        ]
        assert held_by_cycles() == []


def _tcp_queues(port: int, peer: int) -> tuple[int, int]:
    """Bytes in the send and receive queues of this process's TCP socket on local
    ``port`` connected to local ``peer`` (``/proc/net/tcp``)."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            local, remote, _, queues = line.split()[1:5]
            ports = int(local.rpartition(":")[2], 16), int(remote.rpartition(":")[2], 16)
            if ports == (port, peer):
                sent, _, received = queues.partition(":")
                return int(sent, 16), int(received, 16)
    return 0, 0


def _queued_by_client(handler: http.server.BaseHTTPRequestHandler) -> int:
    """Bytes in the send queue of the client's socket of ``handler``'s connection."""
    return _tcp_queues(handler.client_address[1], handler.server.server_address[1])[0]


def _unread_by_client(handler: http.server.BaseHTTPRequestHandler) -> int:
    """Bytes in the receive queue of the client's socket of ``handler``'s connection."""
    return _tcp_queues(handler.client_address[1], handler.server.server_address[1])[1]


class _StallingPartHandler(_RangesHandler):
    """Serves ``data`` as s3://bkt/big.bin (ranged GETs, one ETag). The part from 8 MiB
    gets half its body, then (once the client has read those) nothing until the
    client closes the connection (or 20 s pass: ``client_closed`` or ``gave_up`` says
    which came first). A GET of s3://bkt/missing.bin is answered 404 once that part
    stalls."""

    stalling = threading.Event()
    client_closed = threading.Event()
    gave_up = threading.Event()

    @classmethod
    def serve(cls, data: bytes) -> type[_StallingPartHandler]:
        cls.data, cls.stalling = data, threading.Event()
        cls.client_closed, cls.gave_up = threading.Event(), threading.Event()
        return cls

    def do_GET(self) -> None:
        if "/bkt/missing.bin" in self.path:
            assert self.stalling.wait(20)
            self.refuse(404, "NoSuchKey")
            return
        start, end, total = self.asked()
        self.answer(start, end, total, '"stalling-1"')
        body = memoryview(self.data)[start : end + 1]
        if start != 8 * MiB:
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        # Waits until the client has read them all (its receive queue is empty): it is
        # then blocked reading the rest, the stall to be left. (A stop that came while
        # bytes were still queued was seen between chunks, also by the code before.)
        for _ in range(20_000):
            if not _unread_by_client(self):
                break
            threading.Event().wait(0.001)
        self.stalling.set()
        self.wait_for_close()

    def wait_for_close(self) -> None:
        """Waits until the client closes the connection (or 20 s pass), sending
        nothing; sets ``client_closed`` if the client did, ``gave_up`` if not."""
        self.close_connection = True
        self.connection.settimeout(20)
        try:
            closed = self.connection.recv(1) == b""
        except TimeoutError:
            closed = False
        except OSError:  # reset: the client closed the connection with bytes unread
            closed = True
        (self.client_closed if closed else self.gave_up).set()


def _left_at_once(
    handler: type[_StallingPartHandler], transport: str, into: str, scheme: str, tmp_path: Path
) -> None:
    """Reads rows r0 (missing) and r1 (whose part from 8 MiB ``handler`` holds) and
    checks that the call raises r0's error, the held connection closed by the client
    (not by the server's 20 s), and that nothing is left in the temporary folder.

    obstore's own GETs (the obstore transport's parts into a temporary folder) cannot
    be ended from another thread: their call is given up instead, so the call raises
    while the server still holds the part (the connection is left to obstore's
    timeout)."""
    given_up = transport == "obstore" and into == "temp dir"
    handler = handler.serve(os.urandom(20 * MiB))
    frame = pd.DataFrame(
        {"id": ["r0", "r1"], "f.bin": ["s3://bkt/missing.bin", "s3://bkt/big.bin"]}
    )
    config = Config(read_timeout=120, retries={"total_max_attempts": 1})
    out = tmp_path / "out"
    out.mkdir()

    def read_with(options: Options) -> None:
        if into == "blobs":
            file_dataset.reader(frame, options).into_blob_table()
        else:
            with file_dataset.reader(frame, options).into_temp_dir(out):
                pass

    def read(options: Options) -> None:
        if scheme == "http":
            read_with(options)
            return
        cert, key = _self_signed(tmp_path)  # a TLS endpoint in front of the fake server
        with _tls_in_front_of(options.s3_client_kwargs["endpoint_url"], cert, key) as https:
            kwargs = {"endpoint_url": https, "verify": str(cert), "config": config}
            read_with(options.replace(s3_client_kwargs=kwargs))

    with (
        _fake_s3(handler, transport, config=config, part_size=8 * MiB) as options,
        pytest.raises(file_dataset.ObjectNotFoundError) as raised,
    ):
        read(options)
    assert "'r0'" in str(raised.value)
    assert "s3://bkt/missing.bin" in str(raised.value)
    assert handler.stalling.is_set()
    if given_up:
        assert not handler.gave_up.is_set()  # before: raised once the server gave up
    else:
        assert handler.client_closed.wait(20)  # (not the server's 20 s first)
    assert list(out.iterdir()) == []  # (no partial file left behind)


class _SilentPartHandler(_StallingPartHandler):
    """As :class:`_StallingPartHandler`, but the part from 8 MiB gets no answer at all:
    its request is read, then nothing is sent until the client closes the connection
    (or 20 s pass)."""

    def do_GET(self) -> None:
        if "/bkt/missing.bin" in self.path or self.asked()[0] != 8 * MiB:
            super().do_GET()
            return
        self.stalling.set()
        self.wait_for_close()


@pytest.mark.parametrize(
    ("transport", "into", "scheme"),
    [
        ("obstore", "blobs", "http"),
        ("obstore", "temp dir", "http"),
        ("boto3", "blobs", "http"),
        ("boto3", "temp dir", "http"),
        ("boto3", "blobs", "https"),  # (obstore does not trust a private CA)
        ("boto3", "temp dir", "https"),
    ],
)
def test_a_body_that_stalls_is_left_at_once_when_another_row_fails(
    transport: str, into: str, scheme: str, tmp_path: Path
) -> None:
    """A later part's body stops coming (a stalled S3 connection) while another row's
    object turns out missing: the call ends with that row's error without waiting for
    the read timeout (two minutes here), its connection closed; over TLS too. Before,
    a body read through botocore's connections (the boto3 transport's, the obstore
    transport's presigned parts) held the call until the timeout, and so did
    obstore's own GETs (its parts into a temporary folder), which offer no way to
    stop a read under way: their call is given up now."""
    _left_at_once(_StallingPartHandler, transport, into, scheme, tmp_path)


@pytest.mark.parametrize(
    ("transport", "into", "scheme"),
    [
        ("obstore", "blobs", "http"),
        ("obstore", "temp dir", "http"),
        ("boto3", "blobs", "http"),
        ("boto3", "temp dir", "http"),
        ("boto3", "blobs", "https"),
    ],
)
def test_a_part_never_answered_is_left_at_once_when_another_row_fails(
    transport: str, into: str, scheme: str, tmp_path: Path
) -> None:
    """A later part's GET gets no answer at all (a server that took the request and
    says nothing) while another row's object turns out missing: the call ends with
    that row's error without waiting for the read timeout, its connection closed.
    Before, it waited for the answer until the timeout (two minutes here), on
    botocore's connections (the boto3 transport's, the obstore transport's presigned
    parts) and on obstore's own (given up now)."""
    _left_at_once(_SilentPartHandler, transport, into, scheme, tmp_path)


def _held_until_closed(
    handler: http.server.BaseHTTPRequestHandler, gave_up: threading.Event
) -> None:
    """Sends nothing until the client closes the connection, or 20 s pass (then sets
    ``gave_up``); the connection is closed after."""
    handler.close_connection = True
    handler.connection.settimeout(20)
    try:
        handler.connection.recv(1)
    except TimeoutError:
        gave_up.set()
    except OSError:  # reset: the client closed the connection with bytes unread
        pass


class _SilentObjectHandler(_RefusingHandler):
    """Takes every request for s3://bkt/small.bin and answers none until the client
    closes the connection (or 20 s pass: ``gave_up``); s3://bkt/missing.bin is
    answered 404 once such a request is held."""

    get = head = (404, "NoSuchKey")
    holding = threading.Event()
    gave_up = threading.Event()

    def _hold_or_refuse(self) -> None:
        if "/bkt/missing.bin" not in self.path:
            self.holding.set()
            _held_until_closed(self, self.gave_up)
            return
        assert self.holding.wait(20)
        self._refuse()

    do_GET = do_HEAD = _hold_or_refuse


@pytest.mark.parametrize("into", ["blobs", "sizes"])  # (into_blob_table, into_size_table)
def test_an_obstore_request_never_answered_is_given_up_when_another_row_fails(
    into: str,
) -> None:
    """obstore's own GET of a small object (or its HEAD) gets no answer while another
    row's object turns out missing: the call raises that row's error at once, while
    the server still holds the request. Before, the call waited until the server gave
    up (20 s here; the read timeout, two minutes here, otherwise): obstore's reads
    cannot be ended from another thread, so such a call is now given up."""

    class Handler(_SilentObjectHandler):
        holding, gave_up = threading.Event(), threading.Event()

    frame = pd.DataFrame(
        {"id": ["r0", "r1"], "f.bin": ["s3://bkt/missing.bin", "s3://bkt/small.bin"]}
    )
    config = Config(read_timeout=120, retries={"total_max_attempts": 1})
    with (
        _fake_s3(Handler, "obstore", config=config) as options,
        pytest.raises(file_dataset.ObjectNotFoundError) as raised,
    ):
        getattr(file_dataset.reader(frame, options), f"into_{into[:-1]}_table")()
    assert "'r0'" in str(raised.value)
    assert "s3://bkt/missing.bin" in str(raised.value)
    assert Handler.holding.is_set()
    assert not Handler.gave_up.is_set()  # before: raised once the server gave up


def test_the_threads_of_requests_given_up_are_replaced_in_the_pool() -> None:
    """A Ctrl-C while obstore waits for the answers to both GETs a pool of two threads
    is making: the call ends at once, its two requests given up, and the next call
    on the same options reads at once, on new threads, while the server still holds
    the two requests. Without the threads replaced, it would wait for the given-up
    requests to end (the server's 20 s here, the read timeout otherwise)."""

    class Handler(_RangesHandler):
        data = os.urandom(100_000)
        held: ClassVar[list[str]] = []
        gave_up = threading.Event()

        def do_GET(self) -> None:
            if "/bkt/ok.bin" in self.path:
                start, end, total = self.asked()
                self.answer(start, end, total, '"ok-1"')
                self.wfile.write(self.data[start : end + 1])
                return
            self.held.append(self.path)
            if len(self.held) == 2:  # both requests of the pool are held: Ctrl-C
                _send_sigint_to_main_thread()
            _held_until_closed(self, self.gave_up)

    held = pd.DataFrame({"id": ["a", "b"], "f.bin": ["s3://bkt/a.bin", "s3://bkt/b.bin"]})
    config = Config(read_timeout=120, retries={"total_max_attempts": 1})
    with _fake_s3(Handler, "obstore", config=config, max_concurrency=2) as options:
        with pytest.raises(KeyboardInterrupt):
            file_dataset.reader(held, options).into_blob_table()
        table = file_dataset.reader({"f.bin": "s3://bkt/ok.bin"}, options).into_blob_table()
        assert not Handler.gave_up.is_set()  # (read while both requests were held)
    assert sorted(Handler.held) == ["/bkt/a.bin", "/bkt/b.bin"]
    assert table.column("f.bin").to_pylist() == [Handler.data]


def _send_sigint_to_main_thread() -> None:
    """A Ctrl-C, as the main thread (where the test's call runs) gets it."""
    import signal

    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


class _StallingUploadHandler(http.server.BaseHTTPRequestHandler):
    """An S3 server for two uploads to s3://bkt/out/r1/: b.bin's multipart upload,
    whose first part's body is read for 64 KiB, then no more until ``released`` is
    set (or 20 s pass: ``waited_out`` says which); and a.bin's PUT, answered 403
    once that part stalls. Aborts are noted in ``aborted``."""

    protocol_version = "HTTP/1.1"
    stalling = threading.Event()
    released = threading.Event()
    finished = threading.Event()
    waited_out: ClassVar[list[bool]] = []
    aborted: ClassVar[list[str]] = []
    parts: ClassVar[list[int]] = []

    @classmethod
    def serve(cls) -> type[_StallingUploadHandler]:
        cls.stalling, cls.released, cls.finished = (threading.Event() for _ in range(3))
        cls.waited_out, cls.aborted, cls.parts = [], [], []
        return cls

    def setup(self) -> None:
        # A small receive buffer (Linux lets it grow to 32 MiB here), so that the
        # client's send blocks once the server stops reading.
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        super().setup()

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", ""):
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b""  # (botocore sends a part's checksum as a trailer over HTTPS)
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers
            pass
        return body

    def do_POST(self) -> None:
        self._body()
        upload = "<InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>out/r1/b.bin</Key>"
        self._reply(
            200, f"{upload}<UploadId>up-1</UploadId></InitiateMultipartUploadResult>".encode()
        )

    def do_DELETE(self) -> None:
        self.aborted.append(self.path.partition("uploadId=")[2])
        self._reply(204)

    def do_PUT(self) -> None:
        if "partNumber=" in self.path:
            self.parts.append(int(self.path.partition("partNumber=")[2].partition("&")[0]))
        if "uploadId=" not in self.path:  # a.bin
            assert self.stalling.wait(60)
            self._body()
            denied = b"<Error><Code>AccessDenied</Code><Message>denied</Message></Error>"
            self._reply(403, denied, **{"Content-Type": "application/xml"})
            return
        if "partNumber=1&" not in self.path + "&":
            self._body()
            self._reply(200, ETag='"0123456789abcdef0123456789abcdef"')
            return
        self.rfile.read(64 * KiB)
        # Waits until the client's send queue is full (no longer growing): the client
        # is then blocked sending, the stall to be left. (A stop that came before was
        # seen between the chunks of the part, also by the code before.)
        queued, steady = -1, 0
        deadline = time.monotonic() + 15  # (within a.bin's wait below, also under load)
        while time.monotonic() < deadline:
            now = _queued_by_client(self)
            steady = steady + 1 if now == queued and now > 0 else 0
            if steady == 20:
                break
            queued = now
            threading.Event().wait(0.001)
        self.stalling.set()
        self.waited_out.append(not self.released.wait(20))
        self.close_connection = True
        self.finished.set()


@pytest.mark.parametrize(
    ("transport", "scheme", "attempts"),
    [("obstore", "http", 1), ("boto3", "http", 1), ("boto3", "https", 3)],
)
def test_a_part_whose_send_stalls_is_left_at_once_when_another_file_fails(
    transport: str, scheme: str, attempts: int, tmp_path: Path
) -> None:
    """A multipart upload's part is being sent when the server stops reading it (a
    stalled connection: the client's send blocks), and an earlier file of the call
    is refused: the call ends with that file's error without waiting for the read
    timeout (two minutes here), and the upload is aborted, without a note that the
    file may be written. Before, it waited until the server gave up (its 20 s here).
    Over TLS the shut socket's send fails with SSLEOFError, which botocore retried
    (a part sent after the stop) and which made a note say the file may be written
    (helper-149)."""
    handler = _StallingUploadHandler.serve()
    files = {"a.bin": tmp_path / "a.bin", "b.bin": tmp_path / "b.bin"}
    files["a.bin"].write_bytes(b"small")
    files["b.bin"].write_bytes(os.urandom(20 * MiB))
    config = Config(read_timeout=120, retries={"total_max_attempts": attempts})
    tls = _self_signed(tmp_path) if scheme == "https" else None
    with (
        _fake_s3(
            handler,
            transport,
            config=config,
            tls=tls,
            max_attempts=attempts,
            part_size=16 * MiB,
            multipart_threshold=16 * MiB,
        ) as options,
        pytest.raises(file_dataset.ObjectAccessDeniedError) as raised,
    ):
        file_dataset.write_files(files, "s3://bkt/out", "r1", options)
    handler.released.set()
    assert "s3://bkt/out/r1/a.bin" in str(raised.value)
    assert "row id 'r1', column 'a.bin'" in str(raised.value)
    assert handler.finished.wait(20)
    assert handler.waited_out == [False]  # the call ended before the server's 20 s
    assert handler.aborted == ["up-1"]
    assert sorted(handler.parts) == [1, 2]  # (none sent again after the stop)
    assert not getattr(raised.value, "__notes__", None)
