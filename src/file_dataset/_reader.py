"""Reading the files of a row or a file DataFrame: to a temp dir, blobs or sizes."""

from __future__ import annotations

import errno
import itertools
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pandas as pd
import pyarrow as pa

from file_dataset._backend import Blob, copy_into, new_buffer
from file_dataset._errors import InvalidInputError, translate_os_error
from file_dataset._frame import (
    ID_COLUMN,
    FileTable,
    is_numpy_batch,
    numpy_batch_frame,
    parse_frame,
    parse_row,
)
from file_dataset._local import atomic_copy, make_temp_folder, not_a_folder, remove_tree
from file_dataset._options import Options, resolve_options
from file_dataset._transfer import (
    Context,
    Job,
    download_job,
    local_failure,
    read_job,
    run_jobs,
    size_job,
)
from file_dataset._urls import Location, check_local_name, local_child, local_folder

__all__ = ["FileReader", "TempDir", "reader"]

T = TypeVar("T")

# One Arrow binary chunk holds at most this many bytes (int32 offsets cap it at 2 GiB).
_CHUNK_BYTES = 64 * 1024 * 1024
# While objects are still arriving, a column's complete prefix becomes a chunk once it
# holds this much (smaller than _CHUNK_BYTES, so the copy overlaps the transfers).
_EARLY_CHUNK_BYTES = 8 * 1024 * 1024
# An object at least this large becomes a chunk of its own, without being copied (B,
# 200 x 1 MiB, in one process: 646-777 objects/s on a first call and 845-1,436 later,
# against 514-548 and 627-986 when 1 MiB objects were still copied into chunks).
_OWN_CHUNK_BYTES = 1024 * 1024
_INT32_MAX = 2**31 - 1


def reader(
    source: Mapping[str, Any] | pd.Series | pd.DataFrame | pa.Table | pa.RecordBatch | None = None,
    options: Options | None = None,
    *,
    row: Mapping[str, Any] | pd.Series | pd.DataFrame | pa.Table | pa.RecordBatch | None = None,
) -> FileReader:
    """Prepares an eager read of the files of one row or of a file DataFrame.

    Nothing is read until one of the ``into_*`` methods is called; each of them reads
    every file at once, concurrently.

    Args:
        source: A row (mapping, or ``pd.Series`` such as ``frame.iloc[0]``, of file
            name to ``s3://`` URL or local path; an ``id`` in it is not a file, and names
            the row in errors) or a file
            DataFrame (an ``id`` column plus one column per file name), also as a
            ``pyarrow.Table`` or ``RecordBatch`` (read as its ``to_pandas()``, as a
            Pipeline reads one) or a dict of 1-D NumPy arrays (a batch in Ray Data's
            NumPy format).
        options: S3 settings; ``Options()`` (boto3's default credential chain) when
            omitted.
        row: The same as ``source``, for ``reader(row=...)``.

    Returns:
        A :class:`FileReader`.

    Raises:
        ValueError: Both or neither of ``source`` and ``row`` given, or the input is
            not valid (bad URL, unsafe file name or id, missing or repeated ids).
        TypeError: ``options`` is not an :class:`Options` (a dict of settings, say).

    Examples:
        >>> with reader({"image.mha": "s3://bucket/image.mha"}).into_temp_dir() as d:
        ...     process(d / "image.mha")  # doctest: +SKIP
    """
    resolved = resolve_options(options, "reader(options=...)")
    if (source is None) == (row is None):
        raise InvalidInputError("pass exactly one of source (a row or a DataFrame) and row=")
    data = source if source is not None else row
    if isinstance(data, pa.Table | pa.RecordBatch):
        data = data.to_pandas()
    elif isinstance(data, Mapping) and is_numpy_batch(data):  # a Ray batch of NumPy columns
        data = numpy_batch_frame(data)
    table = parse_frame(data) if isinstance(data, pd.DataFrame) else parse_row(data)  # type: ignore[arg-type]
    return FileReader(table, resolved)


class TempDir(os.PathLike[str]):
    """A temporary directory that :meth:`FileReader.into_temp_dir` has already filled.

    ``with`` gives its :class:`~pathlib.Path` and removes it at the end of the block.
    It is also path-like (``os.fspath``, ``tmp / "image.mha"``), like
    :class:`tempfile.TemporaryDirectory`: the directory is removed by :meth:`cleanup`,
    or when the object is garbage-collected.

    Only :meth:`FileReader.into_temp_dir` makes one: as the object removes its
    directory, ``TempDir(folder)`` is refused rather than taking a folder of yours.

    Attributes:
        path: The directory.
    """

    path: Path
    _entered: bool
    if TYPE_CHECKING:  # weakref.finalize cannot be subscripted at run time
        _remove: weakref.finalize[[Path, int], TempDir]

    def __init__(self, path: Path) -> None:
        raise TypeError(
            "TempDir is made by reader(...).into_temp_dir() only: it removes its folder "
            f"when it is closed or collected, and would remove {str(path)!r}; for a "
            "temporary folder of your own use tempfile.TemporaryDirectory()"
        )

    @classmethod
    def _own(cls, path: Path) -> TempDir:
        """The TempDir of ``path``, a folder :meth:`FileReader.into_temp_dir` made."""
        self = cls.__new__(cls)
        self.path = path
        self._remove = weakref.finalize(self, _remove_in_owner, path, os.getpid())
        self._entered = False
        return self

    def __fspath__(self) -> str:
        return str(self.path)

    def __reduce__(self) -> NoReturn:
        # A copy would not own the folder (its removal is this object's), and one made
        # in another process (a pool's worker returning it) would leave it for ever.
        raise TypeError(
            f"a TempDir cannot be pickled or copied: it is the folder {str(self.path)!r} "
            "of this process, removed when it is closed; pass its path (tmp.path), and "
            "make the TempDir where its files are used"
        )

    def __truediv__(self, name: str | os.PathLike[str]) -> Path:
        """``tmp / "image.mha"``: a path inside the directory."""
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"TempDir({str(self.path)!r})"

    def __enter__(self) -> Path:
        """Gives the directory's path; the end of the ``with`` block removes it.

        Raises:
            ValueError: The directory was already removed, or is in a ``with`` block.
        """
        if not self._remove.alive:
            raise InvalidInputError(
                f"TempDir {str(self.path)!r} was already removed (by cleanup() or a "
                "previous with block): a TempDir can be used in one with block only"
            )
        if self._entered:  # the inner block's end would remove it under the outer one
            raise InvalidInputError(
                f"TempDir {str(self.path)!r} is already in a with block: a TempDir can be "
                "used in one with block only"
            )
        self._entered = True
        return self.path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Removes the directory and everything in it (again is a no-op).

        Only in the process that made it: a forked child's copy (a DataLoader worker's,
        say) leaves the parent's directory alone, whether closed or collected there.
        """
        self._remove()


def _remove_in_owner(path: Path, owner: int) -> None:
    """Removes a TempDir's folder, unless this process is a fork of the one that made it."""
    if os.getpid() == owner:
        remove_tree(path)


def _parent_dir(dir: str | os.PathLike[str] | None) -> str | None:
    """Checks ``into_temp_dir(dir=...)``: an existing folder (a leading ``~`` is home)."""
    if dir is None:
        return None
    # absolute: cleanup() may run in another working directory
    path = os.path.abspath(local_folder(dir, "into_temp_dir(dir=...)"))
    if os.path.isdir(path):
        return path
    # the folder as the error's filename, as the built-in errors name it ("...: '/x'")
    hint = "; give an existing folder, or None for the system's temporary folder"
    if os.path.exists(path):
        raise NotADirectoryError(
            errno.ENOTDIR, f"into_temp_dir(dir=...) is not a directory{hint}", path
        )
    raise FileNotFoundError(errno.ENOENT, f"into_temp_dir(dir=...) does not exist{hint}", path)


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


class FileReader:
    """Reads the files of a validated row or file DataFrame; made by :func:`reader`."""

    def __init__(self, table: FileTable, options: Options) -> None:
        self._table = table
        self._options = options

    def __repr__(self) -> str:
        table = self._table
        files = sum(loc is not None for row in table.cells for loc in row)
        columns = table.columns if len(table.columns) <= 8 else [*table.columns[:8], "..."]
        rows = "a row" if table.ids is None else _counted(len(table.ids), "row")
        return f"<FileReader of {rows}, {_counted(files, 'file')}, columns {columns}>"

    def _cells(self) -> Iterator[tuple[int, int, Location]]:
        for i, row in enumerate(self._table.cells):
            for j, loc in enumerate(row):
                if loc is not None:
                    yield i, j, loc

    def _context(self, i: int, j: int) -> Context:
        return (self._table.row_id(i), self._table.columns[j])

    def into_temp_dir(self, dir: str | os.PathLike[str] | None = None) -> TempDir:
        """Downloads every file into a new temporary directory, before returning.

        A row's files land at ``<tmp>/<file name>``; a DataFrame's at
        ``<tmp>/<id>/<file name>`` (a folder is made for every id, even when all its
        cells are null). Null cells are skipped. Use the result in a ``with`` block,
        which gives the directory's :class:`~pathlib.Path` and removes the directory
        and everything in it when the block ends, also when it raises. Without a
        ``with``, the :class:`TempDir` is a path-like object whose directory is
        removed by :meth:`TempDir.cleanup` or when the object is garbage-collected.

        Args:
            dir: An existing folder (a path or a ``file://`` URL) to create the
                temporary directory in (default: the system's); a leading ``~`` is the
                home folder.

        Returns:
            The filled temporary directory.

        Raises:
            FileNotFoundError: An object does not exist (message names URL, row id,
                column), or ``dir`` does not exist.
            NotADirectoryError: ``dir`` is not a folder.
            PermissionError: Access to an object was denied.
            OSError: Another transfer failure. On any error nothing is left on disk
                (a folder that cannot be removed, for want of file descriptors say,
                is named in a WARNING and removed when the interpreter exits).
        """
        root = make_temp_folder(
            "file_dataset-",
            _parent_dir(dir),
            "into_temp_dir()",
            "give dir= a folder this process may write in, with room",
        )
        # Owned before the download: an interrupt between its end and the return
        # would otherwise leave the folder behind.
        folder = TempDir._own(root)
        try:
            self.download_to(root)
        except BaseException:
            folder.cleanup()
            raise
        return folder

    def download_to(self, root: str | os.PathLike[str]) -> dict[str, Path]:
        """Downloads every file under ``root`` (same layout as :meth:`into_temp_dir`).

        Files already there under the same names are replaced whole; others stay. Not
        all-or-nothing: when a file fails, the files already downloaded stay (each
        whole, never a partial file under its name); :meth:`into_temp_dir` leaves nothing.

        Args:
            root: A local folder (a path or a ``file://`` URL), made (with its
                parents) if missing; a leading ``~`` is the home folder.

        Returns:
            For a row, each file name's local path (null cells omitted); for a
            DataFrame, each id's folder.

        Raises:
            ValueError: ``root`` is not a local path or ``file://`` URL, or a file name
                or id is longer than 255 bytes (checked before any download).
            FileNotFoundError: An object does not exist (message names URL, row id,
                column).
            PermissionError: Access to an object, or to ``root``, was denied.
            OSError: Another transfer failure.
        """
        root = Path(local_folder(root, "download_to(root)"))
        table = self._table
        used = {j for _, j, _ in self._cells()}
        for j in sorted(used):
            check_local_name(table.columns[j], "column (file name)")
        for row_id in table.ids or ():
            check_local_name(row_id, "row id (folder name)")
        folders: dict[str, Path] = {}
        if table.ids is not None:
            for row_id in table.ids:
                folder = folders[row_id] = local_child(root, row_id)
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as e:  # a file in the way, no permission, ...
                    failure = translate_os_error(not_a_folder(folder) or e, str(folder), "write")
                    raise failure.with_context(row_id, None) from e
        paths: dict[str, Path] = {}
        dests: dict[tuple[int, int], Path] = {}
        for i, j, _ in self._cells():
            name = table.columns[j]
            dest = local_child(root, name) if table.ids is None else folders[table.ids[i]] / name
            paths[name] = dests[i, j] = dest

        def make_job(loc: Location, cells: list[tuple[int, int]]) -> Job[Path]:
            copies = [(dests[cell], self._context(*cell)) for cell in cells]
            return _download_and_copy(loc, copies, self._options)

        jobs, contexts, _ = self._jobs_per_object(make_job)
        run_jobs(jobs, self._options, contexts)
        return paths if table.ids is None else folders

    def into_blob_table(self) -> pa.Table:
        """Reads every file into memory as a PyArrow table of binary columns.

        For a row: one row with one ``binary`` column per file. For a DataFrame: the
        DataFrame's columns in its order (``id`` as ``string``, each file column as
        ``binary``), rows in DataFrame order. Null cells are null.

        Columns are ``pa.binary()`` split into chunks (int32 offsets cannot address
        more than 2 GiB in one chunk), so a table of any total size is correct. Each
        object of 1 MiB or more becomes a chunk of its own, without a copy. Smaller
        objects are copied, while later ones are still being read, into chunks of
        consecutive rows holding about 8 to 64 MiB (fewer bytes where a large object
        or the end of the column cuts a run of small ones short, and in wide frames:
        once 64 MiB wait to be copied over all columns, the columns holding most
        make a chunk of what they have). An object of 2 GiB
        or more, which no ``binary`` chunk can hold, turns its column into
        ``pa.large_binary()``.

        Returns:
            The blob table.

        Raises:
            FileNotFoundError: An object does not exist (message names URL, row id,
                column).
            PermissionError: Access to an object was denied.
            OSError: Another transfer failure.
        """
        table = self._table
        shared = _Pending()
        builders = [_ColumnBuilder(len(table.cells), shared) for _ in table.columns]
        jobs, contexts, where = self._jobs_per_object(lambda loc, _: read_job(loc, self._options))
        for cells in where:
            for i, j in cells:
                builders[j].expect(i)

        def on_result(index: int, blob: Blob) -> None:
            # An object in several cells is read once; its large copies share memory.
            for i, j in where[index]:
                builders[j].put(i, blob)
            if shared.bytes >= _CHUNK_BYTES:
                # the columns holding most first, down to half the budget: fewer,
                # larger chunks than one of every column's few objects each time
                for builder in sorted(builders, key=lambda b: -b.pending_bytes):
                    if shared.bytes <= _CHUNK_BYTES // 2:
                        break
                    builder.flush()

        # Chunks are built while later objects are still in flight: the copy overlaps
        # the I/O, and each transport buffer is let go as soon as it has been copied.
        try:
            run_jobs(jobs, self._options, contexts, on_result=on_result)
            del jobs
            return self._assemble([b.finish() for b in builders])
        finally:
            # A failure's traceback keeps this frame, and with it the objects read.
            for builder in builders:
                builder.release()

    def into_size_table(self) -> pa.Table:
        """Reads every object's size (a HEAD request each; no content is downloaded).

        A HEAD answered with a bodiless 4xx other than 404 is asked again with a
        one-byte GET, whose answer names the reason (an expired token, say).

        Same shape as :meth:`into_blob_table`, with ``int64`` sizes in bytes (the
        design notes say ``int32``, which cannot hold objects of 2 GiB or more).

        Returns:
            The size table.

        Raises:
            FileNotFoundError: An object does not exist.
            PermissionError: Access to an object was denied.
            OSError: Another failure.
        """
        columns = self._run_per_object(lambda loc: size_job(loc, self._options))
        arrays = [pa.chunked_array([pa.array(values, pa.int64())]) for values in columns]
        return self._assemble(arrays)

    def _jobs_per_object(
        self, make_job: Callable[[Location, list[tuple[int, int]]], Job[T]]
    ) -> tuple[list[Job[T]], list[Context], list[list[tuple[int, int]]]]:
        """One job per distinct object of the non-null cells.

        An object named in several cells is transferred once. Returns the jobs, the
        (row id, column) of each one's first cell (to name in errors), and the
        (row, column) of each one's cells, which ``make_job`` also gets.
        """
        first: dict[Location, int] = {}
        where: list[list[tuple[int, int]]] = []
        contexts: list[Context] = []
        for i, j, loc in self._cells():
            k = first.setdefault(loc, len(where))
            if k == len(where):
                where.append([])
                contexts.append(self._context(i, j))
            where[k].append((i, j))
        jobs = [make_job(loc, where[k]) for loc, k in first.items()]
        return jobs, contexts, where

    def _run_per_object(self, make_job: Callable[[Location], Job[T]]) -> list[list[T | None]]:
        """Runs one job per distinct object, all at once; returns the results by column."""
        jobs, contexts, where = self._jobs_per_object(lambda loc, _: make_job(loc))
        results = run_jobs(jobs, self._options, contexts)
        del jobs
        columns: list[list[T | None]] = [
            [None] * len(self._table.cells) for _ in self._table.columns
        ]
        for cells, value in zip(where, results, strict=True):
            for i, j in cells:
                columns[j][i] = value
        return columns

    def _assemble(self, arrays: list[pa.ChunkedArray[Any]]) -> pa.Table:
        table = self._table
        fields = [pa.field(name, arr.type) for name, arr in zip(table.columns, arrays, strict=True)]
        if table.ids is not None:
            # ``id`` stands where it stands in the DataFrame.
            fields.insert(table.id_position, pa.field(ID_COLUMN, pa.string(), nullable=False))
            arrays.insert(table.id_position, pa.chunked_array([pa.array(table.ids, pa.string())]))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _download_and_copy(
    loc: Location, cells: list[tuple[Path, Context]], options: Options
) -> Job[Path]:
    """Downloads ``loc`` to the first cell's path, then copies it to the others'.

    ``cells`` are the (path, (row id, column)) of the object's cells. The copies run
    as calls of their own (an interrupt waits for those under way, not for all), each
    through a temporary name, as the download is; a failed copy names its own cell.
    """
    path = yield from download_job(loc, cells[0][0], options)
    if len(cells) > 1:
        yield [partial(_copy_to, path, loc, dest, context) for dest, context in cells[1:]]
    return path


def _copy_to(src: Path, loc: Location, dest: Path, context: Context) -> None:
    try:
        atomic_copy(src, dest)
    except OSError as e:  # a full disk, say: named as the download of ``loc`` to dest
        raise local_failure(e, loc, dest).with_context(*context) from e


def _single_value_chunk(blob: Blob) -> pa.Array[Any]:
    """A one-value binary array over ``blob``'s own memory (no copy)."""
    large = len(blob) > _INT32_MAX
    offsets = pa.array([0, len(blob)], pa.int64() if large else pa.int32()).buffers()[1]
    return pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(), 1, [None, offsets, pa.py_buffer(blob)]
    )


_MISSING: Any = object()  # a cell whose object has not arrived yet


class _Pending:
    """The bytes waiting to be copied into chunks, over all the columns of one read."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


class _ColumnBuilder:
    """Builds one chunked binary column from objects that arrive in any order.

    Whenever the cells from the start of the column up to the first one still missing
    add up to ``_EARLY_CHUNK_BYTES`` they become a chunk, so the copy into Arrow runs
    while later objects are in flight and each object's buffer is released once
    copied. Chunks hold at most ``_CHUNK_BYTES``; an object of ``_OWN_CHUNK_BYTES`` or
    more becomes a chunk of its own without being copied. The columns of one read
    count their waiting objects in one :class:`_Pending`: once they add up to
    ``_CHUNK_BYTES``, the reader flushes the columns holding most, until half of it is
    left. Otherwise a wide frame (200 columns of 2 MiB each) kept every object until
    the end and then copied it, holding its bytes twice.
    """

    def __init__(self, length: int, shared: _Pending | None = None) -> None:
        self._values: list[Blob | None] = [None] * length  # null cells stay None
        self._next = 0  # the first cell not yet moved to pending
        self._chunks: list[pa.Array[Any]] = []
        self._pending: list[Blob | None] = []
        self.pending_bytes = 0
        self._shared = _Pending() if shared is None else shared

    def expect(self, index: int) -> None:
        """Marks a non-null cell whose object is still to come."""
        self._values[index] = _MISSING

    def put(self, index: int, blob: Blob) -> None:
        """Stores an object and moves the complete prefix of the column along."""
        self._values[index] = blob
        self._advance()
        if self.pending_bytes >= _EARLY_CHUNK_BYTES:
            self.flush()

    def finish(self) -> pa.ChunkedArray[Any]:
        """The column (every expected object must have arrived)."""
        self._advance()
        if self._next != len(self._values):
            raise RuntimeError("a blob column was finished before all its objects arrived")
        self.flush()
        chunks, self._chunks = self._chunks, []
        if any(chunk.type == pa.large_binary() for chunk in chunks):
            chunks = [chunk.cast(pa.large_binary()) for chunk in chunks]
        return pa.chunked_array(chunks, type=chunks[0].type if chunks else pa.binary())

    def release(self) -> None:
        """Lets go of every object and chunk (after :meth:`finish`, or a failure)."""
        self._values, self._pending, self._chunks = [], [], []

    def _advance(self) -> None:
        values = self._values
        while self._next < len(values):
            blob = values[self._next]
            if blob is _MISSING:
                return
            values[self._next] = None  # the pending list or a chunk holds it now
            self._next += 1
            size = len(blob) if blob is not None else 0
            if size >= _OWN_CHUNK_BYTES:
                self.flush()
                self._chunks.append(_single_value_chunk(blob))  # type: ignore[arg-type]
                continue
            if self.pending_bytes + size > _CHUNK_BYTES:
                self.flush()
            self._pending.append(blob)
            self.pending_bytes += size
            self._shared.bytes += size

    def flush(self) -> None:
        """Makes one chunk of the objects waiting to be copied, if any."""
        if self._pending:
            self._chunks.append(_concat_chunk(self._pending))
            self._shared.bytes -= self.pending_bytes
            self._pending, self.pending_bytes = [], 0


def _concat_chunk(blobs: list[Blob | None]) -> pa.Array[Any]:
    """One binary array from ``blobs``, copied once into a buffer of the exact size.

    (``pa.array`` grows its buffer by doubling, touching up to twice the memory.)
    """
    sizes = [0 if blob is None else len(blob) for blob in blobs]
    view = new_buffer(sum(sizes))
    position = 0
    for blob, size in zip(blobs, sizes, strict=True):
        if size:
            copy_into(view, position, blob)  # type: ignore[arg-type]
            position += size
    data = pa.py_buffer(view)
    offsets = pa.array(list(itertools.accumulate(sizes, initial=0)), pa.int32()).buffers()[1]
    nulls = sum(blob is None for blob in blobs)
    validity = pa.array([blob is not None for blob in blobs]).buffers()[1] if nulls else None
    return pa.Array.from_buffers(
        pa.binary(), len(blobs), [validity, offsets, data], null_count=nulls
    )
