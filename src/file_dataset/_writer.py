"""Writing local files to S3 or to a local folder, laid out as ``<into_path>/<id>/<name>``."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from file_dataset._errors import (
    InvalidInputError,
    InvalidTypeError,
    ObjectNotFoundError,
    TransferError,
    quoted,
    quoted_masked,
    translate_os_error,
)
from file_dataset._frame import ID_COLUMN, series_row
from file_dataset._local import not_a_file
from file_dataset._options import Options, resolve_options
from file_dataset._transfer import Context, Job, run_jobs, upload_job
from file_dataset._urls import (
    KEY_MAX,
    Location,
    check_component,
    check_id,
    check_local_name,
    is_null,
    parse_url,
)

__all__ = ["write_files"]


def write_files(
    # the second form takes a TypedDict (fn's outputs, as in the design notes), which
    # type checkers do not count as a Mapping of paths; values are checked at the call
    files: Mapping[str, str | os.PathLike[str] | None] | Mapping[str, Any] | pd.Series,
    into_path: str | os.PathLike[str],
    id: str | int | np.integer[Any] | uuid.UUID,
    options: Options | None = None,
) -> dict[str, str | Path]:
    """Writes local files to ``<into_path>/<id>/<name>``, all at once, concurrently.

    Every name, the id and every source file are checked before anything is written.
    S3 objects above ``options.multipart_threshold`` are written with multipart uploads;
    local destinations are written through a temporary name and renamed, so a partial
    file is never visible. When one file fails the others of the same call may already
    be written (a note on the error says where); none is left half-written.

    Args:
        files: File name (the name it will have at the destination) to local path, as
            a mapping or a ``pd.Series`` (a row of a frame of outputs, without its
            ``id``). ``None`` values are skipped.
        into_path: ``s3://bucket/prefix`` or a local folder; a trailing slash makes no
            difference.
        id: The row id, the folder under ``into_path``: a str or an int (a NumPy int
            or a UUID is used as its ``str``; floats and collections are refused).
        options: S3 settings; ``Options()`` when omitted.

    Returns:
        Each name's destination: an ``s3://`` URL string for S3, a ``Path`` for local.

    Raises:
        ValueError: A name or the id is not a safe path component (or bytes, or, for a
            local ``into_path``, longer than 255 bytes), an S3 key would be longer than
            1,024 bytes (S3's limit), a name is ``"id"``, the id is null, a source is an
            ``s3://`` URL rather than a local path, or ``into_path`` is not a supported
            URL. All of these are checked before any file is sent.
        TypeError: ``files`` is not a mapping or Series, a name is not a string, a
            source is not a str or path, or ``options`` is not an :class:`Options` (a
            dict of settings, say). Except for ``options``, these are
            :class:`InvalidInputError` too (a ``ValueError``), as in the reader.
        FileNotFoundError: A source file does not exist.
        OSError: A write failed (the message names the destination).

    Examples:
        >>> write_files({"out.mha": "/tmp/out.mha"}, "s3://bucket/results/", id="7")
        ... # doctest: +SKIP
        {'out.mha': 's3://bucket/results/7/out.mha'}
    """
    options = resolve_options(options, "write_files(options=...)")
    if isinstance(files, pd.Series):  # a row of names to paths (labels checked)
        files = series_row(files)
    if not isinstance(files, Mapping):
        raise InvalidTypeError(
            "write_files takes a mapping of file name to local path, such as "
            f"{{'out.mha': Path('out.mha')}}, got {type(files).__name__}"
        )
    if is_null(id):
        raise InvalidInputError(
            f"write_files needs an id (the folder under into_path), got {quoted(id)}"
        )
    row_id = check_id(id)
    into = parse_url(into_path, prefix=True)
    if not into.is_s3:
        check_local_name(row_id, "id (folder name)")
    sources: dict[str, Path] = {}
    for name, src in files.items():
        try:
            if not isinstance(name, str):
                raise InvalidTypeError(f"file names must be strings, got {quoted(name)}")
            check_component(name, "file name")  # one flat folder per id: no "sub/name"
            if not into.is_s3:
                check_local_name(name, "file name")
        except InvalidInputError as e:
            column = name if isinstance(name, str) else None
            raise type(e)(f"row id {quoted(row_id)}: {e}", row_id=row_id, column=column) from None
        if name == ID_COLUMN:
            raise InvalidInputError(
                f"row id {quoted(row_id)}: a file cannot be named {ID_COLUMN!r}, which is the "
                "row id column of a file DataFrame (and a row): it could not be read back "
                "as a file; rename it",
                row_id=row_id,
                column=name,
            )
        if is_null(src):
            continue
        where = f"row id {quoted(row_id)}, file {quoted(name)}"
        if not isinstance(src, (str, os.PathLike)):
            raise InvalidTypeError(
                f"{where}: expected a local path (str or os.PathLike), got {type(src).__name__}",
                row_id=row_id,
                column=name,
            )
        try:
            source = parse_url(src)
        except InvalidInputError as e:
            raise type(e)(f"{where}: {e}", row_id=row_id, column=name) from None
        if source.is_s3:
            raise InvalidInputError(
                f"{where}: write_files sends local files, "
                f"and {quoted_masked(str(source))} is an S3 URL (read it to a local folder "
                "first, e.g. with reader(...).into_temp_dir())",
                row_id=row_id,
                column=name,
            )
        path = source.path
        try:
            mode: int | None = os.stat(path).st_mode  # one stat in the usual case
        except (FileNotFoundError, NotADirectoryError):
            mode = None
        except OSError as e:  # a name too long, a loop of links, no permission, ...
            raise translate_os_error(e, str(path), "read").with_context(row_id, name) from e
        if mode is not None and stat.S_ISREG(mode):
            sources[name] = path
            continue
        if mode is not None and stat.S_ISDIR(mode):
            raise TransferError(
                str(path),
                "is a directory, not a file (write_files sends files; list a folder's "
                "files one by one)",
                operation="read",
                row_id=row_id,
                column=name,
            )
        if mode is not None:  # a named pipe, socket or device: said as a read says it
            raise TransferError(
                str(path), not_a_file(mode), operation="read", row_id=row_id, column=name
            )
        raise ObjectNotFoundError(
            str(path),
            "the local file to write does not exist",
            operation="read",
            row_id=row_id,
            column=name,
        )
    jobs: list[Job[Location]] = []
    contexts: list[Context] = []
    results: dict[str, str | Path] = {}
    for name, path in sources.items():
        dest = into.child(row_id, name)
        if dest.is_s3 and (size := len(dest.key.encode("utf-8", "surrogatepass"))) > KEY_MAX:
            # S3 refuses such a key (KeyTooLongError), some servers accept it: refused
            # here, before any file of the row is sent, so no row is written in part.
            raise InvalidInputError(
                f"row id {quoted(row_id)}, file {quoted(name)}: the key of "
                f"{quoted(str(dest))} is {size} bytes long; S3 keys can have at most "
                f"{KEY_MAX} (shorten into_path, the id or the file name)",
                row_id=row_id,
                column=name,
            )
        jobs.append(upload_job(path, dest, options))
        contexts.append((row_id, name))
        results[name] = str(dest) if dest.is_s3 else dest.path
    # A local row folder this call creates is removed again if nothing could be written
    # into it, so a failed call does not leave an empty <into_path>/<id>/ that reads as
    # a row written.
    folder = None if into.is_s3 else Path(into.child(row_id).path)
    made = None if folder is None or os.path.lexists(folder) else folder
    try:
        run_jobs(jobs, options, contexts)
    except BaseException as e:
        if made is not None:
            with contextlib.suppress(OSError):  # not empty: other files were written
                made.rmdir()
        if len(jobs) > 1 and _may_have_written(e, folder):
            row = into.child(row_id)
            e.add_note(
                f"{OTHERS_NOTE}{len(jobs) - 1} other file(s) of row id {quoted(row_id)} may "
                f"be written already under {row}{'/' if row.is_s3 else os.sep} (each "
                "whole, none half-written: a rerun of the row overwrites them)"
            )
        raise
    return results


OTHERS_NOTE = "file_dataset.write_files: "  # begins the note on a call that failed in part


def _may_have_written(error: BaseException, folder: Path | None) -> bool:
    """Whether other files of a call that raised ``error`` may have been written.

    Not when the row folder (local) is not there as a folder (this call made it and
    removed it again, empty; or a file is in its way), nor when the error is one that
    every request of the call meets: a missing bucket, credentials that failed, an
    endpoint that gives no answer.
    """
    if not isinstance(error, Exception):
        return False
    if folder is not None and not folder.is_dir():
        return False
    if isinstance(error, ObjectNotFoundError) and error.operation == "write":
        return False  # the bucket (a source gone meanwhile is a "read")
    return not (getattr(error, "credentials_failed", False) or getattr(error, "unreachable", False))
