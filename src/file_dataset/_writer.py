"""Writing local files to S3 or to a local folder, laid out as ``<into_path>/<id>/<name>``."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import os
import stat
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from file_dataset._errors import (
    InvalidInputError,
    InvalidTypeError,
    NotAFolderError,
    ObjectNotFoundError,
    TransferError,
    quoted,
    quoted_masked,
    translate_os_error,
)
from file_dataset._frame import ID_COLUMN, series_row
from file_dataset._local import not_a_file
from file_dataset._options import CallStopped, Options, resolve_options
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

__all__ = ["write_files", "written_ids"]


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
    outcomes: dict[int, str] = {}  # by job: see _outcome_kept
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
        writing: list[bool] = []
        job = upload_job(path, dest, options, writing)
        jobs.append(_outcome_kept(job, outcomes, len(jobs), writing))
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
        note = _others_note(e, row_id, list(sources), outcomes, folder, into.child(row_id))
        if note is not None:
            e.add_note(note)
        raise
    return results


OTHERS_NOTE = "file_dataset.write_files: "  # begins the note on a call that failed in part
_NAMES_SHOWN = 5  # in that note, per list


def _others_note(
    error: BaseException,
    row_id: str,
    names: list[str],
    outcomes: dict[int, str],
    folder: Path | None,
    row: Location,
) -> str | None:
    """What a failed call wrote of its other files, as a note for ``error``, if anything.

    Written: the files whose upload ended. May be written: those closed after their
    last request was sent, and those that failed on their own (S3 may have stored a
    file whose answer was lost), unless ``error`` is one that no request of the call
    gets past (see :func:`_may_have_written`). Files whose requests were cut or never
    made are not counted (helper-145: "19 other files may be written" of an empty
    bucket, when the first file failed before the others started).
    """
    failed = getattr(error, "column", None)
    possible = _may_have_written(error, folder)
    written: list[str] = []
    maybe: list[str] = []
    for index, outcome in sorted(outcomes.items()):
        if names[index] == failed:
            continue
        if outcome == "done":
            written.append(names[index])
        elif outcome == "stopped" or (outcome == "failed" and possible):
            maybe.append(names[index])
    if not written and not maybe:
        return None

    def shown(files: list[str]) -> str:
        listed = ", ".join(quoted(name) for name in files[:_NAMES_SHOWN])
        more = len(files) - _NAMES_SHOWN
        return f"{listed} and {more} more" if more > 0 else listed

    where = f"{row}{'/' if row.is_s3 else os.sep}"
    whose = f"other file(s) of row id {quoted(row_id)}"
    if written and maybe:
        said = (
            f"{len(written)} {whose} are written and {len(maybe)} may be written already "
            f"under {where} (written: {shown(written)}; maybe: {shown(maybe)}"
        )
    elif written:
        said = f"{len(written)} {whose} are written already under {where} ({shown(written)}"
    else:
        said = f"{len(maybe)} {whose} may be written already under {where} ({shown(maybe)}"
    return (
        f"{OTHERS_NOTE}{said}; each whole, none half-written: a rerun of the row overwrites them)"
    )


def _outcome_kept(
    job: Job[Location], outcomes: dict[int, str], index: int, writing: list[bool]
) -> Job[Location]:
    """``job``, noting in ``outcomes[index]`` how it went.

    "failed" (its own error), "refused" (its own error, an answer that stored
    nothing: see :func:`_refused`), "cut" (its requests cut by the call's failure elsewhere,
    or closed by it before the request that stores the object was asked for, as
    ``writing`` tells (see ``upload_job``): nothing of it written), "done", or
    "stopped" (closed by the call's failure elsewhere once that request was asked for,
    maybe after it succeeded). A job never started (run_jobs starts none after a
    failure) has no outcome: every job started ends in one of these.
    """
    try:
        result = yield from job
    except GeneratorExit:
        # (closed between the requests of a multipart upload: CreateMultipartUpload or
        # its parts answered after the failure; its upload is aborted)
        outcomes[index] = "stopped" if writing else "cut"
        raise
    except CallStopped:
        outcomes[index] = "cut"
        raise
    except BaseException as e:
        outcomes[index] = "refused" if _refused(e) else "failed"
        raise
    outcomes[index] = "done"
    return result


def _refused(error: BaseException) -> bool:
    """Whether a file's own failure is an answer that stored nothing.

    A 4xx answer to its PUT, one of its parts or its completion (its multipart
    upload is then aborted). Not a 404: a completion answered ``NoSuchUpload`` whose
    upload may have been completed by a request whose answer was lost (see
    ``S3Backend.multipart_complete``).
    """
    status = error.status if isinstance(error, TransferError) else None
    return status is not None and 400 <= status < 500 and status != 404


def _may_have_written(error: BaseException, folder: Path | None) -> bool:
    """Whether files of a call that raised ``error`` that failed on their own may be stored.

    Their request may have reached S3 before its answer was lost, or timed out. Not
    when the row folder (local) is not there as a folder (this call made it and removed
    it again, empty; or a file is in its way), nor when the error is one that every
    request of the call meets before anything is stored: a missing bucket, credentials
    that failed. An interrupt says nothing of the others, and an endpoint that stopped
    answering may have stored what it was sent (helper-147: a file stored whose answer
    timed out went unnamed).
    """
    if folder is not None and not folder.is_dir():
        return False
    if isinstance(error, ObjectNotFoundError) and error.operation == "write":
        return False  # the bucket (a source gone meanwhile is a "read")
    return not getattr(error, "credentials_failed", False)


def written_ids(
    into_path: str | os.PathLike[str],
    names: Iterable[str],
    options: Options | None = None,
    *,
    since: dt.datetime | None = None,
) -> set[str]:
    """The ids of the rows that have every one of ``names`` under ``into_path``.

    It reads the layout :func:`write_files` and a :class:`Pipeline` write,
    ``<into_path>/<id>/<name>``, with one listing: for S3, ListObjectsV2 of the prefix
    (one request per 1,000 objects under it); for a local folder, its row folders. Each
    file is written whole (one PUT, a multipart upload completed after its last part,
    or a temporary file renamed), so a row whose folder holds every name is done; one
    that failed part-way through its upload is not, and a rerun overwrites what it left.
    ``into_path`` is read as ``write_files`` reads it (``S3://``, ``s3a://``,
    ``file://`` URLs, ``~``, trailing slashes), so the same value finds what it wrote.

    Args:
        into_path: ``s3://bucket/prefix`` or a local folder, as given to ``write_files``
            or in a Pipeline's ``write_options``.
        names: The file names a finished row has (the outputs your ``fn`` makes).
        options: S3 settings; ``Options()`` when omitted. With ``request_payer=True``
            the listing is paid by the requester too.
        since: When given (a timezone-aware ``datetime``), only files written in its
            second or later count: a rerun into an ``into_path`` that holds an earlier
            run's outputs then does not take a row holding some of them for done. S3's
            ``LastModified`` is the server's clock, in whole seconds (so ``since`` is
            taken to its whole second): take the time a little early.

    Returns:
        The row ids (folder names: ``str(id)``, as a Pipeline's ``last_failures`` gives
        them; compare with ``frame["id"].map(str)``, which ``astype(str)`` is not for
        datetime ids). A folder that does not exist yet, or an empty prefix, gives an
        empty set.

    Raises:
        ValueError: ``names`` is empty, or holds a name that is no safe file name (or
            ``"id"``);
            ``since`` has no time zone; ``into_path`` is not a supported URL.
        TypeError: ``names`` is a single string or holds a non-string, or ``since`` is
            not a ``datetime`` (these are :class:`InvalidInputError` too).
        FileNotFoundError: The bucket does not exist (:class:`ObjectNotFoundError`).
        OSError: The listing failed (a :class:`TransferError`; a local ``into_path``
            that is a file is also a ``NotADirectoryError``).

    Examples:
        >>> done = written_ids("s3://bucket/results/", ["output.mha"])  # doctest: +SKIP
        >>> todo = frame[~frame["id"].map(str).isin(done)]  # doctest: +SKIP
    """
    options = resolve_options(options, "written_ids(options=...)")
    if isinstance(names, str | bytes) or not isinstance(names, Iterable):
        raise InvalidTypeError(
            "written_ids takes a list of file names, such as ['output.mha'], got "
            f"{type(names).__name__} {quoted(names)}"
        )
    wanted: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise InvalidTypeError(f"file names must be strings, got {quoted(name)}")
        if check_component(name, "file name") == ID_COLUMN:
            raise InvalidInputError(
                f"no file is named {ID_COLUMN!r}: write_files and a Pipeline refuse that name"
            )
        wanted.add(name)
    if not wanted:
        raise InvalidInputError(
            "written_ids needs at least one file name: a row is done when its folder "
            "holds every one of them"
        )
    if since is not None:
        if not isinstance(since, dt.datetime):
            raise InvalidTypeError(f"since must be a datetime, got {type(since).__name__}")
        if since.utcoffset() is None:
            raise InvalidInputError(
                f"since must be timezone-aware, such as datetime.now(timezone.utc), got "
                f"{since!r}: S3's times are in UTC"
            )
        # S3 keeps LastModified in whole seconds: a file written in the second that
        # since falls in counts (a local file's time is finer; the same rule holds)
        # (a datetime of its own: pandas' Timestamp keeps its nanoseconds through
        # replace(microsecond=0), and then missed the files of its second on S3)
        since = dt.datetime(
            *since.timetuple()[:6], tzinfo=since.tzinfo, fold=getattr(since, "fold", 0)
        )
    into = parse_url(into_path, prefix=True)
    found: dict[str, set[str]] = collections.defaultdict(set)
    if into.is_s3:
        # imported on first use, as the transports are (import file_dataset stays light)
        from file_dataset._s3 import S3Backend

        rows = into.child("")  # "<prefix>/", or the bucket's root, as write_files lays out
        for key, modified in S3Backend(options).list_objects(rows):
            row_id, slash, name = key[len(rows.key) :].partition("/")
            if slash and name in wanted and (since is None or modified >= since):
                found[row_id].add(name)
    else:
        _find_local(into.key, wanted, since, found)
    return {row_id for row_id, have in found.items() if len(have) == len(wanted)}


def _find_local(
    folder: str, wanted: set[str], since: dt.datetime | None, found: dict[str, set[str]]
) -> None:
    """Adds the wanted files of each row folder under ``folder`` to ``found``."""
    after = None if since is None else since.timestamp()
    try:
        rows = os.scandir(folder)
    except FileNotFoundError:
        if os.path.islink(folder):  # say so, rather than "nothing written yet"
            raise NotAFolderError(
                folder, f"a link to {os.readlink(folder)}, which does not exist", operation="list"
            ) from None
        return  # nothing written yet
    except NotADirectoryError:
        raise NotAFolderError(folder, "not a folder", operation="list") from None
    except OSError as e:
        raise translate_os_error(e, folder, "list") from e
    with rows:
        for row in rows:
            try:
                if not row.is_dir():
                    continue
                with os.scandir(row.path) as entries:
                    for entry in entries:
                        if (
                            entry.name in wanted
                            and entry.is_file()
                            and (after is None or entry.stat().st_mtime >= after)
                        ):
                            found[row.name].add(entry.name)
            except FileNotFoundError:
                continue  # removed while listed
            except OSError as e:
                raise translate_os_error(e, row.path, "list") from e
