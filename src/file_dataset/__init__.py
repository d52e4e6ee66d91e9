"""file_dataset: explicit, eager and fast reads and writes of file DataFrames.

A *file DataFrame* is a pandas DataFrame with an ``id`` column and one column per file
name, whose cells are ``s3://bucket/key`` URLs (or local paths). ``reader`` pulls those
files into a temporary directory or into PyArrow tables, ``write_files`` pushes local
files back, and ``Pipeline`` does both around a function of local files, row by row.
Ray Data integration lives in ``file_dataset.ray``, which ``import file_dataset``
makes available as an attribute without importing Ray itself (Ray loads on first use).
"""

import os as _os

if _os.name != "posix":  # before any module that needs it fails with an AttributeError
    raise ImportError(
        "file_dataset runs on POSIX systems (Linux, macOS), not on "
        f"{_os.name!r}: it relies on os.register_at_fork, os.pwrite and O_NOFOLLOW, "
        "which Windows lacks; on Windows, use it under WSL2"
    )

# ``file_dataset.ray`` resolves its names lazily, so binding it here is cheap and lets
# ``import file_dataset; file_dataset.ray.read_file_dataset(...)`` work as written.
from file_dataset import ray as ray
from file_dataset._errors import (
    FileDatasetError,
    InvalidInputError,
    ObjectAccessDeniedError,
    ObjectNotFoundError,
    TransferError,
)
from file_dataset._options import Options
from file_dataset._pipeline import Pipeline, RowFailure
from file_dataset._reader import FileReader, TempDir, reader
from file_dataset._writer import write_files, written_ids

__version__ = "0.1.0"

__all__ = [
    "FileDatasetError",
    "FileReader",
    "InvalidInputError",
    "ObjectAccessDeniedError",
    "ObjectNotFoundError",
    "Options",
    "Pipeline",
    "RowFailure",
    "TempDir",
    "TransferError",
    "__version__",
    "reader",
    "write_files",
    "written_ids",
]
