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


def test_the_type_hints_of_the_public_api_resolve_at_run_time() -> None:
    """Before: typing.get_type_hints (used by pydantic, typer, cattrs, ...) raised
    NameError for Options.s3_client (its type came from the development-only stubs)
    and TypeError for TempDir (weakref.finalize[...] is not subscriptable)."""
    import inspect
    import typing

    import file_dataset.ray
    import file_dataset.testing

    resolved: list[str] = []
    for module in (file_dataset, file_dataset.ray, file_dataset.testing):
        for name in module.__all__:
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            members = [value]
            if inspect.isclass(value):
                members += [
                    member
                    for attribute, member in vars(value).items()
                    if inspect.isfunction(member)
                    and (not attribute.startswith("_") or attribute == "__init__")
                ]
            for member in members:
                typing.get_type_hints(member)
                resolved.append(f"{name}.{member.__name__}")
    assert "Options.s3_client" in resolved
    assert "TempDir.TempDir" in resolved
    assert "LocalS3Server.client" in resolved
