"""Sending a Pipeline's ``fn`` to Ray workers that cannot import the module it is in.

cloudpickle (Ray's pickler) sends a function by reference, as ``module.name``, when its
module is importable here, and the worker imports that module. A worker's ``sys.path``
is its own (the installed packages, ``PYTHONPATH``) plus the driver's working folder
and script folder, which Ray adds. A module found on a path that pytest or the user
put on ``sys.path`` at run time (a test file in ``tests/``, say) is not found there:
every batch failed with ``ModuleNotFoundError: No module named 'test_...'``. When Ray
pickles a Pipeline, such a ``fn`` is pickled by value instead, with what it uses of its
module and of the modules imported from the same folder; modules the workers do
import stay references. Other pickling (a copy, a process pool on this machine, whose
processes share this ``sys.path``) is left as it was.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import logging
import os
import site
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from file_dataset._errors import masked_cut, printable

_logger = logging.getLogger("file_dataset")
# Reentrant: pickling fn by value may pickle another Pipeline (a global fn uses).
_REGISTERING = threading.RLock()
# The meta path finders of the standard library and pytest (whose assertion rewriting
# finds test modules on the paths pytest added): any other finds modules in every
# process of this environment (an editable install's finder, set up by a .pth file).
_LOCAL_FINDERS = ("_frozen_importlib", "_frozen_importlib_external", "_pytest")
# Where Ray's pickler is: a Pipeline pickled from inside it is going to Ray.
_RAY_PICKLER = os.path.join("ray", "cloudpickle", "")


class FnByValue:
    """``fn`` pickled by value with Ray's cloudpickle; :func:`arrived` unpickles it."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value


def travelling(fn: Callable[..., Any]) -> Any:
    """``fn``, or a :class:`FnByValue` of it when Ray's workers could not import it."""
    pickler: Any = sys.modules.get("ray.cloudpickle")
    if pickler is None or not _pickled_by_ray():
        return fn
    modules = _unreachable_modules(fn, _shipped_by_ray())
    if not modules:
        return fn
    with _REGISTERING:  # the registration is global: two pickles at once must not mix
        if _registered(pickler, modules[0]):
            return fn  # the user's registration, or an outer travelling(), does it
        registered: list[types.ModuleType] = []
        try:
            for module in modules:
                if not _registered(pickler, module):
                    pickler.register_pickle_by_value(module)
                    registered.append(module)
            value = pickler.dumps(fn)
        except Exception as e:  # a module-level lock or open file fn uses: by reference,
            # as before; the workers will say only that they cannot import the module
            _logger.warning(
                "file_dataset.Pipeline: fn's module %r is not found where Ray's workers "
                "look (it was imported from %s) and fn cannot be pickled by value (%s: "
                "%s), so it is sent by reference and the workers will fail to import it: "
                "move fn to a module they import, or make what it uses picklable",
                modules[0].__name__,
                _root_of(modules[0].__name__),
                type(e).__name__,
                printable(masked_cut(str(e), 300)),
            )
            return fn
        finally:
            for module in registered:
                pickler.unregister_pickle_by_value(module)
    return FnByValue(value)


def _shipped_by_ray() -> set[str]:
    """The folders the Ray job's ``runtime_env`` puts on its workers' ``PYTHONPATH``.

    (Its ``py_modules`` cannot count: their uploaded packages do not say which modules
    they hold, and a ``fn`` of a test file must still go by value when the job ships
    the library under test; helper-132.)
    """
    ray = sys.modules.get("ray")
    try:
        if ray is None or not ray.is_initialized():
            return set()
        env = ray.get_runtime_context().runtime_env
        path = (env.get("env_vars") or {}).get("PYTHONPATH") or ""
    except Exception:  # a Ray whose runtime context cannot be read: as without one
        return set()
    return {os.path.realpath(folder) for folder in str(path).split(os.pathsep) if folder}


def _pickled_by_ray() -> bool:
    """Whether Ray's cloudpickle is pickling the object being pickled now."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if _RAY_PICKLER in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _registered(pickler: Any, module: types.ModuleType) -> bool:
    """Whether ``module`` (or a package holding it) is registered to go by value."""
    inner = getattr(pickler, "cloudpickle", pickler)  # the module that keeps the registry
    check = getattr(inner, "_is_registered_pickle_by_value", None)
    if check is not None:
        return bool(check(module))
    return module.__name__ in pickler.list_registry_pickle_by_value()


def arrived(fn: Any) -> Any:
    """The function :func:`travelling` gave, unpickled where it arrives."""
    if not isinstance(fn, FnByValue):
        return fn
    import pickle

    # The bytes come from this library's own __getstate__, inside the Pipeline's
    # pickle: unpickling that pickle already trusts its source.
    return pickle.loads(fn.value)  # noqa: S301


def _unreachable_modules(fn: Callable[..., Any], shipped: set[str]) -> list[types.ModuleType]:
    """The module defining ``fn`` and those beside it, if a Ray worker cannot import it.

    Beside it: the other modules imported from the same ``sys.path`` folder (a helper
    module the test file imports), which a worker cannot import either. Empty when
    fn's module is found.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__module__", None)
    if not isinstance(name, str):
        name = type(fn).__module__
    if name in ("__main__", "builtins") or name.partition(".")[0] == "file_dataset":
        return []  # cloudpickle sends __main__'s functions by value already
    module = sys.modules.get(name)
    root = _root_of(name)
    if module is None or root is None:
        return []  # a namespace package or a built-in module: leave it as it is
    if (
        root in shipped
        or _on_workers_path(root)
        or _found_by_an_installed_finder(name.partition(".")[0])
    ):
        return []
    beside = [
        other
        for other_name, other in list(sys.modules.items())
        if other is not module
        and isinstance(other, types.ModuleType)  # (some modules replace themselves)
        and "." not in other_name
        and _root_of(other_name) == root
    ]
    return [module, *beside]  # (a package registered covers its modules)


def _root_of(name: str) -> str | None:
    """The ``sys.path`` folder the module ``name`` was imported from.

    For a package's module, its top package's; None for a built-in module or a
    namespace package.
    """
    top = sys.modules.get(name.partition(".")[0])
    top_file = getattr(top, "__file__", None)
    if not isinstance(top_file, str):
        return None
    return _root_folder(top_file, hasattr(top, "__path__"))


@functools.lru_cache(maxsize=8192)
def _root_folder(top_file: str, package: bool) -> str:
    """The folder holding a top-level module's file, or its package's folder.

    Cached: a pickle looks at every loaded module (helper-129 measured 51 ms with
    3,000 modules, nearly all of it in ``realpath``).
    """
    root = os.path.dirname(os.path.realpath(top_file))
    return os.path.dirname(root) if package else root


def _found_by_an_installed_finder(name: str) -> bool:
    """Whether a meta path finder of the environment finds the module ``name``.

    Not Python's, not pytest's: another (an editable install's) is set up in every
    process of the environment, so workers find the module too.
    """
    for finder in sys.meta_path:
        if type(finder).__module__.partition(".")[0] in _LOCAL_FINDERS or finder in (
            importlib.machinery.PathFinder,
            importlib.machinery.BuiltinImporter,
            importlib.machinery.FrozenImporter,
        ):
            continue
        try:
            if finder.find_spec(name, None) is not None:
                return True
        except Exception:  # noqa: S112 (a finder that fails is not one that finds it)
            continue
    return False


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
    folders = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    with contextlib.suppress(OSError):  # a working folder removed meanwhile
        folders.append(os.getcwd())
    argv = getattr(sys, "argv", None)  # (an embedded interpreter may have none)
    if argv and isinstance(argv[0], str) and argv[0]:
        folders.append(os.path.dirname(os.path.realpath(argv[0])))
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
