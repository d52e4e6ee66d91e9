"""The public API: ``__all__`` is complete and sorted (like httpx's test_exported_members)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

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


def test_an_argument_of_the_wrong_type_is_both_a_type_and_a_value_error(tmp_path: Path) -> None:
    """Some wrong types were a ValueError (InvalidInputError) and others a TypeError,
    and FileDatasetError's docstring said TypeError. Where a value is parsed from what
    was given, a wrong type is now both: either ``except`` catches it."""
    import pickle

    import pandas as pd

    from file_dataset.ray import read_file_dataset

    frame = pd.DataFrame({"id": ["1"], "a.bin": [str(tmp_path / "a.bin")]})
    pipeline = file_dataset.Pipeline(lambda i, o: {}, {"into_path": str(tmp_path / "out")})
    calls = {
        "reader(5)": lambda: file_dataset.reader(5),  # type: ignore[arg-type]
        "reader([...])": lambda: file_dataset.reader(["s3://b/k"]),  # type: ignore[arg-type]
        "pipeline([...])": lambda: pipeline([1, 2]),  # type: ignore[call-overload]
        "on_error=True": lambda: file_dataset.Pipeline(
            lambda i, o: {},
            {"into_path": "/x"},
            on_error=True,  # type: ignore[arg-type]
        ),
        "into_path=None": lambda: file_dataset.write_files({}, None, "1"),  # type: ignore[arg-type]
        "a cell of 5": lambda: file_dataset.reader({"a.bin": 5}),
        "dir=5": lambda: file_dataset.reader(frame).into_temp_dir(dir=5),  # type: ignore[arg-type]
        "download_to(None)": lambda: file_dataset.reader(frame).download_to(None),  # type: ignore[arg-type]
        "batch_size='4'": lambda: read_file_dataset(frame, "4"),  # type: ignore[arg-type]
        "read_file_dataset(dict)": lambda: read_file_dataset({"id": ["1"]}, 4),  # type: ignore[arg-type]
        # write_files: a TypeError only, a ValueError only, a ValueError only (before)
        "write_files([...])": lambda: file_dataset.write_files(["a"], tmp_path, "1"),  # type: ignore[arg-type]
        "write_files({5: ...})": lambda: file_dataset.write_files({5: "/a"}, tmp_path, "1"),
        "write_files({'a': 5})": lambda: file_dataset.write_files({"a": 5}, tmp_path, "1"),
    }
    for name, call in calls.items():
        try:
            call()
        except Exception as e:
            error = e
        else:
            raise AssertionError(f"{name} raised nothing")
        assert isinstance(error, TypeError), name
        assert isinstance(error, file_dataset.InvalidInputError), name
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy)) == (type(error), str(error)), name
    with pytest.raises(TypeError, match=r"into_temp_dir\(dir=...\): expected a local folder"):
        file_dataset.reader(frame).into_temp_dir(dir=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a positive int") as info:
        read_file_dataset(frame, 0)
    assert not isinstance(info.value, TypeError)  # a wrong value is a ValueError only


def test_import_on_a_system_without_posix_says_so() -> None:
    """Windows lacks os.register_at_fork, os.pwrite and O_NOFOLLOW: before, importing the
    package there failed with "module 'os' has no attribute 'register_at_fork'"."""
    script = "import os; os.name = 'nt'\nimport file_dataset"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: file_dataset runs on POSIX systems (Linux, macOS)")
    assert "use it under WSL2" in last
