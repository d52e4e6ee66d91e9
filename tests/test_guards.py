"""Guards that a mutation audit found untested: each test fails when its guard is removed.

The engine stops other jobs after a failure and raises the earliest; a file of more
parts than S3 allows gets larger parts; a local file that shrinks while read, a body
cut short, a planted link at a temporary name, a failed download's temporary file;
the smallest part size; the Pipeline's bound on uploads in flight and its read-ahead.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import file_dataset
from file_dataset import _local, _transfer
from file_dataset._errors import TransferError
from file_dataset.testing import LocalS3Server

MiB = 1024 * 1024


def test_other_jobs_stop_at_their_next_step_after_a_failure() -> None:
    """run_jobs: once a job fails, a job still running is closed, not advanced."""
    released = threading.Event()
    advanced: list[str] = []

    def failing():  # type: ignore[no-untyped-def]
        yield [lambda: None]
        released.set()  # the other job's call returns only after this failure
        raise TransferError("s3://b/a", "boom")

    def slow():  # type: ignore[no-untyped-def]
        yield [lambda: released.wait(10)]
        advanced.append("second step")
        yield [lambda: None]
        return 1

    with pytest.raises(TransferError, match="boom"):
        _transfer.run_jobs([failing(), slow()], file_dataset.Options())
    assert advanced == []


def test_the_earliest_failing_job_is_the_one_raised() -> None:
    released = threading.Event()

    def fail_after_release() -> None:
        released.wait(10)
        raise TransferError("s3://b/first", "first failed")

    def first():  # type: ignore[no-untyped-def]
        yield [fail_after_release]  # its call fails after the second job failed

    def second():  # type: ignore[no-untyped-def]
        yield [lambda: None]
        released.set()
        raise TransferError("s3://b/second", "second failed")

    with pytest.raises(TransferError, match="first failed"):
        _transfer.run_jobs([first(), second()], file_dataset.Options(), [("r0", "f"), ("r1", "f")])


def test_a_job_stopped_by_an_earlier_failure_is_never_sent_its_cut_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """helper-143: when the reply of a call stopped by an earlier job's failure came
    before that failure's own reply (the failing thread paused between stopping the
    jobs and replying), the stopped job was sent its batch's results with None for the
    stopped call: a read raised TypeError instead of the failure, and a download
    renamed a file with holes into place. Here the failing thread waits, after
    stopping the jobs, until the stopped job has been stopped or advanced."""
    from file_dataset._options import RunState, stop_if_stopped

    stopped = threading.Event()  # the failure has stopped the later jobs
    ended = threading.Event()  # the later job was stopped, or advanced
    advanced: list[Any] = []
    stop_from = RunState.stop_from

    def stop_from_then_wait(run: RunState, job: int) -> None:
        stop_from(run, job)
        stopped.set()
        ended.wait(10)  # a safety net: the stopped job ends at once

    monkeypatch.setattr(RunState, "stop_from", stop_from_then_wait)

    def fail() -> None:
        raise TransferError("s3://b/first", "first failed")

    def stopped_part_way() -> None:
        stopped.wait(10)
        stop_if_stopped()  # as a body being read does between its chunks

    def first():  # type: ignore[no-untyped-def]
        yield [fail]

    def second():  # type: ignore[no-untyped-def]
        try:
            advanced.append((yield [stopped_part_way]))
        finally:
            ended.set()

    options = file_dataset.Options(max_concurrency=2)
    with pytest.raises(TransferError, match="first failed"):
        _transfer.run_jobs([first(), second()], options, [("r0", "f"), ("r1", "f")])
    assert advanced == []


def test_a_local_copy_stops_once_its_call_is_stopped(tmp_path: Path) -> None:
    """A copy on a transfer thread (a repeated URL's copy to a later cell, a local
    write_files) ran to its end after an earlier file's failure or a Ctrl-C: only the
    downloads asked whether their call was stopped. Now every local copy asks, and a
    stopped one leaves nothing at its destination, nor a temporary file."""
    import queue

    from file_dataset._local import atomic_copy
    from file_dataset._options import CallStopped, RunState, _Workers

    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * MiB))
    (tmp_path / "out").mkdir()
    run = RunState()
    replies: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def copy() -> None:
        run.stop_from(0)  # as an earlier file's failure does, while this call runs
        atomic_copy(source, tmp_path / "out" / "copy.bin")

    _Workers(1, linger=0.01).submit(copy, replies, (0, 0), run)
    tag, value, error = replies.get(timeout=60)
    assert (tag, value, type(error)) == ((0, 0), None, CallStopped)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_stop_shuts_the_sockets_of_the_bodies_its_jobs_are_reading() -> None:
    """A stopped job's body read returns at once (its socket shut for reading), also
    one watched after the stop; a socket handed back before the stop (a body read to
    its end: its connection goes back to the pool, for any call) and one of an earlier
    job are left whole. An interrupt (abandon) shuts every one."""
    import socket

    from file_dataset._options import RunState

    run = RunState()
    pairs = [socket.socketpair() for _ in range(4)]
    (blocked, _), (handed_back, peer), (earlier, earlier_peer), (late, _) = pairs
    got: dict[str, Any] = {}

    def on_thread(name: str, call: Any) -> threading.Thread:
        thread = threading.Thread(target=lambda: got.setdefault(name, call()), daemon=True)
        thread.start()
        return thread

    def read_blocked() -> bytes:
        run.watch(1, blocked)
        return blocked.recv(10)  # (nothing is sent: only the stop ends the wait)

    def hand_back() -> bool:
        run.watch(3, handed_back)
        return run.unwatch()

    def read_late() -> tuple[bytes, bool]:
        run.watch(2, late)
        return late.recv(10), run.unwatch()

    try:
        run.watch(0, earlier)  # (this thread's)
        reader = on_thread("blocked", read_blocked)
        on_thread("handed back", hand_back).join()
        run.stop_from(1)
        on_thread("late", read_late).join()
        reader.join(60)
        assert got == {"blocked": b"", "handed back": True, "late": (b"", False)}
        peer.sendall(b"whole")
        assert handed_back.recv(10) == b"whole"
        earlier_peer.sendall(b"whole")
        assert earlier.recv(10) == b"whole"
        run.abandon()
        assert earlier.recv(10) == b""
        assert not run.unwatch()
    finally:
        for pair in pairs:
            for end in pair:
                end.close()


def test_a_file_of_more_parts_than_s3_allows_gets_larger_parts(
    s3_server: LocalS3Server,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_transfer, "_MAX_PARTS", 2)  # as a 80 GiB file meets 10,000
    options = s3_server.options(part_size=5 * MiB, multipart_threshold=5 * MiB)
    src = tmp_path / "f"
    data = os.urandom(16 * MiB)
    src.write_bytes(data)
    file_dataset.write_files({"f": src}, f"s3://{bucket}/p", id="1", options=options)
    etag = s3_client.head_object(Bucket=bucket, Key="p/1/f")["ETag"].strip('"')
    assert etag.endswith("-2")


class _ShrinksOnRead(io.RawIOBase):
    """A file whose readinto first truncates it (as another writer would)."""

    def __init__(self, path: Path, keep: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115
        self._path, self._keep = path, keep

    def fileno(self) -> int:
        return self._f.fileno()

    def readinto(self, buf: Any) -> int:
        os.truncate(self._path, self._keep)
        return self._f.readinto(buf)  # type: ignore[no-any-return]

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        self._f.close()
        super().close()


def test_a_local_file_that_shrinks_mid_read_is_an_error_not_garbage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 100_000)
    monkeypatch.setattr(_local, "_open_regular", lambda loc: _ShrinksOnRead(loc.path, 10))
    with pytest.raises(file_dataset.TransferError, match="shrank"):
        file_dataset.reader({"f.bin": str(src)}).into_blob_table()


def test_a_planted_link_at_the_temporary_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    src = tmp_path / "src"
    src.write_bytes(b"payload")
    out = tmp_path / "out"
    (out / "1").mkdir(parents=True)
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"])
    monkeypatch.setattr(_local.secrets, "token_hex", lambda n: next(names))
    (out / "1" / ".f.aaaaaaaaaaaa.part").symlink_to(victim)
    file_dataset.write_files({"f": src}, out, id="1")
    assert victim.read_bytes() == b"keep me"
    assert not (out / "1" / "f").is_symlink()
    assert (out / "1" / "f").read_bytes() == b"payload"


def test_download_to_leaves_no_temporary_file_when_a_read_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * (20 * MiB))
    written: list[int] = []

    def broken(fd: int, data: bytes) -> None:
        if written:
            raise TransferError(str(src), "part failed")
        written.append(os.write(fd, data))

    # the kernel copies nothing: the read/write loop fails after its first chunk
    monkeypatch.setattr(_local, "_copy_in_kernel", lambda *args: 0)
    monkeypatch.setattr(_local, "_write_all", broken)
    root = tmp_path / "root"
    with pytest.raises(TransferError, match="part failed"):
        file_dataset.reader({"big.bin": str(src)}).download_to(root)
    assert written == [8 * MiB]
    assert [p.name for p in root.rglob("*")] == []


def test_an_obstore_body_shorter_than_asked_is_an_error_not_a_hole(
    s3_server: LocalS3Server, put: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from file_dataset import _s3_obstore

    url = put("big", b"x" * (12 * MiB))  # streamed: over STREAM_BYTES
    real_get = _s3_obstore.obstore.get

    class Short:
        def __init__(self, result: Any) -> None:
            self._result = result

        def __getattr__(self, name: str) -> Any:
            return getattr(self._result, name)

        def stream(self, **kwargs: Any) -> Any:
            chunks = list(self._result.stream(**kwargs))
            return iter(chunks[:-1])  # the last chunk never arrives, yet no error

        def bytes(self) -> Any:
            return self._result.bytes()

    monkeypatch.setattr(_s3_obstore.obstore, "get", lambda *a, **k: Short(real_get(*a, **k)))
    options = s3_server.options(transport="obstore")
    with pytest.raises(file_dataset.TransferError):
        file_dataset.reader({"big.bin": url}, options).download_to(tmp_path / "out")


def test_a_part_size_one_byte_under_5_mib_is_refused() -> None:
    with pytest.raises(ValueError, match="part_size"):
        file_dataset.Options(part_size=5 * MiB - 1, multipart_threshold=16 * MiB)


def test_fn_waits_while_four_uploads_are_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from file_dataset import _pipeline

    (tmp_path / "a").write_bytes(b"a")
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(10)], "f": [tmp_path / "a"] * 10})
    gate = threading.Event()
    calls: list[int] = []
    real_write = _pipeline.write_files

    def held_write(*args: Any, **kwargs: Any) -> Any:
        gate.wait(30)  # no upload ends until fn has been called enough
        return real_write(*args, **kwargs)

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        calls.append(1)
        if len(calls) == 7:  # more than 1 + 4 in flight + 1: the bound was not kept
            gate.set()
        out = output_dir / "o"
        out.write_bytes(b"o")
        return {"o": out}

    monkeypatch.setattr(_pipeline, "write_files", held_write)
    pipeline = file_dataset.Pipeline(fn, {"into_path": tmp_path / "out"})
    timer = threading.Timer(3, gate.set)  # a safety net: the bound held, fn stopped at 6
    timer.start()
    seen_before_release: list[int] = []

    def watch() -> None:
        gate.wait(30)
        seen_before_release.append(len(calls))

    watcher = threading.Thread(target=watch)
    watcher.start()
    pipeline(frame)
    timer.cancel()
    watcher.join()
    assert seen_before_release[0] <= 6  # rows: 4 uploading, 1 being collected, 1 in fn


def test_the_next_row_is_downloaded_while_fn_runs(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    frame = pd.DataFrame({"id": ["r1", "r2"], "f": [tmp_path / "a"] * 2})
    second_download = threading.Event()
    waited: list[bool] = []

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        if not waited:
            waited.append(second_download.wait(10))  # r2's download starts meanwhile
        return {}

    pipeline = file_dataset.Pipeline(fn, {"into_path": tmp_path / "out"})
    download = pipeline._download

    def recorded(columns: list[str], values: list[Any], row_id: str) -> Any:
        if row_id == "r2":
            second_download.set()
        return download(columns, values, row_id)

    pipeline._download = recorded  # type: ignore[method-assign]
    pipeline(frame)
    assert waited == [True]
