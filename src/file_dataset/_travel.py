"""Sending a Pipeline's ``fn`` to Ray workers that cannot import the module it is in.

cloudpickle (Ray's pickler) sends a function by reference, as ``module.name``, when its
module is importable here, and the worker imports that module. A worker's ``sys.path``
is its own (the installed packages, ``PYTHONPATH``) plus the driver's working folder
and script folder, which Ray adds. A module found on a path that pytest or the user
put on ``sys.path`` at run time (a test file in ``tests/``, say) is not found there:
every batch failed with ``ModuleNotFoundError: No module named 'test_...'``. Such a
``fn`` is pickled by value instead, with the functions and classes of its module that
it uses; modules the workers do import stay references.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import site
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

_REGISTERING = threading.Lock()


class FnByValue:
    """A function pickled by value with cloudpickle; :func:`arrived` unpickles it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def travelling(fn: Callable[..., Any]) -> Any:
    """``fn``, or a :class:`FnByValue` of it when workers could not import its module."""
    module = _unreachable_module(fn)
    if module is None:
        return fn
    pickler: Any = sys.modules.get("ray.cloudpickle")
    if pickler is None:
        try:
            pickler = importlib.import_module("cloudpickle")
        except ImportError:  # no cloudpickle here: no Ray either, pickle as before
            return fn
    with _REGISTERING:  # the registration is global: two pickles at once must not mix
        if _registered(pickler, module):
            return fn  # the user's own registration does it
        pickler.register_pickle_by_value(module)
        try:
            return FnByValue(pickler.dumps(fn))
        finally:
            pickler.unregister_pickle_by_value(module)


def _registered(pickler: Any, module: types.ModuleType) -> bool:
    """Whether ``module`` (or a package holding it) is registered to go by value."""
    inner = getattr(pickler, "cloudpickle", pickler)  # the module that keeps the registry
    check = getattr(inner, "_is_registered_pickle_by_value", None)
    if check is not None:
        return bool(check(module))
    return module.__name__ in pickler.list_registry_pickle_by_value()


def arrived(fn: Any) -> Any:
    """The function :func:`travelling` gave, unpickled where it arrives."""
    if isinstance(fn, FnByValue):
        import pickle

        # the bytes come from this library's own __getstate__, inside the Pipeline's
        # pickle: unpickling that pickle already trusts its source
        return pickle.loads(fn.data)  # noqa: S301
    return fn


def _unreachable_module(fn: Callable[..., Any]) -> types.ModuleType | None:
    """The module defining ``fn`` if a Ray worker could not import it, else None."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__module__", None)
    if not isinstance(name, str):
        name = type(fn).__module__
    if name in ("__main__", "builtins") or name.startswith("file_dataset"):
        return None  # cloudpickle sends __main__'s functions by value already
    module = sys.modules.get(name)
    top = sys.modules.get(name.partition(".")[0])
    top_file = getattr(top, "__file__", None)
    if module is None or not isinstance(top_file, str):
        return None  # a namespace package or a built-in module: leave it as it is
    root = os.path.dirname(os.path.realpath(top_file))
    if hasattr(top, "__path__"):  # a package: its folder is inside the root
        root = os.path.dirname(root)
    return None if _on_workers_path(root) else module


def _on_workers_path(folder: str) -> bool:
    """Whether ``folder`` is on the ``sys.path`` a Ray worker of this driver has."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if any(folder == p or folder.startswith(p + os.sep) for p in prefixes):
        return True  # the standard library, the environment's site-packages
    return folder in _worker_folders()


def _worker_folders() -> set[str]:
    """The other folders a worker searches.

    The working and script folders (Ray adds them), ``PYTHONPATH``, and the paths of
    ``.pth`` files (editable installs).
    """
    folders = [os.getcwd(), os.path.dirname(os.path.realpath(sys.argv[0] or "."))]
    folders += os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return {os.path.realpath(f) for f in folders if f} | _pth_folders()


@functools.cache
def _pth_folders() -> frozenset[str]:
    """The folders the ``.pth`` files of the site-packages folders add."""
    sites: list[str] = []
    with contextlib.suppress(AttributeError):  # (virtualenv's old site module)
        sites = [*site.getsitepackages(), site.getusersitepackages()]
    folders: list[str] = []
    for sitedir in sites:
        with contextlib.suppress(OSError):
            for entry in os.listdir(sitedir):
                if entry.endswith(".pth"):
                    folders += _pth_paths(os.path.join(sitedir, entry), sitedir)
    return frozenset(os.path.realpath(f) for f in folders)


def _pth_paths(path: str, sitedir: str) -> list[str]:
    """The folders a ``.pth`` file adds (its lines that are not comments or imports)."""
    with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as f:
        return [
            os.path.join(sitedir, line.rstrip())
            for line in f
            if line.strip() and not line.startswith(("#", "import ", "import\t"))
        ]
    return []
