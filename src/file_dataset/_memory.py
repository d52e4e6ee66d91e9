"""Memory for large object buffers: transparent huge pages where they pay.

A fresh 4 KiB page costs a fault, a cleared page and a memory-cgroup charge the first
time it is written: on the project's machine, 39 ms of CPU per 64 MiB buffer, as much
as the 64 MiB GET that fills it; with 2 MiB pages it was 8 ms, and reading 8 objects
of 64 MiB into blobs took 0.27 s instead of 0.40 s once the process was running.

Not everywhere: a virtual machine whose balloon device hands free memory back to its
host (virtio "free page reporting", as on the project's machine) gives it back in
blocks of huge-page size a few seconds after they are freed, and each page of such a
block is faulted in again by the host on its next use, at ~0.5 GB/s. The kernel hands
out small pages from memory it still holds, but a huge page from those returned
blocks, so a read after a pause was slower with huge pages (0.9 s instead of 0.5 s for
the same 512 MiB). There, they are off unless asked for.

``FILE_DATASET_HUGE_PAGES``: ``1`` asks for them wherever the kernel offers them,
``0`` never does; unset (or anything else), they are used unless the machine hands its
free memory back.

Whatever the page size, :func:`prefault` has the kernel fill in a buffer's pages in one
call (``MADV_POPULATE_WRITE``, Linux 5.14 on) before the bytes arrive, instead of one
fault per page as they are copied in by several threads at once: 60-67 against
76-78 ms of CPU per 64 MiB object read into blobs on the project's machine, with small
pages.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pyarrow as pa

VARIABLE = "FILE_DATASET_HUGE_PAGES"
_SYS = Path("/sys")
# madvise(2) advice: fault a range's pages in, writable (Linux 5.14 on).
_MADV_POPULATE_WRITE = 23
# Buffers smaller than this are left to fault as they are written.
PREFAULT_BYTES = 2 * 1024 * 1024
# The virtio balloon feature bit by which a guest reports its free pages to the host.
_FREE_PAGE_REPORTING_BIT = 5


def huge_page_bytes() -> int:
    """The huge page size new buffers are asked to use, or 0 for none (see the module)."""
    wanted = os.environ.get(VARIABLE, "").strip()
    if wanted == "0":
        return 0
    size = kernel_huge_page_bytes(_SYS)
    if wanted != "1" and hands_free_memory_back(_SYS):
        return 0
    return size


@functools.cache
def kernel_huge_page_bytes(sys_root: Path) -> int:
    """The transparent huge page size if the kernel gives them to those who ask, else 0.

    It does when its ``transparent_hugepage/enabled`` setting is ``always`` or
    ``madvise`` (and Python can ask: ``mmap.MADV_HUGEPAGE``, Linux only).
    """
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return 0
    folder = sys_root / "kernel" / "mm" / "transparent_hugepage"
    try:
        if "[never]" in (folder / "enabled").read_text():
            return 0
        return int((folder / "hpage_pmd_size").read_text())
    except (OSError, ValueError):
        return 0


@functools.cache
def hands_free_memory_back(sys_root: Path) -> bool:
    """Whether a virtio balloon device of this machine reports free pages to its host."""
    for features in (sys_root / "bus" / "virtio" / "drivers" / "virtio_balloon").glob("*/features"):
        try:
            bits = features.read_text().strip()
        except OSError:
            continue
        if len(bits) > _FREE_PAGE_REPORTING_BIT and bits[_FREE_PAGE_REPORTING_BIT] == "1":
            return True
    return False


# No huge page is smaller (x86-64, and arm64 with 4 KiB pages): smaller buffers need
# not look further.
_SMALLEST_HUGE_PAGE = 2 * 1024 * 1024


def huge_page_buffer(size: int) -> memoryview | None:
    """A buffer of ``size`` bytes in huge pages, or None where they are not to be used.

    None for a buffer smaller than a huge page, where :func:`huge_page_bytes` says no,
    and when no mapping could be made (the caller's own allocation then says why, if
    it fails too).
    """
    if size < _SMALLEST_HUGE_PAGE:
        return None
    huge = huge_page_bytes()
    if not huge or size < huge:
        return None
    try:
        return huge_buffer(size, huge)
    except OSError:
        return None


def huge_buffer(size: int, huge: int) -> memoryview:
    """A writable buffer of ``size`` bytes in a private mapping of its own, in huge pages.

    Only the huge pages that lie wholly inside the ``size`` bytes are asked for, and the
    rest of the mapping is marked to stay in small pages, so the buffer never holds
    more memory than its bytes. The mapping's length is a multiple of the huge page
    size, which Linux (6.7 on) places at an aligned address, so every huge page of the
    buffer qualifies; elsewhere the pages at either end stay small. The mapping goes
    when the last view of it (an Arrow buffer, say) is let go.

    Raises:
        OSError: no mapping could be made.
    """
    length = -(-size // huge) * huge
    block = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    address = pa.py_buffer(block).address
    first = -address % huge
    end = (address + size) // huge * huge - address
    if end <= first:
        first = end = 0
    # a kernel without them after all: small pages, as elsewhere
    with contextlib.suppress(OSError):
        if end:
            block.madvise(mmap.MADV_HUGEPAGE, first, end - first)
        if end < length:
            # the last, partial one stays small where the kernel makes them unasked
            # (``always``): a 2 MiB + 1 byte buffer would hold 4 MiB
            block.madvise(mmap.MADV_NOHUGEPAGE, end, length - end)
    return memoryview(block)[:size]


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """The C library's ``madvise``, called without the GIL (ctypes lets it go), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int], int]", function)


_prefault_works = True  # until the kernel refuses the advice once


def prefault(view: memoryview) -> None:
    """Has the kernel fill in the whole pages of a fresh buffer before it is written.

    One call per buffer (or per part of an object, on the thread that reads the part)
    instead of a fault per page; without the GIL. Does nothing for buffers under
    :data:`PREFAULT_BYTES` or where the kernel cannot (before Linux 5.14, not Linux).
    """
    global _prefault_works
    if len(view) < PREFAULT_BYTES or not _prefault_works:
        return
    madvise = _madvise()
    if madvise is None:
        _prefault_works = False
        return
    address = pa.py_buffer(view).address
    page = mmap.PAGESIZE
    start = -(-address // page) * page
    end = (address + len(view)) // page * page
    # EINVAL: an older kernel; anything else (ENOMEM, say): the copy will fault the
    # pages in, or fail, as it always did
    if (
        end > start
        and madvise(start, end - start, _MADV_POPULATE_WRITE) != 0
        and ctypes.get_errno() == errno.EINVAL
    ):
        _prefault_works = False
