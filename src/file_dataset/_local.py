"""Local files as a storage backend."""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import io
import logging
import os
import secrets
import shutil
import stat as stat_module
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from file_dataset._backend import (
    CHANGED,
    SOURCE_CHANGED,
    Blob,
    Part,
    Sink,
    file_version,
    new_buffer,
    readinto_chunks,
)
from file_dataset._errors import (
    TransferError,
    printable,
    source_error,
    translate_os_error,
)
from file_dataset._options import CallStopped, call_stopped
from file_dataset._urls import Location, temp_prefix


def new_temp_file(dest: Path) -> tuple[int, str]:
    """Creates a new empty file beside ``dest``, under a unique temporary name.

    Unlike :func:`tempfile.mkstemp` (mode 0o600), the file gets the mode of any new
    file (0o666 less the umask), which it keeps once renamed to ``dest``.

    Returns:
        The open descriptor (read-write) and the file's path.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    prefix = os.path.join(dest.parent, temp_prefix(dest.name))
    for _ in range(100):
        tmp = f"{prefix}{secrets.token_hex(6)}.part"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {str(dest)!r}")


logger = logging.getLogger("file_dataset")

# Folders of ours whose removal failed (no file descriptor left, say) or was cut short
# (a second Ctrl-C while removing 200,000 folders, which takes a minute on a slow
# disk): what is left of them is removed when the interpreter exits.
_REMOVING: set[Path] = set()


def _remove_left_folders() -> None:
    for path in list(_REMOVING):
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_left_folders)


def make_temp_folder(prefix: str, parent: str | None, who: str, advice: str) -> Path:
    """A new folder in ``parent`` (the system's temporary folder when None).

    mkdtemp's own error names the random folder it would have made, which does not
    exist: this one names ``parent``, the reason and what to do (``advice``), and is
    the ``OSError`` subclass of the same errno.
    """
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as e:
        where = parent
        if where is None:
            try:
                where = tempfile.gettempdir()
            except OSError:  # no usable temporary folder at all
                where = "the system's temporary folder"
        reason = "no write permission" if isinstance(e, PermissionError) else e.strerror
        if e.errno is None:  # (OSError(None, ...) would say "[Errno None]")
            raise OSError(f"{who} cannot make its folder in {where!r} ({e}); {advice}") from e
        raise OSError(
            e.errno, f"{who} cannot make its folder there ({reason or e}); {advice}", where
        ) from e


def remove_tree(path: Path, hint: str = "") -> bool:
    """Removes a temporary folder of ours (or a file or link put in its place).

    Tried three times (a thread may still be writing in it); a folder that stays is
    named in a WARNING on the ``file_dataset`` logger with the error that kept it, and
    tried again at exit.

    Args:
        path: The folder.
        hint: What may have kept it, for the warning.

    Returns:
        Whether nothing is left at ``path``.
    """
    _REMOVING.add(path)
    errors: list[BaseException] = []

    def keep(*args: Any) -> None:
        errors.append(args[-1] if isinstance(args[-1], BaseException) else args[-1][1])

    for _ in range(3):
        errors.clear()  # the first error of the last try says why: later ones follow
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            with contextlib.suppress(OSError):
                os.unlink(path)
        try:
            if sys.version_info >= (3, 12):
                shutil.rmtree(path, onexc=keep)
            else:
                shutil.rmtree(path, onerror=keep)
        except BaseException:
            # An interrupt (Ctrl-C at the end of a with block, say) in the middle: the
            # rest is removed before it goes on, not left until the interpreter exits
            # (helper-140 saw a folder of finished files stay, once in 30 interrupts).
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                _REMOVING.discard(path)
            raise
        if not os.path.lexists(path):
            _REMOVING.discard(path)
            return True
    cause = errors[0] if errors else None
    if getattr(cause, "errno", None) == errno.EMFILE:
        hint = ""  # the hint guesses at another cause than a shortage of descriptors
    logger.warning(
        "file_dataset could not remove its temporary folder %s (%s%s); it is tried again "
        "when the interpreter exits",
        printable(str(path)),
        printable(str(cause)) if cause is not None else "it is still there",
        f"; {hint}" if hint else "",
    )
    return False


def temp_file_in_place(dest: Path) -> tuple[int, str]:
    """Makes ``dest``'s folder (and parents) and a new temporary file in it.

    A writer of the same row whose call failed removes the row folder it made when it
    is empty (see :func:`file_dataset.write_files`): if the folder goes between being
    made and the file being created here, it is made again.
    """
    attempts = 8
    while True:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            return new_temp_file(dest)
        except (FileNotFoundError, FileExistsError, NotADirectoryError) as e:
            # FileExistsError: mkdir saw the folder, which was gone when it checked it
            # was one, or a file stands there. Any other cause raises again on the last
            # attempt.
            attempts -= 1
            blocker = not_a_folder(dest.parent)
            if blocker is not None:
                try:
                    raise blocker from e
                finally:
                    del blocker  # (kept in this frame, which its traceback holds: a cycle)
            if not attempts:
                raise


def not_a_folder(folder: Path) -> OSError | None:
    """The error naming what stands where ``folder`` or a parent must be, if anything.

    That is a file or a broken link; ``None`` when the path is clear.
    """
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            if os.path.isdir(path):
                return None
            if os.path.islink(path):
                return NotADirectoryError(
                    errno.ENOTDIR,
                    f"{path} is a link to {os.readlink(path)}, which does not exist",
                )
            return NotADirectoryError(errno.ENOTDIR, f"{path} is in the way: not a folder")
    return None


_COPY_CHUNK = 8 * 1024 * 1024


def _copy_in_kernel(src_fd: int, dest_fd: int) -> int:
    """Copies the rest of ``src_fd`` to ``dest_fd`` inside the kernel, as far as it can.

    ``copy_file_range(2)`` moves the bytes without bringing them into this process;
    XFS and btrfs may share the file's extents instead, and NFS 4.2 copies on the
    server. Where it cannot (an old kernel, file systems it does not pair, any
    failure) it stops quietly with both offsets where it left them, for
    :func:`_copy_contents` to copy the rest, or once its call is stopped (between
    chunks: see :func:`~file_dataset._options.call_stopped`).

    Returns:
        The bytes copied.
    """
    copy = getattr(os, "copy_file_range", None)  # Linux only
    done = 0
    while copy is not None and not call_stopped():
        try:
            n = copy(src_fd, dest_fd, _KERNEL_COPY_CHUNK)
        except OSError:
            return done
        if not n:
            return done  # the end of the file (or nothing the kernel will copy)
        done += n
    return done


# At most this much per copy_file_range call: a Ctrl-C is seen between calls.
_KERNEL_COPY_CHUNK = 64 * 1024 * 1024


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_contents(
    src: io.BufferedReader,
    stat: os.stat_result,
    dest_fd: int,
    name: str,
) -> int:
    """Copies the rest of ``src`` to ``dest_fd``, in the kernel as far as it can.

    The rest is read and written here (all of it for a file whose size says nothing,
    see :func:`_size_says_nothing`; ``stat`` is the source's). A read's failure is
    raised as the failure of ``name`` (a :class:`TransferError`), a write's as it
    comes, for the caller to name as the destination's. A call that is stopped (see
    :func:`~file_dataset._options.call_stopped`) stops between chunks with
    :class:`CallStopped`.

    Returns:
        The bytes copied.
    """
    done = 0 if _size_says_nothing(stat) else _copy_in_kernel(src.fileno(), dest_fd)
    while True:  # what the kernel did not copy (or all of it)
        if call_stopped():
            raise CallStopped
        try:
            chunk = src.read(_COPY_CHUNK)
        except OSError as e:  # the source's failure, not the destination's
            raise translate_os_error(e, name, "read") from e
        if not chunk:
            return done
        _write_all(dest_fd, chunk)
        done += len(chunk)


def atomic_copy(src: Path, dest: Path) -> None:
    """Copies ``src`` to ``dest`` through a temporary name in the same folder.

    No partial file is ever visible at ``dest``: it appears complete, or not at all;
    nor a mix of two versions of ``src`` (a ``src`` changed during the copy raises).
    A ``src`` that cannot be opened or read is named as the file that failed.
    """
    try:
        inp = open(src, "rb")  # noqa: SIM115 (closed below, after the temporary file)
    except OSError as e:
        raise source_error(e, str(src)) from e
    with inp:
        fd, tmp = temp_file_in_place(dest)
        try:
            try:
                stat = os.fstat(inp.fileno())
                _copy_contents(inp, stat, fd, str(src))
            finally:
                os.close(fd)
            if file_version(os.fstat(inp.fileno())) != file_version(stat):
                raise TransferError(str(src), SOURCE_CHANGED, operation="read")
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _check_version(f: io.FileIO, loc: Location, tag: str | None) -> None:
    if tag is not None and file_version(os.fstat(f.fileno())) != tag:
        raise TransferError(str(loc), CHANGED)


def not_a_file(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    if stat_module.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat_module.S_ISFIFO(mode):
        kind = "a named pipe"
    elif stat_module.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "a device"
    return f"is {kind}, not a regular file (only files with a known size can be read)"


def _open_regular(loc: Location) -> io.BufferedReader:
    """Opens a regular file for reading; anything else raises at once.

    The file is opened without blocking, so that a named pipe (or ``/dev/stdin``) in a
    cell is an error instead of a read that waits for ever for a writer.

    Raises:
        OSError: The file cannot be opened.
        TransferError: It is a directory, pipe, socket or device.
    """
    fd = os.open(loc.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat_module.S_ISREG(mode):
            raise TransferError(str(loc), not_a_file(mode))
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@functools.cache
def _sysfs_device() -> int | None:
    """The device of ``/sys`` when it is a mount of its own (sysfs), else ``None``."""
    try:
        sys_device = os.stat("/sys").st_dev
        return sys_device if sys_device != os.stat("/").st_dev else None
    except OSError:
        return None


def _size_says_nothing(stat: os.stat_result) -> bool:
    """Whether a regular file's size says nothing of how many bytes it holds.

    Files of ``/proc`` (and cgroup and some FUSE file systems) report 0 bytes, and those
    of ``/sys`` 4,096, whatever they hold: they are read to their end instead. A truly
    empty file reads as empty all the same.
    """
    return stat.st_size == 0 or stat.st_dev == _sysfs_device()


@contextlib.contextmanager
def _os_errors(loc: Location, operation: str) -> Iterator[None]:
    """Raises an ``OSError`` of the block as the file_dataset error for ``loc``.

    A :class:`TransferError` (an ``OSError`` too: our own checks) is raised as it is.
    """
    try:
        yield
    except TransferError:
        raise
    except OSError as e:
        raise translate_os_error(e, str(loc), operation) from e


class LocalBackend:
    """Reads and writes files on the local file system."""

    supports_multipart = False

    def read_first(
        self, loc: Location, length: int, sink: Sink | None = None
    ) -> tuple[Blob | None, int, str | None]:
        with _os_errors(loc, "read"), _open_regular(loc) as f:
            stat = os.fstat(f.fileno())
            total = stat.st_size
            if _size_says_nothing(stat):
                data = f.read()
                return data, len(data), None
            if total > length:
                return f.read(length), total, file_version(stat)
            buf = new_buffer(total)
            got = f.readinto(buf)
        if got != total:  # the buffer is not zero-filled: never hand out its tail
            raise TransferError(str(loc), f"file shrank while being read ({got} of {total} bytes)")
        return buf, total, None

    def read_into(
        self, loc: Location, start: int, view: memoryview, tag: str | None = None
    ) -> None:
        with _os_errors(loc, "read"), open(loc.path, "rb", buffering=0) as f:
            f.seek(start)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise TransferError(str(loc), "file shrank while being read")
                done += n
            _check_version(f, loc, tag)

    def read_chunks(
        self, loc: Location, start: int, length: int, tag: str | None = None
    ) -> Iterator[Blob]:
        def shrank(done: int) -> TransferError:
            return TransferError(str(loc), "file shrank while being read")

        with _os_errors(loc, "read"), open(loc.path, "rb", buffering=0) as f:
            f.seek(start)
            yield from readinto_chunks(f.readinto, length, shrank)
            _check_version(f, loc, tag)

    def size(self, loc: Location) -> int:
        try:
            stat = os.stat(loc.path)
        except OSError as e:
            raise translate_os_error(e, str(loc), "head") from e
        if not stat_module.S_ISREG(stat.st_mode):  # as read_first says: no size to plan with
            raise TransferError(str(loc), not_a_file(stat.st_mode), operation="head")
        if not os.access(loc.path, os.R_OK):  # as S3 refuses a HEAD it would refuse a GET
            denied = PermissionError(errno.EACCES, "Permission denied", str(loc.path))
            raise translate_os_error(denied, str(loc), "head")
        if _size_says_nothing(stat):  # its size is what it holds: read to its end
            with _os_errors(loc, "head"), _open_regular(loc) as f:  # not the stat's 0
                return sum(map(len, iter(lambda: f.read(1 << 20), b"")))
        return stat.st_size

    def write(self, src: Path, loc: Location) -> None:
        with _os_errors(loc, "write"):
            atomic_copy(src, loc.path)

    def copy_into(self, loc: Location, open_dest: Callable[[int], int]) -> int:
        """Copies the whole file at ``loc`` into the file that ``open_dest(size)`` opens.

        Through the kernel where it can (see :func:`_copy_in_kernel`), so the bytes do
        not pass through this process. Failures of the source are raised as its read's
        (:class:`TransferError`); those of ``open_dest`` and of the writes as they come,
        for the caller to name as the destination's. A stopped call stops between
        chunks (see :func:`_copy_contents`).

        Returns:
            The bytes copied.
        """
        with _os_errors(loc, "read"):
            f = _open_regular(loc)
        with f:
            stat = os.fstat(f.fileno())
            unsized = _size_says_nothing(stat)
            fd = open_dest(0 if unsized else stat.st_size)
            done = _copy_contents(f, stat, fd, str(loc))
            if not unsized:
                if done < stat.st_size:  # the file's tail would be zeros: never hand it out
                    raise TransferError(
                        str(loc), f"file shrank while being read ({done} of {stat.st_size} bytes)"
                    )
                if file_version(os.fstat(f.fileno())) != file_version(stat):
                    raise TransferError(str(loc), CHANGED)
        return done

    def multipart_start(self, loc: Location) -> str:
        raise NotImplementedError

    def multipart_part(
        self, loc: Location, upload_id: str, number: int, src: Path, start: int, length: int
    ) -> Part:
        raise NotImplementedError

    def multipart_complete(self, loc: Location, upload_id: str, parts: list[Part]) -> None:
        raise NotImplementedError

    def multipart_abort(self, loc: Location, upload_id: str) -> None:
        raise NotImplementedError
