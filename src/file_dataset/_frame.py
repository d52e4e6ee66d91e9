"""Validation of file DataFrames and rows: ids, file names and URLs.

A *file DataFrame* has an ``id`` column (unique, non-null; used as a string) and any
number of file columns whose names are file names and whose cells are URLs or
local paths; a null cell means "no file". A *row* is a mapping of file name to URL.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from file_dataset._errors import (
    InvalidInputError,
    InvalidTypeError,
    listed,
    quoted,
    quoted_masked,
)
from file_dataset._urls import (
    Location,
    check_component,
    check_id,
    is_checked_s3_url,
    is_null,
    parse_url,
)

ID_COLUMN = "id"


@dataclass(frozen=True)
class FileTable:
    """A validated file DataFrame or row.

    Attributes:
        ids: The row ids as strings, or ``None`` for a single row given as a mapping.
        columns: The file names (file columns), in order.
        cells: One list per row, one location (or ``None``) per file column.
        id_position: Where the ``id`` column stands among the DataFrame's columns;
            tables built from it put ``id`` there too.
        label: A single row's ``id`` entry, if it has a valid one: named in errors
            only.
    """

    ids: list[str] | None
    columns: list[str]
    cells: list[list[Location | None]]
    id_position: int = 0
    label: str | None = None

    def row_id(self, index: int) -> str | None:
        """The id of row ``index`` (a single row's ``id`` entry, or ``None``)."""
        return self.label if self.ids is None else self.ids[index]


def _cell(value: Any, row_id: str | None, column: str) -> Location | None:
    if is_null(value):
        return None
    try:
        return parse_url(value)
    except InvalidInputError as e:
        where = f"row id {quoted(row_id)}, " if row_id is not None else ""
        raise type(e)(
            f"{where}column {quoted(column)}: {e}", row_id=row_id, column=column
        ) from None


def parse_cells(columns: list[str], values: list[Any], row_id: str | None) -> list[Location | None]:
    """Parses one row's cells (``None`` for null cells).

    Raises:
        InvalidInputError: A cell is not a URL or path; the message names the row id,
            the column and the value.
    """
    return [_cell(value, row_id, column) for column, value in zip(columns, values, strict=True)]


def check_ids(values: Any) -> list[str]:
    """Validates an ``id`` column and returns the ids as strings.

    Raises:
        InvalidInputError: An id is null, repeated, or not usable as a path component.
    """
    values = list(values)
    for position, value in enumerate(values):  # first: a float column may hold NaN
        if is_null(value):
            raise InvalidInputError(f"the 'id' column has a null value at position {position}")
    ids = [check_id(value) for value in values]
    if len(set(ids)) != len(ids):
        repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
        raise InvalidInputError(f"the 'id' column must be unique; repeated ids: {listed(repeated)}")
    return ids


def check_frame(frame: pd.DataFrame) -> list[str]:
    """Checks a file DataFrame's ``id`` column and file column names.

    Args:
        frame: The file DataFrame.

    Returns:
        The ids as strings.

    Raises:
        InvalidInputError: No ``id`` column, or a bad id or column name.
    """
    if not isinstance(frame, pd.DataFrame):
        raise InvalidTypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    if ID_COLUMN not in frame.columns:
        hint = (
            "; the ids are its index: frame.reset_index('id') makes them a column"
            if ID_COLUMN in frame.index.names
            else ""
        )
        raise InvalidInputError(
            "a file DataFrame needs an 'id' column (unique, non-null); "
            f"columns are {listed(frame.columns)}{hint}"
        )
    if list(frame.columns).count(ID_COLUMN) > 1:
        raise InvalidInputError("a file DataFrame must have exactly one 'id' column")
    if not frame.columns.is_unique:
        repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise InvalidInputError(f"file column names must be unique; repeated: {listed(repeated)}")
    for column in frame.columns:
        if column != ID_COLUMN:
            if not isinstance(column, str):
                raise InvalidTypeError(f"file column names must be strings, got {column!r}")
            check_component(column, "file name")
    ids = check_ids(frame[ID_COLUMN].tolist())
    for column in frame.columns:
        if column != ID_COLUMN:
            _check_column_type(frame[column], column, ids)
    return ids


# dtype kinds that cannot hold a URL or path: bool, numbers, datetimes and timedeltas
_NOT_PATHS = frozenset("biufcmM")


def _check_column_type(values: pd.Series, column: str, ids: list[str]) -> None:
    """Refuses a whole column of numbers, booleans or dates (a label, say) at once.

    Such a column is a shape mistake: read row by row, every row would fail the same
    way. An all-null one (NaN floats, NaT) is a file column with no files, and passes.
    """
    dtype = values.dtype
    # a categorical column (a hive partition column from read_parquet) by its categories
    held = dtype.categories.dtype if isinstance(dtype, pd.CategoricalDtype) else dtype
    if held.kind not in _NOT_PATHS:
        _check_cells(values, column, ids)
        return
    present = values.notna().to_numpy()
    if dtype.kind == "f":  # an Arrow NaN is a value, not a null, to notna()
        present = present & ~np.isnan(values.to_numpy(dtype="float64", na_value=np.nan))
    if not present.any():
        return
    first = int(np.flatnonzero(present)[0])
    value = values.iloc[[first]].tolist()[0]  # a Python value: 3, not np.int64(3)
    shown = str(dtype) if held is dtype else f"category ({held})"
    raise InvalidInputError(
        f"column {column!r} holds {shown} values (row id {quoted(ids[first])}: "
        f"{quoted(value)}), not file URLs or paths: every column of a file DataFrame "
        f"except {ID_COLUMN!r} is a file column, so drop the others first "
        f"(frame.drop(columns=[{column!r}]))",
        row_id=ids[first],
        column=column,
    )


def _names_a_file(value: Any) -> bool:
    """Whether a cell can name a file: a str or path, or an Arrow scalar of a string.

    Arrow scalars come in a column built of a pyarrow column's items (dictionary-encoded
    ones too).
    """
    if isinstance(value, pa.Scalar):
        value = value.as_py()
    return isinstance(value, str | os.PathLike)


def _check_cells(values: pd.Series, column: str, ids: list[str]) -> None:
    """Refuses, from its dtype or its cells, a column that cannot hold file names.

    That is a column of bytes (file contents, as a blob table holds): Arrow binary
    columns are known by their dtype; an object column by its first non-null value.
    So are Arrow lists and structs, and an object column none of whose cells is a
    string or path (numbers, dates, ``Decimal``s, lists: metadata from Parquet, say),
    which read row by row would fail every row. That does not depend on the rows'
    order: a column with some strings is checked cell by cell, as usual.
    """
    dtype = values.dtype
    arrow = dtype.pyarrow_dtype if isinstance(dtype, pd.ArrowDtype) else None
    binary = arrow is not None and (
        pa.types.is_binary(arrow)
        or pa.types.is_large_binary(arrow)
        or pa.types.is_fixed_size_binary(arrow)
    )
    nested = arrow is not None and pa.types.is_nested(arrow)
    if not binary and not nested and dtype.kind != "O":
        return
    present = values.notna().to_numpy()
    if not present.any():
        return
    row = int(np.flatnonzero(present)[0])
    value = values.iloc[row]
    if binary or isinstance(value, bytes | bytearray | memoryview):
        raise InvalidInputError(
            f"column {column!r} holds bytes (row id {quoted(ids[row])}: {quoted(value)}), "
            "not file URLs or paths: a file DataFrame's cells name files, while a blob "
            "table (what into_blob_table() and read_file_dataset give) holds their contents",
            row_id=ids[row],
            column=column,
        )
    if not nested and (
        _names_a_file(value)  # the usual case: no scan
        or any(_names_a_file(v) for v in values[present].tolist())
    ):
        return
    raise InvalidInputError(
        f"column {column!r} holds {type(value).__name__} values (row id "
        f"{quoted(ids[row])}: {quoted(value)}), not file URLs or paths: every column "
        f"of a file DataFrame except {ID_COLUMN!r} is a file column, one file per "
        f"cell, so drop the others first (frame.drop(columns=[{column!r}]))",
        row_id=ids[row],
        column=column,
    )


def check_cells(frame: pd.DataFrame, ids: list[str], columns: list[str]) -> None:
    """Checks every cell as :func:`parse_frame` does, without keeping what it parsed.

    Raises:
        InvalidInputError: A cell is not a URL or path (the message names the row id,
            the column and the value).
    """
    for column in columns:
        for value, row_id in zip(frame[column].tolist(), ids, strict=True):
            if not is_checked_s3_url(value):
                _cell(value, row_id, column)


def parse_frame(frame: pd.DataFrame) -> FileTable:
    """Validates a file DataFrame and parses every cell.

    Raises:
        InvalidInputError: See :func:`check_frame`; or a cell is not a URL or path
            (the message names the row id, the column and the value).
    """
    ids = check_frame(frame)
    columns = [str(c) for c in frame.columns if c != ID_COLUMN]
    rows = frame_rows(frame, columns)
    cells = [parse_cells(columns, values, row_id) for values, row_id in zip(rows, ids, strict=True)]
    return FileTable(ids, columns, cells, id_position(frame))


def id_position(frame: pd.DataFrame) -> int:
    """The index of the ``id`` column among ``frame``'s columns."""
    return list(frame.columns).index(ID_COLUMN)


def object_values(values: pd.Series) -> np.ndarray:
    """A column's cells as a numpy array of Python objects.

    pyarrow (up to 25 at least) has no filter or take kernel for ``string_view``, on
    which pandas' ``to_numpy`` and ``iloc[positions]`` rely: such a column (from
    ``read_parquet(dtype_backend="pyarrow")``) goes through a list instead.
    """
    try:
        return values.to_numpy(dtype=object)
    except pa.ArrowNotImplementedError:
        cells = np.empty(len(values), dtype=object)
        cells[:] = values.tolist()
        return cells


def take(values: pd.Series, positions: list[int]) -> pd.Series:
    """``values.iloc[positions]``, also for a ``string_view`` column (see above)."""
    try:
        return values.iloc[positions]
    except pa.ArrowNotImplementedError:
        dtype = values.dtype
        if not isinstance(dtype, pd.ArrowDtype):
            raise
        cells = [None if is_null(cell) else cell for cell in object_values(values)[positions]]
        array = pd.arrays.ArrowExtensionArray(pa.array(cells, type=dtype.pyarrow_dtype))
        return pd.Series(array, index=values.index[positions], name=values.name)


def frame_rows(frame: pd.DataFrame, columns: list[str]) -> list[list[Any]]:
    """The raw cells of ``columns``, one list per row."""
    data = [frame[c].tolist() for c in columns]
    return (
        [list(values) for values in zip(*data, strict=True)] if data else [[] for _ in frame.index]
    )


def series_row(row: pd.Series) -> dict[str, Any]:
    """A ``pd.Series`` row as a dict, refusing labels a dict would lose or rename.

    A row of a frame with two columns of one name has that label twice, and a dict
    keeps only the last; a label that is not a string would pass as its ``str()``.

    Raises:
        InvalidInputError: A label is repeated, or is not a string (an
            :class:`InvalidTypeError` then).
    """
    if not row.index.is_unique:
        repeated = sorted({str(label) for label in row.index[row.index.duplicated()]})
        raise InvalidInputError(
            f"the row's file names must be unique; repeated: {listed(repeated)}"
        )
    for label in row.index:
        if not isinstance(label, str):
            raise InvalidTypeError(
                f"the row's file names must be strings, got {quoted(label)}: a Series is "
                "one row, its index the file names and its values their URLs "
                "(frame.iloc[0], say); for a column of URLs, pass a DataFrame with an 'id' "
                "column"
            )
    return {str(label): value for label, value in row.items()}


def is_numpy_batch(batch: Mapping[str, Any]) -> bool:
    """Whether a mapping is a batch of columns (Ray's NumPy format), not a single row."""
    return bool(batch) and all(
        isinstance(column, np.ndarray) and column.ndim == 1 for column in batch.values()
    )


def numpy_batch_frame(batch: Mapping[str, Any]) -> pd.DataFrame:
    """The DataFrame of a batch of NumPy columns (see :func:`is_numpy_batch`).

    Raises:
        InvalidInputError: The columns are not all of one length.
    """
    lengths = {str(name): len(column) for name, column in batch.items()}
    if len(set(lengths.values())) > 1:
        got = listed(
            lengths.items(), show=lambda item: f"{quoted(item[0])}: {item[1]}", brackets="{}"
        )
        raise InvalidInputError(f"a batch of NumPy columns needs columns of one length, got {got}")
    return pd.DataFrame(dict(batch))


def parse_row(row: Mapping[str, Any] | pd.Series) -> FileTable:
    """Validates a single row: a mapping of file name to URL.

    An ``id`` entry is not a file; errors name it as the row id.

    Raises:
        InvalidInputError: A name is not a safe file name or a value not a URL or path.
    """
    if isinstance(row, pd.Series):
        row = series_row(row)
    if not isinstance(row, Mapping):
        shown = type(row).__name__
        if isinstance(row, str | os.PathLike):  # a URL may be presigned: masked
            shown += f" {quoted_masked(os.fspath(row))}"
        raise InvalidTypeError(
            "expected one row (a mapping of file name to URL, such as {'image.mha': "
            "'s3://bucket/key'}) or a file DataFrame (an 'id' column and one column per "
            f"file name), got {shown}"
        )
    label = _row_label(row.get(ID_COLUMN))
    columns: list[str] = []
    cells: list[Location | None] = []
    for name, value in row.items():
        if name == ID_COLUMN:
            continue
        if not isinstance(name, str):
            raise InvalidTypeError(f"file names must be strings, got {name!r}")
        columns.append(check_component(name, "file name"))
        try:
            cells.append(_cell(value, label, name))
        except InvalidTypeError as e:
            if not _looks_like_a_column(value):
                raise
            hint = "a dict of columns is one row: pass pd.DataFrame(...) for several"
            raise InvalidTypeError(f"{e} ({hint})", row_id=e.row_id, column=e.column) from None
    return FileTable(None, columns, [cells], label=label)


def _looks_like_a_column(value: Any) -> bool:
    """Whether a row's cell could be a whole column (a dict of lists given as one row).

    Not an empty list, a nested dict or a 0-d array, where that hint would mislead.
    """
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.size > 0
    return isinstance(value, list | tuple | pd.Series | pd.Index) and len(value) > 0


def _row_label(value: Any) -> str | None:
    # A row's id is not one of its files, and is not checked: one that could not be a
    # DataFrame's id is simply not named in errors.
    if is_null(value):
        return None
    try:
        return check_id(value)
    except (TypeError, ValueError):  # InvalidInputError is a ValueError
        return None
