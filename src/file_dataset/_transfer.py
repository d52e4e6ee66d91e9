"""The engine that moves bytes: many objects and parts at once on a bounded pool.

Each object transfer is written as a *job*: a generator that yields lists of
I/O calls (run in parallel on the options' thread pool) and receives their results,
then returns its own result. The calling thread drives every job, so all
bookkeeping happens on one thread and pool threads only do I/O; a job waiting for
its parts never holds a pool thread, so there is no deadlock however many large
objects are in flight.

Small objects take one request (a GET of the first ``multipart_threshold`` bytes
also tells the total size, so no HEAD is needed); larger ones continue with parallel
ranged GETs of ``part_size`` bytes, asked for as soon as that first response's headers
are in (its thread adds them to its job's batch, :func:`add_calls`, then reads its own
body), or are written with multipart uploads.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from file_dataset._backend import (
    SETUP_FAILURES,
    SOURCE_CHANGED,
    Backend,
    Blob,
    backend_for,
    copy_into,
    file_version,
    new_buffer,
    write_chunks,
)
from file_dataset._errors import (
    NotAFolderError,
    ObjectAccessDeniedError,
    ObjectNotFoundError,
    TransferError,
    emfile_reason,
    masked_cut,
    quoted,
    source_error,
)
from file_dataset._local import LocalBackend, temp_file_in_place
from file_dataset._memory import prefault
from file_dataset._options import (
    CallStopped,
    MoreCalls,
    Options,
    Reply,
    RunState,
    add_calls,
    stop_if_stopped,
)
from file_dataset._urls import Location

T = TypeVar("T")
Call = Callable[[], Any]
Job = Generator[list[Call], list[Any], T]
Context = tuple[str | None, str | None]  # (row id, column) named in errors

_MAX_PARTS = 10_000
_MAX_PART = 5 * 2**30  # S3's largest part
# ``.now``: the _Cleanup of the run_jobs call running on this thread (where jobs run).
_CLEANUP = threading.local()
# How a note on an upload maybe left open ends.
_UNTIL_ABORTED = "until it is aborted (a lifecycle rule's AbortIncompleteMultipartUpload does that)"


def _ranges(start: int, total: int, part_size: int) -> list[tuple[int, int]]:
    """The parts of bytes ``start`` to ``total``, ``part_size`` each but the last.

    A short tail (under an eighth of a part) joins the part before it instead of
    costing a request of its own: a 16 MiB + 1 byte upload is sent as 8 MiB and
    8 MiB + 1 byte, not 8 MiB, 8 MiB and 1 byte (only the last part of an upload may
    be under S3's 5 MiB minimum anyway, and none above its 5 GiB maximum).
    """
    ranges = [(s, min(s + part_size, total)) for s in range(start, total, part_size)]
    if (
        len(ranges) > 1
        and ranges[-1][1] - ranges[-1][0] < part_size // 8
        and total - ranges[-2][0] <= _MAX_PART
    ):
        ranges[-2:] = [(ranges[-2][0], total)]
    return ranges


def read_job(loc: Location, options: Options) -> Job[Blob]:
    """Reads a whole object into memory."""
    backend = backend_for(loc, options)
    threshold = options.multipart_threshold
    view = memoryview(b"")  # the object's buffer, once its size is known
    asked = False  # whether the later parts went out with the first response

    def parts(start: int, total: int, tag: str | None) -> list[Call]:
        return [
            partial(_read_part, backend, loc, s, view[s:e], tag)
            for s, e in _ranges(start, total, options.part_size)
        ]

    # Runs on the thread of the first GET once its headers are in, before its body
    # is read: the later parts are asked for now, not after the body (on S3, with
    # about 90 MB/s per connection, a lone 64 MiB object took its first response's
    # time and then a part's). Each part's pages are faulted in by the thread that
    # reads it (see prefault).
    def sink(total: int, tag: str | None) -> memoryview:
        nonlocal view, asked
        stop_if_stopped()  # (before its buffer is made and touched)
        view = new_buffer(total, populate=False)
        asked = total > threshold and add_calls(parts(threshold, total, tag))
        prefault(view[:threshold])
        return view

    replies = yield [partial(backend.read_first, loc, threshold, sink)]
    first, total, tag = replies[0]
    if first is None:  # streamed into the object's buffer
        start = total if asked else min(total, threshold)
    else:
        if total <= len(first):
            return first  # type: ignore[no-any-return]
        view = new_buffer(total, populate=False)  # (a local file's first bytes)
        prefault(view[: len(first)])
        copy_into(view, 0, first)
        start = len(first)
        del first
    yield parts(start, total, tag)
    return view


def _read_part(
    backend: Backend, loc: Location, start: int, view: memoryview, tag: str | None
) -> None:
    prefault(view)
    backend.read_into(loc, start, view, tag)


def _read_part_to_file(
    read_chunks: Callable[[Location, int, int, str | None], Iterator[Blob]],
    loc: Location,
    tag: str | None,
    fd: int,
    start: int,
    end: int,
) -> None:
    # Each of the transport's buffers goes straight to the file (one copy, into the
    # kernel) as it arrives.
    write_chunks(partial(_pwrite_all, fd), start, read_chunks(loc, start, end - start, tag))


def _pwrite_all(fd: int, offset: int, data: Blob) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def download_job(loc: Location, dest: Path, options: Options) -> Job[Path]:
    """Downloads an object to ``dest`` through a temporary name (never a partial file).

    The file work (making the temporary file, writing it, renaming it into place) runs
    on the pool thread of the request it follows: the calling thread drives every job,
    and a small object's file calls would otherwise queue there, leaving the pool idle
    under latency.
    """
    backend = backend_for(loc, options)
    fd, tmp = -1, ""  # the temporary file, once made
    asked = False  # whether the later parts went out with the first response

    def open_temp(total: int) -> int:
        nonlocal fd, tmp
        fd, tmp = temp_file_in_place(dest)
        if total:
            os.ftruncate(fd, total)
        return fd

    def checked_open(total: int) -> int:
        # (a full disk, say: named as the download of loc to dest)
        try:
            return open_temp(total)
        except OSError as e:
            raise local_failure(e, loc, dest) from e

    def sink(total: int, tag: str | None) -> Callable[[int, Blob], None]:
        # Runs on a pool thread once the response has begun: the file is made there,
        # and the later parts are asked for before the body is read (see read_job).
        # Its failures are told apart from the transport's here, as the transport's
        # own error handling would take them for its own.
        nonlocal asked
        stop_if_stopped()  # (before its file is made)
        write = partial(_pwrite_all, checked_open(total))
        threshold = options.multipart_threshold
        asked = total > threshold and add_calls(parts(threshold, total, tag))

        def write_checked(offset: int, data: Blob) -> None:
            try:
                write(offset, data)
            except OSError as e:
                raise local_failure(e, loc, dest) from e

        return write_checked

    def parts(start: int, total: int, tag: str | None) -> list[Call]:
        # (into the temporary file, once made)
        return [
            partial(_read_part_to_file, backend.read_chunks, loc, tag, fd, s, e)
            for s, e in _ranges(start, total, options.part_size)
        ]

    def finish() -> None:
        nonlocal fd, tmp
        closing, fd = fd, -1
        os.close(closing)
        os.replace(tmp, dest)
        tmp = ""

    def first_response() -> tuple[int, int, str | None]:
        # (bytes stored, total size, version tag); a whole object is complete when this
        # returns. With its later parts asked for (by the sink), the file is complete
        # only once they are all done too: finished by the job, not here.
        first, total, tag = backend.read_first(loc, options.multipart_threshold, sink)
        if first is None:  # streamed into the file
            stored = min(total, options.multipart_threshold)
        else:
            open_temp(total if total > len(first) else 0)
            _pwrite_all(fd, 0, first)
            stored = len(first)
            del first
        if stored >= total and not asked:
            finish()
        return stored, total, tag

    def local_copy() -> tuple[int, int, str | None]:
        # A local file is copied whole, through the kernel where it can (one call: a
        # copy that stays in the kernel gains nothing from parts on other threads).
        assert isinstance(backend, LocalBackend)
        total = backend.copy_into(loc, checked_open)
        finish()
        return total, total, None

    local = isinstance(backend, LocalBackend)
    try:
        [(start, total, tag), *_] = yield [local_copy if local else first_response]
        if asked:  # the later parts came in the same batch as the first response
            finish()
        elif total > start:
            yield parts(start, total, tag)
            finish()
    except BaseException as e:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, TransferError):
            raise local_failure(e, loc, dest) from e
        raise
    return dest


def local_failure(error: OSError, loc: Location, dest: Path) -> TransferError:
    """The error for a download whose local side failed (a full disk, a size limit).

    It still names the object, and through the job's context its row id and column,
    and keeps the ``errno``; a refused write is an :class:`ObjectAccessDeniedError`
    (a ``PermissionError``), as the same refusal is in ``write_files``.
    """
    if isinstance(error, PermissionError):  # a folder this process may not write in
        failure: TransferError = ObjectAccessDeniedError(
            str(loc), f"could not write {dest}: permission denied"
        )
    else:
        reason = emfile_reason() if error.errno == errno.EMFILE else error.strerror or str(error)
        # a file where a folder must be: also a NotADirectoryError, as in write_files
        kind = NotAFolderError if isinstance(error, NotADirectoryError) else TransferError
        failure = kind(str(loc), f"could not write {dest}: {reason}")
    failure.errno = error.errno
    return failure


def size_job(loc: Location, options: Options) -> Job[int]:
    """Reads an object's size without its content."""
    backend = backend_for(loc, options)
    [size] = yield [partial(backend.size, loc)]
    return int(size)


def upload_job(
    src: Path, loc: Location, options: Options, writing: list[bool] | None = None
) -> Job[Location]:
    """Writes a local file to ``loc``: one request, or a multipart upload when large.

    A multipart upload is completed only if ``src`` is still the version whose parts
    were sent; otherwise it is aborted, so the object is never a mix of two versions.
    ``writing``, if given, gets an item once the request that may store the object
    (the PUT, or CompleteMultipartUpload) is asked for: a job closed before that has
    written nothing (its multipart upload is aborted).
    """
    backend = backend_for(loc, options)
    # The clean-up of the run_jobs call that runs this job (it starts the job): the
    # upload's abort is made and waited for there, and a failed one told there, even
    # if the job is closed later, by another call.
    cleanup: _Cleanup | None = getattr(_CLEANUP, "now", None)
    try:
        stat = os.stat(src)
    except OSError as e:
        raise source_error(e, str(src)) from e
    size = stat.st_size
    if not backend.supports_multipart or size <= options.multipart_threshold:
        if writing is not None:
            writing.append(True)
        yield [partial(backend.write, src, loc)]
        return loc
    part_size = max(options.part_size, -(-size // _MAX_PARTS))
    # The upload's id, kept as soon as S3 gives it: a call that ends while run_jobs is
    # interrupted never hands its result to the job, which must still abort the upload
    # (else S3 keeps it, and bills its parts, until a lifecycle rule removes it).
    started: list[str] = []

    def start() -> str:
        upload_id = backend.multipart_start(loc)
        started.append(upload_id)
        return upload_id

    try:
        [upload_id] = yield [start]
        parts = yield [
            partial(backend.multipart_part, loc, upload_id, number, src, s, e - s)
            for number, (s, e) in enumerate(_ranges(0, size, part_size), start=1)
        ]
        try:
            unchanged = file_version(os.stat(src)) == file_version(stat)
        except OSError as e:  # removed once its parts were sent, say (helper-147)
            raise source_error(e, str(src)) from e
        if not unchanged:
            raise TransferError(str(src), SOURCE_CHANGED, operation="read")
        if writing is not None:
            writing.append(True)
        yield [partial(backend.multipart_complete, loc, upload_id, parts)]
    except BaseException as failure:
        if started:
            try:
                _abort(backend, loc, started[0], failure, cleanup)
            except KeyboardInterrupt:
                # A Ctrl-C during the abort: it is asked for again (a second Ctrl-C
                # stops that) so that the upload is not left open, then the interrupt
                # ends the call.
                _abort(backend, loc, started[0], failure, cleanup)
                raise
        raise
    return loc


def _abort(
    backend: Backend,
    loc: Location,
    upload_id: str,
    failure: BaseException,
    cleanup: _Cleanup | None,
) -> None:
    """Aborts a multipart upload after ``failure``; notes on it if that fails too.

    Within run_jobs the abort is made by the call's ``cleanup`` (on the pool, see
    :class:`_Cleanup`), which adds the note to the error the call raises (``failure``
    is not raised when an earlier file failed too, nor when this upload was only
    stopped, ``CallStopped``, or its call interrupted, ``GeneratorExit``). Outside
    run_jobs it is made here, and the note goes to ``failure``.
    """
    if cleanup is not None:
        cleanup.abort(backend, loc, upload_id)
        return
    note = _aborted(backend, loc, upload_id)
    if note is not None:
        failure.add_note(note)


def _aborted(backend: Backend, loc: Location, upload_id: str) -> str | None:
    """Aborts a multipart upload: ``None``, or a note that says it could not be."""
    try:
        backend.multipart_abort(loc, upload_id)
    except ObjectNotFoundError:
        # NoSuchUpload: nothing of it is stored (completed, whatever the call heard of
        # it, or aborted already: an abort asked for again after a Ctrl-C)
        return None
    except Exception as e:  # the parts sent stay stored (and billed) until removed
        return _unaborted(loc, upload_id, e)
    return None


def _unaborted(loc: Location, upload_id: str, error: BaseException) -> str:
    """The note on a multipart upload that could not be aborted (``error``)."""
    return (
        f"file_dataset: the multipart upload {upload_id!r} of {loc} could not "
        f"be aborted ({masked_cut(str(error) or type(error).__name__, 300)}): its "
        f"parts stay stored {_UNTIL_ABORTED}"
    )


class _Cleanup:
    """The aborts of the multipart uploads of one run_jobs call, and their notes.

    Each abort is made on the options' pool as soon as its job asks for it, not on
    the thread that drives the run: the uploads stopped together (by an interrupt, or
    a failure while many large files are under way) are aborted together, not one
    after another (12 aborts answered in 0.25 s each held an error for 3.9 s in
    helper-145's fake server), and the run's other jobs go on meanwhile. run_jobs
    waits for them all before it raises, and adds ``notes`` (an upload that could not
    be aborted: its parts stay stored) to what it raises.
    """

    __slots__ = ("_cond", "_options", "_pending", "_run", "_tokens", "notes")

    def __init__(self, options: Options) -> None:
        self._options = options
        self._cond = threading.Condition(threading.Lock())
        # each abort asked for and not answered, by its token: (location, upload id)
        self._pending: dict[int, tuple[Location, str]] = {}
        self._tokens = itertools.count()
        self._run = RunState()  # never stopped: an abort asked for is always made
        self.notes: list[str] = []

    def abort(self, backend: Backend, loc: Location, upload_id: str) -> None:
        """Asks for the abort of the multipart upload ``upload_id`` of ``loc``."""

        def call() -> str | None:
            try:
                return _aborted(backend, loc, upload_id)
            except BaseException as e:  # (a worker's call ends in a reply, never raises)
                return _unaborted(loc, upload_id, e)

        token = next(self._tokens)
        with self._cond:
            self._pending[token] = (loc, upload_id)
        try:
            self._options._transfer_workers().submit(call, self, (0, token), self._run)
        except BaseException as e:
            # The call may be queued all the same (submit queues it before it starts a
            # thread): not waited for, and its reply, if one comes, ignored.
            self._answered(token)
            if not isinstance(e, Exception):
                raise  # an interrupt: upload_job asks for the abort again
            # No thread could be started: the abort is made here.
            if (note := _aborted(backend, loc, upload_id)) is not None:
                with self._cond:
                    self.notes.append(note)

    def put(self, item: Reply, /) -> None:
        """Takes an abort's reply (on the worker that made it): its note, if any."""
        (_, token), note, _ = item  # (never an error: the call catches its own)
        if self._answered(token) and note is not None:
            with self._cond:
                self.notes.append(note)

    def _answered(self, token: int) -> bool:
        """Counts an abort out; ``False`` if it was already (see :meth:`abort`)."""
        with self._cond:
            if self._pending.pop(token, None) is None:
                return False
            if not self._pending:
                self._cond.notify_all()
            return True

    def wait(self) -> None:
        """Waits until every abort asked for is answered.

        A Ctrl-C meanwhile waits on, then is raised: the aborts under way are not
        given up, so no upload is left open. A second one ends the wait, with a note
        on each upload whose abort was not answered yet (it may be left open).
        """
        try:
            self._wait()
        except KeyboardInterrupt:
            try:
                self._wait()
            except KeyboardInterrupt:
                with self._cond:
                    unanswered, self._pending = list(self._pending.values()), {}
                    self.notes.extend(
                        f"file_dataset: the multipart upload {upload_id!r} of {loc} was "
                        "being aborted when the call was interrupted: it may be left "
                        f"open, its parts stored {_UNTIL_ABORTED}"
                        for loc, upload_id in unanswered
                    )
                raise
            raise

    def _wait(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._pending)


def _interrupt(error: BaseException) -> bool:
    """Whether an error raised on the calling thread is an interrupt, not a job's failure.

    A Ctrl-C can land while the calling thread runs a job's own code (its clean-up:
    aborting a multipart upload, say). Taken for that job's failure, it let the
    earlier jobs run on, even complete uploads, and gave way to an earlier job's error
    (helper-145: raised 4.3 s later, or not at all).
    """
    return not isinstance(error, Exception | CallStopped)


class _Running:
    __slots__ = ("cut", "error", "gen", "remaining", "results")

    def __init__(self, gen: Job[Any]) -> None:
        self.gen = gen
        self.results: list[Any] = []
        self.remaining = 0
        self.error: BaseException | None = None
        self.cut = False  # a call of its batch was stopped, or not made (see RunState)

    def stop(self) -> None:
        """Ends the job after a failure of its own or an earlier job's; clean-up runs.

        It is never sent the results of a batch that was cut. A job whose last calls
        were all made is closed: a write among them may have succeeded. One whose
        calls were cut (see ``cut``) gets :class:`CallStopped` instead, which says that
        nothing of it was written (a multipart upload is aborted; see
        ``_writer._outcome_kept``).
        """
        if self.cut:
            with contextlib.suppress(CallStopped, StopIteration):
                self.gen.throw(CallStopped())
        self.gen.close()


def run_jobs(
    jobs: Sequence[Job[T]],
    options: Options,
    contexts: Sequence[Context] | None = None,
    on_result: Callable[[int, T], None] | None = None,
) -> list[T]:
    """Runs jobs concurrently on the options' pool and returns their results in order.

    A job's failure stops it and every later job in the order of ``jobs``: no new
    job is started, their calls not yet started are not made, their bodies being read
    or sent stop at their next chunk, and they are ended at their next step (their
    clean-up runs: temporary files removed, multipart uploads aborted). Earlier jobs
    run to their end, as one of them may fail too. So the failure raised, naming its
    row id and column from ``contexts``, is the first in the order of ``jobs`` (not in
    time), the one that running the jobs one at a time would raise.

    Args:
        jobs: The jobs (fresh generators).
        options: Options giving the pool and the concurrency.
        contexts: For each job, the (row id, column) to name in its errors.
        on_result: Optional; called on the calling thread with each job's index and
            result as soon as the job ends (the result is then not kept).

    Returns:
        Each job's result, in the order of ``jobs`` (``None`` for each job whose
        result went to ``on_result``).

    Raises:
        TransferError: A job failed.
    """
    outer = getattr(_CLEANUP, "now", None)
    cleanup = _Cleanup(options)  # the jobs' aborts (see _abort)
    _CLEANUP.now = cleanup
    try:
        return _run_jobs(jobs, options, contexts, on_result)
    except BaseException as e:
        # Whatever ends the call (a job's failure, an interrupt, a second one during
        # the clean-up) comes once the aborts asked for are answered, and says what
        # they could not do.
        try:
            cleanup.wait()
        except BaseException as later:  # a Ctrl-C during that wait: it ends the call
            _add_notes(later, cleanup.notes)
            raise
        _add_notes(e, cleanup.notes)
        del e
        raise
    finally:
        _CLEANUP.now = outer


def _add_notes(error: BaseException, notes: list[str]) -> None:
    for note in notes:
        error.add_note(note)


def _run_jobs(
    jobs: Sequence[Job[T]],
    options: Options,
    contexts: Sequence[Context] | None,
    on_result: Callable[[int, T], None] | None,
) -> list[T]:
    """:func:`run_jobs`, but for the wait for the jobs' aborts and their notes."""
    results: list[Any] = [None] * len(jobs)
    if not jobs:
        return results
    workers = options._transfer_workers()
    limit = 2 * options.max_concurrency
    errors: dict[int, BaseException] = {}
    running: dict[int, _Running] = {}
    # Every call's (index, slot), result and error arrive here, however many are out.
    finished: queue.SimpleQueue[Reply] = queue.SimpleQueue()
    run = RunState()  # which jobs are stopped
    outstanding = 0
    next_job = 0
    done: list[Reply] = []  # the replies taken at once

    def step(index: int, job: _Running, value: list[Any] | None = None) -> None:
        """Advances one job until it yields calls to run, or ends."""
        nonlocal outstanding
        while True:
            try:
                if job.error is not None:
                    error, job.error = job.error, None
                    try:
                        calls = job.gen.throw(error)
                    finally:
                        del error  # this frame is in the traceback: no cycle (below)
                elif job.cut or (errors and index > min(errors)):
                    job.stop()
                    running.pop(index, None)
                    return
                elif value is None:
                    calls = next(job.gen)
                else:
                    calls = job.gen.send(value)
            except StopIteration as stop:
                result = stop.value
                break
            except BaseException as e:
                if _interrupt(e):  # (in a job's clean-up, say): it ends the whole call
                    raise
                errors[index] = e
                run.stop_from(index)
                running.pop(index, None)
                return
            if calls:
                job.results = [None] * len(calls)
                job.remaining = len(calls)
                for slot, call in enumerate(calls):
                    workers.submit(call, finished, (index, slot), run)
                outstanding += len(calls)
                return
            value = []
        # The job's result, outside the ``except`` above: a failure of ``on_result``
        # would otherwise carry the StopIteration, and with it the object's buffer, as
        # its ``__context__`` for as long as the caller keeps it.
        running.pop(index, None)
        if on_result is None:
            results[index] = result
            return
        try:
            on_result(index, result)
        except BaseException as e:
            if _interrupt(e):
                raise
            errors[index] = e
            run.stop_from(index)

    try:
        while True:
            while not run.stopping and next_job < len(jobs) and outstanding < limit:
                job = _Running(jobs[next_job])
                running[next_job] = job
                step(next_job, job)
                next_job += 1
            if not outstanding:
                break
            done = [finished.get()]
            while not finished.empty():
                done.append(finished.get_nowait())
            for (index, slot), value, error in done:
                job = running[index]
                if isinstance(value, MoreCalls):  # a call of the job's batch adds some
                    if run.stops(index):
                        job.cut = True  # (its batch is not whole: it must not go on)
                    else:
                        more = value.calls
                        job.results.extend([None] * len(more))
                        job.remaining += len(more)
                        outstanding += len(more)
                        for extra, call in enumerate(more, len(job.results) - len(more)):
                            workers.submit(call, finished, (index, extra), run)
                    continue
                outstanding -= 1
                if error is None:
                    job.results[slot] = value
                elif isinstance(error, CallStopped):
                    # Not made, or stopped part-way, after a failure of this job or an
                    # earlier one (which comes as well): the call that failed stopped
                    # the jobs from its own on, on its own thread, before any other
                    # call of theirs could start there. A missing object among large
                    # ones made its error wait for up to 456 more 8 MiB GETs (2.9 s) on
                    # the benchmark's S3-like server, and a large object's first body
                    # cut at 1 MiB for the rest of the object (helper-140: 392 of 400
                    # MiB).
                    job.cut = True
                elif job.error is None:
                    job.error = error
                job.remaining -= 1
                if job.remaining == 0:
                    values, job.results = job.results, []
                    step(index, job, values)
    except BaseException:
        # Calls under way end (their jobs' clean-up needs them done): bodies being read
        # or sent stop at their next chunk; calls not started are skipped. Waiting on
        # the run's own count, not on replies: an interrupt right after a reply was
        # taken, before it was counted, made this wait for ever.
        run.abandon()
        run.wait_idle()
        for job in running.values():
            job.gen.close()
        errors.clear()  # see below
        running.clear()
        # The replies nobody will take (small objects' bytes among them) and the last
        # one taken are not kept with the interrupt's traceback.
        while not finished.empty():
            finished.get_nowait()
        done.clear()
        value = None
        raise
    finally:
        for gen in jobs:
            gen.close()

    if not errors:
        return results
    index = min(errors)
    error = errors[index]
    # The failure's traceback holds this frame and ``step``'s, whose ``errors``,
    # ``running`` and ``done`` reach the failure again: a cycle that kept every object
    # read so far (and the jobs' frames) until the garbage collector ran, which for
    # long-lived objects can be long after; 64 MiB per large object. The failure is
    # let go of by this frame too, for the same reason.
    errors.clear()
    running.clear()
    done.clear()
    value, values = None, []  # the last reply and results taken: not kept with the failure
    try:
        _raise_failure(error, index, contexts)
    finally:
        del error


def _raise_failure(
    error: BaseException, index: int, contexts: Sequence[Context] | None
) -> NoReturn:
    """Raises a job's failure, naming its row id and column from ``contexts``."""
    try:
        if contexts is not None and isinstance(error, TransferError):
            if error.row_id is not None or error.column is not None:
                raise error  # a step that named its own cell (a reader's copies)
            row_id, column = contexts[index]
            raise error.with_context(row_id, column) from (error.__cause__ or error)
        if (
            contexts is not None
            and isinstance(error, Exception)
            and not isinstance(error, SETUP_FAILURES)
        ):
            # MemoryError (an object larger than the memory left), RuntimeError (no
            # thread could be started): the type is kept, and the object is named.
            row_id, column = contexts[index]
            where = [f"row id {quoted(row_id)}"] if row_id is not None else []
            where += [f"column {quoted(column)}"] if column is not None else []
            if where:
                error.add_note(f"file_dataset: raised by the transfer of {', '.join(where)}")
        raise error
    finally:
        del error
