"""The public API: ``__all__`` is complete and sorted (like httpx's test_exported_members)."""

from __future__ import annotations

import types

import file_dataset


def test_all_is_complete_and_sorted() -> None:
    public = [
        name
        for name, value in vars(file_dataset).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType)  # submodules such as testing or ray
    ]
    assert file_dataset.__all__ == sorted(public)


def test_every_export_resolves() -> None:
    for name in file_dataset.__all__:
        assert getattr(file_dataset, name) is not None


def test_errors_are_builtin_exceptions_too() -> None:
    assert issubclass(file_dataset.InvalidInputError, ValueError)
    assert issubclass(file_dataset.ObjectNotFoundError, FileNotFoundError)
    assert issubclass(file_dataset.ObjectAccessDeniedError, PermissionError)
    assert issubclass(file_dataset.TransferError, OSError)
    for name in ("InvalidInputError", "ObjectNotFoundError", "TransferError"):
        assert issubclass(getattr(file_dataset, name), file_dataset.FileDatasetError)
