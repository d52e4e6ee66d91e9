"""reader(): into_temp_dir, into_blob_table and into_size_table against the local S3 server."""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import functools
import gc
import http.server
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import cloudpickle
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

import file_dataset
from file_dataset import Options, TransferError
from file_dataset._local import translate_os_error
from file_dataset._s3 import translate_error
from file_dataset.testing import LocalS3Server

Put = Callable[[str, bytes], str]

MiB = 1024 * 1024
AWKWARD_KEYS = [
    "with space.mha",
    "ünïcödé/日本語.mha",
    "a+b.mha",
    "a%20b.mha",
    "100%.mha",
    "%%25+ +.mha",
    "dir/sub dir/x.mha",
]


def put_many(put: Put, objects: dict[str, bytes]) -> list[str]:
    """Stores many objects concurrently and returns their URLs in order."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda item: put(*item), objects.items()))


def files_under(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (hidden ones too) by relative POSIX path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- Usage 1: into_temp_dir -----------------------------------------------------------


def test_row_into_temp_dir(options: Options, system_tmp: Path, put: Put) -> None:
    row = {
        "image.mha": put("image.mha", b"image bytes"),
        "mask.mha": put("deep/mask.mha", b"mask"),
    }
    with file_dataset.reader(row, options).into_temp_dir() as tmp:
        assert isinstance(tmp, Path)
        assert tmp.parent == system_tmp
        assert files_under(tmp) == {"image.mha": b"image bytes", "mask.mha": b"mask"}
    assert not tmp.exists()
    assert list(system_tmp.iterdir()) == []


def test_row_keyword_form(options: Options, put: Put) -> None:
    url = put("k", b"kw")
    with file_dataset.reader(row={"f.bin": url}, options=options).into_temp_dir() as tmp:
        assert files_under(tmp) == {"f.bin": b"kw"}


def test_source_and_row_are_exclusive() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        file_dataset.reader({"a": "s3://bkt/a"}, row={"a": "s3://bkt/a"})
    with pytest.raises(ValueError, match="exactly one"):
        file_dataset.reader()


@pytest.mark.parametrize("source", ["row", "frame"], ids=["row", "dataframe"])
def test_options_that_are_not_options_are_refused_at_the_call(
    source: str, s3_server: LocalS3Server, system_tmp: Path, put: Put
) -> None:
    """A dict of settings used to fail later, as an AttributeError in the transfer."""
    url = put("k", b"x")
    data: Any = {"f": url} if source == "row" else pd.DataFrame({"id": ["1"], "f": [url]})
    settings = {"endpoint_url": s3_server.endpoint_url}
    with pytest.raises(TypeError) as info:
        file_dataset.reader(data, settings)  # type: ignore[arg-type]
    assert str(info.value) == (
        "reader(options=...) must be a file_dataset.Options, got dict "
        "(build one: Options(session_kwargs=..., s3_client_kwargs=...))"
    )
    with pytest.raises(
        TypeError, match=r"reader\(options=\.\.\.\) must be a file_dataset.Options, got str"
    ):
        file_dataset.reader(row={"f": url}, options="default")  # type: ignore[arg-type]
    assert list(system_tmp.iterdir()) == []


def test_into_temp_dir_in_given_dir(options: Options, tmp_path: Path, put: Put):
    url = put("k", b"x")
    with file_dataset.reader({"f": url}, options).into_temp_dir(dir=tmp_path) as tmp:
        assert tmp.parent == tmp_path
        assert (tmp / "f").read_bytes() == b"x"
    assert list(tmp_path.iterdir()) == []


def test_into_temp_dir_in_a_missing_or_file_dir_says_so(
    options: Options, tmp_path: Path, put: Put, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = put("k", b"x")
    reader = file_dataset.reader({"f": url}, options)
    missing = tmp_path / "no such folder"
    with pytest.raises(
        FileNotFoundError, match=r"into_temp_dir\(dir=\.\.\.\) does not exist.*no such folder"
    ) as missing_info:
        reader.into_temp_dir(dir=missing)
    assert missing_info.value.filename == str(missing)  # as the built-in errors name it
    (tmp_path / "a file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"is not a directory.*a file") as file_info:
        reader.into_temp_dir(dir=tmp_path / "a file")
    assert file_info.value.filename == str(tmp_path / "a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"]
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "scratch").mkdir()
    with reader.into_temp_dir(dir="~/scratch") as tmp:
        assert tmp.parent == tmp_path / "scratch"
        assert (tmp / "f").read_bytes() == b"x"
    # A relative dir is made absolute at the call: before, the TempDir's path stayed
    # relative, and a with block ended in another working directory left it behind.
    monkeypatch.chdir(tmp_path)
    with reader.into_temp_dir(dir="scratch") as tmp:
        assert tmp.is_absolute()
        assert tmp.parent == tmp_path / "scratch"
        monkeypatch.chdir(tmp_path / "scratch")
        assert (tmp / "f").read_bytes() == b"x"
    assert list((tmp_path / "scratch").iterdir()) == []


def test_temp_dir_cannot_be_entered_after_removal(options: Options, put: Put) -> None:
    temp = file_dataset.reader({"f": put("k", b"x")}, options).into_temp_dir()
    with temp as tmp:
        assert (tmp / "f").read_bytes() == b"x"
    assert not temp.path.exists()
    with pytest.raises(ValueError, match="was already removed"), temp:
        pytest.fail("the body must not run")
    other = file_dataset.reader({"f": put("k", b"x")}, options).into_temp_dir()
    other.cleanup()
    with pytest.raises(ValueError, match="was already removed"), other:
        pytest.fail("the body must not run")
    # Entered again inside its own block: the inner block's end removed the folder
    # while the outer block was still using it.
    nested = file_dataset.reader({"f": put("k", b"x")}, options).into_temp_dir()
    with nested as outer:
        with pytest.raises(ValueError, match="is already in a with block"), nested:
            pytest.fail("the body must not run")
        assert (outer / "f").read_bytes() == b"x"
    assert not nested.path.exists()


def _failed_into_temp_dir_in_a_child(tmp_path: Path, patch: str, caught: str) -> tuple[str, str]:
    """Runs, in a child process with ``patch`` applied, an into_temp_dir whose second
    row is missing; returns the folder left in the temporary folder when the call
    ended (raising ``caught``), and the child's stderr. The child's temporary folder
    (``tmp_path / "tmp"``) must be empty once it has exited."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "a").write_bytes(b"a")
    frame = {"id": ["1", "2"], "f": [str(tmp_path / "a"), str(tmp_path / "missing")]}
    script = f"""
import errno, json, os, shutil, tempfile
import pandas as pd
import file_dataset

{patch}
try:
    file_dataset.reader(pd.DataFrame({frame!r})).into_temp_dir()
except {caught}:
    print(json.dumps(os.listdir(tempfile.gettempdir())))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
        capture_output=True,
        text=True,
        check=True,
    )
    [left] = json.loads(done.stdout)  # the folder, still there when the call ended
    assert left.startswith("file_dataset-")
    assert list((tmp_path / "tmp").iterdir()) == []  # removed at exit
    return left, done.stderr


def test_a_second_interrupt_during_clean_up_leaves_nothing_at_exit(tmp_path: Path) -> None:
    """A second Ctrl-C while into_temp_dir removed what a failed call had downloaded
    (a minute for 200,000 folders on a slow disk) left the half-removed folder behind
    for good. What is left is now removed when the interpreter exits. (One Ctrl-C in
    the removal lets it finish first: here a third comes as that begins.)"""
    patch = """
real = shutil.rmtree
calls = []

def interrupted(path, **kwargs):  # a Ctrl-C as each of two removals begins
    calls.append(path)
    if len(calls) == 2:
        shutil.rmtree = real
    raise KeyboardInterrupt

shutil.rmtree = interrupted
"""
    _failed_into_temp_dir_in_a_child(tmp_path, patch, "KeyboardInterrupt")


def test_a_folder_that_cannot_be_removed_is_named_and_removed_at_exit(tmp_path: Path) -> None:
    """Out of file descriptors, rmtree fails: the failed call's folder was left for good,
    with no word (3 of 3 runs of a helper at ulimit -n 10). It is now named in a
    warning with the error, and what is left is removed when the interpreter exits."""
    patch = """
real = os.unlink

def out_of_descriptors(path, *args, **kwargs):  # as with no descriptor left
    if os.fspath(path) == "f":
        raise OSError(errno.EMFILE, "Too many open files")
    return real(path, *args, **kwargs)

os.unlink = out_of_descriptors
import atexit
atexit.register(lambda: setattr(os, "unlink", real))  # registered last: runs first
"""
    left, stderr = _failed_into_temp_dir_in_a_child(tmp_path, patch, "FileNotFoundError")
    assert stderr.strip() == (
        f"file_dataset could not remove its temporary folder {tmp_path / 'tmp' / left} "
        "([Errno 24] Too many open files); it is tried again when the interpreter exits"
    )


def test_an_object_larger_than_the_memory_left_is_named(tmp_path: Path) -> None:
    """Before: a bare "ArrowMemoryError: malloc of size ... failed", naming neither the
    row nor the column (a helper's finding). The error keeps its type."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        os.truncate(f.fileno(), 1024 * MiB)  # sparse: no disk used
    script = f"""
import json, resource
import pandas as pd
import file_dataset

frame = pd.DataFrame({{"id": ["p07"], "big.bin": [{str(big)!r}]}})
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 256 * 1024 * 1024, resource.RLIM_INFINITY))
try:
    file_dataset.reader(frame).into_blob_table()
except MemoryError as e:
    print(json.dumps([type(e).__name__, e.__notes__]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(done.stdout) == [
        "ArrowMemoryError",
        ["file_dataset: raised by the transfer of row id 'p07', column 'big.bin'"],
    ]


def test_dataframe_into_temp_dir_layout(options: Options, system_tmp: Path, put: Put) -> None:
    frame = pd.DataFrame(
        {
            "a.mha": [put(f"a{i}", f"a{i}".encode()) for i in range(3)],
            "id": ["r0", "r1", "r2"],
            "b.mha": [put("b0", b"b0"), None, np.nan],
        }
    )
    with file_dataset.reader(frame, options).into_temp_dir() as tmp:
        assert files_under(tmp) == {
            "r0/a.mha": b"a0",
            "r0/b.mha": b"b0",
            "r1/a.mha": b"a1",
            "r2/a.mha": b"a2",
        }
        assert sorted(p.name for p in tmp.iterdir()) == ["r0", "r1", "r2"]
    assert list(system_tmp.iterdir()) == []


def test_into_temp_dir_copies_at_the_call_and_is_path_like(
    options: Options, bucket: str, system_tmp: Path, put: Put, s3_client: Any
) -> None:
    # Eager, as the design says: the copy is made when into_temp_dir() is called, so
    # the object can go before the with block (or without any with block at all).
    url = put("eager.mha", b"eager bytes")
    temp = file_dataset.reader({"image.mha": url}, options).into_temp_dir()
    s3_client.delete_object(Bucket=bucket, Key="eager.mha")
    assert isinstance(temp, file_dataset.TempDir)
    assert (temp / "image.mha").read_bytes() == b"eager bytes"
    assert os.listdir(temp) == ["image.mha"]
    assert Path(temp) == temp.path == next(system_tmp.iterdir())
    with temp as tmp:
        assert tmp == temp.path
        assert (tmp / "image.mha").read_bytes() == b"eager bytes"
    assert list(system_tmp.iterdir()) == []
    temp.cleanup()  # a second removal is harmless

    other = file_dataset.reader({"image.mha": put("k", b"k")}, options).into_temp_dir()
    assert (other / "image.mha").read_bytes() == b"k"
    other.cleanup()
    assert list(system_tmp.iterdir()) == []
    file_dataset.reader({"image.mha": put("k", b"k")}, options).into_temp_dir()
    gc.collect()  # dropped without a with block or cleanup(): removed when collected
    assert list(system_tmp.iterdir()) == []


def test_a_temp_dir_refuses_to_be_pickled_or_copied(tmp_path: Path) -> None:
    """Before: a pickled TempDir came back dead ("already removed" while its folder was
    there), and one returned by a pool's worker left its folder behind for ever."""
    import copy

    (tmp_path / "a.bin").write_bytes(b"sample")
    temp = file_dataset.reader({"a.bin": str(tmp_path / "a.bin")}).into_temp_dir(dir=tmp_path)
    message = (
        f"a TempDir cannot be pickled or copied: it is the folder {str(temp.path)!r} of "
        "this process, removed when it is closed; pass its path (tmp.path), and make the "
        "TempDir where its files are used"
    )
    for copier in (pickle.dumps, cloudpickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError) as info:
            copier(temp)  # type: ignore[operator]
        assert str(info.value) == message
    assert pickle.loads(pickle.dumps(temp.path)) == temp.path
    with temp as path:
        assert (path / "a.bin").read_bytes() == b"sample"
    assert not temp.path.exists()


def test_a_forked_child_never_removes_the_parents_temp_dir(tmp_path: Path) -> None:
    """Before: a DataLoader-style forked worker that dropped (or closed) its copy of a
    TempDir the parent held removed the parent's folder and files."""
    import multiprocessing

    (tmp_path / "a.bin").write_bytes(b"sample")
    temp = file_dataset.reader({"a.bin": str(tmp_path / "a.bin")}).into_temp_dir(dir=tmp_path)
    for how in ("drop", "cleanup", "with"):
        child = multiprocessing.get_context("fork").Process(target=_drop_in_child, args=(how,))
        _CHILD_TEMP[:] = [temp]
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert (temp / "a.bin").read_bytes() == b"sample", how
    _CHILD_TEMP.clear()
    temp.cleanup()  # the parent still removes it
    assert not temp.path.exists()


_CHILD_TEMP: list[file_dataset.TempDir] = []


def _drop_in_child(how: str) -> None:
    temp = _CHILD_TEMP.pop()
    if how == "cleanup":
        temp.cleanup()
    elif how == "with":
        with temp:
            pass
    del temp
    gc.collect()


def test_a_temp_dir_cannot_be_made_of_a_folder_of_yours(tmp_path: Path) -> None:
    """Before: TempDir(folder) took the folder, and removed it at its with block's end
    or when collected."""
    (tmp_path / "keep.txt").write_text("important")
    with pytest.raises(TypeError, match=r"made by reader\(...\).into_temp_dir\(\) only"):
        file_dataset.TempDir(tmp_path)
    gc.collect()
    assert (tmp_path / "keep.txt").read_text() == "important"


def test_a_reader_needs_exactly_one_source_and_a_temp_dir_one_with_block(
    options: Options, put: Put
) -> None:
    for args, kwargs in [((), {}), (({"a": "s3://b/k"},), {"row": {"a": "s3://b/k"}})]:
        with pytest.raises(file_dataset.InvalidInputError, match="exactly one of source"):
            file_dataset.reader(*args, options=options, **kwargs)
    temp = file_dataset.reader({"a": put("k", b"k")}, options).into_temp_dir()
    with temp as tmp:
        assert (tmp / "a").read_bytes() == b"k"
        with pytest.raises(file_dataset.InvalidInputError, match="already in a with block"):
            temp.__enter__()
    with pytest.raises(file_dataset.FileDatasetError, match="was already removed"):
        temp.__enter__()


def test_a_reader_shows_what_it_will_read() -> None:
    """Before: <file_dataset._reader.FileReader object at 0x...> in a notebook."""
    row = file_dataset.reader({"a.mha": "s3://bkt/k", "b.mha": None})
    assert repr(row) == "<FileReader of a row, 1 file, columns ['a.mha', 'b.mha']>"
    frame = pd.DataFrame({"id": [1, 2], "a.mha": ["s3://bkt/1", None], "m": ["/x", "/y"]})
    assert repr(file_dataset.reader(frame)) == (
        "<FileReader of 2 rows, 3 files, columns ['a.mha', 'm']>"
    )
    assert repr(file_dataset.reader(frame[:1])) == (
        "<FileReader of 1 row, 2 files, columns ['a.mha', 'm']>"
    )


def test_temp_dir_removed_when_body_raises(options: Options, system_tmp: Path, put: Put) -> None:
    url = put("k", b"x")
    reader = file_dataset.reader({"f": url}, options)
    with pytest.raises(KeyError, match="from the body"), reader.into_temp_dir() as tmp:  # noqa: PT012
        assert (tmp / "f").read_bytes() == b"x"
        raise KeyError("from the body")
    assert not tmp.exists()
    assert list(system_tmp.iterdir()) == []


def test_temp_dir_removed_when_download_fails(
    options: Options, bucket: str, system_tmp: Path, put: Put
) -> None:
    row = {"ok": put("ok", b"ok"), "missing": f"s3://{bucket}/missing"}
    with pytest.raises(FileNotFoundError), file_dataset.reader(row, options).into_temp_dir():
        pytest.fail("the body must not run")
    assert list(system_tmp.iterdir()) == []


def test_an_interrupt_while_a_temp_dir_is_removed_still_removes_it(
    options: Options, system_tmp: Path, put: Put, monkeypatch: pytest.MonkeyPatch
) -> None:
    """helper-140: once in 30 random Ctrl-Cs a temporary folder of finished files
    stayed (until the interpreter's exit): the interrupt came while the end of the
    with block was removing it."""
    row = {name: put(name, name.encode() * 1000) for name in ("a.bin", "b.bin", "c.bin")}
    unlink = os.unlink
    interrupted: list[str] = []

    def interrupting_once(path: str, *args: Any, **kwargs: Any) -> None:
        if not interrupted:
            interrupted.append(path)
            raise KeyboardInterrupt  # as a Ctrl-C on the thread removing the folder
        unlink(path, *args, **kwargs)

    reader = file_dataset.reader(row, options)
    with pytest.raises(KeyboardInterrupt), reader.into_temp_dir() as tmp:  # noqa: PT012
        assert sorted(path.name for path in tmp.iterdir()) == sorted(row)
        monkeypatch.setattr(os, "unlink", interrupting_once)
    assert len(interrupted) == 1
    assert not tmp.exists()
    assert list(system_tmp.iterdir()) == []


# --- awkward keys, empty and large objects ---------------------------------------------


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_awkward_keys_round_trip_verbatim(
    key: str, options: Options, bucket: str, s3_client: Any, put: Put
) -> None:
    data = key.encode() * 3
    url = put(key, data)
    assert url == f"s3://{bucket}/{key}"
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    reader = file_dataset.reader({"f.mha": url}, options)
    assert reader.into_blob_table().column("f.mha").to_pylist() == [data]
    assert reader.into_size_table().column("f.mha").to_pylist() == [len(data)]
    with reader.into_temp_dir() as tmp:
        assert files_under(tmp) == {"f.mha": data}


def test_zero_byte_object(options: Options, put: Put) -> None:
    reader = file_dataset.reader({"empty": put("empty", b"")}, options)
    with reader.into_temp_dir() as tmp:
        assert files_under(tmp) == {"empty": b""}
    blobs = reader.into_blob_table()
    assert blobs.column("empty").to_pylist() == [b""]
    assert reader.into_size_table().column("empty").to_pylist() == [0]


def test_40_mib_object(options: Options, put: Put) -> None:
    data = os.urandom(40 * MiB)
    reader = file_dataset.reader({"big.bin": put("big", data)}, options)
    assert 40 * MiB > options.multipart_threshold
    with reader.into_temp_dir() as tmp:
        assert sorted(os.listdir(tmp)) == ["big.bin"]
        assert (tmp / "big.bin").read_bytes() == data
    blob = reader.into_blob_table().column("big.bin")
    assert len(blob) == 1
    assert blob[0].as_py() == data
    assert reader.into_size_table().column("big.bin").to_pylist() == [40 * MiB]


# --- request pattern (observed on the server) -------------------------------------------


@pytest.fixture(scope="module")
def recording_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    """A second local S3 server whose requests can be recorded (moto's recorder)."""
    path = tmp_path_factory.mktemp("recording") / "requests.jsonl"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOTO_RECORDER_FILEPATH", str(path))
        server = LocalS3Server().start()
    try:
        yield server
    finally:
        server.stop()


def _recorder(server: LocalS3Server, action: str, method: str = "POST") -> str:
    url = f"{server.endpoint_url}/moto-api/recorder/{action}"
    with urllib.request.urlopen(urllib.request.Request(url, method=method)) as resp:
        return str(resp.read().decode())


@contextmanager
def recorded(server: LocalS3Server) -> Iterator[list[tuple[str, str, str | None]]]:
    """Collects (method, key, Range header) of the requests made inside the block."""
    requests: list[tuple[str, str, str | None]] = []
    _recorder(server, "reset-recording")
    _recorder(server, "start-recording")
    try:
        yield requests
    finally:
        _recorder(server, "stop-recording")
        for line in _recorder(server, "download-recording", "GET").splitlines():
            entry = json.loads(line)
            # (without the query of a presigned URL, which later parts may be sent to)
            key = urllib.parse.unquote(entry["url"].split("/", 4)[4].split("?", 1)[0])
            requests.append((entry["method"], key, entry["headers"].get("Range")))


def test_small_objects_take_one_get_and_large_ones_ranged_gets(
    recording_server: LocalS3Server,
) -> None:
    bucket = recording_server.create_bucket()
    client = recording_server.client()
    big = os.urandom(11 * MiB + 1)
    client.put_object(Bucket=bucket, Key="big", Body=big)
    client.put_object(Bucket=bucket, Key="small", Body=b"small")
    row = {"big": f"s3://{bucket}/big", "small": f"s3://{bucket}/small"}
    options = recording_server.options(part_size=5 * MiB, multipart_threshold=5 * MiB)
    with recorded(recording_server) as requests:
        blobs = file_dataset.reader(row, options).into_blob_table()
    assert blobs.column("big").to_pylist() == [big]
    assert blobs.column("small").to_pylist() == [b"small"]
    assert sorted(requests, key=lambda r: (r[1], r[2] or "")) == [
        ("GET", "big", "bytes=0-5242879"),
        ("GET", "big", "bytes=10485760-11534336"),
        ("GET", "big", "bytes=5242880-10485759"),
        ("GET", "small", "bytes=0-5242879"),
    ]
    reader = file_dataset.reader(row, options)
    with recorded(recording_server) as requests, reader.into_temp_dir() as tmp:
        assert (tmp / "big").read_bytes() == big
    assert sorted(r[2] or "" for r in requests if r[1] == "big") == [
        "bytes=0-5242879",
        "bytes=10485760-11534336",
        "bytes=5242880-10485759",
    ]
    with recorded(recording_server) as requests:
        sizes = file_dataset.reader(row, options).into_size_table()
    assert sizes.to_pylist() == [{"big": len(big), "small": 5}]
    assert sorted(requests) == [("HEAD", "big", None), ("HEAD", "small", None)]


# --- DataFrames: 200 rows, nulls, ids, shapes ---------------------------------------------


def test_200_row_dataframe(options: Options, system_tmp: Path, put: Put):
    ids = [f"{i:03d}" for i in reversed(range(200))]
    shared = put("shared", b"shared")
    frame = pd.DataFrame(
        {
            "id": ids,
            "x.bin": put_many(put, {f"x/{i}": f"x{i}".encode() for i in ids}),
            "y.bin": [shared if int(i) % 3 else None for i in ids],
        }
    )
    expected = {f"{i}/x.bin": f"x{i}".encode() for i in ids}
    expected |= {f"{i}/y.bin": b"shared" for i in ids if int(i) % 3}
    reader = file_dataset.reader(frame, options)
    with reader.into_temp_dir() as tmp:
        assert files_under(tmp) == expected
    table = reader.into_blob_table()
    assert table.column_names == ["id", "x.bin", "y.bin"]
    assert table.column("id").to_pylist() == ids
    assert table.column("x.bin").to_pylist() == [f"x{i}".encode() for i in ids]
    assert table.column("y.bin").to_pylist() == [b"shared" if int(i) % 3 else None for i in ids]
    assert list(system_tmp.iterdir()) == []


def test_usage4_row_tables(options: Options, put: Put) -> None:
    data = os.urandom(MiB)
    row = {"image.mha": put("image_mask.mha", data)}
    blobs = file_dataset.reader(row=row, options=options).into_blob_table()
    assert blobs.schema == pa.schema({"image.mha": pa.binary()})
    assert blobs.num_rows == 1
    assert blobs.column("image.mha")[0].as_py() == data
    sizes = file_dataset.reader(row=row, options=options).into_size_table()
    assert sizes.schema == pa.schema({"image.mha": pa.int64()})
    assert sizes.to_pylist() == [{"image.mha": MiB}]


def test_dataframe_tables_keep_the_frames_column_and_row_order(options: Options, put: Put) -> None:
    frame = pd.DataFrame(
        {
            "z.mha": [put("z2", b"zz"), put("z1", b"z")],
            "a.mha": [None, put("a1", b"aaa")],
            "id": [2, 1],
        }
    )
    reader = file_dataset.reader(frame, options)
    blobs = reader.into_blob_table()
    assert blobs.schema == pa.schema(
        [
            pa.field("z.mha", pa.binary()),
            pa.field("a.mha", pa.binary()),
            pa.field("id", pa.string(), nullable=False),
        ]
    )
    assert blobs.to_pylist() == [
        {"id": "2", "z.mha": b"zz", "a.mha": None},
        {"id": "1", "z.mha": b"z", "a.mha": b"aaa"},
    ]
    sizes = reader.into_size_table()
    assert sizes.schema.names == ["z.mha", "a.mha", "id"]
    assert sizes.schema.field("z.mha").type == pa.int64()
    assert sizes.to_pylist() == [
        {"id": "2", "z.mha": 2, "a.mha": None},
        {"id": "1", "z.mha": 1, "a.mha": 3},
    ]
    middle = file_dataset.reader(frame[["z.mha", "id", "a.mha"]], options)
    assert middle.into_blob_table().column_names == ["z.mha", "id", "a.mha"]
    assert middle.into_size_table().column_names == ["z.mha", "id", "a.mha"]
    assert middle.into_blob_table().column("id").to_pylist() == ["2", "1"]


@pytest.mark.parametrize("null", [None, float("nan"), pd.NA], ids=["None", "NaN", "NA"])
def test_null_cells(null: object, options: Options, put: Put) -> None:
    frame = pd.DataFrame({"id": [10, 20], "f": [put("f", b"f"), null]}, dtype=object)
    reader = file_dataset.reader(frame, options)
    with reader.into_temp_dir() as tmp:
        assert files_under(tmp) == {"10/f": b"f"}
        assert (tmp / "20").is_dir()
    assert reader.into_blob_table().to_pylist() == [
        {"id": "10", "f": b"f"},
        {"id": "20", "f": None},
    ]
    assert reader.into_size_table().column("f").to_pylist() == [1, None]
    row_reader = file_dataset.reader({"f": null, "g": frame["f"][0]}, options)
    assert row_reader.into_blob_table().to_pylist() == [{"f": None, "g": b"f"}]
    with row_reader.into_temp_dir() as tmp:
        assert files_under(tmp) == {"g": b"f"}


def test_arrow_scalars_in_an_object_column_are_read_as_their_values(
    options: Options, put: Put, tmp_path: Path
) -> None:
    """A column built of a pyarrow column's items (``list(table["f"])``) holds Arrow
    scalars; ids of that kind were taken, file cells refused ("got StringScalar")."""
    local = tmp_path / "local.bin"
    local.write_bytes(b"local")
    urls = pa.array([put("f", b"from s3"), str(local), None], pa.string())
    frame = pd.DataFrame({"id": list(pa.array([1, 2, 3])), "f": list(urls)}, dtype=object)
    assert isinstance(frame["f"][0], pa.StringScalar)
    table = file_dataset.reader(frame, options).into_blob_table()
    assert table.to_pylist() == [
        {"id": "1", "f": b"from s3"},
        {"id": "2", "f": b"local"},
        {"id": "3", "f": None},
    ]
    with file_dataset.reader(frame.iloc[0], options).into_temp_dir() as tmp:
        assert files_under(tmp) == {"f": b"from s3"}
    # dictionary-encoded ones too (they were refused when the column held only them)
    encoded = frame.assign(f=list(urls.dictionary_encode()))
    assert isinstance(encoded["f"][0], pa.DictionaryScalar)
    assert file_dataset.reader(encoded, options).into_blob_table().equals(table)
    refused = r"column .f.: expected .* got int 5"
    with pytest.raises(file_dataset.InvalidInputError, match=refused) as e:
        file_dataset.reader({"id": 1, "f": pa.scalar(5)}, options).into_blob_table()
    assert (e.value.row_id, e.value.column) == ("1", "f")


def test_empty_dataframe(options: Options) -> None:
    frame = pd.DataFrame({"id": pd.Series([], dtype=str), "f": pd.Series([], dtype=object)})
    table = file_dataset.reader(frame, options).into_blob_table()
    assert table.num_rows == 0
    assert table.column_names == ["id", "f"]


safe_text = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"], exclude_characters="/\\"),
    min_size=1,
    max_size=12,
).filter(lambda text: text not in (".", "..", "id"))


@st.composite
def file_frames(draw: st.DrawFn) -> tuple[list[str], list[str], list[list[bytes | None]]]:
    """Unique ids, unique file names, and per row per name the bytes of a file or None."""
    ids = draw(st.lists(safe_text, min_size=0, max_size=5, unique=True))
    names = draw(st.lists(safe_text, min_size=1, max_size=3, unique=True))
    cells = st.one_of(st.none(), st.binary(max_size=32))
    rows = draw(
        st.lists(
            st.lists(cells, min_size=len(names), max_size=len(names)),
            min_size=len(ids),
            max_size=len(ids),
        )
    )
    return ids, names, rows


@settings(max_examples=25, deadline=None)
@given(file_frames())
def test_property_dataframe_tables_and_layout(
    frame_data: tuple[list[str], list[str], list[list[bytes | None]]],
) -> None:
    ids, names, rows = frame_data
    with tempfile.TemporaryDirectory() as src:
        columns: dict[str, list[Any]] = {"id": ids, **{name: [] for name in names}}
        for r, row in enumerate(rows):
            for c, (name, data) in enumerate(zip(names, row, strict=True)):
                path = None
                if data is not None:
                    path = Path(src) / f"{r}-{c}"
                    path.write_bytes(data)
                columns[name].append(path)
        reader = file_dataset.reader(pd.DataFrame(columns))
        table = reader.into_blob_table()
        assert table.column_names == ["id", *names]
        assert table.to_pylist() == [
            {"id": i, **dict(zip(names, row, strict=True))}
            for i, row in zip(ids, rows, strict=True)
        ]
        sizes = reader.into_size_table().to_pylist()
        assert sizes == [
            {"id": i, **{n: None if d is None else len(d) for n, d in zip(names, row, strict=True)}}
            for i, row in zip(ids, rows, strict=True)
        ]
        with reader.into_temp_dir() as tmp:
            assert files_under(tmp) == {
                f"{i}/{n}": d
                for i, row in zip(ids, rows, strict=True)
                for n, d in zip(names, row, strict=True)
                if d is not None
            }


# --- local sources -------------------------------------------------------------------


def test_local_sources(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"plain")
    (tmp_path / "b c.txt").write_bytes(b"path")
    (tmp_path / "d.txt").write_bytes(b"url")
    row = {
        "a": str(tmp_path / "a.txt"),
        "b": tmp_path / "b c.txt",
        "d": (tmp_path / "d.txt").as_uri(),
    }
    reader = file_dataset.reader(row)
    assert reader.into_blob_table().to_pylist() == [{"a": b"plain", "b": b"path", "d": b"url"}]
    assert reader.into_size_table().to_pylist() == [{"a": 5, "b": 4, "d": 3}]
    with reader.into_temp_dir() as tmp:
        assert files_under(tmp) == {"a": b"plain", "b": b"path", "d": b"url"}


def test_download_to_takes_a_str_or_home_relative_root_and_makes_it(
    options: Options, put: Put, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A str root raised "unsupported operand type(s) for /", and "~" made a folder
    # named "~" in the working directory.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    url = put("dl/a.bin", b"alpha")
    folders = file_dataset.reader(pd.DataFrame({"id": ["r1"], "a": [url]}), options).download_to(
        "~/deep/dl"
    )
    assert folders == {"r1": tmp_path / "home" / "deep" / "dl" / "r1"}
    assert files_under(folders["r1"]) == {"a": b"alpha"}
    paths = file_dataset.reader({"a": url}, options).download_to(str(tmp_path / "one"))
    assert paths == {"a": tmp_path / "one" / "a"}
    assert paths["a"].read_bytes() == b"alpha"
    assert not (tmp_path / "~").exists()


def test_download_to_under_a_relative_root_returns_no_path_starting_with_a_tilde(
    options: Options, put: Put, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: {"~": Path("~")} under root ".", the home folder when read back."""
    monkeypatch.chdir(tmp_path)
    url = put("dl/tilde.bin", b"tilde")
    folders = file_dataset.reader(pd.DataFrame({"id": ["~"], "a": [url]}), options).download_to(".")
    assert folders == {"~": tmp_path / "~"}
    paths = file_dataset.reader({"~a": url}, options).download_to(".")
    assert paths == {"~a": tmp_path / "~a"}
    back = file_dataset.reader({"x": str(folders["~"] / "a"), "y": str(paths["~a"])})
    assert back.into_blob_table().to_pylist() == [{"x": b"tilde", "y": b"tilde"}]


def test_download_to_names_the_row_whose_folder_a_file_stands_in_the_way_of(
    tmp_path: Path,
) -> None:
    """Before: a bare "FileExistsError: [Errno 17] File exists: '<root>/r2'", with
    neither the row nor what was wrong; nothing is downloaded."""
    source = tmp_path / "a.txt"
    source.write_bytes(b"alpha")
    frame = pd.DataFrame({"id": ["r1", "r2"], "a.txt": [str(source)] * 2})
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "r2").write_bytes(b"a file of yours")
    with pytest.raises(file_dataset.TransferError) as info:
        file_dataset.reader(frame).download_to(tmp_path / "root")
    assert str(info.value) == (
        f"cannot write {tmp_path / 'root' / 'r2'} (row id 'r2'): "
        f"{tmp_path / 'root' / 'r2'} is in the way: not a folder"
    )
    assert info.value.row_id == "r2"
    assert isinstance(info.value, NotADirectoryError)
    assert (tmp_path / "root" / "r2").read_bytes() == b"a file of yours"
    assert not (tmp_path / "root" / "r1" / "a.txt").exists()


def test_download_to_a_file_of_a_row_without_id_is_a_not_a_directory_error(
    tmp_path: Path,
) -> None:
    """Before: a plain TransferError (errno ENOTDIR), where the same root with ids, and
    write_files, raise one that is also a NotADirectoryError (helper-105)."""
    source = tmp_path / "a.txt"
    source.write_bytes(b"alpha")
    with pytest.raises(NotADirectoryError) as info:
        file_dataset.reader({"a.txt": str(source)}).download_to(source)
    assert isinstance(info.value, file_dataset.TransferError)
    assert str(info.value) == (
        f"cannot read {source} (column 'a.txt'): could not write {source / 'a.txt'}: "
        f"{source} is in the way: not a folder"
    )
    assert source.read_bytes() == b"alpha"


def test_blob_table_over_2_gib_from_sparse_local_files(tmp_path: Path) -> None:
    size = 800 * MiB
    marks = {0: b"first", 123_456_789: b"middle", size - 5: b"last!"}
    paths = []
    for i in range(3):
        path = tmp_path / f"sparse{i}.bin"
        with open(path, "wb") as f:
            os.truncate(f.fileno(), size)
            for offset, mark in marks.items():
                f.seek(offset)
                f.write(mark[:4] + bytes([i]))
        paths.append(path)
    frame = pd.DataFrame({"id": ["a", "b", "c"], "blob": paths})
    table = file_dataset.reader(frame).into_blob_table()
    try:
        column = table.column("blob")
        assert column.type in (pa.binary(), pa.large_binary())
        assert table.column("id").to_pylist() == ["a", "b", "c"]
        assert pa.compute.sum(pa.compute.binary_length(column)).as_py() == 3 * size > 2**31
        assert sum(len(chunk.buffers()[2]) for chunk in column.chunks) == 3 * size
        for i in range(3):
            value = column[i].as_buffer()
            assert len(value) == size
            for offset, mark in marks.items():
                assert value[offset : offset + 5].to_pybytes() == mark[:4] + bytes([i])
            assert value[1000:1010].to_pybytes() == bytes(10)
            del value
    finally:
        del table, column
        gc.collect()


# --- errors ----------------------------------------------------------------------------


def test_missing_object_names_url_row_id_and_column(
    options: Options, bucket: str, system_tmp: Path, put: Put
) -> None:
    url = f"s3://{bucket}/no/such key.mha"
    frame = pd.DataFrame(
        {"id": ["r1", "r2"], "a.mha": [put("a", b"a"), url]},
    )
    reader = file_dataset.reader(frame, options)
    for read in (reader.into_blob_table, reader.into_size_table, reader.into_temp_dir):
        with pytest.raises(FileNotFoundError) as info:
            read()
        error = info.value
        assert isinstance(error, file_dataset.ObjectNotFoundError)
        assert url in str(error)
        assert "'r2'" in str(error)
        assert "'a.mha'" in str(error)
        assert (error.url, error.row_id, error.column) == (url, "r2", "a.mha")
    assert list(system_tmp.iterdir()) == []


@pytest.mark.parametrize("as_series", [False, True])
def test_a_rows_id_entry_is_named_in_its_errors(
    as_series: bool, options: Options, bucket: str, system_tmp: Path, put: Put
) -> None:
    """A row's ``id`` is not a file, but a row that has one is named by it (it was not:
    the message said only the column, and ``row_id`` was None)."""
    url = f"s3://{bucket}/no/such.mha"
    entries = {"id": 7, "here.mha": put("here", b"1"), "gone.mha": url}
    row = pd.Series(entries) if as_series else entries
    reader = file_dataset.reader(row, options)
    for read in (reader.into_blob_table, reader.into_size_table, reader.into_temp_dir):
        with pytest.raises(file_dataset.ObjectNotFoundError) as info:
            read()
        assert (info.value.url, info.value.row_id, info.value.column) == (url, "7", "gone.mha")
        assert f"{url} (row id '7', column 'gone.mha')" in str(info.value)
    assert list(system_tmp.iterdir()) == []
    with pytest.raises(ValueError, match=r"row id '7', column 'bad\.mha'"):
        file_dataset.reader({**entries, "bad.mha": "ftp://host/x"}, options)
    # without an id, or with one a frame could not have, the column alone is named
    for odd in ({}, {"id": None}, {"id": "a/b"}):
        with pytest.raises(file_dataset.ObjectNotFoundError) as info:
            file_dataset.reader({**odd, "gone.mha": url}, options).into_blob_table()
        assert info.value.row_id is None
        assert f"{url} (column 'gone.mha')" in str(info.value)


def test_a_newline_in_a_url_does_not_split_the_message(options: Options, bucket: str) -> None:
    # A newline is legal in an S3 key; printed raw it split the message (and a log line
    # holding it) in two, so a cell could forge a line of a log.
    url = f"s3://{bucket}/no/such\nERROR forged line\x1b[2J.mha"
    with pytest.raises(file_dataset.ObjectNotFoundError) as info:
        file_dataset.reader(pd.DataFrame({"id": ["r1"], "a": [url]}), options).into_blob_table()
    message = str(info.value)
    assert message.startswith(
        f"cannot read s3://{bucket}/no/such\\nERROR forged line\\x1b[2J.mha "
        "(row id 'r1', column 'a'): "
    )
    assert "\n" not in message
    assert "\x1b" not in message
    assert info.value.url == url  # the attribute keeps the URL as it is


def test_keys_that_look_like_credentials_are_quoted_as_they_are(
    options: Options, bucket: str
) -> None:
    # Masking of signed URLs' query values took "signature=v2/run1/scan.mha" in a
    # Hive-style key for one, and cut the rest of the key from the message.
    url = f"s3://{bucket}/runs/signature=v2/credential=x/sig=1/scan.mha"
    with pytest.raises(file_dataset.ObjectNotFoundError) as info:
        file_dataset.reader({"a": url}, options).into_blob_table()
    assert str(info.value).startswith(f"cannot read {url} (column 'a'): ")
    mistyped = "s3:/b/runs/signature=v2/scan.mha"
    with pytest.raises(ValueError, match=re.escape(repr(mistyped))):
        file_dataset.reader({"a": mistyped}, options).into_blob_table()


def test_missing_bucket_and_missing_local_file(options: Options, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"s3://no-such-bucket-here/k.*bucket"):
        file_dataset.reader({"f": "s3://no-such-bucket-here/k"}, options).into_blob_table()
    missing = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        file_dataset.reader({"f": missing}).into_blob_table()


def test_a_local_file_this_process_may_not_read_has_no_size_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """into_size_table gave its size while into_blob_table refused it, so a size pass
    did not find such files; S3 refuses the HEAD of an object it would not let be read.
    (Tests may run as root, who may read anything: the check is refused here.)"""
    import file_dataset._local

    (tmp_path / "secret.bin").write_bytes(b"12345")
    readable = os.access
    monkeypatch.setattr(
        file_dataset._local.os,
        "access",
        lambda path, mode, **kw: not str(path).endswith("secret.bin") and readable(path, mode),
    )
    row = {"id": "r1", "a.bin": str(tmp_path / "secret.bin")}
    with pytest.raises(PermissionError) as info:
        file_dataset.reader(row).into_size_table()
    assert isinstance(info.value, file_dataset.ObjectAccessDeniedError)
    assert (info.value.url, info.value.row_id, info.value.column) == (
        str(tmp_path / "secret.bin"),
        "r1",
        "a.bin",
    )
    monkeypatch.undo()
    assert file_dataset.reader(row).into_size_table()["a.bin"].to_pylist() == [5]


def test_local_directory_is_not_a_file(tmp_path: Path) -> None:
    """Also not for sizes: a directory's st_size would be a wrong size to plan with."""
    for read in ("into_blob_table", "into_size_table", "into_temp_dir"):
        with pytest.raises(OSError, match=f"{tmp_path}.*is a directory, not a file"):
            getattr(file_dataset.reader({"f": tmp_path}), read)()


@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG in this process, as a full disk
    fails them with ENOSPC (SIGXFSZ, which would end the process, is ignored)."""
    import resource
    import signal

    before_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    before_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before_limit)
        signal.signal(signal.SIGXFSZ, before_signal)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("size", [2 * 2**20, 20 * 2**20])
def test_a_local_write_failure_names_the_object_row_and_column(
    transport: str, size: int, options: Options, put: Put, tmp_path: Path, system_tmp: Path
) -> None:
    # Before, a full disk raised a bare "[Errno 28] No space left on device" (here EFBIG)
    # naming nothing, for objects read in one request.
    url = put(f"limited-{size}", b"x" * size)
    reader = file_dataset.reader(
        pd.DataFrame({"id": ["r1"], "m.bin": [url]}), options.replace(transport=transport)
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    with _file_size_limit(2**20), pytest.raises(TransferError) as raised:
        reader.into_temp_dir(dir=dest)
    message = str(raised.value)
    assert message.startswith(f"cannot read {url} (row id 'r1', column 'm.bin'): ")
    assert raised.value.errno == errno.EFBIG
    assert (raised.value.url, raised.value.row_id, raised.value.column) == (url, "r1", "m.bin")
    assert list(dest.iterdir()) == []
    assert list(system_tmp.iterdir()) == []
    source = tmp_path / "source.bin"
    source.write_bytes(b"y" * size)
    with _file_size_limit(2**20), pytest.raises(TransferError) as raised:
        file_dataset.write_files({"m.bin": source}, dest, "r1")
    assert "(row id 'r1', column 'm.bin')" in str(raised.value)
    assert raised.value.errno == errno.EFBIG
    assert [p.name for p in dest.rglob("*") if p.is_file()] == []


def test_an_interrupt_just_after_a_reply_was_taken_still_ends_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT (or a SIGTERM handler's SystemExit) that lands right after the calling
    thread took a reply off its queue, before it counted it, made the clean-up wait for
    ever for that reply: into_blob_table of many local files hung 9 times in 10. The
    reply queue here loses its fifth reply to a KeyboardInterrupt at that very point."""
    import queue
    import threading

    import file_dataset._transfer

    for i in range(200):
        (tmp_path / f"f{i}").write_bytes(b"x" * i)
    frame = pd.DataFrame({"id": [str(i) for i in range(200)], "f": list(tmp_path.iterdir())})
    options = Options(max_concurrency=4)
    assert file_dataset.reader(frame.head(8), options).into_blob_table().num_rows == 8  # pool up

    class InterruptedQueue(queue.SimpleQueue):  # type: ignore[type-arg]
        taken = 0

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            item = super().get(block, timeout)
            InterruptedQueue.taken += 1
            if InterruptedQueue.taken == 5:
                raise KeyboardInterrupt  # the reply is gone, as after a real signal
            return item

    monkeypatch.setattr(file_dataset._transfer.queue, "SimpleQueue", InterruptedQueue)
    raised: list[BaseException] = []

    def read() -> None:
        try:
            file_dataset.reader(frame, options).into_blob_table()
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the call still waits for a reply it already took"
    assert [type(e) for e in raised] == [KeyboardInterrupt]
    monkeypatch.undo()
    assert file_dataset.reader(frame, options).into_blob_table().num_rows == 200  # usable


def test_a_file_that_reports_size_0_is_read_to_its_end(tmp_path: Path) -> None:
    """/proc files (and some FUSE ones) say 0 bytes and hold more, /sys files say 4,096:
    they read as empty or failed, while write_files uploaded them whole."""
    source = Path("/proc/version")
    expected = source.read_bytes()
    assert source.stat().st_size == 0  # what makes the case
    assert expected
    # /sys files say 4,096 bytes whatever they hold (it read "file shrank", and sized 4096)
    cpus = Path("/sys/devices/system/cpu/online")
    online = cpus.read_bytes()
    assert cpus.stat().st_size == 4096
    assert 0 < len(online) < 4096
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    reader = file_dataset.reader(
        pd.DataFrame({"id": ["r1"], "v": [source], "e": [empty], "s": [cpus]})
    )
    assert reader.into_blob_table().to_pylist() == [
        {"id": "r1", "v": expected, "e": b"", "s": online}
    ]
    assert reader.into_size_table().to_pylist() == [
        {"id": "r1", "v": len(expected), "e": 0, "s": len(online)}
    ]
    with reader.into_temp_dir() as tmp:
        assert (tmp / "r1" / "v").read_bytes() == expected
        assert (tmp / "r1" / "e").read_bytes() == b""
        assert (tmp / "r1" / "s").read_bytes() == online
    # Such a file that fails when read has no size: it was sized 0, its stat's value.
    for read in (
        file_dataset.reader({"m": "/proc/self/mem"}).into_size_table,
        file_dataset.reader({"m": "/proc/self/mem"}).into_blob_table,
    ):
        with pytest.raises(file_dataset.TransferError, match="Input/output error") as info:
            read()
        assert info.value.errno == errno.EIO


def test_a_named_pipe_or_device_is_refused_instead_of_read(tmp_path: Path) -> None:
    """Before, a FIFO in a cell made into_blob_table and into_temp_dir wait for ever for
    a writer (and sizes said 0); /dev/null read as an empty file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # A writer end held open first, so the old code returned at once instead of hanging.
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        for read in ("into_blob_table", "into_size_table", "into_temp_dir"):
            with pytest.raises(TransferError) as info:
                getattr(file_dataset.reader(pd.DataFrame({"id": ["r1"], "f": [fifo]})), read)()
            assert str(info.value) == (
                f"cannot {'head' if read == 'into_size_table' else 'read'} {fifo} "
                "(row id 'r1', column 'f'): is a named pipe, not a regular file (only "
                "files with a known size can be read)"
            )
    finally:
        os.close(writer)
    with pytest.raises(TransferError, match="is a named pipe"):  # no writer: still no wait
        file_dataset.reader({"f": fifo}).into_blob_table()
    with pytest.raises(TransferError, match=r"/dev/null.*is a device, not a regular file"):
        file_dataset.reader({"f": "/dev/null"}).into_blob_table()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_missing_object_sized_says_not_found_plainly(
    s3_server: LocalS3Server, bucket: str, transport: str
) -> None:
    """A HEAD's 404 has no body: the message says what that means, in the same words
    with both transports (not the HTTP client's own text)."""
    options = s3_server.options(transport=transport)
    for url in (f"s3://{bucket}/nope/x.mha", "s3://no-such-bucket-here/x.mha"):
        with pytest.raises(FileNotFoundError) as info:
            file_dataset.reader({"x.mha": url}, options).into_size_table()
        assert str(info.value) == (
            f"cannot head {url} (column 'x.mha'): not found (404: no such key, or no such bucket)"
        )


def test_a_relative_path_that_is_missing_hints_at_file_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A label column ("cat") is read as a file: the message says why it was looked for."""
    monkeypatch.chdir(tmp_path)
    frame = pd.DataFrame({"id": ["1"], "label": ["cat"]})
    with pytest.raises(FileNotFoundError) as info:
        file_dataset.reader(frame).into_blob_table()
    assert str(info.value) == (
        f"cannot read cat (row id '1', column 'label'): no such file (a relative path, "
        f"looked up in {tmp_path}; every column of a file DataFrame except 'id' holds file "
        "URLs or paths)"
    )


def test_a_pyarrow_table_is_read_as_its_pandas_frame(options: Options, put: Put) -> None:
    """A Pipeline took a pyarrow.Table; reader() refused one ("got Table")."""
    url = put("arrow/a.bin", b"from arrow")
    table = pa.table({"id": [7, 8], "a.bin": [url, None]})
    assert file_dataset.reader(table, options).into_blob_table().to_pylist() == [
        {"id": "7", "a.bin": b"from arrow"},
        {"id": "8", "a.bin": None},
    ]
    assert file_dataset.reader(row=table, options=options).into_size_table().to_pylist() == [
        {"id": "7", "a.bin": 10},
        {"id": "8", "a.bin": None},
    ]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.EACCES, "no write permission"),
        (errno.EROFS, "Read-only file system"),  # helper-122: these two named the
        (errno.ENOSPC, "No space left on device"),  # random folder too
    ],
)
def test_a_temp_dir_parent_that_refuses_a_folder_is_named(
    code: int,
    reason: str,
    options: Options,
    put: Put,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error named the random folder mkdtemp would have made, never the folder
    given (helper-111). This suite runs as root, which any folder lets write, so the
    operating system's refusal is played by mkdtemp itself."""
    url = put("perm/k", b"x")
    locked = tmp_path / "locked"
    locked.mkdir()

    def refused(prefix: str = "", dir: str | None = None, **kwargs: object) -> str:
        raise OSError(code, os.strerror(code), f"{dir}/{prefix}q1w2e3")

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    with pytest.raises(OSError) as raised:
        file_dataset.reader({"f": url}, options).into_temp_dir(dir=locked)
    assert str(raised.value) == (
        f"[Errno {code}] into_temp_dir() cannot make its folder there ({reason}); give "
        f"dir= a folder this process may write in, with room: '{locked}'"
    )
    assert raised.value.filename == str(locked)
    assert raised.value.errno == code
    assert type(raised.value) is type(OSError(code, ""))  # PermissionError for EACCES
    assert list(locked.iterdir()) == []


def test_a_record_batch_and_a_batch_of_numpy_columns_are_read_as_frames(
    options: Options, put: Put
) -> None:
    """A Pipeline took both (Ray's batch formats); reader() refused a RecordBatch
    ("got RecordBatch") and took a dict of NumPy columns for one row (helper-109)."""
    url = put("batches/a.bin", b"batch a")
    frame = pd.DataFrame({"id": ["r1", "r2"], "a.bin": [url, None]})
    expected = [{"id": "r1", "a.bin": b"batch a"}, {"id": "r2", "a.bin": None}]
    record_batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    numpy_batch = {name: frame[name].to_numpy() for name in frame.columns}
    for batch in (record_batch, numpy_batch):
        assert file_dataset.reader(batch, options).into_blob_table().to_pylist() == expected
    uneven = {"id": np.array(["r1", "r2"]), "a.bin": np.array([url])}  # helper-110
    with pytest.raises(file_dataset.InvalidInputError, match="columns of one length"):
        file_dataset.reader(uneven, options)


def test_a_file_name_that_is_not_a_string_is_a_type_error(tmp_path: Path) -> None:
    """As write_files says it; the reader's was an InvalidInputError alone (helper-113)."""
    source = tmp_path / "a.bin"
    source.write_bytes(b"a")
    with pytest.raises(TypeError, match=r"^file names must be strings, got 5$"):
        file_dataset.reader({5: str(source)})
    frame = pd.DataFrame([["r1", str(source)]])  # no column names: 0 and 1
    with pytest.raises(TypeError, match=r"^file column names must be strings, got 0$"):
        file_dataset.reader(frame.rename(columns={1: "id"}))


def test_a_dict_of_lists_is_refused_with_a_hint_to_make_a_frame(options: Options) -> None:
    columns = {"id": ["r1", "r2"], "a.bin": ["s3://bkt/k1", "s3://bkt/k2"]}
    with pytest.raises(
        TypeError, match=r"column 'a.bin': .* got list .*pass pd.DataFrame\(\.\.\.\)"
    ):
        file_dataset.reader(columns, options)
    # not for cells that could not be a column (helper-110)
    for cell in ([], {"nested": "s3://bkt/k"}, np.array("s3://bkt/k")):
        with pytest.raises(TypeError) as raised:
            file_dataset.reader({"a.bin": cell}, options)
        assert "pd.DataFrame" not in str(raised.value)


@pytest.mark.parametrize("cell", [[None], np.array([np.nan]), (None,)], ids=repr)
def test_a_collection_holding_a_null_is_not_a_null_cell(cell: object, options: Options) -> None:
    """pd.isna([None]) is [True]: a cell [None] was taken for "no file" and the row
    read as having none (helper-109)."""
    cells = np.empty(2, dtype=object)
    cells[0], cells[1] = "s3://bkt/k1", cell
    frame = pd.DataFrame({"id": ["r1", "r2"], "a.bin": cells})
    with pytest.raises(
        TypeError, match=r"row id 'r2', column 'a.bin': expected an s3:// URL or a local path, got "
    ):
        file_dataset.reader(frame, options)
    with pytest.raises(TypeError, match=r"row id 'r2', column 'a.bin': expected an s3:// URL"):
        file_dataset.reader({"id": "r2", "a.bin": cell}, options)


def test_a_url_with_a_space_at_an_end_is_quoted_in_the_error(options: Options, put: Put) -> None:
    """Before: "cannot read s3://.../k.bin  (row id ...": only a double space showed it."""
    url = put("spaced/k.bin", b"k") + " "
    frame = pd.DataFrame({"id": ["p04"], "k.bin": [url]})
    with pytest.raises(FileNotFoundError) as info:
        file_dataset.reader(frame, options).into_blob_table()
    assert str(info.value).startswith(f"cannot read {url!r} (row id 'p04', column 'k.bin'): ")


@pytest.mark.parametrize("where", ["column", "id"])
def test_a_name_too_long_for_a_local_folder_is_refused_before_any_download(
    where: str, options: Options, system_tmp: Path, put: Put
) -> None:
    """256 bytes: fine as a column of a blob table, too long for a file or folder name."""
    long = "é" * 128
    column, row_id = (long, "1") if where == "column" else ("f", long)
    frame = pd.DataFrame({"id": [row_id, "2"], column: [put("a", b"a"), put("b", b"b")]})
    with pytest.raises(ValueError, match=f"{where}.* is 256 bytes long: a local file or folder"):
        file_dataset.reader(frame, options).into_temp_dir()
    assert list(system_tmp.iterdir()) == []
    table = file_dataset.reader(frame, options).into_blob_table()
    assert table.column(column).to_pylist() == [b"a", b"b"]
    assert table.column("id").to_pylist() == [row_id, "2"]


def _client_error(code: str, status: int, message: str = "") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("AccessDenied", 403, file_dataset.ObjectAccessDeniedError),
        ("InvalidAccessKeyId", 403, file_dataset.ObjectAccessDeniedError),
        ("403", 403, file_dataset.ObjectAccessDeniedError),
        ("NoSuchKey", 404, file_dataset.ObjectNotFoundError),
        ("404", 404, file_dataset.ObjectNotFoundError),
        ("NoSuchBucket", 404, file_dataset.ObjectNotFoundError),
        ("InternalError", 500, file_dataset.TransferError),
    ],
)
def test_translate_s3_errors(code: str, status: int, kind: type[Exception]) -> None:
    url = "s3://bkt/some key"
    original = _client_error(code, status, "details")
    with pytest.raises(kind) as info:
        translate_error(original, url, "read")
    assert type(info.value) is kind
    assert url in str(info.value)
    assert info.value.__cause__ is original
    # the credentials themselves, not this object's permissions (the Pipeline ends a
    # call on it)
    assert info.value.credentials_failed is (code == "InvalidAccessKeyId")
    assert info.value.with_context("r1", "c").credentials_failed is (code == "InvalidAccessKeyId")
    if kind is file_dataset.ObjectAccessDeniedError:
        assert isinstance(info.value, PermissionError)
        assert "access denied" in str(info.value)
        assert info.value.errno == errno.EACCES
    if kind is file_dataset.ObjectNotFoundError:
        assert isinstance(info.value, FileNotFoundError)
        assert info.value.errno == errno.ENOENT
        assert str(info.value).startswith(f"cannot read {url}: ")  # not "[Errno 2] ..."
        # what an OSError handler reads (before: None and None)
        assert (info.value.filename, info.value.strerror) == (url, info.value.reason)
        located = info.value.with_context("r1", "a.mha")
        assert located.filename == url
        assert str(located).startswith(f"cannot read {url} (row id 'r1', column 'a.mha'): ")
    if kind is file_dataset.TransferError:
        assert info.value.errno is None


def test_access_denied_gets_row_context() -> None:
    error = translate_os_error(PermissionError(13, "Permission denied"), "/data/x", "read")
    assert isinstance(error, PermissionError)
    located = error.with_context("row-7", "x.mha")
    assert isinstance(located, PermissionError)
    assert located.errno == errno.EACCES
    assert str(located).startswith("cannot read /data/x (row id 'row-7', column 'x.mha')")


@pytest.mark.parametrize("as_frame", [False, True])
def test_a_download_refused_by_its_folder_is_a_permission_error(
    as_frame: bool, options: Options, put: Put, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder this process may not write in (made here by refusing the temporary
    file, since tests may run as root) was a plain TransferError for a row: ``except
    PermissionError`` missed it, though write_files' same refusal is one."""
    import pickle

    import file_dataset._transfer

    def refused(dest: Path) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied", str(dest))

    monkeypatch.setattr(file_dataset._transfer, "temp_file_in_place", refused)
    url = put("a.bin", b"content")
    row = {"id": "r1", "a.bin": url}
    source = pd.DataFrame([row]) if as_frame else row
    with pytest.raises(PermissionError) as info:
        file_dataset.reader(source, options).download_to(tmp_path / "out")
    error = info.value
    assert isinstance(error, file_dataset.ObjectAccessDeniedError)
    assert (error.url, error.row_id, error.column) == (url, "r1", "a.bin")
    assert error.errno == errno.EACCES
    assert "permission denied" in str(error)
    assert type(pickle.loads(pickle.dumps(error))) is file_dataset.ObjectAccessDeniedError


def test_transfer_errors_pickle_with_context() -> None:
    import pickle

    error = file_dataset.ObjectNotFoundError("s3://bkt/k", "gone", row_id="7", column="c")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is file_dataset.ObjectNotFoundError
    assert (copy.url, copy.row_id, copy.column, str(copy)) == ("s3://bkt/k", "7", "c", str(error))
    # a note (the Pipeline's with on_error="raise") and attributes of the caller's own
    # cross processes too; before, they were dropped (and so missing from Ray's errors)
    error.add_note("file_dataset.Pipeline: fn failed on row id '7'")
    error.attempt = 3  # type: ignore[attr-defined]
    error.credentials_failed = True
    for dumps, loads in [(pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)]:
        copy = loads(dumps(error))
        assert copy.__notes__ == ["file_dataset.Pipeline: fn failed on row id '7'"]
        assert (copy.attempt, copy.errno, copy.filename) == (3, errno.ENOENT, "s3://bkt/k")
        assert copy.credentials_failed


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "..", "", "/abs", "a\\b"])
def test_unsafe_id_rejected_before_any_download(
    bad_id: str, options: Options, system_tmp: Path, put: Put
) -> None:
    frame = pd.DataFrame({"id": ["ok", bad_id], "f": [put("f", b"f")] * 2})
    with pytest.raises(ValueError, match="path component"):
        file_dataset.reader(frame, options)
    assert list(system_tmp.iterdir()) == []


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://bucket-only", "s3://u:secret@bkt/k"])
def test_invalid_url_rejected_by_reader(url: str) -> None:
    with pytest.raises(ValueError) as info:
        file_dataset.reader({"f": url})
    assert "secret" not in str(info.value)


def test_blob_column_built_while_objects_arrive_out_of_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks are cut from the complete prefix of a column as objects arrive, in any
    order; nulls, empty objects and objects large enough for a chunk of their own keep
    their place."""
    from file_dataset import _reader

    monkeypatch.setattr(_reader, "_EARLY_CHUNK_BYTES", 10)
    monkeypatch.setattr(_reader, "_CHUNK_BYTES", 16)
    monkeypatch.setattr(_reader, "_OWN_CHUNK_BYTES", 20)
    values: list[bytes | None] = [b"aaaa", None, b"", b"bbbbbbbb", b"x" * 25, None, b"cc", b"d"]
    builder = _reader._ColumnBuilder(len(values))
    present = [i for i, v in enumerate(values) if v is not None]
    for i in present:
        builder.expect(i)
    for i in reversed(present):  # the last object arrives first
        blob = values[i]
        assert blob is not None
        builder.put(i, memoryview(blob))
    column = builder.finish()
    assert column.to_pylist() == values
    assert column.null_count == 2
    assert column.num_chunks > 2
    for chunk in column.chunks:
        chunk.validate(full=True)
        assert len(chunk.buffers()[2] or b"") <= 25


@pytest.mark.parametrize(
    ("order", "early", "cap"),
    [("in order", 10, 100), ("last first", 100, 16)],
    ids=["early-chunk", "chunk-cap"],
)
def test_blob_chunks_are_cut_at_the_early_size_and_at_the_cap(
    monkeypatch: pytest.MonkeyPatch, order: str, early: int, cap: int
) -> None:
    """Objects arriving in order are cut into a chunk once _EARLY_CHUNK_BYTES wait;
    objects completing a long prefix at once (the first arriving last) are cut before a
    chunk would pass _CHUNK_BYTES. Neither cut was reached by any test (helper-98)."""
    from file_dataset import _reader

    monkeypatch.setattr(_reader, "_EARLY_CHUNK_BYTES", early)
    monkeypatch.setattr(_reader, "_CHUNK_BYTES", cap)
    values = [bytes([65 + i]) * 6 for i in range(5)]
    builder = _reader._ColumnBuilder(len(values))
    for i in range(len(values)):
        builder.expect(i)
    for i in range(len(values)) if order == "in order" else reversed(range(len(values))):
        builder.put(i, memoryview(values[i]))
    column = builder.finish()
    assert column.to_pylist() == values
    assert [len(chunk.buffers()[2]) for chunk in column.chunks] == [12, 12, 6]


def test_the_columns_of_a_wide_frame_are_cut_into_chunks_as_their_objects_arrive(
    tmp_path: Path,
) -> None:
    """Each column's early chunk waits for 8 MiB of its own objects: 70 columns of 1 MiB
    each were all held until the end and then copied (a helper measured 2.2x the bytes
    held in RSS on 200 columns). The columns now share a 64 MiB budget."""
    columns = [f"c{j}.bin" for j in range(70)]  # 70 x 256 x 4 KiB = 70 MiB
    cells: dict[str, list[str]] = {name: [] for name in columns}
    for i in range(256):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(i.to_bytes(2, "big") * 2048)  # 4 KiB, distinct per row
        for name in columns:  # a path of its own per cell (one path is read once)
            link = tmp_path / f"{i}-{name}"
            os.link(path, link)
            cells[name].append(str(link))
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(256)]} | cells)
    table = file_dataset.reader(frame).into_blob_table()
    assert table.column_names == ["id", *columns]
    expected = [i.to_bytes(2, "big") * 2048 for i in range(256)]
    for name in columns:
        assert table.column(name).to_pylist() == expected
    # cut before the end: the whole read never waited to be copied at once
    assert sum(table.column(name).num_chunks for name in columns) > len(columns)


def test_user_threads_and_a_pipeline_fn_share_one_options(
    s3_server: LocalS3Server, bucket: str, put: Put, read_object: Callable[[str], bytes]
) -> None:
    """One Options (and its pool of 4) serves 8 user threads reading at once, and a
    Pipeline whose fn itself reads with the same Options, without a deadlock."""
    options = s3_server.options(max_concurrency=4)
    data = {f"k{i}": bytes([i]) * (1000 + i) for i in range(100)}
    urls = dict(zip(data, put_many(put, data), strict=True))

    def read(start: int) -> list[bytes]:
        keys = [f"k{(start * 13 + j) % 100}" for j in range(40)]
        frame = pd.DataFrame({"id": list(range(40)), "f": [urls[k] for k in keys]})
        got = file_dataset.reader(frame, options).into_blob_table().column("f").to_pylist()
        assert got == [data[k] for k in keys]
        return got

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert len(list(pool.map(read, range(16)))) == 16

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        extra = file_dataset.reader({"x": urls["k7"]}, options).into_blob_table()
        out = output_dir / "o.bin"
        out.write_bytes((input_dir / "f").read_bytes() + extra.column("x")[0].as_py())
        return {"o.bin": out}

    frame = pd.DataFrame({"id": list(range(20)), "f": [urls[f"k{j}"] for j in range(20)]})
    result = file_dataset.Pipeline(fn, {"into_path": f"s3://{bucket}/out"}, options)(frame)
    assert list(result["id"]) == list(range(20))
    for j in range(20):
        assert read_object(f"s3://{bucket}/out/{j}/o.bin") == data[f"k{j}"] + data["k7"]


def test_a_series_row_with_a_repeated_or_non_string_name_is_refused(tmp_path: Path) -> None:
    """Before: a dict of the row kept only the last of two cells of one name (one file
    silently missing), and a label 0 became a file named "0"."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    frame = pd.DataFrame([["r1", str(first), str(second)]], columns=["id", "f.bin", "f.bin"])
    with pytest.raises(file_dataset.InvalidInputError) as info:
        file_dataset.reader(frame.iloc[0])
    assert str(info.value) == "the row's file names must be unique; repeated: ['f.bin']"
    with pytest.raises(file_dataset.InvalidInputError) as info:
        file_dataset.Pipeline(lambda i, o: {}, {"into_path": str(tmp_path / "out")})(frame.iloc[0])
    assert str(info.value) == "the row's file names must be unique; repeated: ['f.bin']"
    assert not (tmp_path / "out").exists()
    numbered = pd.Series([str(first)], index=[0])
    with pytest.raises(TypeError) as info:
        file_dataset.reader(numbered)
    assert isinstance(info.value, file_dataset.InvalidInputError)
    assert str(info.value) == (
        "the row's file names must be strings, got 0: a Series is one row, its index the "
        "file names and its values their URLs (frame.iloc[0], say); for a column of URLs, "
        "pass a DataFrame with an 'id' column"
    )
    for source, shown in [
        ("s3://b/k?X-Amz-Signature=abc123", "str 's3://b/k?X-Amz-Signature=***'"),
        (tmp_path, f"PosixPath {str(tmp_path)!r}"),
        ([str(first)], "list"),
    ]:
        with pytest.raises(file_dataset.InvalidInputError) as info:
            file_dataset.reader(source)  # type: ignore[arg-type]
        assert str(info.value) == (
            "expected one row (a mapping of file name to URL, such as {'image.mha': "
            "'s3://bucket/key'}) or a file DataFrame (an 'id' column and one column per "
            f"file name), got {shown}"
        )
    # a well-formed row still reads, values as they were
    row = frame.iloc[0, [0, 1]]
    assert file_dataset.reader(row).into_blob_table().column("f.bin").to_pylist() == [b"first"]


def test_the_readme_listing_recipe_builds_a_file_dataframe(
    bucket: str, put: Callable[[str, bytes], str], s3_client: Any, options: Options
) -> None:
    """README, "Coming from Ray Data": a prefix listing made into a file DataFrame."""
    put("ct/p01/image.mha", b"image 1")
    put("ct/p01/mask.mha", b"mask 1")
    put("ct/p02/image.mha", b"image 2")
    put("other/p03/image.mha", b"not listed")

    def listing(prefix: str) -> pd.DataFrame:
        rows: dict[str, dict[str, str]] = {}
        folders: dict[str, str] = {}
        pages = s3_client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 2}):
            for item in page.get("Contents", []):
                folder, _, name = item["Key"].rpartition("/")
                row_id = folder.rpartition("/")[2]
                if folders.setdefault(row_id, folder) != folder:
                    raise ValueError(f"{folder} and {folders[row_id]} would share id {row_id}")
                rows.setdefault(row_id, {})[name] = f"s3://{bucket}/{item['Key']}"
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("id").reset_index()

    frame = listing("ct/")
    assert frame["id"].tolist() == ["p01", "p02"]
    put("mr/p01/dicom/1.dcm", b"1")
    put("mr/p02/dicom/2.dcm", b"2")
    with pytest.raises(ValueError) as shared:
        listing("mr/")
    assert str(shared.value) == "mr/p02/dicom and mr/p01/dicom would share id dicom"
    table = file_dataset.reader(frame, options).into_blob_table()
    assert table.column_names == ["id", "image.mha", "mask.mha"]
    assert table.column("image.mha").to_pylist() == [b"image 1", b"image 2"]
    assert table.column("mask.mha").to_pylist() == [b"mask 1", None]


def test_download_to_and_temp_dir_folders_are_read_as_into_path_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: download_to("file:///x") wrote to a relative folder named "file:", and
    "" or "file://" meant the working directory; into_path refused them."""
    source = tmp_path / "a.bin"
    source.write_bytes(b"a")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    target = tmp_path / "dl"
    paths = file_dataset.reader({"a.bin": source}).download_to(target.as_uri())
    assert paths == {"a.bin": target / "a.bin"}
    assert (target / "a.bin").read_bytes() == b"a"
    with file_dataset.reader({"a.bin": source}).into_temp_dir(dir=tmp_path.as_uri()) as folder:
        assert folder.parent == tmp_path
        assert (folder / "a.bin").read_bytes() == b"a"
    for bad, message in [
        ("", "download_to(root): expected a local folder, got an empty string"),
        ("file://", "download_to(root): file URL 'file://' names no path"),
        ("s3://bkt/out", "download_to(root) must be a local folder, got the S3 URL"),
        # helper-121: "invalid S3 bucket name", and "use s3://bucket/key or a local path"
        ("s3://b/out", "download_to(root) must be a local folder, got the S3 URL 's3://b/out'"),
        (
            "ftp://host/out",
            "download_to(root): expected a local folder (a path or a file:// URL), got "
            "'ftp://host/out'",
        ),
    ]:
        with pytest.raises(file_dataset.InvalidInputError) as info:
            file_dataset.reader({"a.bin": source}).download_to(bad)
        assert str(info.value).startswith(message)
    with pytest.raises(file_dataset.InvalidInputError, match=r"^into_temp_dir\(dir=...\): "):
        file_dataset.reader({"a.bin": source}).into_temp_dir(dir="")
    assert list(workdir.iterdir()) == []


def test_a_blob_read_leaves_no_reference_cycle_behind(tmp_path: Path) -> None:
    """The columns' shared copy budget made a cycle (builders <-> budget) that kept a
    dropped table's chunks alive until the cyclic collector ran: peak RSS of three
    reads in a row on the benchmark's A was 476-485 MiB against 361-365."""
    from file_dataset import _reader

    (tmp_path / "a.bin").write_bytes(b"a" * 1000)
    frame = pd.DataFrame({"id": ["1", "2"], "a": [tmp_path / "a.bin"] * 2, "b": [None, None]})
    gc.collect()
    gc.disable()
    try:
        table = file_dataset.reader(frame).into_blob_table()
        with pytest.raises(FileNotFoundError):  # and after a failure
            file_dataset.reader({"a": tmp_path / "missing"}).into_blob_table()
        left = [o for o in gc.get_objects() if isinstance(o, _reader._ColumnBuilder)]
    finally:
        gc.enable()
    # only the failed call's (its traceback keeps its frame), holding nothing
    assert len(left) <= 1
    assert [(o._values, o._pending, o._chunks) for o in left] == [([], [], [])] * len(left)
    assert table.column("a").to_pylist() == [b"a" * 1000] * 2


class _CountingObjects(http.server.BaseHTTPRequestHandler):
    """Serves ``objects`` (path-style ``/bucket/key``) to HEAD and (ranged) GET, and
    counts the requests by method and path in ``seen``; other paths get 404 NoSuchKey."""

    objects: ClassVar[dict[str, bytes]] = {}
    seen: ClassVar[collections.Counter[tuple[str, str]]] = collections.Counter()

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        path = urllib.parse.unquote(self.path.split("?")[0])
        self.seen[self.command, path] += 1
        body = self.objects.get(path)
        if body is None:
            error = b"<Error><Code>NoSuchKey</Code><Message>No such key.</Message></Error>"
            self.send_response(404)
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(error)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(error)
            return
        start, end = 0, len(body) - 1
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if asked and self.command == "GET":
            start = int(asked.group(1))
            end = min(end, int(asked.group(2) or end))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", f'"{zlib.crc32(body):08x}"')
        self.send_header("Last-Modified", "Thu, 03 Dec 2026 12:00:00 GMT")
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body[start : end + 1])

    do_GET = do_HEAD = _answer


@contextmanager
def _counting_s3(
    objects: dict[str, bytes], make_options: Callable[[int], Options]
) -> Iterator[tuple[Options, type[_CountingObjects]]]:
    """Serves ``objects`` (by key, in bucket ``bkt``); yields the options that
    ``make_options(port)`` makes for the server, and the handler class, whose ``seen``
    counts the requests."""

    class Handler(_CountingObjects):
        pass

    Handler.objects = {f"/bkt/{key}": body for key, body in objects.items()}
    Handler.seen = collections.Counter()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield make_options(server.server_address[1]), Handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_an_object_in_several_cells_is_transferred_once(
    transport: str, tmp_path: Path, system_tmp: Path, fake_s3_options: Callable[..., Options]
) -> None:
    """Before: one GET (or HEAD) per cell: an atlas in every row of 4 (and in a second
    column of one) was read 5 times, and a blob table held 5 copies of it (a helper's
    200 MiB atlas in 2 columns x 4 rows made a 1,603 MiB table)."""
    atlas = os.urandom(2 * 1024 * 1024 + 3)  # large enough to be a chunk of its own
    scans = {f"s{i}": f"scan {i}".encode() for i in range(4)}
    frame = pd.DataFrame(
        {
            "id": ["p0", "p1", "p2", "p3"],
            "atlas.mha": ["s3://bkt/atlas"] * 4,
            "scan.mha": ["s3://bkt/s0", "s3://bkt/s1", "s3://bkt/atlas", None],
            "small.txt": ["s3://bkt/s3", "s3://bkt/s3", None, "s3://bkt/s2"],
        }
    )
    make_options = functools.partial(fake_s3_options, transport=transport)
    with _counting_s3({"atlas": atlas, **scans}, make_options) as (options, server):
        table = file_dataset.reader(frame, options).into_blob_table()
        blob_gets = dict(server.seen)
        server.seen.clear()
        sizes = file_dataset.reader(frame, options).into_size_table()
        heads = dict(server.seen)
        server.seen.clear()
        with file_dataset.reader(frame, options).into_temp_dir() as folder:
            temp_gets = dict(server.seen)
            on_disk = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")}
            files = {name: p.read_bytes() for name, p in on_disk.items() if p.is_file()}
            inodes = {os.stat(on_disk[f"{i}/atlas.mha"]).st_ino for i in ("p0", "p1", "p2", "p3")}
        server.seen.clear()
        with pytest.raises(file_dataset.ObjectNotFoundError) as missing:
            file_dataset.reader(
                pd.DataFrame({"id": ["a", "b"], "f": ["s3://bkt/gone"] * 2}), options
            ).into_blob_table()
        missing_gets = dict(server.seen)
    expected_gets = {("GET", f"/bkt/{key}"): 1 for key in ("atlas", "s0", "s1", "s2", "s3")}
    assert blob_gets == expected_gets
    assert temp_gets == expected_gets
    assert heads == {("HEAD", f"/bkt/{key}"): 1 for key in ("atlas", "s0", "s1", "s2", "s3")}
    assert table.to_pydict() == {
        "id": ["p0", "p1", "p2", "p3"],
        "atlas.mha": [atlas] * 4,
        "scan.mha": [b"scan 0", b"scan 1", atlas, None],
        "small.txt": [b"scan 3", b"scan 3", None, b"scan 2"],
    }
    # The atlas's cells share one buffer (no copy per cell).
    shared = {
        chunk.buffers()[2].address
        for name in ("atlas.mha", "scan.mha")
        for chunk in table[name].chunks
        if len(chunk) == 1 and chunk.null_count == 0 and len(chunk[0].as_py()) == len(atlas)
    }
    assert len(shared) == 1
    assert sizes.to_pydict() == {
        "id": ["p0", "p1", "p2", "p3"],
        "atlas.mha": [len(atlas)] * 4,
        "scan.mha": [6, 6, len(atlas), None],
        "small.txt": [6, 6, None, 6],
    }
    assert files == {
        **{f"p{i}/atlas.mha": atlas for i in range(4)},
        "p0/scan.mha": b"scan 0",
        "p1/scan.mha": b"scan 1",
        "p2/scan.mha": atlas,
        "p0/small.txt": b"scan 3",
        "p1/small.txt": b"scan 3",
        "p3/small.txt": b"scan 2",
    }
    assert len(inodes) == 4  # copies, not links: changing one leaves the others
    assert missing.value.row_id == "a"  # the first of its cells
    assert missing_gets == {("GET", "/bkt/gone"): 1}
    assert list(system_tmp.iterdir()) == []


def test_a_failed_copy_of_an_object_in_several_cells_names_its_own_cell(
    options: Options, put: Put, tmp_path: Path
) -> None:
    """The object is downloaded for its first cell and copied for the others: a copy
    that fails names the cell it was for (the first version named the first cell,
    which had succeeded; a regression hunt's finding)."""
    url = put("twice.bin", b"twice")
    frame = pd.DataFrame({"id": ["a", "b", "c"], "f.bin": [url] * 3})
    root = tmp_path / "root"
    (root / "b" / "f.bin").mkdir(parents=True)  # a folder where row b's file goes
    with pytest.raises(file_dataset.TransferError) as raised:
        file_dataset.reader(frame, options).download_to(root)
    error = raised.value
    assert (error.row_id, error.column, error.url) == ("b", "f.bin", url)
    assert f"could not write {root / 'b' / 'f.bin'}" in str(error)
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files.items() <= {"a/f.bin": b"twice", "c/f.bin": b"twice"}.items()
    assert "a/f.bin" in files  # the download itself, which did not fail
    assert [p.name for p in (root / "b").iterdir()] == ["f.bin"]  # no temporary file left


def test_a_refused_cell_names_its_row_and_column_as_attributes(options: Options) -> None:
    """An InvalidInputError about one cell had its row id and column in its text only."""
    cases = [
        (pd.DataFrame({"id": ["a", "b"], "f": ["s3://bkt/k", "ftp://host/x"]}), "b", "f"),
        (pd.DataFrame({"id": ["a", "b"], "label": [None, 3.5]}), "b", "label"),
        (pd.DataFrame({"id": ["a", "b"], "f": [None, b"bytes"]}), "b", "f"),
        (pd.DataFrame({"id": ["a", "b"], "f": [None, [1, 2]]}), "b", "f"),
        ({"id": 7, "bad.mha": "ftp://host/x"}, "7", "bad.mha"),
        ({"bad.mha": "ftp://host/x"}, None, "bad.mha"),
    ]
    for source, row_id, column in cases:
        with pytest.raises(file_dataset.InvalidInputError) as info:
            file_dataset.reader(source, options).into_size_table()
        assert (info.value.row_id, info.value.column) == (row_id, column), source
        copy = cloudpickle.loads(cloudpickle.dumps(info.value))  # as Ray ships it
        assert (copy.row_id, copy.column, str(copy)) == (row_id, column, str(info.value))
    with pytest.raises(file_dataset.InvalidInputError) as info:
        file_dataset.reader(pd.DataFrame({"f": ["s3://bkt/k"]}), options)
    assert (info.value.row_id, info.value.column) == (None, None)  # not about one cell


def test_messages_about_many_columns_name_the_first_ten(options: Options) -> None:
    """helper-123: a frame of 10,000 columns made messages of 64,000 to 160,000
    characters (every column listed), which Ray repeats in each task's error."""
    names = [f"c{i}.bin" for i in range(10_000)]
    shown = ", ".join(repr(name) for name in names[:10])
    no_id = pd.DataFrame([["s3://b/k"] * len(names)], columns=names)
    with pytest.raises(file_dataset.InvalidInputError) as raised:
        file_dataset.reader(no_id, options)
    assert str(raised.value) == (
        "a file DataFrame needs an 'id' column (unique, non-null); columns are "
        f"[{shown}] and 9990 more"
    )
    twice = pd.DataFrame([["r1", *["s3://b/k"] * 20_000]], columns=["id", *names, *names])
    with pytest.raises(file_dataset.InvalidInputError) as raised:
        file_dataset.reader(twice, options)
    repeated = sorted(names)
    assert str(raised.value) == (
        "file column names must be unique; repeated: "
        f"[{', '.join(repr(n) for n in repeated[:10])}] and 9990 more"
    )
    ragged = {name: np.array(["s3://b/k"] * (1 + i % 2)) for i, name in enumerate(names)}
    with pytest.raises(file_dataset.InvalidInputError) as raised:
        file_dataset.reader({"id": np.array(["r1", "r2"]), **ragged}, options)
    assert str(raised.value) == (
        "a batch of NumPy columns needs columns of one length, got {'id': 2, 'c0.bin': 1, "
        "'c1.bin': 2, 'c2.bin': 1, 'c3.bin': 2, 'c4.bin': 1, 'c5.bin': 2, 'c6.bin': 1, "
        "'c7.bin': 2, 'c8.bin': 1} and 9991 more"
    )


@pytest.mark.parametrize(
    "kernel", ["copies", "refuses", "fails part-way", "sees a change", "shrinks"]
)
def test_local_cells_are_copied_into_a_temp_dir_through_the_kernel(
    kernel: str, tmp_path: Path, kernel_copy: Callable[[str, Path], list[int]]
) -> None:
    """A local cell was read into this process and written out again (in 8 MiB parts
    on other threads); copy_file_range keeps the bytes in the kernel. Where the kernel
    cannot, the rest is read and written here; a file that changes or shrinks during
    the copy is an error and leaves nothing behind."""
    source = tmp_path / "big.bin"
    payload = os.urandom(3 * 1024 * 1024 + 123)
    source.write_bytes(payload)
    calls = kernel_copy(kernel, source)
    rows = pd.DataFrame({"id": ["r1"], "big.bin": [str(source)]})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if kernel in ("sees a change", "shrinks"):
        reason = (
            "changed while it was being read"
            if kernel == "sees a change"
            else (f"file shrank while being read (2000 of {len(payload)} bytes)")
        )
        with pytest.raises(file_dataset.TransferError) as info:
            file_dataset.reader(rows).into_temp_dir(dir=scratch)
        assert reason in str(info.value)
        assert str(source) in str(info.value)
        assert "row id 'r1', column 'big.bin'" in str(info.value)
        assert list(scratch.rglob("*")) == []
    else:
        with file_dataset.reader(rows).into_temp_dir(dir=scratch) as root:
            assert (Path(root) / "r1" / "big.bin").read_bytes() == payload
            assert [p.name for p in (Path(root) / "r1").iterdir()] == ["big.bin"]
    assert calls  # the kernel was asked


@pytest.mark.parametrize("key", ["plain/big.bin", "dir with space/ü+&=%25 (1).bin"])
def test_a_large_objects_later_parts_come_from_presigned_gets_on_a_real_server(
    s3_server: LocalS3Server,
    put: Callable[[str, bytes], str],
    key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On moto (HTTP, SigV4 query signatures), the later parts of an object read into
    memory are presigned GETs of the right bytes, whatever characters the key holds."""
    data = os.urandom(12 * MiB + 3)
    url = put(key, data)
    options = s3_server.options(part_size=5 * MiB, multipart_threshold=5 * MiB)
    with caplog.at_level(logging.DEBUG, logger="file_dataset.signed"):
        table = file_dataset.reader({"id": "r1", "f.bin": url}, options).into_blob_table()
    assert table["f.bin"][0].as_py() == data
    lines = sorted(r.getMessage() for r in caplog.records if r.name == "file_dataset.signed")
    assert [line.split(": ", 1)[1].split(" in ")[0] for line in lines] == [
        f"{2 * MiB + 3} of {2 * MiB + 3} bytes",
        f"{5 * MiB} of {5 * MiB} bytes",
    ]
