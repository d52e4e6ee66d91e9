"""Large object buffers in transparent huge pages (``file_dataset._memory``)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import file_dataset
from file_dataset import Options
from file_dataset._backend import new_buffer
from file_dataset._memory import (
    PREFAULT_BYTES,
    VARIABLE,
    huge_buffer,
    huge_page_bytes,
    kernel_huge_page_bytes,
    prefault,
)

MiB = 1024 * 1024
HUGE = 2 * MiB


def _smaps_field(address: int, field: str) -> list[str]:
    """A field (``VmFlags``, ``Rss``) of this process's mapping that holds ``address``."""
    found = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            start, end = (int(part, 16) for part in head.split("-"))
            found = start <= address < end
        elif found and line.startswith(f"{field}:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def _vma_flags(address: int) -> list[str]:
    return _smaps_field(address, "VmFlags")


def _fake_sys(root: Path, enabled: str, reporting: str | None) -> Path:
    """A /sys tree with a THP setting and, if given, a balloon's feature bits."""
    thp = root / "kernel" / "mm" / "transparent_hugepage"
    thp.mkdir(parents=True)
    (thp / "enabled").write_text(enabled + "\n")
    (thp / "hpage_pmd_size").write_text(f"{HUGE}\n")
    if reporting is not None:
        device = root / "bus" / "virtio" / "drivers" / "virtio_balloon" / "virtio0"
        device.mkdir(parents=True)
        (device / "features").write_text(reporting + "0" * 58 + "\n")
    return root


def _is_mapping(view: memoryview) -> bool:
    return isinstance(view.obj, mmap.mmap)


@pytest.mark.parametrize("size", [HUGE, HUGE + 1, 3 * HUGE + 12345, 4 * HUGE])
def test_huge_buffer_asks_for_huge_pages_only_within_its_bytes(size: int) -> None:
    view = huge_buffer(size, HUGE)
    assert len(view) == size
    assert not view.readonly
    pattern = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    view[:] = pattern
    assert bytes(view) == pattern
    address = pa.py_buffer(view).address
    first = address + (-address % HUGE)
    wanted = kernel_huge_page_bytes(Path("/sys")) == HUGE
    # the huge pages inside the bytes are asked for
    assert ("hg" in _vma_flags(first)) is wanted
    if size % HUGE:  # the partial one at the end is kept in small pages
        assert "hg" not in _vma_flags(address + size - 1)
        assert ("nh" in _vma_flags(address + size - 1)) is wanted
    else:
        assert ("hg" in _vma_flags(address + size - 1)) is wanted


def test_new_buffer_follows_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = kernel_huge_page_bytes(Path("/sys"))
    monkeypatch.setenv(VARIABLE, "1")
    assert huge_page_bytes() == offered
    assert _is_mapping(new_buffer(4 * MiB)) is (0 < offered <= 4 * MiB)
    assert not _is_mapping(new_buffer(HUGE - 1))  # under a huge page: Arrow's memory
    monkeypatch.setenv(VARIABLE, "0")
    assert huge_page_bytes() == 0
    assert not _is_mapping(new_buffer(4 * MiB))


@pytest.mark.parametrize(
    ("enabled", "reporting", "variable", "expected"),
    [
        ("always [madvise] never", None, None, HUGE),
        ("[always] madvise never", "0" * 6, None, HUGE),
        # a VM that hands free memory back to its host: only if asked for
        ("always [madvise] never", "011001", None, 0),
        ("always [madvise] never", "011001", "1", HUGE),
        ("always [madvise] never", None, "0", 0),
        ("always madvise [never]", None, "1", 0),  # the kernel has none to give
    ],
)
def test_huge_pages_are_used_where_they_pay(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    enabled: str,
    reporting: str | None,
    variable: str | None,
    expected: int,
) -> None:
    if not hasattr(mmap, "MADV_HUGEPAGE"):  # not Linux: never
        expected = 0
    monkeypatch.setattr("file_dataset._memory._SYS", _fake_sys(tmp_path, enabled, reporting))
    if variable is None:
        monkeypatch.delenv(VARIABLE, raising=False)
    else:
        monkeypatch.setenv(VARIABLE, variable)
    assert huge_page_bytes() == expected


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_objects_read_into_huge_pages_keep_their_bytes(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    options: Options,
    put: Callable[[str, bytes], str],
    transport: str,
) -> None:
    monkeypatch.setenv(VARIABLE, "1")
    options = options.replace(transport=transport, part_size=5 * MiB, multipart_threshold=5 * MiB)
    big = os.urandom(11 * MiB + 7)  # three ranged parts, a partial huge page at the end
    small = [os.urandom(100_000 + i) for i in range(40)]  # chunked together: 3.8 MiB
    local = tmp_path / "big.bin"
    local.write_bytes(big[::-1])
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(40)],
            "big.bin": [put("big.bin", big)] + [None] * 39,
            "local.bin": [str(local)] + [None] * 39,
            "small.bin": [put(f"s{i}", data) for i, data in enumerate(small)],
        }
    )
    table = file_dataset.reader(frame, options).into_blob_table()
    assert table.column("big.bin").to_pylist() == [big] + [None] * 39
    assert table.column("local.bin").to_pylist() == [big[::-1]] + [None] * 39
    assert table.column("small.bin").to_pylist() == small
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(40)]
    offered = kernel_huge_page_bytes(Path("/sys")) == HUGE
    for name in ("big.bin", "local.bin", "small.bin"):  # each in a mapping of its own
        data = table.column(name).chunk(0).buffers()[2]
        first = data.address + (-data.address % HUGE)
        assert data.address + data.size >= first + HUGE  # a whole huge page in it
        assert ("hg" in _vma_flags(first)) is offered, name


def _rss_kib(address: int) -> int:
    return int(_smaps_field(address, "Rss")[0])


def _populate_write_known() -> bool:
    """Whether this kernel knows MADV_POPULATE_WRITE (Linux 5.14 on)."""
    major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 14)


@pytest.mark.parametrize("size", [PREFAULT_BYTES - 4096, PREFAULT_BYTES, 8 * MiB + 123])
def test_prefault_fills_in_the_pages_of_a_fresh_buffer(size: int) -> None:
    block = mmap.mmap(-1, 16 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(block)
    block.madvise(mmap.MADV_NOHUGEPAGE)  # 4 KiB pages, counted exactly
    address = pa.py_buffer(view).address
    assert _rss_kib(address) == 0
    prefault(view[4096 : 4096 + size])
    expected = size // 4096 * 4 if size >= PREFAULT_BYTES and _populate_write_known() else 0
    assert _rss_kib(address) == expected
    assert bytes(view[4096 : 4096 + size]) == bytes(size)  # nothing written
    view.release()
    block.close()


@pytest.mark.parametrize("transport", ["auto", "boto3"])
@pytest.mark.parametrize("part", [5 * MiB, 8 * MiB])  # 8 MiB: the first part is streamed
def test_each_part_of_a_large_object_is_prefaulted_by_its_reader(
    monkeypatch: pytest.MonkeyPatch,
    options: Options,
    put: Callable[[str, bytes], str],
    transport: str,
    part: int,
) -> None:
    seen: list[int] = []

    def recording(view: memoryview) -> None:
        seen.append(len(view))
        prefault(view)

    monkeypatch.setattr("file_dataset._transfer.prefault", recording)
    options = options.replace(transport=transport, part_size=part, multipart_threshold=part)
    data = os.urandom(2 * part + MiB + 7)
    frame = pd.DataFrame({"id": ["r1"], "big.bin": [put("big.bin", data)]})
    table = file_dataset.reader(frame, options).into_blob_table()
    assert table.column("big.bin").to_pylist() == [data]
    # the first part where the object's buffer is made, then each ranged part
    assert seen[0] == part
    assert sorted(seen[1:]) == [MiB + 7, part]


@pytest.mark.parametrize("where", ["local", "s3", "s3-boto3"])
def test_a_failed_read_lets_go_of_what_it_read_without_the_garbage_collector(
    tmp_path: Path,
    options: Options,
    put: Callable[[str, bytes], str],
    where: str,
    held_by_cycles: Callable[[], list[str]],
) -> None:
    """Before, the failure's traceback and the engine's state held each other (and
    with them the jobs' frames and every object read so far) until a collection."""
    data = os.urandom(3 * MiB)
    if where == "local":
        (tmp_path / "big.bin").write_bytes(data)
        cells = [str(tmp_path / "big.bin"), str(tmp_path / "missing.bin")]
    else:
        options = options.replace(transport="boto3" if where == "s3-boto3" else "auto")
        url = put("big.bin", data)
        cells = [url, url.replace("big.bin", "missing.bin")]
    frame = pd.DataFrame({"id": ["a", "b"], "x.bin": cells})
    with pytest.raises(FileNotFoundError) as failure:
        file_dataset.reader(frame, options).into_blob_table()
    assert "missing.bin" in str(failure.value)
    assert "'b'" in str(failure.value)
    del failure
    assert held_by_cycles() == []


def test_an_interrupted_read_lets_go_of_what_it_read_without_the_garbage_collector(
    tmp_path: Path,
    options: Options,
    monkeypatch: pytest.MonkeyPatch,
    held_by_cycles: Callable[[], list[str]],
) -> None:
    for name in ("a.bin", "b.bin"):
        (tmp_path / name).write_bytes(os.urandom(11 * MiB))
    options = options.replace(part_size=5 * MiB, multipart_threshold=5 * MiB)
    frame = pd.DataFrame(
        {"id": ["a", "b"], "x.bin": [str(tmp_path / "a.bin"), str(tmp_path / "b.bin")]}
    )

    def interrupted(view: memoryview) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C on the thread that runs the jobs

    # the first part of a local file is copied on that thread, after this call
    monkeypatch.setattr("file_dataset._transfer.prefault", interrupted)
    with pytest.raises(KeyboardInterrupt) as failure:
        file_dataset.reader(frame, options).into_blob_table()
    assert any(entry.name == "read_job" for entry in failure.traceback)
    del failure
    assert held_by_cycles() == []


def test_a_failure_after_an_object_arrived_does_not_carry_its_buffer(
    tmp_path: Path, options: Options, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, an error raised while an arrived object was being stored (a full chunk
    budget, an interrupt) had the job's StopIteration, holding the object's buffer, as
    its ``__context__``: kept, and printed, for as long as the caller kept the error."""
    (tmp_path / "a.bin").write_bytes(os.urandom(3 * MiB))
    frame = pd.DataFrame({"id": ["a"], "x.bin": [str(tmp_path / "a.bin")]})

    def put(self: object, index: int, blob: memoryview) -> None:
        raise RuntimeError(f"cannot store {len(blob)} bytes")

    monkeypatch.setattr("file_dataset._reader._ColumnBuilder.put", put)
    with pytest.raises(RuntimeError, match=f"cannot store {3 * MiB} bytes") as failure:
        file_dataset.reader(frame, options).into_blob_table()
    assert failure.value.__context__ is None
