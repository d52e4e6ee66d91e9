"""write_files() to the local S3 server and to local folders."""

from __future__ import annotations

import datetime as dt
import decimal
import errno
import itertools
import os
import re
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import file_dataset
from file_dataset import Options
from file_dataset._local import atomic_copy
from file_dataset.testing import LocalS3Server

ReadObject = Callable[[str], bytes]

MiB = 1024 * 1024
UNSAFE = ["../x", "a/b", "..", "", "/abs", "a\\b"]
AWKWARD_NAMES = ["with space.mha", "ünï日本.mha", "a+b.mha", "a%20b.mha", "100%.mha", "%%25 +"]
_ids = itertools.count()

file_names = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"], exclude_characters="/\\"),
    min_size=1,
    max_size=16,
).filter(lambda name: name not in (".", "..", "id"))  # "id" is a row's id, not a file
rows = st.dictionaries(file_names, st.binary(max_size=64), min_size=1, max_size=4)


def keys(s3_client: Any, bucket: str, prefix: str = "") -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def make_files(folder: Path, contents: dict[str, bytes]) -> dict[str, Path]:
    """Writes ``contents`` under ``folder`` (by position, not name) and maps name to path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for index, (name, data) in enumerate(contents.items()):
        files[name] = folder / f"src-{index}"
        files[name].write_bytes(data)
    return files


@pytest.fixture(scope="module")
def shared_bucket(s3_server: LocalS3Server) -> str:
    """One bucket for the property tests (each example writes under its own id)."""
    return s3_server.create_bucket()


# --- Usage 2: S3 ---------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["resampled", "resampled/", "a/b/resampled/"])
def test_write_to_s3(
    prefix: str,
    options: Options,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    read_object: ReadObject,
) -> None:
    files = make_files(tmp_path, {"resampled_image.mha": b"image", "mask.mha": b"mask"})
    result = file_dataset.write_files(files, f"s3://{bucket}/{prefix}", id="1", options=options)
    base = f"s3://{bucket}/{prefix.rstrip('/')}/1"
    assert result == {
        "resampled_image.mha": f"{base}/resampled_image.mha",
        "mask.mha": f"{base}/mask.mha",
    }
    assert all(type(url) is str for url in result.values())
    assert read_object(result["resampled_image.mha"]) == b"image"
    assert read_object(result["mask.mha"]) == b"mask"
    assert len(keys(s3_client, bucket)) == 2


@pytest.mark.parametrize("into", ["s3://{bucket}", "s3://{bucket}/"])
def test_write_to_bucket_root(
    into: str, options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    files = make_files(tmp_path, {"f": b"root"})
    result = file_dataset.write_files(files, into.format(bucket=bucket), id=7, options=options)
    assert result == {"f": f"s3://{bucket}/7/f"}
    assert keys(s3_client, bucket) == ["7/f"]


def test_int_id_and_none_values(options: Options, bucket: str, tmp_path: Path) -> None:
    files: dict[str, Any] = {**make_files(tmp_path, {"f": b"x"}), "skipped": None}
    result = file_dataset.write_files(files, f"s3://{bucket}/p", id=42, options=options)
    assert result == {"f": f"s3://{bucket}/p/42/f"}


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_awkward_names_round_trip(
    name: str, options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    files = make_files(tmp_path, {name: name.encode()})
    result = file_dataset.write_files(files, f"s3://{bucket}/out dir+%/", id="i d", options=options)
    assert result == {name: f"s3://{bucket}/out dir+%/i d/{name}"}
    assert keys(s3_client, bucket) == [f"out dir+%/i d/{name}"]
    blobs = file_dataset.reader(result, options).into_blob_table()
    assert blobs.column(name).to_pylist() == [name.encode()]


def test_zero_byte_file(
    options: Options, bucket: str, tmp_path: Path, read_object: ReadObject
) -> None:
    files = make_files(tmp_path, {"empty": b""})
    s3 = file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    assert read_object(s3["empty"]) == b""
    local = file_dataset.write_files(files, tmp_path / "out", id="1")
    assert local == {"empty": tmp_path / "out" / "1" / "empty"}
    assert local["empty"].read_bytes() == b""


def test_40_mib_file_is_uploaded_in_parts(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path, read_object: ReadObject
) -> None:
    data = os.urandom(40 * MiB)
    files = make_files(tmp_path, {"big.bin": data})
    result = file_dataset.write_files(files, f"s3://{bucket}/big", id="1", options=options)
    head = s3_client.head_object(Bucket=bucket, Key="big/1/big.bin")
    assert head["ContentLength"] == 40 * MiB
    assert head["ETag"].strip('"').endswith("-5")  # multipart, 8 MiB parts
    assert read_object(result["big.bin"]) == data


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_multipart_upload_carries_the_checksums_boto3s_upload_file_sends(
    s3_server: LocalS3Server, transport: str, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """Before: CreateMultipartUpload declared no checksum while botocore sent a CRC32
    with every part, and CompleteMultipartUpload listed none, a shape that AWS S3 has
    refused ("Checksum Type mismatch") and boto3's upload_file avoids (helper-102). The
    object now has upload_file's composite CRC32; the README's Config for servers that
    refuse checksum headers still sends none (test_transports)."""
    from boto3.s3.transfer import TransferConfig

    data = os.urandom(12 * MiB)
    source = make_files(tmp_path, {"big.bin": data})["big.bin"]
    s3_client.upload_file(
        str(source),
        bucket,
        "reference",
        Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB),
    )
    options = s3_server.options(transport=transport, part_size=5 * MiB, multipart_threshold=5 * MiB)
    file_dataset.write_files({"big.bin": source}, f"s3://{bucket}/out", "r1", options)
    ours = s3_client.get_object_attributes(
        Bucket=bucket, Key="out/r1/big.bin", ObjectAttributes=["Checksum", "ETag"]
    )
    theirs = s3_client.get_object_attributes(
        Bucket=bucket, Key="reference", ObjectAttributes=["Checksum", "ETag"]
    )
    assert ours["Checksum"] == theirs["Checksum"]
    assert ours["Checksum"]["ChecksumType"] == "COMPOSITE"
    assert ours["Checksum"]["ChecksumCRC32"]
    assert ours["ETag"] == theirs["ETag"]
    assert ours["ETag"].endswith("-3")


def test_an_interrupt_as_a_multipart_upload_starts_aborts_it(
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C that lands as S3 answers CreateMultipartUpload: the id never reached
    the upload, which was left open in the bucket (1 to 4 per interrupt in a helper's
    runs). The reply queue here loses that first reply to a KeyboardInterrupt."""
    import queue

    import file_dataset._transfer

    options = s3_server.options(part_size=5 * MiB, multipart_threshold=5 * MiB)
    files = make_files(tmp_path, {"big.bin": os.urandom(11 * MiB)})
    # the pool's threads and queues are made before the patch, which reaches every queue
    file_dataset.write_files(files, f"s3://{bucket}/warm", id="1", options=options)
    s3_client.delete_object(Bucket=bucket, Key="warm/1/big.bin")

    class InterruptedQueue(queue.SimpleQueue):  # type: ignore[type-arg]
        interrupted = False

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            item = super().get(block, timeout)
            if InterruptedQueue.interrupted:
                return item
            InterruptedQueue.interrupted = True
            raise KeyboardInterrupt  # the reply is gone, as after a real signal

    monkeypatch.setattr(file_dataset._transfer.queue, "SimpleQueue", InterruptedQueue)
    with pytest.raises(KeyboardInterrupt):
        file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    monkeypatch.undo()
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    written = file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    assert s3_client.get_object(Bucket=bucket, Key="p/1/big.bin")["ContentLength"] == 11 * MiB
    assert written == {"big.bin": f"s3://{bucket}/p/1/big.bin"}


def _ctrl_c() -> None:
    """Sends SIGINT to the main thread (where the test, and so the call, runs)."""
    import signal

    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def _interrupted_once_sending(
    monkeypatch: pytest.MonkeyPatch, answers: int
) -> tuple[threading.Event, threading.Event]:
    """Interrupts the next write_files call once a part is under way.

    The calling thread takes ``answers`` replies (those to CreateMultipartUpload; the
    test holds the parts until the call is abandoned), then, once ``sending`` is set
    (by the test, from a part), gets a Ctrl-C instead of the next one; ``abandoned`` is
    set when the interrupted call has abandoned its run. Returns ``(sending,
    abandoned)``.
    """
    import queue
    from types import SimpleNamespace

    import file_dataset._transfer
    from file_dataset._options import RunState

    sending = threading.Event()
    abandoned = threading.Event()
    abandon = RunState.abandon

    def abandon_and_tell(run: RunState) -> None:
        abandon(run)
        abandoned.set()

    class InterruptedQueue(queue.SimpleQueue):  # type: ignore[type-arg]
        gets = 0

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            self.gets += 1
            if self.gets <= answers:
                return super().get(block, timeout)
            assert sending.wait(timeout=60)  # parts are on their way: Ctrl-C
            raise KeyboardInterrupt

        def get_nowait(self) -> Any:  # (counted too: two answers may come at once)
            return self.get(block=False)

    monkeypatch.setattr(RunState, "abandon", abandon_and_tell)
    monkeypatch.setattr(
        file_dataset._transfer, "queue", SimpleNamespace(SimpleQueue=InterruptedQueue)
    )
    return sending, abandoned


@pytest.mark.parametrize(
    ("transport", "only_sent"), [("boto3", False), ("boto3", True), ("obstore", False)]
)
def test_an_interrupt_cuts_the_parts_being_sent(
    transport: str,
    only_sent: bool,
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C while parts are sent: the call waited for every part in flight to be
    sent to the end (12 s of a 14 s upload at 20 MB/s in a tester's run). Here each
    part's body is held at its first read until the interrupted call has abandoned its
    run: not one more byte is read after that, no part is sent again, the upload is
    aborted, and the next call (on the same threads) is not cut.

    Over plain HTTP botocore reads a body twice before sending it (its checksum, and
    the signature's hash of the payload); ``only_sent`` turns both off, so that the
    first read is one of the request being sent, as over HTTPS with S3."""
    from botocore.config import Config

    import file_dataset._s3

    config = Config(
        request_checksum_calculation="when_required", s3={"payload_signing_enabled": False}
    )
    options = s3_server.options(
        transport=transport,
        part_size=5 * MiB,
        multipart_threshold=5 * MiB,
        s3_client_kwargs={"config": config} if only_sent else None,
    )
    data = os.urandom(15 * MiB)  # three parts, all sent at once
    files = make_files(tmp_path, {"big.bin": data})
    sending, abandoned = _interrupted_once_sending(monkeypatch, answers=1)
    reads: list[int] = []  # the body of each read begun once the run was abandoned
    read_bytes: list[int] = []  # and the bytes each of them gave

    part_read = file_dataset._s3._PartBody.read

    def held_read(body: Any, amount: int | None = None) -> bytes:
        sending.set()
        abandoned.wait(timeout=60)  # a safety net: the interrupt comes at once
        reads.append(id(body))
        chunk = part_read(body, amount)
        read_bytes.append(len(chunk))
        return chunk

    monkeypatch.setattr(file_dataset._s3._PartBody, "read", held_read)
    with pytest.raises(KeyboardInterrupt):
        file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    monkeypatch.undo()
    assert abandoned.is_set()
    assert reads  # some part was being sent
    assert sum(read_bytes) == 0  # before: every part read (and sent) to its end
    assert len(reads) == len(set(reads))  # one read per body: no part sent again
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    written = file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    body = s3_client.get_object(Bucket=bucket, Key="p/1/big.bin")["Body"].read()
    assert body == data
    assert written == {"big.bin": f"s3://{bucket}/p/1/big.bin"}


@pytest.mark.parametrize("transport", ["boto3", "obstore"])
def test_an_interrupt_during_an_abort_ends_the_call_and_completes_no_upload(
    transport: str,
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C that lands while a failed file's upload is aborted was taken for that
    file's failure, when the calling thread made the abort: the files before it ran
    on, and one whose parts were under way was completed, after the Ctrl-C
    (helper-145). Here the first file's part is held until the call is abandoned, and
    the Ctrl-C comes as the second file's upload is aborted (on the pool): the call
    raises it, the first upload is aborted, not completed, and both aborts are
    answered before the call ends, so no upload is left open."""
    from file_dataset._options import RunState
    from file_dataset._s3 import S3Backend

    files = make_files(tmp_path, {"a.bin": os.urandom(6 * MiB), "b.bin": os.urandom(6 * MiB)})
    abandoned = threading.Event()
    aborts: list[str] = []
    send_part, abort, abandon = (
        S3Backend.multipart_part,
        S3Backend.multipart_abort,
        RunState.abandon,
    )

    def abandon_and_tell(run: RunState) -> None:
        abandon(run)
        abandoned.set()

    def part(self: S3Backend, loc: Any, upload_id: str, number: int, *rest: Any) -> Any:
        if loc.key.endswith("a.bin"):
            assert abandoned.wait(timeout=60)  # a safety net: the Ctrl-C comes at once
        elif number == 1:
            raise file_dataset.TransferError(str(loc), "refused", operation="write")
        return send_part(self, loc, upload_id, number, *rest)

    def interrupted_abort(self: S3Backend, loc: Any, upload_id: str) -> None:
        aborts.append(loc.key)
        if loc.key.endswith("b.bin") and len(aborts) == 1:
            _ctrl_c()  # as the request goes out
        abort(self, loc, upload_id)

    monkeypatch.setattr(RunState, "abandon", abandon_and_tell)
    monkeypatch.setattr(S3Backend, "multipart_part", part)
    monkeypatch.setattr(S3Backend, "multipart_abort", interrupted_abort)
    options = s3_server.options(transport=transport, part_size=5 * MiB, multipart_threshold=5 * MiB)
    with pytest.raises(KeyboardInterrupt):
        file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    monkeypatch.undo()
    # (b.bin twice when the Ctrl-C lands as its abort is asked for: it is asked again)
    assert sorted(set(aborts)) == ["p/1/a.bin", "p/1/b.bin"]
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_a_second_interrupt_during_the_clean_up_keeps_the_note_on_an_upload_left_open(
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C while two uploads are under way, and a second one while the first is
    aborted: the second upload was then closed after the call's clean-up was cut, and
    the note that its abort failed was lost (helper-147), though its parts stay
    stored. The call waits on for the aborts after a second Ctrl-C."""
    from file_dataset._s3 import S3Backend

    files = make_files(tmp_path, {"x.bin": os.urandom(6 * MiB), "y.bin": os.urandom(6 * MiB)})
    send_part, abort = S3Backend.multipart_part, S3Backend.multipart_abort
    aborts: list[str] = []

    def held_part(self: S3Backend, *args: Any) -> Any:
        sending.set()
        assert abandoned.wait(timeout=60)  # a safety net: the interrupt comes at once
        return send_part(self, *args)

    def failing_abort(self: S3Backend, loc: Any, upload_id: str) -> None:
        aborts.append(loc.key)
        if loc.key.endswith("x.bin") and aborts.count(loc.key) == 1:
            _ctrl_c()  # the second Ctrl-C, as x's abort is sent
        if loc.key.endswith("y.bin"):
            raise file_dataset.TransferError(str(loc), "InternalError (500)", operation="write")
        abort(self, loc, upload_id)

    sending, abandoned = _interrupted_once_sending(monkeypatch, answers=2)  # the first Ctrl-C
    monkeypatch.setattr(S3Backend, "multipart_part", held_part)
    monkeypatch.setattr(S3Backend, "multipart_abort", failing_abort)
    options = s3_server.options(part_size=5 * MiB, multipart_threshold=5 * MiB)
    with pytest.raises(KeyboardInterrupt) as raised:
        file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    monkeypatch.undo()
    assert sorted(set(aborts)) == ["p/1/x.bin", "p/1/y.bin"]
    [left] = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    s3_client.abort_multipart_upload(Bucket=bucket, Key=left["Key"], UploadId=left["UploadId"])
    assert left["Key"] == "p/1/y.bin"
    assert [note for note in raised.value.__notes__ if "could not be aborted" in note] == [
        f"file_dataset: the multipart upload {left['UploadId']!r} of s3://{bucket}/p/1/y.bin "
        f"could not be aborted (cannot write s3://{bucket}/p/1/y.bin: InternalError (500)): "
        "its parts stay stored until it is aborted (a lifecycle rule's "
        "AbortIncompleteMultipartUpload does that)"
    ]
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_a_second_interrupt_while_aborts_are_under_way_names_the_uploads_maybe_left_open(
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first file's part fails, so three uploads are aborted together; a Ctrl-C
    while the call waits for those aborts waits on, a second one ends the wait.
    Before, the call then raised with no word of the three uploads whose aborts were
    unanswered (a helper's probe: 3 of 7 uploads left open, nothing said). Now each
    is named as maybe left open; the aborts under way still end them. (Both Ctrl-Cs
    are raised as the wait begins: a signal sent as a thread is about to block on a
    lock is only handled once it gets the lock.)"""
    from file_dataset._s3 import S3Backend
    from file_dataset._transfer import _Cleanup

    names = ["x.bin", "y.bin", "z.bin"]
    files = make_files(tmp_path, {name: os.urandom(6 * MiB) for name in names})
    send_part, abort, start = (
        S3Backend.multipart_part,
        S3Backend.multipart_abort,
        S3Backend.multipart_start,
    )
    released, aborted, started = threading.Event(), threading.Semaphore(0), threading.Semaphore(0)
    aborts: list[str] = []

    def counted_start(self: S3Backend, loc: Any) -> str:
        upload_id = start(self, loc)
        started.release()
        return upload_id

    def part(self: S3Backend, loc: Any, upload_id: str, number: int, *rest: Any) -> Any:
        if loc.key.endswith("x.bin") and number == 1:
            for _ in names:  # once every upload is made (a safety net: they come at once)
                assert started.acquire(timeout=60)
            raise file_dataset.TransferError(str(loc), "refused", operation="write")
        return send_part(self, loc, upload_id, number, *rest)

    def held_abort(self: S3Backend, loc: Any, upload_id: str) -> None:
        aborts.append(loc.key)
        assert released.wait(timeout=60)  # held until the test has looked
        abort(self, loc, upload_id)
        aborted.release()

    def interrupted_wait(cleanup: _Cleanup) -> None:
        raise KeyboardInterrupt  # (the first Ctrl-C, then the second)

    monkeypatch.setattr(S3Backend, "multipart_start", counted_start)
    monkeypatch.setattr(S3Backend, "multipart_part", part)
    monkeypatch.setattr(S3Backend, "multipart_abort", held_abort)
    monkeypatch.setattr(_Cleanup, "_wait", interrupted_wait)
    options = s3_server.options(part_size=5 * MiB, multipart_threshold=5 * MiB)
    with pytest.raises(KeyboardInterrupt) as raised:
        file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    said = [n for n in getattr(raised.value, "__notes__", []) if "being aborted" in n]
    released.set()
    for _ in names:
        assert aborted.acquire(timeout=60)  # the aborts under way end the uploads
    monkeypatch.undo()
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert sorted(aborts) == [f"p/1/{name}" for name in names]
    assert sorted(re.sub(r"'[^']*'", "'ID'", n) for n in said) == [
        f"file_dataset: the multipart upload 'ID' of s3://{bucket}/p/1/{name} was being "
        "aborted when the call was interrupted: it may be left open, its parts stored "
        "until it is aborted (a lifecycle rule's AbortIncompleteMultipartUpload does that)"
        for name in names
    ]


def test_an_abort_whose_thread_could_not_start_is_made_and_counted_once() -> None:
    """The pool queues a call before it starts a thread for it, so a submission that
    fails there (no thread could be started, or a Ctrl-C) may run all the same. The
    abort was counted out at once and again when that reply came, so a later wait
    ended before other aborts were answered, their notes lost (helper-150). Now it is
    made on the calling thread, and the late reply of the queued one is ignored."""
    from file_dataset._transfer import _Cleanup
    from file_dataset._urls import Location, parse_url

    made: list[str] = []
    queued: list[tuple[Callable[[], Any], Any, Any]] = []

    class Refusing:
        def multipart_abort(self, loc: Location, upload_id: str) -> None:
            made.append(upload_id)
            raise file_dataset.TransferError(str(loc), "InternalError (500)", operation="write")

    class Pool:
        def submit(self, call: Callable[[], Any], reply: Any, tag: Any, run: Any) -> None:
            queued.append((call, reply, tag))
            if len(queued) == 1:
                raise RuntimeError("can't start new thread")

    options = Options()
    cleanup = _Cleanup(options)
    loc = parse_url("s3://bkt/p/1/m.bin")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Options, "_transfer_workers", lambda self: Pool())
        cleanup.abort(Refusing(), loc, "up-1")  # (a Backend in what it is asked here)
        cleanup.abort(Refusing(), loc, "up-2")
    assert made == ["up-1"]  # made here, at once
    for call, reply, tag in queued:  # the queued ones run
        reply.put((tag, call(), None))
    cleanup.wait()
    assert made == ["up-1", "up-1", "up-2"]
    assert [re.search(r"upload '([^']+)'", n)[1] for n in cleanup.notes] == ["up-1", "up-2"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("size", "parts"),
    [
        (5 * MiB, None),
        (11 * MiB + 1, 3),
        # a tail under an eighth of a part joins the last part (no 1-byte request)
        (10 * MiB + 1, 2),
        (10 * MiB + 5 * MiB // 8 - 1, 2),
        (10 * MiB + 5 * MiB // 8, 3),
    ],
)
def test_multipart_threshold(
    size: int,
    parts: int | None,
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path,
    read_object: ReadObject,
) -> None:
    options = s3_server.options(part_size=5 * MiB, multipart_threshold=5 * MiB)
    data = os.urandom(size)
    files = make_files(tmp_path, {"f": data})
    result = file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    etag = s3_client.head_object(Bucket=bucket, Key="p/1/f")["ETag"].strip('"')
    if parts is None:
        assert "-" not in etag  # one PUT
    else:
        assert etag.endswith(f"-{parts}")
    assert read_object(result["f"]) == data
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --- Usage 2: local ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/"])
def test_write_to_local_folder(suffix: str, tmp_path: Path) -> None:
    files = make_files(tmp_path / "src", {"resampled_image.mha": b"local", "b": b"bb"})
    into = f"{tmp_path / 'resampled'}{suffix}"
    result = file_dataset.write_files(files, into, id="1")
    assert result == {
        "resampled_image.mha": Path(into) / "1" / "resampled_image.mha",
        "b": Path(into) / "1" / "b",
    }
    assert all(isinstance(p, Path) for p in result.values())
    assert result["resampled_image.mha"].read_bytes() == b"local"
    assert sorted(os.listdir(tmp_path / "resampled" / "1")) == ["b", "resampled_image.mha"]


def test_write_to_relative_and_file_url_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    files = make_files(tmp_path / "src", {"f": b"rel"})
    assert file_dataset.write_files(files, "./resampled/", id=3) == {"f": Path("./resampled/3/f")}
    assert Path("resampled/3/f").read_bytes() == b"rel"
    result = file_dataset.write_files(files, (tmp_path / "viaurl").as_uri(), id="u")
    assert result == {"f": tmp_path / "viaurl" / "u" / "f"}
    assert result["f"].read_bytes() == b"rel"


def test_a_leading_tilde_is_the_home_folder(tmp_path: Path, monkeypatch) -> None:
    """ "~/out" means the home folder's "out", on writes and reads, not a folder named "~"."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    files = make_files(tmp_path / "src", {"f": b"home"})
    assert file_dataset.write_files(files, "~/out", id=1) == {"f": tmp_path / "home/out/1/f"}
    assert (tmp_path / "home/out/1/f").read_bytes() == b"home"
    assert not (tmp_path / "~").exists()
    table = file_dataset.reader({"f": "~/out/1/f"}).into_blob_table()
    assert table.column("f").to_pylist() == [b"home"]


def test_a_result_that_would_read_back_as_another_file_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under into_path ".", id "~" gave Path("~/f"): read back (or fed to a Pipeline's
    reader), that was the home folder's f, silently. Id "file:" gave "file:/f", a file
    URL naming /f, and "s3:" gave "s3:/f", refused as a mistyped S3 URL."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "f").write_bytes(b"the home folder's f")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    files = make_files(tmp_path / "src", {"f": b"written"})
    for row_id in ["~", "~user", "file:", "FILE:", "s3:", "arn:x"]:
        result = file_dataset.write_files(files, ".", id=row_id)
        assert result == {"f": work / row_id / "f"}
        table = file_dataset.reader({"f": str(result["f"])}).into_blob_table()
        assert table.column("f").to_pylist() == [b"written"]
    out = file_dataset.Pipeline(lambda i, o: {"g": i / "f"}, {"into_path": "."})(
        pd.DataFrame({"id": ["~", "file:"], "f": [str(files["f"])] * 2})
    )
    assert list(out["g"]) == [str(work / "~" / "g"), str(work / "file:" / "g")]
    blobs = file_dataset.reader(out).into_blob_table().column("g").to_pylist()
    assert blobs == [b"written"] * 2
    assert file_dataset.write_files(files, "sub", id="file:") == {"f": Path("sub/file:/f")}
    assert (tmp_path / "home" / "f").read_bytes() == b"the home folder's f"


def test_local_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "1" / "f"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"an older and much longer content")
    files = make_files(tmp_path / "src", {"f": b"new"})
    assert file_dataset.write_files(files, tmp_path / "out", id="1") == {"f": dest}
    assert dest.read_bytes() == b"new"
    assert os.listdir(dest.parent) == ["f"]  # no temporary ".part" file left


@pytest.mark.parametrize("name", ["x" * 255, "é" * 127], ids=["ascii", "utf8"])
def test_longest_file_name(name: str, options: Options, bucket: str, tmp_path: Path) -> None:
    files = make_files(tmp_path / "src", {name: b"long"})
    local = file_dataset.write_files(files, tmp_path / "out", id="1")
    assert local[name].read_bytes() == b"long"
    urls = file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    with file_dataset.reader(urls, options).into_temp_dir() as tmp:
        assert {p.name: p.read_bytes() for p in tmp.iterdir()} == {name: b"long"}


# --- invalid input: nothing is written ------------------------------------------------


@pytest.mark.parametrize("where", ["name", "id"])
@pytest.mark.parametrize("bad", UNSAFE)
def test_unsafe_name_or_id_writes_nothing(
    bad: str, where: str, options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    files = make_files(tmp_path / "src", {"good": b"g", **({bad: b"b"} if where == "name" else {})})
    row_id = bad if where == "id" else "1"
    for into in (f"s3://{bucket}/p", tmp_path / "out"):
        with pytest.raises(ValueError, match="path component") as info:
            file_dataset.write_files(files, into, id=row_id, options=options)
        if where == "name":  # before, the message did not name the row
            assert str(info.value).startswith(f"row id '1': file name {bad!r} cannot be used")
    assert keys(s3_client, bucket) == []
    assert not (tmp_path / "out").exists()


def test_a_file_named_id_writes_nothing(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    # It was written, and then lost on the way back: reader() takes a row's "id" as its
    # id, not as a file (the Pipeline already refused such an output).
    files = make_files(tmp_path / "src", {"good": b"g", "id": b"i"})
    for into in (f"s3://{bucket}/p", tmp_path / "out"):
        with pytest.raises(ValueError, match="row id '1': a file cannot be named 'id'"):
            file_dataset.write_files(files, into, id="1", options=options)
    assert keys(s3_client, bucket) == []
    assert not (tmp_path / "out").exists()


def test_an_s3_key_over_1024_bytes_writes_nothing(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    # moto accepts such a key and S3 refuses it: refused before the row's first file.
    prefix = "p/" + "é" * 500  # 1,002 bytes of key before the id
    files = make_files(tmp_path / "src", {"a": b"a", "long-name-17bytes": b"b"})
    with pytest.raises(ValueError, match="1025 bytes long; S3 keys can have at most 1024"):
        file_dataset.write_files(files, f"s3://{bucket}/{prefix}", id="row7", options=options)
    assert keys(s3_client, bucket) == []
    exact = {"a": files["a"], "long-name-16byte": files["long-name-17bytes"]}  # 1,024 bytes
    urls = file_dataset.write_files(exact, f"s3://{bucket}/{prefix}", id="row7", options=options)
    assert len(keys(s3_client, bucket)) == 2
    with file_dataset.reader(urls, options).into_temp_dir() as tmp:
        assert {p.name: p.read_bytes() for p in tmp.iterdir()} == {
            "a": b"a",
            "long-name-16byte": b"b",
        }


def test_missing_source_writes_nothing(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    files = {**make_files(tmp_path / "src", {"good": b"g"}), "gone": tmp_path / "nope"}
    with pytest.raises(FileNotFoundError) as info:
        file_dataset.write_files(files, f"s3://{bucket}/p", id="9", options=options)
    assert str(tmp_path / "nope") in str(info.value)
    assert "'9'" in str(info.value)
    assert "'gone'" in str(info.value)
    assert keys(s3_client, bucket) == []


def test_a_directory_as_a_source_is_not_called_missing(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    files = {**make_files(tmp_path / "src", {"good": b"g"}), "dir.bin": folder}
    with pytest.raises(file_dataset.TransferError) as info:
        file_dataset.write_files(files, f"s3://{bucket}/p", id="5", options=options)
    assert not isinstance(info.value, FileNotFoundError)  # it exists
    message = str(info.value)
    assert "is a directory, not a file" in message
    assert all(part in message for part in (str(folder), "'5'", "'dir.bin'")), message
    assert keys(s3_client, bucket) == []


@pytest.mark.parametrize("value", [5, b"/tmp/f", ["a"]])
def test_source_that_is_not_a_path_writes_nothing(
    value: Any, options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    files = {**make_files(tmp_path / "src", {"good": b"g"}), "odd.bin": value}
    with pytest.raises(ValueError, match=r"row id '4', file 'odd.bin': expected a local path"):
        file_dataset.write_files(files, f"s3://{bucket}/p", id="4", options=options)
    assert keys(s3_client, bucket) == []


@pytest.mark.parametrize("row_id", [None, float("nan"), pd.NA])
def test_a_null_id_writes_nothing(
    row_id: Any, options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """Not a folder named "None" or "nan": a row's outputs need its id."""
    files = make_files(tmp_path / "src", {"f": b"x"})
    for into in (f"s3://{bucket}/p", tmp_path / "out"):
        with pytest.raises(ValueError, match="write_files needs an id"):
            file_dataset.write_files(files, into, id=row_id, options=options)
    assert keys(s3_client, bucket) == []
    assert not (tmp_path / "out").exists()


def test_a_bytes_id_or_a_list_of_files_is_refused_clearly(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """Before: a folder named "b'x'", and an AttributeError ('list' ... no 'items')."""
    files = make_files(tmp_path / "src", {"f": b"x"})
    for into in (f"s3://{bucket}/p", tmp_path / "out"):
        with pytest.raises(ValueError) as info:
            file_dataset.write_files(files, into, id=b"x", options=options)
        assert str(info.value) == "id b'x' is bytes: decode it to a str first"
        with pytest.raises(TypeError) as type_info:
            file_dataset.write_files(list(files.values()), into, id="1", options=options)  # type: ignore[arg-type]
        assert str(type_info.value) == (
            "write_files takes a mapping of file name to local path, such as "
            "{'out.mha': Path('out.mha')}, got list"
        )
    assert keys(s3_client, bucket) == []
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="id b'r1' is bytes: decode it to a str first"):
        file_dataset.reader(pd.DataFrame({"id": [b"r1"], "f": [files["f"]]})).into_blob_table()


@pytest.mark.parametrize("row_id", [True, np.bool_(False)])
def test_a_boolean_id_is_refused(
    row_id: Any, options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """Before: a folder named "True" (bool is an int to Python)."""
    files = make_files(tmp_path / "src", {"f": b"x"})
    for into in (f"s3://{bucket}/p", tmp_path / "out"):
        with pytest.raises(ValueError) as info:
            file_dataset.write_files(files, into, id=row_id, options=options)
        assert str(info.value) == f"id {row_id!r} is a boolean: give a str or an int"
    assert keys(s3_client, bucket) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("row_id", "message"),
    [
        (5.0, "id 5.0 is a float: give a str or an int (convert the column"),
        # the value as numpy's repr gives it (2.0 before numpy 2)
        (np.float64(2.0), f"id {np.float64(2.0)!r} is a float"),
        (np.float32(2.0), f"id {np.float32(2.0)!r} is of type float32: give a str or an int ("),
        (decimal.Decimal("5.0"), "id Decimal('5.0') is of type Decimal: give a str or an int ("),
        (pa.scalar(5.0), "id 5.0 is a float: give a str or an int (convert the column"),
        (["1", "2"], "id ['1', '2'] is of type list: give a str or an int (a dict of columns"),
        (("1",), "id ('1',) is of type tuple"),
        ({"k": 1}, "id {'k': 1} is of type dict"),
    ],
    ids=["float", "numpy-float", "float32", "decimal", "arrow-float", "list", "tuple", "dict"],
)
def test_a_float_or_collection_id_is_refused(
    row_id: Any, message: str, options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """Before: folders named "5.0" or "['1', '2']"."""
    files = make_files(tmp_path / "src", {"f": b"x"})
    for into in (f"s3://{bucket}/p", tmp_path / "out"):
        with pytest.raises(ValueError) as info:
            file_dataset.write_files(files, into, id=row_id, options=options)
        assert str(info.value).startswith(message)
    assert keys(s3_client, bucket) == []
    assert not (tmp_path / "out").exists()
    frame = pd.DataFrame({"id": pd.Series([row_id], dtype=object), "f": [files["f"]]})
    with pytest.raises(ValueError) as info:
        file_dataset.reader(frame).into_temp_dir()
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "row_id", [pa.scalar(None, pa.int64()), decimal.Decimal("sNaN")], ids=["arrow-null", "snan"]
)
def test_a_null_arrow_or_decimal_id_is_refused_as_null(row_id: Any, tmp_path: Path) -> None:
    """Before: a folder named "None", and a raw decimal.InvalidOperation from pandas."""
    files = make_files(tmp_path / "src", {"f": b"x"})
    with pytest.raises(file_dataset.InvalidInputError, match="write_files needs an id"):
        file_dataset.write_files(files, tmp_path / "out", id=row_id)
    frame = pd.DataFrame({"id": pd.Series(["r1", row_id], dtype=object), "f": [files["f"]] * 2})
    with pytest.raises(file_dataset.InvalidInputError, match="null value at position 1"):
        file_dataset.reader(frame).into_blob_table()
    assert not (tmp_path / "out").exists()


def test_integer_like_ids_name_their_folder(tmp_path: Path) -> None:
    files = make_files(tmp_path / "src", {"f": b"x"})
    for row_id, folder in [
        (np.int64(3), "3"),
        (7, "7"),
        (uuid.UUID(int=5), str(uuid.UUID(int=5))),
        (decimal.Decimal("12"), "12"),
        (pa.scalar(9), "9"),
    ]:
        written = file_dataset.write_files(files, tmp_path / "out", id=row_id)
        assert written["f"] == tmp_path / "out" / folder / "f"
        assert written["f"].read_bytes() == b"x"


def test_local_outputs_get_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """Before: 0o600 (tempfile.mkstemp's), unreadable by others on a shared folder."""
    source = tmp_path / "src.bin"
    source.write_bytes(b"abc")
    source.chmod(0o640)
    old = os.umask(0o022)
    try:
        written = file_dataset.write_files({"a.bin": source}, tmp_path / "out", id="1")
        umask_027 = os.umask(0o027)
        again = file_dataset.write_files({"b.bin": source}, tmp_path / "out", id="1")
    finally:
        os.umask(old)
    assert umask_027 == 0o022
    assert written["a.bin"].read_bytes() == b"abc"
    assert stat.S_IMODE(written["a.bin"].stat().st_mode) == 0o644
    assert stat.S_IMODE(again["b.bin"].stat().st_mode) == 0o640
    assert sorted(p.name for p in (tmp_path / "out" / "1").iterdir()) == ["a.bin", "b.bin"]


@pytest.mark.parametrize("kernel", ["copies", "refuses", "fails part-way", "sees a change"])
def test_local_copies_go_through_the_kernel_and_fall_back_when_it_cannot(
    kernel: str, tmp_path: Path, kernel_copy: Callable[[str, Path], list[int]]
) -> None:
    """write_files to a local folder copied every byte through this process (read, then
    write); copy_file_range keeps them in the kernel (10x less CPU on ext4, shared
    extents on XFS/btrfs, a server-side copy on NFS 4.2). Where the kernel cannot, the
    read/write loop copies the rest from where it stopped."""
    source = tmp_path / "big.bin"
    payload = os.urandom(3 * 1024 * 1024 + 123)
    source.write_bytes(payload)
    calls = kernel_copy(kernel, source)
    into = tmp_path / "out"
    if kernel == "sees a change":
        with pytest.raises(file_dataset.TransferError, match="changed while it was being upl"):
            file_dataset.write_files({"a.bin": source}, into, "r1")
        assert list(into.rglob("*")) in ([], [into / "r1"])  # nothing partial
    else:
        written = file_dataset.write_files({"a.bin": source}, into, "r1")
        assert written["a.bin"].read_bytes() == payload
        assert [p.name for p in (into / "r1").iterdir()] == ["a.bin"]
    assert calls  # the kernel was asked
    assert source.read_bytes() == payload


def test_a_local_source_gone_at_the_copy_is_named_as_the_missing_file(tmp_path: Path) -> None:
    """The copy names the source that vanished, not the destination (which never existed)."""
    dest = tmp_path / "out" / "1" / "a.bin"
    with pytest.raises(FileNotFoundError) as info:
        atomic_copy(tmp_path / "gone.bin", dest)
    assert isinstance(info.value, file_dataset.ObjectNotFoundError)
    assert info.value.url == str(tmp_path / "gone.bin")
    assert str(info.value) == f"cannot read {tmp_path / 'gone.bin'}: no such local file"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("last", [False, True], ids=["before part 3", "after the last part"])
@pytest.mark.parametrize("transport", ["boto3", "obstore"])
def test_a_source_removed_during_its_multipart_upload_is_named_with_its_row(
    transport: str,
    last: bool,
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file removed after its first parts were sent: the next part's ``os.stat``
    raised a bare ``FileNotFoundError`` with no URL, row id or column (helper-145),
    where a file missing before the upload is an ``ObjectNotFoundError``. Removed
    once every part was sent, it was "the local file changed ... write it again"
    (helper-147)."""
    from file_dataset._s3 import S3Backend

    files = make_files(tmp_path, {"big.bin": os.urandom(16 * MiB)})
    send_part = S3Backend.multipart_part

    def removing_the_file_at_part_3(self: S3Backend, *args: Any) -> Any:
        number, src = args[2], args[3]
        if number == 3 and not last:
            src.unlink(missing_ok=True)
        part = send_part(self, *args)
        if number == 4 and last:
            src.unlink()
        return part

    monkeypatch.setattr(S3Backend, "multipart_part", removing_the_file_at_part_3)
    options = s3_server.options(
        transport=transport, part_size=5 * MiB, multipart_threshold=5 * MiB, max_concurrency=1
    )
    with pytest.raises(file_dataset.ObjectNotFoundError) as info:
        file_dataset.write_files(files, f"s3://{bucket}/gone", id="r1", options=options)
    assert info.value.url == str(files["big.bin"])
    assert (info.value.row_id, info.value.column) == ("r1", "big.bin")
    where = f"{files['big.bin']} (row id 'r1', column 'big.bin')"
    assert str(info.value) == f"cannot read {where}: no such local file"
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix="gone/").get("KeyCount") == 0


def test_an_s3_url_as_a_source_is_refused_clearly(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    s3_client.put_object(Bucket=bucket, Key="in/a.bin", Body=b"remote")
    files = {"a.bin": f"s3://{bucket}/in/a.bin", **make_files(tmp_path / "src", {"b": b"g"})}
    with pytest.raises(ValueError) as info:
        file_dataset.write_files(files, f"s3://{bucket}/out", id="3", options=options)
    message = str(info.value)
    assert f"'s3://{bucket}/in/a.bin' is an S3 URL" in message
    assert "row id '3', file 'a.bin'" in message
    assert keys(s3_client, bucket) == ["in/a.bin"]


def test_options_that_are_not_options_write_nothing(
    s3_server: LocalS3Server, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """A dict of settings used to fail later as an AttributeError, or, for a local
    destination (where options are not used), to be accepted silently."""
    files = make_files(tmp_path / "src", {"a.bin": b"a"})
    settings = {"endpoint_url": s3_server.endpoint_url}
    for into in (f"s3://{bucket}/p", tmp_path / "out"):
        with pytest.raises(TypeError) as info:
            file_dataset.write_files(files, into, "1", settings)  # type: ignore[arg-type]
        assert str(info.value) == (
            "write_files(options=...) must be a file_dataset.Options, got dict "
            "(build one: Options(session_kwargs=..., s3_client_kwargs=...))"
        )
    assert keys(s3_client, bucket) == []
    assert not (tmp_path / "out").exists()


def test_a_file_url_as_a_source_is_read_from_its_path(
    options: Options, bucket: str, tmp_path: Path, read_object: ReadObject
) -> None:
    (tmp_path / "a.bin").write_bytes(b"local via file URL")
    urls = file_dataset.write_files(
        {"a.bin": (tmp_path / "a.bin").as_uri()}, f"s3://{bucket}/out", id="3", options=options
    )
    assert read_object(str(urls["a.bin"])) == b"local via file URL"


@pytest.mark.parametrize("where", ["name", "id"])
def test_a_name_too_long_for_a_local_folder_writes_nothing(
    where: str, options: Options, bucket: str, tmp_path: Path, read_object: ReadObject
) -> None:
    """256 bytes fit in an S3 key, not in a local file name: refused up front locally."""
    long = "é" * 128  # 256 bytes
    name, row_id = (long, "1") if where == "name" else ("f", long)
    files = make_files(tmp_path / "src", {name: b"x", "other": b"y"})
    with pytest.raises(ValueError, match="is 256 bytes long: a local file or folder name"):
        file_dataset.write_files(files, tmp_path / "out", id=row_id)
    assert not (tmp_path / "out").exists()
    urls = file_dataset.write_files(files, f"s3://{bucket}/p", id=row_id, options=options)
    assert read_object(str(urls[name])) == b"x"


@pytest.mark.parametrize("into", ["ftp://host/out", "s3://u:secret@bkt/out", "", "s3://"])
def test_invalid_destination(into: str, tmp_path: Path) -> None:
    files = make_files(tmp_path, {"f": b"x"})
    with pytest.raises(ValueError) as info:
        file_dataset.write_files(files, into, id="1")
    assert "secret" not in str(info.value)


def test_write_to_missing_bucket(options: Options, tmp_path: Path) -> None:
    files = make_files(tmp_path, {"f": b"x"})
    with pytest.raises(FileNotFoundError, match=r"s3://no-such-bucket-w/p/1/f \(row id '1'"):
        file_dataset.write_files(files, "s3://no-such-bucket-w/p", id="1", options=options)


# --- properties ------------------------------------------------------------------------


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(row=rows)
def test_property_row_round_trip(row: dict[str, bytes], options: Options, shared_bucket: str):
    row_id = f"row-{next(_ids)}"
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp) / "src", row)
        urls = file_dataset.write_files(files, f"s3://{shared_bucket}/prop", row_id, options)
        assert urls == {name: f"s3://{shared_bucket}/prop/{row_id}/{name}" for name in row}
        reader = file_dataset.reader(urls, options)
        assert reader.into_blob_table().to_pylist() == [row]
        with reader.into_temp_dir() as local:
            assert {p.name: p.read_bytes() for p in local.iterdir()} == row
        paths = file_dataset.write_files(files, Path(tmp) / "out", row_id)
        assert {name: p.read_bytes() for name, p in paths.items()} == row


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(row=rows, bad=st.sampled_from(UNSAFE), where=st.sampled_from(["name", "id"]))
def test_property_unsafe_input_writes_nothing(
    row: dict[str, bytes], bad: str, where: str, options: Options, shared_bucket: str, s3_client
) -> None:
    row_id = f"row-{next(_ids)}"
    if where == "name":
        row = {**row, bad: b"bad"}
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp) / "src", row)
        with pytest.raises(ValueError):
            file_dataset.write_files(
                files, f"s3://{shared_bucket}/bad", bad if where == "id" else row_id, options
            )
        assert keys(s3_client, shared_bucket, "bad/") == []


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_upload_args_reach_every_object_written(
    s3_server: LocalS3Server, transport: str, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """What a bucket policy may demand (server-side encryption) and what a user may want
    on every object (content type, metadata, storage class), for one-request and
    multipart uploads, from write_files and from a Pipeline."""
    args = {
        "ServerSideEncryption": "AES256",
        "ContentType": "application/x-mha",
        "Metadata": {"made-by": "file-dataset-test"},
        "StorageClass": "STANDARD_IA",
    }
    options = s3_server.options(
        transport=transport, upload_args=args, part_size=5 * MiB, multipart_threshold=5 * MiB
    )
    big = bytes(range(256)) * (6 * MiB // 256)
    files = make_files(tmp_path / "in", {"small.mha": b"small", "big.mha": big})
    written = file_dataset.write_files(files, f"s3://{bucket}/out", "r1", options)

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        (output_dir / "seg.mha").write_bytes((input_dir / "small.mha").read_bytes() * 2)
        return {"seg.mha": output_dir / "seg.mha"}

    frame = pd.DataFrame({"id": ["p1"], "small.mha": [written["small.mha"]]})
    outputs = file_dataset.Pipeline(fn, {"into_path": f"s3://{bucket}/seg"}, options)(frame)
    urls = {**written, "seg.mha": outputs["seg.mha"][0]}
    expected = {"small.mha": b"small", "big.mha": big, "seg.mha": b"smallsmall"}
    for name, url in urls.items():
        key = url.removeprefix(f"s3://{bucket}/")
        assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == expected[name]
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256", name
        assert head["ContentType"] == "application/x-mha", name
        assert head["Metadata"] == {"made-by": "file-dataset-test"}, name
        assert head["StorageClass"] == "STANDARD_IA", name
    # Local destinations take no S3 arguments: they are ignored there.
    local = file_dataset.write_files(files, tmp_path / "local", "r1", options)
    assert Path(local["big.mha"]).read_bytes() == big


def test_a_source_whose_name_is_too_long_names_its_row_and_file(tmp_path: Path) -> None:
    # os.stat's ENAMETOOLONG came out as a bare OSError (pathlib's is_file lets it through).
    source = tmp_path / ("L" * 300)
    with pytest.raises(file_dataset.TransferError) as info:
        file_dataset.write_files({"a": source}, tmp_path / "out", "r1")
    assert str(info.value).startswith(f"cannot read {source} (row id 'r1', column 'a'): ")
    assert info.value.errno == errno.ENAMETOOLONG
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("blocker", ["the row folder", "into_path"])
def test_a_file_where_a_folder_must_be_is_named(blocker: str, tmp_path: Path) -> None:
    """Before: "cannot write .../out/r7/o.txt (row id 'r7', column 'o.txt'): File
    exists", which did not say that out/r7 is a file (a helper's finding); and "Not a
    directory" when into_path itself was a file."""
    source = tmp_path / "o.txt"
    source.write_bytes(b"output")
    if blocker == "the row folder":
        into = tmp_path / "out"
        into.mkdir()
        in_the_way = into / "r7"
        in_the_way.touch()
    else:
        into = in_the_way = source
    with pytest.raises(file_dataset.TransferError) as info:
        file_dataset.write_files({"o.txt": source}, into, "r7")
    assert str(info.value) == (
        f"cannot write {into / 'r7' / 'o.txt'} (row id 'r7', column 'o.txt'): "
        f"{in_the_way} is in the way: not a folder"
    )
    assert info.value.errno == errno.ENOTDIR
    assert isinstance(info.value, NotADirectoryError)  # as the Pipeline's check raises
    assert source.read_bytes() == b"output"


def test_a_local_into_path_that_is_a_broken_link_is_named_as_one(tmp_path: Path) -> None:
    """A link to a folder that is gone (an unmounted volume, say): write_files said the
    link was "in the way: not a folder", and written_ids said no row was written, so a
    resumed job would have redone every row before failing at its first write."""
    source = tmp_path / "o.txt"
    source.write_bytes(b"output")
    into = tmp_path / "out"
    into.symlink_to(tmp_path / "unmounted")
    with pytest.raises(file_dataset.TransferError) as info:
        file_dataset.write_files({"o.txt": source}, into, "r7")
    assert str(info.value) == (
        f"cannot write {into / 'r7' / 'o.txt'} (row id 'r7', column 'o.txt'): "
        f"{into} is a link to {tmp_path / 'unmounted'}, which does not exist"
    )
    assert isinstance(info.value, NotADirectoryError)
    with pytest.raises(file_dataset.TransferError) as listed:
        file_dataset.written_ids(into, ["o.txt"])
    assert str(listed.value) == (
        f"cannot list {into}: a link to {tmp_path / 'unmounted'}, which does not exist"
    )
    assert isinstance(listed.value, NotADirectoryError)
    assert not (tmp_path / "unmounted").exists()
    assert source.read_bytes() == b"output"


def test_a_local_write_that_fails_leaves_no_empty_row_folder(tmp_path: Path) -> None:
    # /proc/self/mem is a regular file that fails with EIO when read at offset 0: the
    # source fails mid-copy, after the row folder was made. The folder was left, empty,
    # reading as a row written; and the message named the destination, not the source.
    with pytest.raises(file_dataset.TransferError) as info:
        file_dataset.write_files({"m.bin": "/proc/self/mem"}, tmp_path / "out", "r1")
    assert str(info.value).startswith("cannot read /proc/self/mem (row id 'r1', column 'm.bin'): ")
    assert info.value.errno == errno.EIO
    assert os.listdir(tmp_path / "out") == []
    # A folder that was there before stays.
    (tmp_path / "out" / "r2").mkdir()
    with pytest.raises(file_dataset.TransferError):
        file_dataset.write_files({"m.bin": "/proc/self/mem"}, tmp_path / "out", "r2")
    assert os.listdir(tmp_path / "out") == ["r2"]


def test_a_call_that_fails_in_part_says_where_its_other_files_may_be(
    options: Options, bucket: str, tmp_path: Path
) -> None:
    """Before, the error named the failed file only: the files of the same call already
    written (each whole) were left without a word."""
    (tmp_path / "a").write_bytes(b"a")
    files = {"a.bin": tmp_path / "a", "m.bin": "/proc/self/mem"}  # EIO when read
    (tmp_path / "out" / "r1").mkdir(parents=True)  # there before: a.bin may stay in it
    for into, row in ((f"s3://{bucket}/p", f"s3://{bucket}/p/r1/"), (tmp_path / "out", None)):
        with pytest.raises(file_dataset.TransferError) as info:
            file_dataset.write_files(files, into, "r1", options)
        assert info.value.errno == errno.EIO
        where = row or f"{tmp_path / 'out' / 'r1'}/"
        assert info.value.__notes__ == [
            f"file_dataset.write_files: 1 other file(s) of row id 'r1' are written already "
            f"under {where} ('a.bin'; each whole, none half-written: a rerun of the row "
            "overwrites them)"
        ]
    # One file: nothing else to say.
    with pytest.raises(file_dataset.TransferError) as info:
        file_dataset.write_files({"m.bin": "/proc/self/mem"}, tmp_path / "out", "r2")
    assert getattr(info.value, "__notes__", None) is None
    assert sorted(os.listdir(tmp_path / "out")) == ["r1"]
    # Nothing could be written (helper-100: the note said files "may be written under"
    # a file in the way, or in a bucket that does not exist).
    (tmp_path / "out" / "r3").write_bytes(b"in the way")
    with pytest.raises(file_dataset.TransferError, match="is in the way") as blocked:
        file_dataset.write_files(files, tmp_path / "out", "r3")
    assert getattr(blocked.value, "__notes__", None) is None
    two = {"a.bin": tmp_path / "a", "b.bin": tmp_path / "a"}
    with pytest.raises(file_dataset.ObjectNotFoundError) as no_bucket:
        file_dataset.write_files(two, f"s3://{bucket}-missing/p", "r1", options)
    assert getattr(no_bucket.value, "__notes__", None) is None


def test_a_call_whose_first_file_fails_before_the_others_start_says_nothing_of_them(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first file removed after write_files checked it: its job fails as it starts,
    and no other job is started. The note said "2 other file(s) of row id 'r1' may be
    written already" of an empty bucket (helper-145)."""
    import file_dataset._writer

    files = make_files(tmp_path, {"a.bin": b"a", "b.bin": b"b", "c.bin": b"c"})
    run_jobs = file_dataset._writer.run_jobs

    def removing_the_first(*args: Any, **kwargs: Any) -> Any:
        files["a.bin"].unlink()
        return run_jobs(*args, **kwargs)

    monkeypatch.setattr(file_dataset._writer, "run_jobs", removing_the_first)
    with pytest.raises(file_dataset.ObjectNotFoundError) as info:
        file_dataset.write_files(files, f"s3://{bucket}/p", "r1", options)
    assert info.value.column == "a.bin"
    assert getattr(info.value, "__notes__", None) is None
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_the_note_on_a_call_that_failed_in_part_names_what_is_written_and_what_may_be(
    tmp_path: Path,
) -> None:
    """Which of the other files are written ("done"), which may be (closed after their
    last request, or failed on their own), and which are not named (cut, never made)."""
    from file_dataset._urls import parse_url
    from file_dataset._writer import _others_note

    row = parse_url("s3://bkt/out/r1")
    names = [f"f{i}" for i in range(10)]
    refused = file_dataset.TransferError("s3://bkt/out/r1/f2", "refused", column="f2")
    outcomes = {0: "done", 1: "done", 2: "failed", 3: "stopped", 4: "cut", 5: "failed"}
    assert _others_note(refused, "r1", names, outcomes, None, row) == (
        "file_dataset.write_files: 2 other file(s) of row id 'r1' are written and 2 may be "
        "written already under s3://bkt/out/r1/ (written: 'f0', 'f1'; maybe: 'f3', 'f5'; each "
        "whole, none half-written: a rerun of the row overwrites them)"
    )
    # a missing bucket: what failed on its own wrote nothing
    no_bucket = file_dataset.ObjectNotFoundError(
        "s3://bkt/out/r1/f2", "NoSuchBucket", operation="write", column="f2"
    )
    assert _others_note(no_bucket, "r1", names, {2: "failed", 5: "failed"}, None, row) is None
    assert _others_note(refused, "r1", names, {2: "failed", 3: "cut"}, None, row) is None
    many = dict.fromkeys(range(9), "done")
    assert _others_note(refused, "r1", names, many, None, row) == (
        "file_dataset.write_files: 8 other file(s) of row id 'r1' are written already under "
        "s3://bkt/out/r1/ ('f0', 'f1', 'f3', 'f4', 'f5' and 3 more; each whole, none "
        "half-written: a rerun of the row overwrites them)"
    )
    # neither an interrupt nor a timeout says that a file that failed on its own was not
    # stored (helper-147: one whose answer was lost, stored whole, went unnamed)
    timed_out = file_dataset.TransferError("s3://bkt/out/r1/f2", "timed out", column="f2")
    timed_out.unreachable = True
    for error, outcomes in (
        (KeyboardInterrupt(), {0: "failed"}),
        (timed_out, {0: "failed", 2: "failed"}),
    ):
        assert _others_note(error, "r1", names, outcomes, None, row) == (
            "file_dataset.write_files: 1 other file(s) of row id 'r1' may be written already "
            "under s3://bkt/out/r1/ ('f0'; each whole, none half-written: a rerun of the row "
            "overwrites them)"
        )
    local = parse_url(str(tmp_path / "out" / "r1"))
    (tmp_path / "out" / "r1").mkdir(parents=True)
    assert _others_note(refused, "r1", names, {3: "stopped"}, tmp_path / "out" / "r1", local) == (
        f"file_dataset.write_files: 1 other file(s) of row id 'r1' may be written already "
        f"under {tmp_path / 'out' / 'r1'}{os.sep} ('f3'; each whole, none half-written: a "
        "rerun of the row overwrites them)"
    )


def test_a_source_that_fails_while_read_for_s3_says_so_as_for_a_local_folder(
    options: Options, bucket: str, s3_client: Any
) -> None:
    # The S3 path said "cannot read the local file: [Errno 5] ..." with no errno (and a
    # source without read permission was not an ObjectAccessDeniedError there).
    with pytest.raises(file_dataset.TransferError) as info:
        file_dataset.write_files({"m.bin": "/proc/self/mem"}, f"s3://{bucket}/p", "r1", options)
    assert str(info.value) == (
        "cannot read /proc/self/mem (row id 'r1', column 'm.bin'): Input/output error"
    )
    assert info.value.errno == errno.EIO
    assert keys(s3_client, bucket) == []


def test_a_row_folder_removed_by_a_failed_writer_of_the_same_id_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed write_files removes the empty row folder it made; another call writing
    # the same id at that moment lost its folder between making it and creating its
    # file, and failed with "no such file" (9 in 400 rounds of two threads).
    import file_dataset._local as local

    new_temp_file = local.new_temp_file
    removed: list[Path] = []

    def folder_gone_first(dest: Path) -> tuple[int, str]:
        if not removed:  # what the other writer's clean-up does, at the worst moment
            dest.parent.rmdir()
            removed.append(dest.parent)
        return new_temp_file(dest)

    monkeypatch.setattr(local, "new_temp_file", folder_gone_first)
    source = tmp_path / "good.bin"
    source.write_bytes(b"good")
    written = file_dataset.write_files({"good": source}, tmp_path / "into", "r1")
    assert removed == [tmp_path / "into" / "r1"]
    assert Path(written["good"]).read_bytes() == b"good"


def test_a_pipe_or_device_to_write_is_named_for_what_it_is(tmp_path: Path) -> None:
    """Before: "does not exist (or is not a regular file)", a FileNotFoundError, for a
    file that is there; the reader says what it is."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for source, kind in [(fifo, "a named pipe"), (Path("/dev/null"), "a device")]:
        with pytest.raises(file_dataset.TransferError) as info:
            file_dataset.write_files({"f.bin": source}, tmp_path / "out", "r1")
        assert not isinstance(info.value, FileNotFoundError)
        assert str(info.value) == (
            f"cannot read {source} (row id 'r1', column 'f.bin'): is {kind}, not a regular "
            "file (only files with a known size can be read)"
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(file_dataset.ObjectNotFoundError, match=r"does not exist$"):
        file_dataset.write_files({"f.bin": tmp_path / "gone"}, tmp_path / "out", "r1")


def test_write_files_takes_a_series_of_paths(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """A row of a frame of outputs (a Series) was refused as "not a mapping"."""
    files = make_files(tmp_path / "src", {"a.bin": b"A", "b.bin": b"BB"})
    row = pd.Series({"a.bin": files["a.bin"], "b.bin": str(files["b.bin"]), "c.bin": None})
    written = file_dataset.write_files(row, f"s3://{bucket}/out", id="r1", options=options)
    assert written == {
        "a.bin": f"s3://{bucket}/out/r1/a.bin",
        "b.bin": f"s3://{bucket}/out/r1/b.bin",
    }
    assert keys(s3_client, bucket) == ["out/r1/a.bin", "out/r1/b.bin"]
    got = s3_client.get_object(Bucket=bucket, Key="out/r1/b.bin")["Body"].read()
    assert got == b"BB"
    twice = pd.Series([files["a.bin"], files["b.bin"]], index=["a.bin", "a.bin"])
    with pytest.raises(file_dataset.InvalidInputError, match=r"a\.bin"):
        file_dataset.write_files(twice, tmp_path / "local", id="r2", options=options)
    assert not (tmp_path / "local").exists()


def test_write_files_errors_about_one_file_name_its_row_and_column(
    options: Options, bucket: str, tmp_path: Path
) -> None:
    files = make_files(tmp_path / "src", {"a.bin": b"A"})
    cases = [
        ({"a.bin": files["a.bin"], "x.bin": 5}, "x.bin"),
        ({"a.bin": files["a.bin"], "x.bin": f"s3://{bucket}/k"}, "x.bin"),
        ({"a.bin": files["a.bin"], "sub/x.bin": files["a.bin"]}, "sub/x.bin"),
        ({"a.bin": files["a.bin"], "id": files["a.bin"]}, "id"),
        ({"a.bin": files["a.bin"], "x" * 1100: files["a.bin"]}, "x" * 1100),
    ]
    for mapping, column in cases:
        with pytest.raises(file_dataset.InvalidInputError) as info:
            file_dataset.write_files(mapping, f"s3://{bucket}/out", id=4, options=options)
        assert (info.value.row_id, info.value.column) == ("4", column)


# --- written_ids: the rows already written, for resuming a job -----------------------


def _write_rows(into: str | Path, options: Options, tmp_path: Path) -> None:
    """r1 and r3 get both outputs, r2 only a.txt; one object lies outside any row."""
    (tmp_path / "a.txt").write_bytes(b"a")
    (tmp_path / "b.txt").write_bytes(b"b")
    both = {"a.txt": tmp_path / "a.txt", "b.txt": tmp_path / "b.txt"}
    file_dataset.write_files(both, into, "r1", options)
    file_dataset.write_files({"a.txt": tmp_path / "a.txt"}, into, "r2", options)
    file_dataset.write_files(both, into, 3, options)


def test_written_ids_lists_the_rows_whose_outputs_are_all_in_s3(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """Before, the README's resume recipe (user code) found nothing for an into_path
    spelt S3://, s3a:// or with doubled slashes, which write_files accepts, so a
    "resumed" job ran every row again (helper-104)."""
    _write_rows(f"s3://{bucket}/out", options, tmp_path)
    # a file beside the rows, a deeper one, and another prefix that starts alike
    s3_client.put_object(Bucket=bucket, Key="out/a.txt", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="out/r2/sub/b.txt", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="outer/r4/a.txt", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="outer/r4/b.txt", Body=b"x")
    for into in (f"s3://{bucket}/out", f"S3://{bucket}/out/", f"s3a://{bucket}/out//"):
        assert file_dataset.written_ids(into, ["a.txt", "b.txt"], options) == {"r1", "3"}
    assert file_dataset.written_ids(f"s3://{bucket}/out", ["a.txt"], options) == {
        "r1",
        "r2",
        "3",
    }
    assert file_dataset.written_ids(f"s3://{bucket}/out", ("b.txt",), options) == {"r1", "3"}
    assert file_dataset.written_ids(f"s3://{bucket}/none", ["a.txt"], options) == set()
    # the bucket's root as into_path: its rows are the first segment of every key
    assert file_dataset.written_ids(f"s3://{bucket}", ["a.txt", "b.txt"], options) == set()
    assert file_dataset.written_ids(f"s3://{bucket}/outer", ["a.txt", "b.txt"], options) == {"r4"}
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert file_dataset.written_ids(f"s3://{bucket}/out", ["a.txt"], options, since=past) == {
        "r1",
        "r2",
        "3",
    }
    assert file_dataset.written_ids(f"s3://{bucket}/out", ["a.txt"], options, since=future) == (
        set()
    )
    # S3 keeps whole seconds: a file written later in since's second counts (before,
    # a job's start time taken just before its first write missed that write)
    stored = s3_client.head_object(Bucket=bucket, Key="out/r1/a.txt")["LastModified"]
    within = stored + dt.timedelta(milliseconds=999)
    assert "r1" in file_dataset.written_ids(f"s3://{bucket}/out", ["a.txt"], options, since=within)
    assert "r1" not in file_dataset.written_ids(
        f"s3://{bucket}/out", ["a.txt"], options, since=stored + dt.timedelta(seconds=1)
    )
    # pandas' Timestamp kept its nanoseconds, and missed the file (helper-125)
    nanos = pd.Timestamp(stored) + pd.Timedelta(nanoseconds=1)
    assert "r1" in file_dataset.written_ids(f"s3://{bucket}/out", ["a.txt"], options, since=nanos)


def test_written_ids_pages_through_more_than_1000_objects(
    options: Options, bucket: str, s3_client: Any
) -> None:
    for row in range(1003):
        s3_client.put_object(Bucket=bucket, Key=f"o/{row}/out.bin", Body=b"")
    found = file_dataset.written_ids(f"s3://{bucket}/o", ["out.bin"], options)
    assert found == {str(row) for row in range(1003)}


def test_written_ids_of_a_missing_bucket_is_an_error(options: Options) -> None:
    with pytest.raises(file_dataset.ObjectNotFoundError) as info:
        file_dataset.written_ids("s3://no-such-bucket-listed/out", ["a.txt"], options)
    assert (
        str(info.value) == "cannot list s3://no-such-bucket-listed/out/: the bucket does not exist"
    )
    assert info.value.status == 404


def test_written_ids_of_a_local_folder(tmp_path: Path) -> None:
    into = tmp_path / "local out"  # a space: file:// URLs quote it as %20
    _write_rows(into, Options(), tmp_path)
    (into / "r2" / ".b.txt.x1y2.part").write_bytes(b"half")  # a killed write's leftover
    (into / "b.txt").write_bytes(b"beside the rows")
    (into / "r5").mkdir()
    (into / "r5" / "a.txt").mkdir()  # a folder named like an output is no output
    (into / "r5" / "b.txt").write_bytes(b"b")
    for spelt in (into, str(into), into.as_uri(), f"file:{into}", f"{into}//"):
        assert file_dataset.written_ids(spelt, ["a.txt", "b.txt"]) == {"r1", "3"}
    os.utime(into / "r1" / "b.txt", (0, 0))  # written long before the job began
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert file_dataset.written_ids(into, ["a.txt", "b.txt"], since=since) == {"3"}
    assert file_dataset.written_ids(tmp_path / "not yet", ["a.txt"]) == set()
    with pytest.raises(NotADirectoryError) as info:
        file_dataset.written_ids(tmp_path / "a.txt", ["a.txt"])
    assert isinstance(info.value, file_dataset.TransferError)
    assert str(info.value) == f"cannot list {tmp_path / 'a.txt'}: not a folder"


@pytest.mark.parametrize(
    ("names", "since", "error", "message"),
    [
        ("a.txt", None, TypeError, "takes a list of file names, such as ['output.mha'], got str"),
        ([], None, ValueError, "needs at least one file name"),
        (["a.txt", 7], None, TypeError, "file names must be strings, got 7"),
        (["sub/a.txt"], None, ValueError, "cannot be used as a path component"),
        (["a.txt", "id"], None, ValueError, "no file is named 'id'"),
        (["a.txt"], "2026-01-01", TypeError, "since must be a datetime, got str"),
        (["a.txt"], dt.datetime(2026, 1, 1), ValueError, "since must be timezone-aware"),
    ],
)
def test_written_ids_refuses_bad_arguments(
    names: Any, since: Any, error: type[Exception], message: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=re.escape(message)) as info:
        file_dataset.written_ids(tmp_path, names, since=since)
    assert isinstance(info.value, file_dataset.InvalidInputError)


@pytest.mark.parametrize("stage", ["create", "parts"])
def test_a_multipart_upload_closed_before_its_completion_is_not_called_maybe_written(
    stage: str,
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An earlier file fails while a large file's CreateMultipartUpload (or its parts)
    is under way; that request then succeeds, and the job is closed: its upload is
    aborted, nothing of it is written. Before, the error's note said that it "may be
    written already" (helper-149's stress runs: 6 to 10 refused writes of 25)."""
    from file_dataset._options import call_stopped
    from file_dataset._s3 import S3Backend

    files = make_files(tmp_path, {"a.bin": b"small", "big.bin": os.urandom(10 * MiB)})
    start, part = S3Backend.multipart_start, S3Backend.multipart_part
    began = threading.Event()
    sent = threading.Barrier(2)  # the two 5 MiB parts

    def refused(self: S3Backend, src: Path, loc: Any) -> None:
        assert began.wait(60)  # (a safety net: the other request is under way at once)
        raise file_dataset.TransferError(str(loc), "refused", operation="write")

    def until_stopped(method: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any) -> Any:
            # A part is sent whole first (it would be cut while sent); the creation
            # is made after the failure, as when its answer comes after it.
            result = method(*args) if stage == "parts" else None
            if stage == "parts":
                sent.wait(60)  # both parts sent whole
            began.set()
            for _ in range(60_000):  # until the call has taken a.bin's failure
                if call_stopped():
                    break
                threading.Event().wait(0.001)
            return result if stage == "parts" else method(*args)

        return held

    monkeypatch.setattr(S3Backend, "write", refused)
    if stage == "create":
        monkeypatch.setattr(S3Backend, "multipart_start", until_stopped(start))
    else:
        monkeypatch.setattr(S3Backend, "multipart_part", until_stopped(part))
    options = s3_server.options(transport="boto3", part_size=5 * MiB, multipart_threshold=5 * MiB)
    with pytest.raises(file_dataset.TransferError, match="refused") as raised:
        file_dataset.write_files(files, f"s3://{bucket}/p", id="1", options=options)
    monkeypatch.undo()
    assert "row id '1', column 'a.bin'" in str(raised.value)
    assert getattr(raised.value, "__notes__", None) is None
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
