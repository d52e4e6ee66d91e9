"""A Ray Data datasource that turns a file DataFrame into a dataset of blobs."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from file_dataset._errors import InvalidInputError, InvalidTypeError
from file_dataset._frame import (
    ID_COLUMN,
    check_cells,
    check_frame,
    id_position,
    object_values,
    take,
)
from file_dataset._options import Options, resolve_options
from file_dataset._reader import reader

__all__ = ["FileDataFrameAsBlobDatasource", "blob_reader", "read_file_dataset"]

# Per row and column of a blob table: one int32 offset; the id column has one more.
_OFFSET_BYTES = 4


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise InvalidTypeError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def blob_schema(file_columns: list[str], id_position: int = 0) -> pa.Schema:
    """The schema of :meth:`FileReader.into_blob_table` for a file DataFrame.

    Args:
        file_columns: The file column names, in DataFrame order.
        id_position: Where ``id`` stands among the DataFrame's columns.

    Returns:
        One ``binary`` column per file column and ``id`` (``string``, not null), in the
        DataFrame's order.
    """
    fields: list[pa.Field[Any]] = [pa.field(name, pa.binary()) for name in file_columns]
    fields.insert(id_position, pa.field(ID_COLUMN, pa.string(), nullable=False))
    return pa.schema(fields)


def _make_read_fn(chunk: dict[str, Any], options: Options) -> Callable[[], list[pa.Table]]:
    """A read function that captures only its rows and ``options`` (not the datasource).

    ``chunk`` maps each column name (in DataFrame order) to the values of this task's
    rows. The function runs in a Ray worker, after ``chunk`` and ``options`` were
    unpickled there: it rebuilds the rows as a DataFrame and reads them with the core
    reader, which builds the worker's boto3 sessions and clients from ``options`` (and
    shares them with later tasks whose options are equal).
    """

    def read_file_dataframe_blobs() -> list[pa.Table]:
        # object columns: pandas 3's strings (Arrow) cannot hold a local path that is
        # not UTF-8 (os.fsdecode's surrogates), which reader() takes
        frame = pd.DataFrame(chunk, columns=list(chunk), dtype=object)
        return [reader(frame, options).into_blob_table()]

    return read_file_dataframe_blobs


class FileDataFrameAsBlobDatasource(Datasource):
    """A Ray Data datasource that reads every file of a file DataFrame into memory.

    The dataset it produces has the schema of :meth:`file_dataset.FileReader.into_blob_table`:
    the DataFrame's columns in its order, ``id`` as ``string`` and one ``binary`` column
    per file column holding the files' contents (null where a cell is null). A read task's rows keep
    their DataFrame order, and the tasks are made in DataFrame order, but Ray emits
    their blocks as they finish unless the dataset's context says otherwise:
    :func:`read_file_dataset` sets ``execution_options.preserve_order`` on the context
    of the dataset it returns. With ``ds = ray.data.read_datasource(source)`` do the
    same yourself (``ds.context.execution_options.preserve_order = True``; a dataset
    copies the driver's ``DataContext`` when it is made, so changing
    ``DataContext.get_current()`` afterwards does not reach it).

    Each read task reads ``batch_size`` rows with :func:`file_dataset.reader` in a Ray
    worker, using these ``options`` (pickled with the task), so the endpoint, the
    credentials, the concurrency and the retries are exactly those of the core library.

    A task's block is the blob table as the reader builds it, whose binary columns are
    chunked (objects under 1 MiB packed into chunks of 8-64 MiB, larger ones in chunks of
    their own, not copied). Ray's Arrow blocks take chunked columns as they are
    (slicing, batching, the object store and Parquet all handle them), so the chunks are
    not combined: that would copy every blob and could overflow a ``binary`` array's
    2 GiB limit.

    Args:
        file_dataframe: A file DataFrame: a unique, non-null ``id`` column plus one
            column per file name whose cells are ``s3://`` URLs or local paths (a
            ``pyarrow.Table`` or ``RecordBatch`` is read as its ``to_pandas()``).
        batch_size: How many rows one read task reads. A task holds the contents of
            all files of its rows at once, so this is the knob that bounds the memory of
            a read task. (Ray may split a task's output into several blocks when it is
            larger than ``DataContext.target_max_block_size``.)
        options: S3 settings for the workers; ``Options.default()`` when omitted (it
            freezes the credentials resolved here so that workers use them too).

    Raises:
        ValueError: The DataFrame has no ``id`` column, or a null or repeated id, or a
            file column name that is not a safe file name, or a cell that is not an
            ``s3://`` URL or local path (every row is checked here); or ``batch_size``
            is not a positive int.
        TypeError: ``options`` is not an :class:`Options` (a dict of settings, say).

    Examples:
        >>> source = FileDataFrameAsBlobDatasource(frame, 16, options)  # doctest: +SKIP
        >>> dataset = ray.data.read_datasource(source)  # doctest: +SKIP
    """

    def __init__(
        self,
        file_dataframe: pd.DataFrame | pa.Table | pa.RecordBatch,
        batch_size: int,
        options: Options | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._options = resolve_options(
            options, "FileDataFrameAsBlobDatasource(options=...)", default=Options.default
        )
        self._batch_size = _check_batch_size(batch_size)
        if isinstance(file_dataframe, pa.Table | pa.RecordBatch):  # as reader() reads one
            file_dataframe = file_dataframe.to_pandas()
        self._ids = check_frame(file_dataframe)
        # pandas copy-on-write: a shallow copy is cheap and unaffected by later edits.
        self._frame = file_dataframe.copy(deep=False)
        self._file_columns = [str(c) for c in file_dataframe.columns if c != ID_COLUMN]
        # A bad URL in any row fails here, not in a worker after other rows were read.
        check_cells(self._frame, self._ids, self._file_columns)
        self._schema = blob_schema(self._file_columns, id_position(self._frame))
        self._sized: _Sizes | None = None
        # Ray asks for the read tasks several times while planning; build them once.
        self._read_tasks: dict[int | None, list[ReadTask]] = {}

    @property
    def batch_size(self) -> int:
        """The number of rows per read task (one block, unless Ray splits a large one)."""
        return self._batch_size

    @property
    def num_read_tasks(self) -> int:
        """The number of read tasks: ``ceil(rows / batch_size)``, and one for no rows.

        An empty DataFrame gets one task that returns an empty blob table, so that the
        dataset still has the schema of ``into_blob_table()`` (with no task at all, Ray
        gives an empty dataset no schema).
        """
        return max(1, -(-len(self._frame) // self._batch_size))

    @property
    def dataframe(self) -> pd.DataFrame:
        """The file DataFrame this datasource reads (a copy taken when it was made)."""
        return self._frame

    @property
    def options(self) -> Options:
        """The options the read tasks use."""
        return self._options

    def __repr__(self) -> str:
        return (
            f"FileDataFrameAsBlobDatasource(rows={len(self._frame)}, "
            f"file_columns={self._file_columns!r}, batch_size={self._batch_size})"
        )

    def _sizes(self) -> _Sizes:
        """What the size estimates come from (made once, on the first request).

        In each file column the first ``batch_size`` files (non-null cells) are sized
        with ``into_size_table()``, one HEAD each; every other file of the column is
        assumed to be as large as their mean. For a frame without nulls these are
        the files of the first batch. Nulls, which hold no bytes, are counted out, so
        a frame whose first rows have no files is not taken for an empty one.
        """
        if self._sized is None:
            present = {c: self._frame[c].notna().to_numpy() for c in self._file_columns}
            chosen = {c: np.flatnonzero(p)[: self._batch_size] for c, p in present.items()}
            rows = np.unique(np.concatenate([np.arange(0), *chosen.values()]))
            mean_bytes = dict.fromkeys(self._file_columns, 0.0)
            if len(rows):
                values: dict[str, Any] = {ID_COLUMN: [self._ids[i] for i in rows]}
                for column, picked in chosen.items():
                    cells = object_values(take(self._frame[column], rows.tolist()))
                    # a row chosen for another column: this cell is not sized
                    sized = np.isin(rows, picked).tolist()
                    values[column] = [
                        cell if keep else None for cell, keep in zip(cells, sized, strict=True)
                    ]
                sample = pd.DataFrame(values, dtype=object)  # (as in the read tasks)
                sizes = reader(sample, self._options).into_size_table()
                for column, picked in chosen.items():
                    if len(picked):
                        total = pc.sum(sizes.column(column)).as_py() or 0
                        mean_bytes[column] = int(total) / len(picked)
            head_ids = self._ids[: self._batch_size]
            id_bytes = sum(len(i.encode()) for i in head_ids) / max(len(head_ids), 1)
            self._sized = _Sizes(
                mean_bytes,
                present,
                id_bytes + _OFFSET_BYTES * (len(self._file_columns) + 1),
            )
        return self._sized

    def estimate_inmemory_data_size(self) -> int:
        """Estimates the in-memory size of the whole dataset from its first files.

        Only the first ``batch_size`` files of each file column are sized (a HEAD
        request each; without nulls, those of the first ``batch_size`` rows); every
        other file of the column is assumed to be as large as their mean, and a null
        cell holds nothing. The result is computed once and cached.

        Returns:
            The estimated total size of the blob tables, in bytes.

        Raises:
            FileNotFoundError: A file that was sized does not exist.
            PermissionError: Access to a file that was sized was denied.
            OSError: Another failure while sizing them.
        """
        return round(self._sizes().bytes(0, len(self._frame)))

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: Any = None,
        **kwargs: Any,
    ) -> list[ReadTask]:
        """Creates one read task per ``batch_size`` rows, whatever ``parallelism`` is.

        ``parallelism`` is deliberately ignored. Ray picks it from the estimated
        dataset size and the cluster's CPUs, and would pack more rows into one task
        when there are few CPUs; but a blob table holds the whole contents of every
        file of its rows, so a task with more rows than the user asked for can exhaust
        a worker's memory. ``batch_size`` is the user's memory knob: a read task holds
        at most ``batch_size`` rows of blobs, and the dataset has
        ``ceil(len(file_dataframe) / batch_size)`` read tasks.

        Each task carries only its own slice of the DataFrame and the options, so its
        pickled size does not grow with the DataFrame. Its metadata gives its row
        count and estimated size (see :meth:`estimate_inmemory_data_size`); its schema
        is that of ``into_blob_table()``.

        Args:
            parallelism: The parallelism Ray requested; ignored (see above).
            per_task_row_limit: When Ray pushes a limit down, each task reads only its
                first ``per_task_row_limit`` rows.
            data_context: Ray's data context; not used.
            **kwargs: Arguments newer Ray versions may pass; not used.

        Returns:
            The read tasks, in DataFrame order.
        """
        del parallelism, data_context, kwargs
        limit = None if per_task_row_limit is None else max(int(per_task_row_limit), 0)
        tasks = self._read_tasks.get(limit)
        if tasks is None:
            tasks = self._read_tasks[limit] = self._make_read_tasks(limit)
        return list(tasks)

    def _make_read_tasks(self, limit: int | None) -> list[ReadTask]:
        sizes = self._sizes()
        # Object arrays: a slice is a view, pickled with only its own values.
        values = {column: object_values(self._frame[column]) for column in self._frame}
        total = len(self._frame)
        tasks: list[ReadTask] = []
        for index in range(self.num_read_tasks):  # one (of no rows) when the frame is empty
            start = index * self._batch_size
            stop = min(start + self._batch_size, total)
            if limit is not None:
                stop = min(stop, start + limit)
            chunk = {str(column): array[start:stop] for column, array in values.items()}
            metadata = BlockMetadata(
                num_rows=stop - start,
                size_bytes=round(sizes.bytes(start, stop)),
                exec_stats=None,
                input_files=None,
            )
            tasks.append(
                ReadTask(
                    _make_read_fn(chunk, self._options),
                    metadata,
                    schema=self._schema,
                    per_task_row_limit=limit,
                )
            )
        return tasks

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_read_tasks"] = {}
        return state


class _Sizes(NamedTuple):
    """The estimated in-memory bytes of a datasource's rows (see ``_sizes``)."""

    mean_bytes: dict[str, float]  # per file column: a file's mean size
    present: dict[str, np.ndarray]  # per file column: which rows have a file
    row_bytes: float  # per row, besides its files: id and Arrow offsets

    def bytes(self, start: int, stop: int) -> float:
        """The estimated bytes of rows ``[start, stop)``."""
        files = sum(
            mean * int(np.count_nonzero(self.present[column][start:stop]))
            for column, mean in self.mean_bytes.items()
        )
        return files + self.row_bytes * (stop - start)


# Ray warns that a requested number of blocks of 5,000 or more may slow reading down;
# with that many read tasks Ray's own choice does not split them anyway.
_MANY_READ_TASKS = 5000


def _default_num_blocks(num_read_tasks: int) -> int | None:
    """The ``override_num_blocks`` that keeps one block per read task, or ``None``.

    Left to itself, Ray asks for ``max(200, 2 * cluster CPUs, size / 128 MiB)`` blocks
    and splits every read task's output to reach that, so for fewer tasks the number
    of tasks is passed. From :data:`_MANY_READ_TASKS` tasks on nothing is passed: Ray
    would split them only on a cluster of more than 2,500 CPUs or for blocks over
    128 MiB (which it splits by size anyway), and asking would make it warn.
    """
    if num_read_tasks >= _MANY_READ_TASKS:
        return None
    return max(num_read_tasks, 1)


def _check_ray_kwargs(ray_kwargs: dict[str, Any]) -> None:
    """Refuses keywords that :func:`ray.data.read_datasource` does not name.

    Ray passes any other keyword on to the datasource's reader, which this datasource
    does not have: a misspelt ``concurency=2`` would be dropped without a word, or
    fail only when the dataset runs, far from the call that gave it.
    """
    import inspect

    parameters = inspect.signature(ray.data.read_datasource).parameters.values()
    accepted = sorted(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(ray_kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"read_file_dataset() got unexpected keyword arguments {unknown}: "
            f"ray.data.read_datasource (Ray {ray.__version__}) takes {accepted}"
        )


def read_file_dataset(
    file_dataframe: pd.DataFrame | pa.Table | pa.RecordBatch,
    batch_size: int,
    options: Options | None = None,
    *,
    preserve_order: bool = True,
    **ray_kwargs: Any,
) -> ray.data.Dataset:
    """Reads every file of a file DataFrame into a Ray dataset of blobs.

    The dataset has one row per DataFrame row: ``id`` (``string``) and one ``binary``
    column per file column holding the file's contents. Reading is lazy, as always in
    Ray Data, except that the first ``batch_size`` files of each file column (without
    nulls: of the first ``batch_size`` rows) are sized now (HEAD requests) to estimate
    the dataset's size. See :class:`FileDataFrameAsBlobDatasource`.

    The rows come in DataFrame order, as in ``reader(file_dataframe).into_blob_table()``:
    the returned dataset's context has ``execution_options.preserve_order = True``, and
    datasets derived from it (``map_batches``, ...) share that context, so they keep the
    order too. Ray then emits the blocks in task order, so a slow task holds back the
    blocks after it; pass ``preserve_order=False`` when the order does not matter.

    On a small cluster Ray Data (2.60) runs the read tasks of a short dataset nearly
    one at a time: it budgets each operator about half the cluster's CPUs, and nothing
    in an execution's first second. If that matters (a laptop, a short job), set
    ``dataset.context.op_resource_reservation_enabled = False`` on the returned
    dataset, or the same on ``ray.data.DataContext.get_current()`` *before* calling
    this function: a dataset keeps the copy of the driver's context made when it was
    created, so changing the driver's context afterwards has no effect on it. It is
    left to you because it applies to the whole pipeline built on the dataset, whose
    other operators it would stop protecting.

    Args:
        file_dataframe: A file DataFrame: a unique, non-null ``id`` column plus one
            column per file name whose cells are ``s3://`` URLs or local paths (a
            ``pyarrow.Table`` or ``RecordBatch`` is read as its ``to_pandas()``).
        batch_size: Rows per read task; bounds the memory of each task, which holds
            every file of its ``batch_size`` rows at once.
        options: S3 settings for the workers; ``Options.default()`` when omitted.
        preserve_order: Whether the dataset keeps the DataFrame's row order (default).
            ``False`` leaves the order to the driver's ``DataContext`` (Ray's default:
            blocks in the order their tasks finish).
        **ray_kwargs: Passed to :func:`ray.data.read_datasource` (for example
            ``concurrency``, ``num_cpus``, ``memory``). ``override_num_blocks`` does
            not change the number of read tasks; below 5,000 tasks it defaults to
            that number, so that each read task's table stays one block. (Left to
            itself, Ray asks for about 200 blocks on a small cluster and cuts every
            task's table into that many pieces, each stored, scheduled and fetched on
            its own, which made reading two to three times slower in our
            benchmarks.) A larger value makes Ray split each task's table into about
            ``override_num_blocks / tasks`` blocks.

    Returns:
        The dataset.

    Raises:
        ValueError: Not a valid file DataFrame (no ``id`` column, null or repeated
            ids, a cell in any row that is not a URL or path), or ``batch_size`` is not
            a positive int.
        TypeError: ``options`` is not an :class:`Options` (a dict of settings, say),
            or a keyword is neither this function's nor one that
            :func:`ray.data.read_datasource` of the installed Ray takes.
        FileNotFoundError: A file sized for the estimate does not exist.
        OSError: Sizing those files failed otherwise.

    Examples:
        >>> dataset = read_file_dataset(frame, 16, Options.default())  # doctest: +SKIP
        >>> dataset.schema()  # doctest: +SKIP
        Column     Type
        ------     ----
        id         string
        image.mha  binary
    """
    _check_ray_kwargs(ray_kwargs)
    options = resolve_options(options, "read_file_dataset(options=...)", default=Options.default)
    datasource = FileDataFrameAsBlobDatasource(file_dataframe, batch_size, options)
    blocks = _default_num_blocks(datasource.num_read_tasks)
    if blocks is not None:
        ray_kwargs.setdefault("override_num_blocks", blocks)
    dataset: ray.data.Dataset = ray.data.read_datasource(datasource, **ray_kwargs)
    if preserve_order:
        # The dataset's own copy of the driver's context: the driver's is left alone.
        dataset.context.execution_options.preserve_order = True
    return dataset


blob_reader = read_file_dataset
"""The same function as :func:`read_file_dataset`, under the design notes' name."""
