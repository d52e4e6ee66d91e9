"""Ray Data integration: read a file DataFrame into a Ray dataset of blobs.

``read_file_dataset(file_dataframe, batch_size, options)`` (also named
``blob_reader``) returns a ``ray.data.Dataset`` with an ``id`` column and one
``binary`` column per file column, read by :class:`FileDataFrameAsBlobDatasource`:
one Ray read task per ``batch_size`` rows, each reading its rows' files with
:func:`file_dataset.reader` in a worker. Its rows are in DataFrame order, as in
``reader(file_dataframe).into_blob_table()`` (``preserve_order=False`` lets Ray emit
blocks as their tasks finish).

To run a function on local files for every row on a Ray cluster, pass a
:class:`file_dataset.Pipeline` to ``Dataset.map_batches(..., batch_format="pandas")``.

Ray itself is imported on first use of a name of this module, so ``import
file_dataset`` and ``import file_dataset.ray`` never import Ray. Needs the ``ray``
extra (``ray[data]``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from file_dataset.ray._datasource import (
        FileDataFrameAsBlobDatasource,
        blob_reader,
        read_file_dataset,
    )

__all__ = ["FileDataFrameAsBlobDatasource", "blob_reader", "read_file_dataset"]


if not TYPE_CHECKING:  # else a type checker took any misspelt name here for Any

    def __getattr__(name: str) -> Any:
        if name not in __all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        try:
            module = importlib.import_module("file_dataset.ray._datasource")
        except ImportError as e:
            if e.name is not None and e.name.split(".")[0] == "ray":
                raise ImportError(
                    "file_dataset.ray needs Ray Data: pip install 'ray[data]' (or this package's "
                    "'ray' extra)"
                ) from e
            raise
        value = getattr(module, name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
