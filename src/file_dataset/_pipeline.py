"""Pipeline: download a row's files, run a function on local files, upload its outputs."""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.thread
import contextlib
import errno
import functools
import gc
import inspect
import itertools
import logging
import os
import shutil
import sys
import sysconfig
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar, get_args, is_typeddict, overload

import numpy as np
import pandas as pd
import pyarrow as pa
from botocore.exceptions import InvalidConfigError, NoCredentialsError

from file_dataset._backend import SETUP_FAILURES, remember
from file_dataset._errors import (
    InvalidInputError,
    InvalidTypeError,
    NotAFolderError,
    ObjectAccessDeniedError,
    ObjectNotFoundError,
    TransferError,
    found,
    listed,
    mask_secrets,
    masked_cut,
    printable,
    quoted,
    quoted_masked,
)
from file_dataset._frame import (
    ID_COLUMN,
    FileTable,
    check_frame,
    frame_rows,
    is_numpy_batch,
    numpy_batch_frame,
    parse_cells,
    series_row,
    take,
)
from file_dataset._local import make_temp_folder, remove_tree
from file_dataset._options import Options, resolve_options
from file_dataset._reader import FileReader
from file_dataset._travel import arrived, travelling
from file_dataset._urls import (
    URL_SCHEME,
    check_component,
    check_key_room,
    check_local_name,
    is_null,
    parse_url,
)
from file_dataset._writer import OTHERS_NOTE, write_files

__all__ = ["Pipeline", "RowFailure"]

logger = logging.getLogger("file_dataset")

UserFunction = Callable[[Path, Path], Mapping[str, Any]]

# (options, bucket) of the destinations found to exist in this process.
_BUCKETS_FOUND: dict[tuple[Options, str], bool] = {}
# Options whose S3 endpoint a Pipeline of this process has reached (it answered a
# request): an endpoint that then gives no answer is an outage part-way through, and
# its rows are dropped; one never reached ends the call (a wrong endpoint, no network).
# Keyed with the endpoint the options resolve to (AWS_ENDPOINT_URL changed: new options
# go elsewhere).
_REACHED: dict[tuple[Options, str], bool] = {}


def _reached(options: Options) -> tuple[Options, str]:
    """The key of ``options`` in :data:`_REACHED`: with the endpoint they resolve to.

    The endpoint, not the environment it was resolved in: options whose runtime was
    retired get a new one in a new environment (another ``AWS_*`` variable, refreshed
    credentials) and still reach the same endpoint.
    """
    try:
        endpoint = options._endpoint()  # once per runtime: no client per pool thread
    except Exception:  # a client that cannot be made: its requests say why
        endpoint = ""
    return options, endpoint


# The most rows whose outputs are still uploading while fn runs on a later row: more
# than one absorbs an upload slower than usual without stalling fn. On the benchmark
# (fn as long as a row's I/O, 2 cores shared with the server) 4 gave a median wall of
# 1.26x max(I/O, compute) over seven runs, 2 gave 1.31x over six.
_UPLOADS_IN_FLIGHT = 4


@dataclass(frozen=True)
class RowFailure:
    """A row that a :class:`Pipeline` dropped.

    Attributes:
        id: The row's id, as a string (``"20"`` for the id ``20``).
        stage: Where it failed: ``"read"``, ``"fn"`` or ``"write"``.
        error: The exception.
    """

    id: str
    stage: str
    error: BaseException


class _RowError(Exception):
    def __init__(
        self, row_id: str, stage: str, error: BaseException, *, raised_by_fn: bool = False
    ) -> None:
        super().__init__(row_id, stage, error)
        self.failure = RowFailure(row_id, stage, error)
        self.raised_by_fn = raised_by_fn  # fn's own exception, not a check of its result


@dataclass
class _Call:
    """The state of one call of a :class:`Pipeline`, which no other call sees."""

    failures: list[RowFailure] = field(default_factory=list)
    bar: Any = None  # its tqdm progress bar, when one was asked for
    # Rows downloaded (by position) whose folders fn has not taken yet; once the call is
    # abandoned (it raised), a download that ends removes its folders itself.
    lock: threading.Lock = field(default_factory=threading.Lock)
    unclaimed: dict[int, tuple[Path, Path]] = field(default_factory=dict)
    abandoned: bool = False
    written: int = 0  # rows whose outputs were all written

    def count_written(self, upload: concurrent.futures.Future[Any]) -> None:
        """Counts a row on the progress bar once its upload has succeeded.

        Called on the upload's thread; a bar closed by then (the call ended) ignores it.
        """
        if not upload.cancelled() and upload.exception() is None:
            with self.lock:
                self.bar.update(1)

    def downloaded(self, index: int, folders: tuple[Path, Path]) -> None:
        """Keeps a row's folders until fn takes them, or removes them if too late."""
        with self.lock:
            if not self.abandoned:
                self.unclaimed[index] = folders
                return
        _remove(folders)

    def claim(self, index: int) -> None:
        with self.lock:
            self.unclaimed.pop(index, None)

    def abandon(self) -> list[tuple[Path, Path]]:
        """Marks the call abandoned; returns the folders downloaded but never used."""
        with self.lock:
            self.abandoned = True
            folders = list(self.unclaimed.values())
            self.unclaimed.clear()
        return folders


class Pipeline:
    """Runs a function on local files for every row of a file DataFrame.

    For each row, in order: the row's files are downloaded into a fresh input
    directory (``<input_dir>/<file name>``; null cells are absent), ``fn(input_dir,
    output_dir)`` is called with a fresh, empty output directory, and the files it
    returns are written with :func:`write_files` to ``<into_path>/<id>/<name>``. Both
    directories are removed after the row: the input directory as soon as ``fn``
    returns, or after the upload when ``fn`` passes an input file through as an output
    (by its path or by a link to it). The next row's download and the previous rows'
    uploads run while ``fn`` works: one row is downloaded ahead, and the outputs of at
    most four earlier rows are still uploading, so disk use stays bounded (a row's
    upload starts as soon as its ``fn`` returns). An output outside the row's two
    directories (a tool's fixed scratch file, say, which the next call may rewrite) is
    uploaded before ``fn`` is called again. ``fn`` is always called in row order, on
    the calling thread.

    A row that fails anywhere (download, ``fn``, ``fn`` returning ``None`` or a value
    that is not a local file, upload) is dropped from the output and logged at WARNING
    with its id and reason, unless ``on_error="raise"``; each call ends with one line
    saying how many rows were written and dropped. An endpoint that gives no answer
    at all, and that no Pipeline of this process has reached yet, ends the call with
    its :class:`TransferError` (``unreachable``), whatever ``on_error``, rather than
    drop every row in turn; so do credentials that fail whatever the object (none
    found, none loaded, or refused as expired or unknown: ``credentials_failed``). The
    failures of the calling thread's last call are kept in :attr:`last_failures`. The
    output DataFrame has a fresh ``0..n-1`` index: join it to the input on ``id``, not
    on the index.

    One Pipeline may be called from several threads at once (each call on its own
    rows): every call keeps its failures and its progress bar to itself, and
    :attr:`last_failures` is per thread.

    Pipelines pickle (by their arguments), so they can be passed to Ray Data's
    ``map_batches(..., batch_format="pandas")``.

    Args:
        fn: ``fn(input_dir, output_dir) -> {output file name: local path}``, called
            with two positional arguments; ``{}`` when a row has no outputs (``None``
            fails the row, as a forgotten ``return`` would otherwise pass unnoticed).
            A relative path is taken in ``output_dir``.
        write_options: ``{"into_path": "s3://bucket/prefix"}`` (or a local folder);
            may also hold ``"options"``, the :class:`Options` used for writing.
        options: S3 settings for reading (and writing, unless ``write_options`` has
            its own); when omitted, ``write_options["options"]`` if given, else
            ``Options()`` with the S3 endpoint configured in this process
            (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or the profile's), if any,
            so that the Pipeline's copies on Ray workers reach the same server.
        on_error: ``"drop"`` (default) to drop failed rows, ``"raise"`` to re-raise.
        progress: Whether to show a tqdm progress bar over each call's rows (a row
            counts when its upload is done or it is dropped). It is drawn only on a
            terminal or in a notebook: not when ``sys.stderr`` is a file or a pipe
            (cron, a Ray worker's log) or ``None`` (pythonw, some daemons).

    Raises:
        TypeError: ``fn`` is not callable or cannot be called as ``fn(input_dir,
            output_dir)``, ``write_options`` is not a mapping, or ``options`` (or
            ``write_options["options"]``) is not an :class:`Options`, or ``progress``
            is not a bool (``None``, ``0`` and ``1`` are taken for one).
        ValueError: ``write_options`` has no valid ``into_path`` or has unknown keys,
            or ``on_error`` is neither ``"drop"`` nor ``"raise"``.

    Examples:
        >>> into = {"into_path": "s3://my-bucket/resampled/"}
        >>> pipeline = Pipeline(resample, write_options=into)  # doctest: +SKIP
        >>> outputs = pipeline(files_dataframe)  # doctest: +SKIP
    """

    def __init__(
        self,
        fn: UserFunction,
        write_options: Mapping[str, Any],
        options: Options | None = None,
        *,
        on_error: Literal["drop", "raise"] = "drop",
        progress: bool = False,
    ) -> None:
        self.fn, self.write_options, self.options, self.on_error, self.progress = _checked(
            fn, write_options, options, on_error, progress
        )
        # .failures: the list that this thread's last call filled in
        self._per_thread = threading.local()

    @property
    def last_failures(self) -> list[RowFailure]:
        """The rows that the calling thread's last call dropped, in the order they failed.

        Each thread sees only its own calls: ``[]`` in a thread that has made none (and
        in a copy that was just unpickled).
        """
        failures: list[RowFailure] = getattr(self._per_thread, "failures", [])
        return failures

    def __getstate__(self) -> dict[str, Any]:
        _let_typeddicts_travel(self.fn)  # pickling is where it matters (Ray's cloudpickle)
        state = dict(self.__dict__)
        state.pop("_per_thread", None)  # a thread-local: not picklable, not meant to travel
        state["fn"] = travelling(self.fn)  # by value if workers could not import its module
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Older pickles lack "progress" and carry "last_failures" and "_bar".
        state = {k: v for k, v in state.items() if k not in ("last_failures", "_bar")}
        self.__dict__.update({"progress": False, **state})
        self.fn = arrived(self.fn)
        self._per_thread = threading.local()

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return (
            f"Pipeline(fn={name}, into_path={str(self.write_options['into_path'])!r}, "
            f"on_error={self.on_error!r})"
        )

    def _write_options(self) -> Options:
        """The options the outputs are written with."""
        options: Options = self.write_options.get("options", self.options)
        return options

    def _check_destination(self) -> None:
        """Refuses a missing ``into_path`` bucket, or a local one that is a file, at once.

        Otherwise every row would be downloaded and run through ``fn``, only to be
        dropped at its upload. Asked once per process, bucket and options (one HEAD of
        the bucket). An endpoint that gives no answer (no connection, none in time)
        is refused too, unless a Pipeline of this process has reached it; another
        answer than "no such bucket" (403 without ``s3:ListBucket``, a 5xx) lets the
        rows run, and their uploads say what is wrong.
        """
        into_path = self.write_options["into_path"]
        loc = parse_url(into_path, prefix=True)
        if loc.scheme != "s3":
            _check_local_destination(loc.path)
            return
        options = self._write_options()
        if (options, loc.bucket) in _BUCKETS_FOUND:
            return
        from botocore.exceptions import ClientError

        try:
            options.s3_client().head_bucket(Bucket=loc.bucket)
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = e.response.get("Error", {}).get("Code")
            if status == 404 or code == "NoSuchBucket":
                raise found(  # status: as write_files' error for the same bucket
                    ObjectNotFoundError(
                        mask_secrets(str(into_path)), "the bucket does not exist", operation="write"
                    ),
                    status=404,
                ) from None
            remember(_REACHED, _reached(options), True)  # it answered
            return
        except Exception as e:
            from file_dataset._s3 import translate_error

            try:
                translate_error(e, str(loc), "write")
            except TransferError as failure:
                if failure.unreachable and _reached(options) not in _REACHED:
                    failure.add_note(_UNREACHABLE_NOTE)  # a wrong endpoint, no network
                    raise
            return  # the rows' transfers will report it
        remember(_BUCKETS_FOUND, (options, loc.bucket), True)
        remember(_REACHED, _reached(options), True)

    # --- stages -------------------------------------------------------------------

    def _download(self, columns: list[str], values: list[Any], row_id: str) -> tuple[Path, Path]:
        """Downloads a row into a new input folder; also makes its empty output folder.

        Both folders are made here, on a pool thread, so that the calling thread goes
        from one ``fn`` call to the next without touching the file system. Their names
        do not hold the row id: anyone may list the shared temporary folder, and ids
        are often patient or customer ids.
        """
        input_dir: Path | None = None
        try:
            input_dir = _row_folder("in", row_id)
            cells = parse_cells(columns, values, row_id)
            FileReader(FileTable(None, columns, [cells]), self.options).download_to(input_dir)
            if any(cell is not None and cell.is_s3 for cell in cells):
                remember(_REACHED, _reached(self.options), True)
            output_dir = _row_folder("out", row_id)
        except BaseException as e:
            if input_dir is not None:
                shutil.rmtree(input_dir, ignore_errors=True)
            error = e
            if isinstance(e, TransferError) and e.row_id is None:
                error = e.with_context(row_id, e.column)  # the single-row read knows no id
                error.__cause__ = e.__cause__ or e
            try:
                raise _RowError(row_id, "read", error) from error
            finally:
                del error  # (its traceback's frames lead back to this one: a cycle)
        return input_dir, output_dir

    def _download_for(
        self, call: _Call, index: int, columns: list[str], values: list[Any], row_id: str
    ) -> tuple[Path, Path]:
        """:meth:`_download`, with the folders handed to ``call`` until fn takes them."""
        folders = self._download(columns, values, row_id)
        call.downloaded(index, folders)
        return folders

    def _run_fn(self, row_id: str, input_dir: Path, output_dir: Path) -> dict[str, Path]:
        try:
            returned = self.fn(input_dir, output_dir)
        except Exception as e:
            raise _RowError(row_id, "fn", e, raised_by_fn=True) from e
        try:
            if returned is None:
                raise TypeError(
                    "fn returned None; it must return a mapping of output file name to "
                    "local path ({} when the row has no outputs)"
                )
            if inspect.isawaitable(returned):  # an async fn behind a wrapper
                if inspect.iscoroutine(returned):
                    returned.close()  # no "never awaited" warning on top of this error
                raise TypeError(
                    f"fn returned {_a(type(returned).__name__)}, not a mapping of file name "
                    "to path: fn is async (or wraps an async function); give the Pipeline "
                    "a plain function, for example lambda i, o: asyncio.run(fn(i, o))"
                )
            if not isinstance(returned, Mapping):
                raise TypeError(
                    f"fn must return a mapping of file name to path, got {type(returned).__name__}"
                )
            outputs: dict[str, Path] = {}
            for name, path in returned.items():
                if not isinstance(name, str):
                    raise InvalidInputError(f"fn returned a non-string file name {quoted(name)}")
                check_component(name, "output file name")
                if name == ID_COLUMN:  # it would collide with the output's id column
                    raise InvalidInputError(
                        f"fn returned an output named {ID_COLUMN!r}, which is reserved for "
                        "the row id column of the Pipeline's output; rename that file"
                    )
                if is_null(path):
                    continue
                local = output_dir / _local_output(name, path)  # relative: in output_dir
                if not local.is_file():
                    # Each with its own OSError, so that a handler for missing files
                    # does not count a folder returned by fn as one.
                    kind, what = (
                        (IsADirectoryError, "a directory, not a file")
                        if local.is_dir()
                        else (OSError, "a device, pipe or socket, not a regular file")
                        if local.exists()
                        else (FileNotFoundError, "not an existing file")
                    )
                    raise kind(
                        f"fn returned {quoted(name)} -> {quoted_masked(str(local))}, "
                        f"which is {what}"
                    )
                outputs[name] = local
        except BaseException as e:
            if not isinstance(e, Exception):
                raise
            raise _RowError(row_id, "fn", e) from e
        return outputs

    def _upload(self, row_id: str, outputs: dict[str, Path], folders: list[Path]) -> dict[str, str]:
        """Writes a row's outputs, then removes ``folders`` (the row's temporary ones)."""
        try:
            options = self._write_options()
            written = write_files(outputs, self.write_options["into_path"], row_id, options)
            if outputs and parse_url(self.write_options["into_path"], prefix=True).is_s3:
                remember(_REACHED, _reached(options), True)
            return {name: str(dest) for name, dest in written.items()}
        except Exception as e:
            raise _RowError(row_id, "write", e) from e
        finally:
            _remove(folders)

    # --- driver -------------------------------------------------------------------

    @overload
    def __call__(
        self, file_dataframe: pd.DataFrame | pa.Table | pa.RecordBatch
    ) -> pd.DataFrame: ...

    @overload
    def __call__(self, file_dataframe: pd.Series) -> dict[str, Any] | None: ...

    @overload
    def __call__(
        self, file_dataframe: Mapping[str, np.ndarray]
    ) -> pd.DataFrame: ...  # Ray's batch_format="numpy"

    @overload
    def __call__(self, file_dataframe: Mapping[str, Any]) -> dict[str, Any] | None: ...

    def __call__(
        self,
        file_dataframe: pd.DataFrame | pa.Table | pa.RecordBatch | Mapping[str, Any] | pd.Series,
    ) -> pd.DataFrame | dict[str, Any] | None:
        """Processes every row and returns the written outputs.

        Args:
            file_dataframe: A file DataFrame: a unique, non-null ``id`` column plus one
                column per input file name. Every column except ``id`` is a file column.
                Ray Data's other batch formats (a ``pyarrow.Table``, or a dict of NumPy
                columns) and a ``pyarrow.RecordBatch`` are taken as DataFrames; a single
                row (a mapping or a ``pd.Series`` with an ``id``) works too.

        Returns:
            For a DataFrame (or a batch), a DataFrame with ``id`` (the input's id values, in the
            input's dtype, so it joins back to the input) and one column per output
            file name (``s3://`` URLs or local paths, as strings; null where a row had
            no such output), one row per successful input row, in input order, with a
            fresh ``0..n-1`` index (join on ``id``, not on the index). It is a file
            DataFrame, so it can feed another Pipeline. ``id`` comes last when it is
            the input's last column (as in the design notes' example), else first.
            For a single row, that row as a dict (``{"id": <the row's id>,
            <output name>: <URL or path>}``), or ``None`` when the row failed and was
            dropped.

        Raises:
            ValueError: The DataFrame is not a valid file DataFrame, or an id is too
                long for ``into_path`` (over 255 bytes for a local folder; for S3, one
                that leaves no room for a file name in a 1,024-byte key); checked before
                any row is processed.
            FileNotFoundError: ``into_path`` is in a bucket that does not exist
                (:class:`ObjectNotFoundError`, checked before any row).
            NotADirectoryError: A local ``into_path`` is a file, a link to nothing, or
                under a file (a :class:`TransferError` too; checked before any row).
            PermissionError: A local ``into_path`` is in a folder this process cannot
                write in (checked before any row).
            Exception: The first row's failure, when ``on_error="raise"``.
        """
        if isinstance(file_dataframe, pd.DataFrame):
            return self._process(file_dataframe)
        # Ray Data's other batch formats (map_batches without batch_format="pandas"):
        # a pyarrow Table, or a dict of equal-length NumPy columns ("default"/"numpy").
        if isinstance(file_dataframe, pa.Table | pa.RecordBatch):
            return self._process(file_dataframe.to_pandas())
        if isinstance(file_dataframe, Mapping) and is_numpy_batch(file_dataframe):
            return self._process(numpy_batch_frame(file_dataframe))
        if isinstance(file_dataframe, Mapping | pd.Series):
            # checked as a one-row file DataFrame
            row = (
                series_row(file_dataframe)
                if isinstance(file_dataframe, pd.Series)
                else dict(file_dataframe)
            )
            if ID_COLUMN not in row:
                raise InvalidInputError(
                    f"a row given to a Pipeline needs an {ID_COLUMN!r}: its outputs are "
                    f"written under <into_path>/<id>/ (the row has "
                    f"{listed(sorted(map(str, row)))})"
                )
            result = self._process(pd.DataFrame([row], columns=list(row), dtype=object))
            if result.empty:
                return None
            written = result.iloc[0].drop(ID_COLUMN)
            outputs = {str(name): url for name, url in written.items() if not is_null(url)}
            if _id_last(list(row)):
                return outputs | {ID_COLUMN: row[ID_COLUMN]}
            return {ID_COLUMN: row[ID_COLUMN]} | outputs
        raise InvalidTypeError(
            f"expected a file DataFrame or a row, got {type(file_dataframe).__name__}"
        )

    def _process(self, file_dataframe: pd.DataFrame) -> pd.DataFrame:
        self.fn, self.write_options, self.options, self.on_error, self.progress = _checked(
            self.fn, self.write_options, self.options, self.on_error, self.progress
        )
        ids = check_frame(file_dataframe)
        columns = [str(c) for c in file_dataframe.columns if c != ID_COLUMN]
        if ids:
            try:
                self._check_destination()
            except (KeyboardInterrupt, SystemExit) as interrupt:
                # (a batch system's SIGTERM while the first client is made: helper-125)
                _log_interrupt(_Call(), interrupt, len(ids), collections.deque())
                raise
            # Names that cannot be local files or folders would fail every row (inputs
            # are files of input_dir) or every write; refused before any row, as
            # reader().into_temp_dir() and write_files do.
            for column in columns:
                check_local_name(column, "column (file name)")
            into = parse_url(self.write_options["into_path"], prefix=True)
            if not into.is_s3:
                for row_id in ids:
                    check_local_name(row_id, "id (folder name)")
            else:
                check_key_room(into, ids)
        values = frame_rows(file_dataframe, columns)
        call = _Call()
        self._per_thread.failures = call.failures  # filled in as rows fail, also on a raise
        written: dict[int, dict[str, str]] = {}  # by row position: name -> URL or path
        if self.progress:
            from tqdm.auto import tqdm

            call.bar = tqdm(
                total=len(ids),
                unit="row",
                desc="file_dataset.Pipeline",
                # drawn only where it is redrawn in place; tqdm would fail writing to None
                disable=not _redrawn_in_place(sys.stderr),
            )
        # Threads: this row's and the next row's downloads (each also makes the row's
        # output folder), up to _UPLOADS_IN_FLIGHT + 1 uploads (the newest is submitted
        # before the oldest is collected), and the removal of folders.
        stages = _Stages(
            max_workers=_UPLOADS_IN_FLIGHT + 4, thread_name_prefix="file_dataset-pipeline"
        )
        # Each row's (input folder, output folder), one row ahead of fn.
        downloads: dict[int, concurrent.futures.Future[tuple[Path, Path]]] = {}
        # Uploads in flight, oldest first: at most _UPLOADS_IN_FLIGHT rows' outputs.
        uploads: collections.deque[tuple[int, concurrent.futures.Future[dict[str, str]]]]
        uploads = collections.deque()
        # A row's folders from the moment fn takes them until an upload or a removal
        # has them: an interrupt in between (Ctrl-C right after fn returns) must not
        # leave them behind.
        in_hand: tuple[Path, Path] | None = None
        try:
            for index, row_id in enumerate(ids):
                for ahead in (index, index + 1):
                    if ahead < len(ids) and ahead not in downloads:
                        downloads[ahead] = stages.submit(
                            self._download_for, call, ahead, columns, values[ahead], ids[ahead]
                        )
                # A failure is handled after its except block: with on_error="raise",
                # the error is raised as it was, not "during handling of" a _RowError.
                failed: _RowError | None = None
                try:
                    input_dir, output_dir = downloads.pop(index).result()
                except _RowError as e:
                    failed = e
                if failed is not None:
                    self._fail(call, failed)
                    continue
                try:
                    in_hand = (input_dir, output_dir)
                    call.claim(index)  # from here on, removing them is this loop's job
                    outputs = self._run_fn(row_id, input_dir, output_dir)
                except _RowError as e:  # (an interrupt's folders are removed below)
                    # off the calling thread: the next fn call need not wait
                    stages.submit(_remove, (input_dir, output_dir))
                    in_hand = None
                    failed = e
                if failed is not None:
                    self._fail(call, failed)
                    continue
                # An output may be an input passed through (or a link to one): then
                # the input folder must outlive the upload; otherwise it goes now.
                uses_input, only_own = _where(outputs.values(), input_dir, output_dir)
                folders = [output_dir]
                if uses_input:
                    folders.append(input_dir)
                else:
                    stages.submit(_remove, (input_dir,))
                # This row's upload starts at once; the oldest is collected only when
                # more than _UPLOADS_IN_FLIGHT are under way, so one slow upload
                # does not hold up the next fn call (outputs on disk stay bounded).
                upload = stages.submit(self._upload, row_id, outputs, folders)
                if call.bar is not None:
                    # counted as soon as it is written, not when collected (up to
                    # _UPLOADS_IN_FLIGHT rows later, after that many fn calls)
                    upload.add_done_callback(call.count_written)
                uploads.append((index, upload))
                in_hand = None
                if not only_own:
                    # A file outside the row's own folders (a fixed scratch file, say)
                    # may be rewritten by the next fn call: it is sent before that call.
                    while uploads:
                        self._collect_oldest(call, uploads, written)
                elif len(uploads) > _UPLOADS_IN_FLIGHT:
                    self._collect_oldest(call, uploads, written)
            while uploads:
                self._collect_oldest(call, uploads, written)
        except BaseException as e:
            # Queued downloads are cancelled; those under way remove their folders when
            # they end, and those done but not used yet are removed here. An Exception
            # (on_error="raise") waits for the pool, so the call leaves nothing behind
            # when it returns. An interrupt (KeyboardInterrupt, SystemExit) ends the call
            # at once: the pool's threads finish the cleanup (and the uploads already
            # sent) on their own.
            if in_hand is not None:
                # this row's folders are gone by the time the call ends (an upload
                # that already has them fails, as the call does)
                _remove(in_hand)
            for future in downloads.values():
                future.cancel()
            for unused in call.abandon():
                stages.submit(_remove, unused)
            stages.shutdown(wait=isinstance(e, Exception))
            if isinstance(e, Exception):
                _log_stop(call, e, len(ids), uploads)
            else:
                _log_interrupt(call, e, len(ids), uploads)
            raise
        else:
            stages.shutdown(wait=True)  # the last rows' folder removals
        finally:
            # this call's, also after a call of this Pipeline made by fn on this thread
            self._per_thread.failures = call.failures
            if call.bar is not None:
                with call.lock:  # not while an upload's thread updates it
                    call.bar.close()
        # Asked for progress and drawn no bar (no terminal): the summary line is shown
        # even where logging would not show a clean call's line (no logging set up).
        _log_summary(call, len(ids), echo=call.bar is not None and bool(call.bar.disable))
        return _output_frame(
            file_dataframe[ID_COLUMN], written, _id_last(list(file_dataframe.columns))
        )

    def _collect_oldest(
        self,
        call: _Call,
        uploads: collections.deque[tuple[int, concurrent.futures.Future[dict[str, str]]]],
        written: dict[int, dict[str, str]],
    ) -> None:
        """Collects the oldest upload, which stays in ``uploads`` while it is awaited.

        An interrupt during the wait then still finds it there, under way or written,
        when the call says how far it got; once it has ended it leaves the list before
        it is counted, so it is never counted twice.
        """
        index, upload = uploads[0]
        upload.exception()  # waits for it to end, raising nothing of its own
        uploads.popleft()
        self._collect(call, index, upload, written)

    def _collect(
        self,
        call: _Call,
        index: int,
        upload: concurrent.futures.Future[dict[str, str]],
        written: dict[int, dict[str, str]],
    ) -> None:
        failed: _RowError | None = None
        try:
            written[index] = upload.result()
        except _RowError as e:
            failed = e  # handled below, outside the except block (see _process)
        if failed is not None:
            self._fail(call, failed)
            return
        call.written += 1

    def _fail(self, call: _Call, row_error: _RowError) -> None:
        failure = row_error.failure
        call.failures.append(failure)
        # Failures that every later row would meet too end the call, whatever on_error:
        # an endpoint this process never reached (a wrong endpoint, a network down:
        # each row would fail after its retries), or credentials that failed (none at
        # all, expired, unknown to S3, a credential_process that fails). Only the
        # Pipeline's own transfers count: fn's exceptions drop their row.
        options = self.options if failure.stage == "read" else self._write_options()
        transfer = failure.stage != "fn"
        ends_call = True
        if (
            transfer
            and getattr(failure.error, "unreachable", False)
            and _reached(options) not in _REACHED
        ):
            failure.error.add_note(_UNREACHABLE_NOTE)
            if failure.stage == "read" and self.write_options.get("options") not in (
                None,
                self.options,
            ):
                failure.error.add_note(_READS_NOTE)
        elif transfer and getattr(failure.error, "credentials_failed", False):
            missing = isinstance(failure.error.__cause__, NoCredentialsError)
            failure.error.add_note(_NO_CREDENTIALS_NOTE if missing else _CREDENTIALS_NOTE)
        elif transfer and isinstance(failure.error, SETUP_FAILURES):
            pass  # the options cannot be used here at all: every row would fail so
        elif transfer and isinstance(failure.error.__cause__, InvalidConfigError):
            failure.error.add_note(_SETTING_NOTE)  # a client cannot be made of them
        elif _NO_TEMP_FOLDER_NOTE in getattr(failure.error, "__notes__", ()):
            pass  # TMPDIR is gone: no row can be downloaded
        else:
            ends_call = False
        if call.bar is not None and self.on_error == "drop" and not ends_call:
            with call.lock:  # uploads' threads update the bar too
                call.bar.set_postfix(dropped=len(call.failures), refresh=False)
                call.bar.update(1)  # else the call ends here
        if self.on_error == "raise" or ends_call:
            if failure.stage == "fn":  # neither fn nor a check of its result names the row
                _renote(
                    failure.error,
                    "file_dataset.Pipeline: fn failed on row id ",
                    quoted(failure.id),
                )
            raise failure.error
        # A bar on the terminal is cleared while the warning is written and then drawn
        # again below it, so the two do not run together on one line.
        with (
            contextlib.nullcontext()
            if call.bar is None
            else type(call.bar).external_write_mode(file=sys.stderr)
        ):
            logger.warning(
                "file_dataset.Pipeline dropped row id %s (%s failed): %s",
                quoted(failure.id),
                failure.stage,
                # One line per row (the whole error is on last_failures), without
                # credentials even when fn's own exception quotes them.
                printable(masked_cut(_describe(row_error), 2000)),
            )
        _forget_locals(failure.error)


def _forget_locals(error: BaseException) -> None:
    """Clears the local variables of the frames in a dropped row's tracebacks.

    Each traceback kept every frame alive, with its locals: a thousand rows whose
    ``fn`` decoded a 20 MiB image and then raised held 20 GB until the thread's next
    call (helper-123). Files, lines and function names stay for the traceback's text.
    The frame of a suspended generator or coroutine is left alone: before Python 3.13,
    clearing it closes it (helper-127: a worker generator that handed ``fn`` the error
    it caught was closed, and every later row failed); a finished one's is cleared (an
    ``async def`` run by ``asyncio.run``, helper-129). Causes, contexts and the
    exceptions of an exception group are cleared too.
    """
    frames: list[types.FrameType] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen or len(seen) >= 64:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        pending += [current.__cause__, current.__context__]
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions
    resumable = _suspended([f for f in frames if f.f_code.co_flags & _SUSPENDABLE])
    for frame in frames:
        if id(frame) not in resumable:
            with contextlib.suppress(RuntimeError):  # a frame still running
                frame.clear()


def _suspended(frames: list[types.FrameType]) -> set[int]:
    """The ids of those ``frames`` whose generator or coroutine may still resume.

    A finished generator has let go of its frame; a suspended one holds it. One search
    through every object, only when there are such frames (helper-131: a search per
    frame took 0.3-3 s per dropped row with millions of objects). Objects frozen by
    ``gc.freeze()`` (Ray Serve freezes them at start) are not searched: then every
    such frame is taken for a suspended one.
    """
    ids = {id(frame) for frame in frames}
    if not ids or gc.get_freeze_count():
        return ids
    found: set[int] = set()
    for owner in gc.get_referrers(*frames):
        # (only these: another referrer's __getattr__ may raise anything; helper-132)
        if isinstance(owner, types.GeneratorType):
            frame = owner.gi_frame
        elif isinstance(owner, types.CoroutineType):
            frame = owner.cr_frame
        elif isinstance(owner, types.AsyncGeneratorType):
            frame = owner.ag_frame
        else:
            continue
        if id(frame) in ids:
            found.add(id(frame))
    return found


_SUSPENDABLE = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)


def _redrawn_in_place(stream: Any) -> bool:
    """Whether a progress bar on ``stream`` is redrawn in place.

    That is a terminal, or a notebook (whose stderr is no terminal but shows carriage
    returns as one does). In a file or a pipe (cron, a batch system, a Ray worker's
    log) each redraw would be appended to one endless line, every warning behind it.
    """
    if stream is None:
        return False
    with contextlib.suppress(Exception):
        if stream.isatty():
            return True
    return "ipykernel" in sys.modules


def _rows_written(
    call: _Call,
    uploads: collections.deque[tuple[int, concurrent.futures.Future[dict[str, str]]]],
) -> tuple[int, int]:
    """The rows a call has written, and those whose uploads are still under way.

    Written: those collected, and the uploads not yet collected that ended well.
    """
    ended = [upload for _, upload in uploads if upload.done()]
    written = sum(1 for upload in ended if not upload.cancelled() and upload.exception() is None)
    return call.written + written, len(uploads) - len(ended)


def _log_stop(
    call: _Call,
    error: Exception,
    rows: int,
    uploads: collections.deque[tuple[int, concurrent.futures.Future[dict[str, str]]]],
) -> None:
    """Says, in a note on ``error`` and a WARNING line, how much a raising call wrote.

    The uploads still in flight when it raised have ended (the pool was waited for):
    those that succeeded count as written, as their outputs are.
    """
    done, _ = _rows_written(call, uploads)
    others = sum(1 for failure in call.failures if failure.error is not error)
    dropped = f" and dropping {others}" if others else ""
    text = f"{_STOPPED} {done} of {rows} rows{dropped}: the rows written stay written"
    # only where write_files said so: not for a row of one output, nor for credentials
    # or a destination that failed before anything could be written
    if any(_written_in_part(failure.error) for failure in call.failures):
        text += " (a row that failed at its upload may have some of its outputs written)"
    _renote(error, _STOPPED, text.removeprefix(_STOPPED))
    logger.warning("%s (%s: %s)", text, type(error).__name__, _first_line(error))


_T = TypeVar("_T")


class _Stages(concurrent.futures.ThreadPoolExecutor):
    """A call's pool of stages, which runs a stage on the calling thread once it cannot.

    When the interpreter exits, Python ends every such pool before it waits for the
    threads a program left running: a Pipeline in one of those refused its next
    download, upload or folder removal ("cannot schedule new futures after shutdown"),
    wrote nothing more, logged no stop line and left its row folders behind.
    """

    def submit(
        self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[_T]:
        try:
            return super().submit(fn, *args, **kwargs)
        except RuntimeError:
            # Only after the exit hook: "can't start new thread" is raised once the
            # stage is queued, and a thread of the pool may still run it.
            if not concurrent.futures.thread._shutdown:
                raise
            done: concurrent.futures.Future[_T] = concurrent.futures.Future()
            try:
                done.set_result(fn(*args, **kwargs))
            except Exception as e:
                done.set_exception(e)
            return done


def _written_in_part(error: BaseException) -> list[str]:
    """What write_files' notes on ``error`` say may be written of its row, if anything."""
    return [
        note.removeprefix(OTHERS_NOTE)
        for note in getattr(error, "__notes__", ())
        if isinstance(note, str) and note.startswith(OTHERS_NOTE)
    ]


_STOPPED = "file_dataset.Pipeline stopped after writing"


def _log_interrupt(
    call: _Call,
    interrupt: BaseException,
    rows: int,
    uploads: collections.deque[tuple[int, concurrent.futures.Future[dict[str, str]]]],
) -> None:
    """Says, at WARNING, how far a call ended by an interrupt got.

    Its uploads under way are not waited for (they complete on their own), so they are
    counted apart: a batch system's log otherwise shows nothing of a job it stopped.
    """
    written, under_way = _rows_written(call, uploads)
    rest = (
        f", and {under_way} more row(s) being uploaded complete on their own" if under_way else ""
    )
    logger.warning(
        "file_dataset.Pipeline interrupted by %s after writing %d of %d rows: the rows "
        "written stay written%s",
        type(interrupt).__name__,
        written,
        rows,
        rest,
    )


def _renote(error: BaseException, prefix: str, rest: str) -> None:
    """Adds the note ``prefix + rest``, replacing one of an earlier call with ``prefix``.

    An fn that raises one exception object (a module-level one) in every call would
    otherwise collect a note per call.
    """
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [n for n in notes if not (isinstance(n, str) and n.startswith(prefix))]
    error.add_note(prefix + rest)


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, masked and cut, for a log line."""
    lines = str(error).splitlines()
    return printable(masked_cut(lines[0] if lines else "", 500))


def _log_summary(call: _Call, rows: int, *, echo: bool = False) -> None:
    """One line per call: how many rows were written and dropped, and where they failed.

    With ``echo``, a clean call's line (at INFO) is also written to ``sys.stderr`` where
    no level was set (so that only WARNING and above would be shown); never where one
    was, even to silence this logger.
    """
    if not call.failures:
        logger.info("file_dataset.Pipeline wrote %d of %d rows", call.written, rows)
        untouched = (
            logger.level == logging.NOTSET
            and logging.getLogger().level == logging.WARNING  # the root's default
            and logger.manager.disable < logging.INFO
        )
        if echo and untouched and sys.stderr is not None:
            print(f"file_dataset.Pipeline wrote {call.written} of {rows} rows", file=sys.stderr)
        return
    counts = collections.Counter(failure.stage for failure in call.failures)
    where = ", ".join(
        f"{stage}: {counts[stage]}" for stage in ("read", "fn", "write") if counts[stage]
    )
    logger.warning(
        "file_dataset.Pipeline wrote %d of %d rows and dropped %d (%s); their ids and "
        "errors are on Pipeline.last_failures",
        call.written,
        rows,
        len(call.failures),
        where,
    )


def _row_folder(kind: str, row_id: str) -> Path:
    """A new temporary folder for a row's inputs (``kind`` "in") or outputs ("out").

    Its error names the row and the temporary folder. When that folder is gone (a tmp
    cleaner removed it, or TMPDIR names a file) or may not be written in (permissions,
    a read-only file system), every later row would fail alike, and the error says the
    call stops (see :meth:`Pipeline._fail`); no space or inodes left may pass, as
    other rows' folders are removed: that row is dropped.
    """
    try:
        return make_temp_folder(
            f"file_dataset-{kind}.",
            None,
            f"file_dataset.Pipeline, for row id {quoted(row_id)},",
            "set TMPDIR to a folder this process may write in, with room",
        )
    except OSError as e:
        if e.errno in _TEMP_FOLDER_UNUSABLE:
            e.add_note(_NO_TEMP_FOLDER_NOTE)
        raise


_TEMP_FOLDER_UNUSABLE = (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS)
_NO_TEMP_FOLDER_NOTE = (
    "file_dataset.Pipeline: the temporary folder is not there or may not be written "
    "in, which fails every later row, so the call stops instead of dropping them all"
)


_NO_CREDENTIALS_NOTE = (
    "file_dataset.Pipeline: no credentials were found for these options, which fails "
    "every row, so the call stops instead of dropping them all (give the session "
    "credentials, or Config(signature_version=UNSIGNED) to read public buckets; on "
    "Ray workers, options=Options.default() carries the driver's credentials)"
)
_CREDENTIALS_NOTE = (
    "file_dataset.Pipeline: the credentials failed (S3 refused them as expired or "
    "unknown, or they could not be loaded or refreshed), which fails every later row "
    "that uses them, so the call stops instead of dropping them all (rows written "
    "before stay written)"
)
_SETTING_NOTE = (
    "file_dataset.Pipeline: botocore refuses a setting of these options or of the "
    "environment (AWS_* variables, the profile), which fails every row, so the call "
    "stops instead of dropping them all"
)
_READS_NOTE = (
    "file_dataset.Pipeline: downloads use Pipeline(options=...), not "
    "write_options['options'] (those serve the downloads only when options= is left out)"
)
_UNREACHABLE_NOTE = (
    "file_dataset.Pipeline: the endpoint gave no answer, and no Pipeline of this process "
    "has reached it yet, so the call stops instead of dropping every row (check the "
    "endpoint, the network and the Config's connect_timeout and read_timeout)"
)


def _default_options() -> Options:
    """``Options()``, plus an S3 endpoint configured here outside the arguments.

    A Pipeline travels to Ray workers, which do not see the driver's environment: an
    endpoint from ``AWS_ENDPOINT_URL_S3`` or the profile must travel inside it, or its
    workers would write elsewhere. Credentials are not frozen (each process resolves
    its own, and they refresh), as with ``Options()``.
    """
    try:
        return Options.default(freeze_credentials=False)
    except InvalidInputError as e:  # a missing AWS_PROFILE, say: name the call made
        raise InvalidInputError(
            f"Pipeline without options= resolves the S3 endpoint as "
            f"Options.default(freeze_credentials=False) does, and failed: {e} (pass "
            "options=Options() to build it without that)"
        ) from None


def _describe(row_error: _RowError) -> str:
    """A failure's reason for the log: fn's own exceptions also say their type.

    ``str()`` alone says ``'image.mha'`` for a ``KeyError`` and nothing at all for a
    bare ``assert``; the transfers' errors and the checks of fn's result already say
    what failed, and where.
    """
    error = row_error.failure.error
    text = str(error)
    if row_error.raised_by_fn:
        # where it was raised: under Ray, this line is all the driver sees of it (the
        # message is cut first, so that a long one keeps it)
        shown = f": {masked_cut(text, 1500)}" if text else ""
        return f"{type(error).__name__}{shown}{_raised_at(error)}"
    text = text or type(error).__name__  # a bare MemoryError from a transfer, say
    # an upload that failed in part says what may be left of the row
    return "; ".join([text, *_written_in_part(error)])


# Where Python's own modules and installed packages live: a frame there is a library's.
_LIBRARY_PATHS = tuple(
    sorted(
        {
            os.path.join(path, "")
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (path := sysconfig.get_paths().get(key))
        }
    )
)


def _raised_at(error: BaseException) -> str:
    """`` (raised at file.py:12 in name)``: the innermost frame of fn's own code.

    The first frame is the Pipeline's call of fn, left out (a built-in fn such as
    ``os.link`` raises with no frame of its own: no suffix). A frame in the standard
    library or an installed package (``json.loads`` failing, say) is passed over for
    the line of fn's code that called it, when there is one.
    """
    frames = traceback.extract_tb(error.__traceback__)[1:]
    own = [f for f in frames if not os.path.abspath(f.filename).startswith(_LIBRARY_PATHS)]
    if not (own or frames):
        return ""
    last = (own or frames)[-1]
    return f" (raised at {last.filename}:{last.lineno} in {last.name})"


def _checked(
    fn: Any, write_options: Any, options: Any, on_error: Any, progress: Any
) -> tuple[UserFunction, dict[str, Any], Options, Literal["drop", "raise"], bool]:
    """A Pipeline's settings, checked (the errors are the constructor's) and normalised.

    Run again at each call, on the Pipeline's attributes: one changed since (a typo in
    ``pipeline.on_error = "Raise"``, options given as a dict) is refused there, before
    any row, rather than change what the call does unseen or fail every row.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _check_signature(fn)
    if not isinstance(write_options, Mapping):
        raise TypeError(
            "write_options must be a mapping such as {'into_path': 's3://bucket/prefix/'}, "
            f"got {type(write_options).__name__}"
        )
    unknown = sorted(set(write_options) - {"into_path", "options"}, key=str)
    if "into_path" not in write_options:
        raise InvalidInputError(
            "write_options needs an 'into_path'"
            + (f" (unknown keys: {unknown})" if unknown else "")
        )
    if unknown:
        raise InvalidInputError(
            f"unknown write_options: {unknown} (write_options takes 'into_path' and "
            "'options'; the writes' settings, such as upload_args or part_size, go in "
            "'options': Options(upload_args={...}))"
        )
    parse_url(write_options["into_path"], prefix=True)
    if write_options.get("options") is not None:
        resolve_options(write_options["options"], "Pipeline(write_options={'options': ...})")
    if on_error not in ("drop", "raise"):
        kind = InvalidInputError if isinstance(on_error, str) else InvalidTypeError
        raise kind(f"on_error must be 'drop' or 'raise', got {on_error!r}")
    if progress is None or (type(progress) is int and progress in (0, 1)):
        progress = bool(progress)  # None (an unset argparse flag), 0 and 1 as before
    if not isinstance(progress, bool | np.bool_):
        # "false" or 0.0 would be taken by truth; a tqdm instance is not wanted here
        raise TypeError(f"progress must be True or False, got {progress!r}")
    return (
        fn,
        dict(write_options),
        # Options given for the writes only serve the reads too: one set of settings
        # for the Pipeline's S3 is the usual case (helper-142, as a new user, put them
        # there and every download went to the environment's endpoint instead).
        resolve_options(
            options if options is not None else write_options.get("options"),
            "Pipeline(options=...)",
            default=_default_options,
        ),
        on_error,
        bool(progress),
    )


def _check_signature(fn: Callable[..., Any]) -> None:
    """Refuses an ``fn`` that cannot be called as ``fn(input_dir, output_dir)``.

    Without this, every row would fail at the "fn" stage and be dropped. A callable
    whose signature cannot be read (some builtins, annotations that fail) is not
    checked. An ``async def`` function is refused too: calling it returns a coroutine,
    not its outputs; so is a generator function.
    """
    call = getattr(fn, "__call__", None)  # noqa: B004 (a callable object's method)
    if inspect.iscoroutinefunction(fn) or (
        # Calling a class makes an instance: its instances' __call__ is not what runs.
        not inspect.isroutine(fn) and not isinstance(fn, type) and inspect.iscoroutinefunction(call)
    ):
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(
            f"fn {name} is an async function: the Pipeline calls fn(input_dir, output_dir) "
            "on a thread and uses what it returns, so give it a plain function (for "
            "example lambda i, o: asyncio.run(fn(i, o)))"
        )
    if (
        inspect.isgeneratorfunction(fn)
        or inspect.isasyncgenfunction(fn)
        or (
            not inspect.isroutine(fn)
            and not isinstance(fn, type)
            and (inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call))
        )
    ):  # (helper-129: every row was dropped, "got generator")
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(
            f"fn {name} is a generator function (it yields): calling it returns a "
            "generator, not its outputs; the Pipeline needs fn(input_dir, output_dir) to "
            "return a mapping of output file name to local path"
        )
    try:
        if sys.version_info >= (3, 14):
            import annotationlib

            # Python 3.14 evaluates annotations lazily: one naming what is imported
            # only for type checkers is fine until read, and arity is all we need.
            signature = inspect.signature(fn, annotation_format=annotationlib.Format.FORWARDREF)
        else:
            signature = inspect.signature(fn)
    except Exception:  # one that cannot be read is not checked
        return
    try:
        signature.bind(None, None)
    except TypeError:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(
            f"fn {name}{signature} cannot be called as fn(input_dir, output_dir): the "
            "Pipeline calls it with two positional arguments, the row's input folder "
            "and an empty output folder"
        ) from None


def _local_output(name: str, path: Any) -> Path:
    """The local path of an output that fn returned, or the reason it is not one."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"fn returned {quoted(name)} -> {_a(type(path).__name__)}; an output must be the "
            "local path (str or os.PathLike) of a file that fn wrote"
        )
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(
            f"fn returned {quoted(name)} -> a path of type {type(text).__name__}; an output must "
            "be the local path (str or os.PathLike) of a file that fn wrote"
        )
    match = URL_SCHEME.match(text)
    if match is not None:
        if match.group(1).lower() == "file":  # a local path, as write_files takes it
            return parse_url(text).path
        raise InvalidInputError(
            f"fn returned {quoted(name)} -> {quoted_masked(text)}, a URL; outputs "
            "must be local files written by fn (in output_dir), which the Pipeline then "
            "writes to into_path"
        )
    return Path(text)


def _check_local_destination(path: Path) -> None:
    """Refuses a local ``into_path`` that no row folder could be made in.

    The path itself, or the nearest part of it that exists, must be a folder (a link
    to one is fine) that this process may write in. A file, a link to nothing or a
    loop of links, or a folder without write permission would otherwise let every row
    download and run ``fn``, to be dropped at its upload.

    Raises:
        NotAFolderError: The path, or the part of it that exists, is not a folder (a
            ``TransferError`` and a ``NotADirectoryError``, as in ``write_files``).
        ObjectAccessDeniedError: That folder cannot be written in (a
            ``PermissionError``, as in ``write_files``).
    """
    # not abspath: it would take "link/.." lexically, where the kernel follows the link
    existing = os.path.join(os.getcwd(), path).rstrip("/") or "/"
    given = existing
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "a link to nothing or a loop of links" if os.path.islink(existing) else "a file"
        subject = "it" if existing == given else repr(existing)
        raise NotAFolderError(
            str(path),
            f"the Pipeline's into_path is not a folder: {subject} is {what}",
            operation="write",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ObjectAccessDeniedError(
            str(path),
            f"the Pipeline's into_path cannot be written: no permission to write in {existing!r}",
            operation="write",
        )


def _remove(folders: Iterable[Path]) -> None:
    """Removes a row's temporary folders; one that stays is reported, not ignored.

    ``fn`` may have put a file where its output folder was, or left a thread writing
    in it (rmtree then meets files that were not there when it listed the folder).
    """
    for folder in folders:
        remove_tree(folder, "is something fn started still writing in it?")


def _where(paths: Iterable[Path], input_dir: Path, output_dir: Path) -> tuple[bool, bool]:
    """Where a row's outputs lie, each path taken as written and once links are resolved.

    Returns:
        Whether any output is in ``input_dir`` (an input passed through, by its path
        or a link), and whether every output is in ``input_dir`` or ``output_dir``
        both ways and has no name outside them (so that no later ``fn`` call can
        rewrite it: a hard link's other name may be a scratch file outside; one whose
        every name is in the row's folders, such as a hard link to an input, is the
        row's own).
    """
    folders = (input_dir, output_dir)
    real_input, real_output = (folder.resolve() for folder in folders)
    uses_input, only_own = False, True
    # names per inode in the row's folders: counted once, if a file has several names
    names = functools.cache(functools.partial(_names_per_inode, (real_input, real_output)))
    for path in paths:
        written, real = Path(os.path.abspath(path)), path.resolve()
        uses_input = (
            uses_input or written.is_relative_to(input_dir) or real.is_relative_to(real_input)
        )
        only_own = only_own and (
            any(written.is_relative_to(folder) for folder in folders)
            and (real.is_relative_to(real_input) or real.is_relative_to(real_output))
            and _no_name_outside(real, names)
        )
    return uses_input, only_own


def _no_name_outside(path: Path, names: Callable[[], collections.Counter[tuple[int, int]]]) -> bool:
    """Whether every (hard-linked) name of a file is among ``names()``; ``False`` if gone.

    ``names()`` counts the names per inode in the row's folders (asked only for a file
    that has more than one name).
    """
    try:
        stat = path.stat()
    except OSError:  # removed since it was checked (by a thread fn left running, say)
        return False
    return stat.st_nlink == 1 or names()[(stat.st_dev, stat.st_ino)] >= stat.st_nlink


def _names_per_inode(folders: tuple[Path, Path]) -> collections.Counter[tuple[int, int]]:
    """How many names each file (by device and inode) has in ``folders``."""
    found: collections.Counter[tuple[int, int]] = collections.Counter()
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                with contextlib.suppress(OSError):
                    seen = os.lstat(os.path.join(root, name))
                    found[(seen.st_dev, seen.st_ino)] += 1
    return found


# How far _let_typeddicts_travel looks from fn: links followed, objects visited, and
# items taken from one container.
_TRAVEL_DEPTH = 6
_TRAVEL_BUDGET = 20_000
_TRAVEL_ITEMS = 1_000


def _let_typeddicts_travel(fn: Callable[..., Any]) -> None:
    """Lets cloudpickle rebuild, on Python 3.11, the ``TypedDict`` classes ``fn`` uses.

    Ray pickles a function defined in the driver's script by value, with what it
    refers to: the classes of its annotations, the globals its code names, and the
    same for the helper functions those are. cloudpickle rebuilds such a class from its
    ``__orig_bases__``, else from its ``__bases__``; a ``TypedDict("Name", {...})`` of
    Python 3.11 (the design notes' ``ResampledOutput``) has only ``(dict,)``, which the
    ``TypedDict`` metaclass refuses, so the Pipeline failed in every worker with
    "cannot inherit from both a TypedDict type and a non-TypedDict base class". Python
    3.12 gives such classes ``__orig_bases__ = (TypedDict,)``; this sets the same on
    the ``TypedDict`` classes reachable from ``fn``: through annotations (also inside
    ``Optional[...]`` and the like), defaults, closures, the globals named by its code
    (helper functions in turn), ``functools.partial`` arguments, bound methods, the
    attributes of a callable object, and the items of containers among those. The walk
    is bounded (depth, objects, items per container) and does not enter modules or
    classes. Nothing else about the classes changes.
    """
    if sys.version_info >= (3, 12):
        return
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(fn, 0)]
    budget = _TRAVEL_BUDGET
    while stack and budget:
        value, depth = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        budget -= 1
        if isinstance(value, type):
            if is_typeddict(value) and "__orig_bases__" not in value.__dict__:
                with contextlib.suppress(AttributeError, TypeError):
                    value.__orig_bases__ = (TypedDict,)  # type: ignore[attr-defined]
            continue
        if depth >= _TRAVEL_DEPTH or isinstance(value, types.ModuleType):
            continue
        links: list[Any] = []
        with contextlib.suppress(Exception):  # an object that resists being looked at
            links = _travel_links(value)
        stack.extend((child, depth + 1) for child in links)


def _travel_links(value: Any) -> list[Any]:
    """What pickling ``value`` by value would also pickle (see above), in part."""
    links: list[Any] = list(get_args(value))  # Optional[X], list[X]; () for the rest
    if isinstance(value, types.FunctionType):
        links.extend(value.__annotations__.values())
        links.extend(value.__defaults__ or ())
        links.extend((value.__kwdefaults__ or {}).values())
        for cell in value.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                links.append(cell.cell_contents)
        names = value.__globals__
        codes = [value.__code__]
        while codes:  # nested functions, lambdas and comprehensions too
            code = codes.pop()
            links.extend(names[name] for name in code.co_names if name in names)
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    elif isinstance(value, staticmethod | classmethod):
        links.append(value.__func__)
    elif isinstance(value, types.MethodType):
        links.extend((value.__func__, value.__self__))
    elif isinstance(value, functools.partial):
        links.extend((value.func, *value.args, *value.keywords.values()))
    elif isinstance(value, dict):
        for key, item in itertools.islice(value.items(), _TRAVEL_ITEMS):
            links.extend((key, item))
    elif isinstance(value, list | tuple | set | frozenset):
        links.extend(itertools.islice(value, _TRAVEL_ITEMS))
    elif not isinstance(value, str | bytes | int | float | complex | bool | type(None)):
        attributes = getattr(value, "__dict__", None)  # a callable object, say
        if isinstance(attributes, dict):
            links.extend(itertools.islice(attributes.values(), _TRAVEL_ITEMS))
        kind = type(value)
        if kind.__module__ == "__main__" or "__call__" in vars(kind):
            # A callable object's methods (__call__ and its helpers), and those of a
            # class of the script, which cloudpickle sends by value with the object.
            links.extend(vars(kind).values())
    return links


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: "an int", "a float"."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _id_last(columns: list[Any]) -> bool:
    """Whether ``id`` is the last of several input columns (as in the design notes).

    A Pipeline's output then has ``id`` last too; otherwise first.
    """
    return len(columns) > 1 and columns[-1] == ID_COLUMN


def _output_frame(
    ids: pd.Series, written: dict[int, dict[str, str]], id_last: bool
) -> pd.DataFrame:
    """The output rows in input order; ``id`` keeps the input's values and dtype.

    ``id`` is the first column, or the last when ``id_last``.
    """
    names: dict[str, None] = {}
    for outputs in written.values():
        names.update(dict.fromkeys(outputs))
    rows = list(written.values())
    # The dtype pandas gives a column of strings: pandas 3's "str" (missing cells NaN),
    # else object with None where a row has no such output (Arrow, and so Ray Data and
    # Parquet, reads both as strings and nulls; an object column with NaN it would not).
    columns = {name: [row.get(name) for row in rows] for name in names}
    try:
        frame = pd.DataFrame(
            columns,
            index=range(len(rows)),
            columns=list(names),
            # asked each call: pandas' "future.infer_string" option may change at any time
            dtype=pd.Series(["s"]).dtype,
        )
    except UnicodeEncodeError:  # a local into_path that is not UTF-8: Arrow strings
        # cannot hold its surrogates (helper-126: every row written, then this raised)
        frame = pd.DataFrame(columns, index=range(len(rows)), columns=list(names), dtype=object)
    position = len(frame.columns) if id_last else 0
    frame.insert(position, ID_COLUMN, take(ids, list(written)).reset_index(drop=True))
    return frame
