"""Workloads: generating objects, their file DataFrames and checksum manifests.

Every object has unique content (a header naming it, then a rotation of a random
pool), and the manifest holds its size and CRC-32, so that a contender returning
the wrong object, a truncated one or a null is caught.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BUCKET = "bench"
COLUMNS = ("a.bin", "b.bin")
_POOL_SIZE = 4 * MiB + 4093  # not a multiple of any object size: objects differ
_FORMAT = 2  # bump when the generated content changes


@dataclass(frozen=True)
class Workload:
    name: str  # A, A', B, C, D (reads); W1, W64 (writes)
    count: int  # objects
    size: int  # bytes per object
    latencies: tuple[str, ...] = ("plain", "delay")
    kind: str = "read"

    @property
    def rows(self) -> int:
        return self.count // len(COLUMNS)

    @property
    def total(self) -> int:
        return self.count * self.size

    @property
    def slug(self) -> str:
        return self.name.replace("'", "p")

    def describe(self) -> str:
        return f"{self.name}: {self.count:,} x {human(self.size)} ({self.rows:,} rows x {len(COLUMNS)} file columns)"


READ_WORKLOADS = {
    "A": Workload("A", 2000, 64 * KiB),
    "A'": Workload("A'", 20000, 16 * KiB),
    "B": Workload("B", 200, MiB),
    # "s3": 10 ms first byte and S3's per-connection throughput (see _servers.py)
    "C": Workload("C", 8, 64 * MiB, ("plain", "s3")),
    "D": Workload("D", 2, GiB, ("plain", "s3")),
}
WRITE_WORKLOADS = {
    "W1": Workload("W1", 200, MiB, ("moto",), "write"),
    "W64": Workload("W64", 8, 64 * MiB, ("moto",), "write"),
}
QUICK_READ = {
    "A": Workload("A", 200, 16 * KiB, ("plain",)),
    "C": Workload("C", 2, 17 * MiB, ("plain", "s3")),  # above the 8 MiB threshold: 3 parts
}
QUICK_WRITE = {"W1": Workload("W1", 20, 256 * KiB, ("moto",), "write")}
ALIASES = {"AP": "A'", "A2": "A'", "A_": "A'"}


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return str(n)


def _pool() -> bytes:
    return random.Random(20240607).randbytes(_POOL_SIZE)


def object_bytes(pool: bytes, name: str, index: int, size: int):  # type: ignore[no-untyped-def]
    """Yields the object's content in chunks (at most ~4 MiB each)."""
    header = f"{name}#{index}#".encode().ljust(64, b".")[: min(64, size)]
    yield header
    remaining = size - len(header)
    pos = (index * 7919 * 64) % len(pool)
    while remaining > 0:
        chunk = pool[pos : pos + remaining]
        yield chunk
        remaining -= len(chunk)
        pos = 0


def key_of(workload: Workload, row_id: str, column: str) -> str:
    return f"{workload.slug}-{workload.size}/{row_id}/{column}"


def row_ids(workload: Workload) -> list[str]:
    return [f"r{i:05d}" for i in range(workload.rows)]


def generate(workload: Workload, root: Path) -> dict[str, list[int]]:
    """Writes the workload's objects under ``root/<bucket>/`` (once); returns the manifest.

    The manifest maps ``"<id>/<column>"`` to ``[size, crc32]``.
    """
    marker = root / BUCKET / f".{workload.slug}-{workload.size}-{workload.count}.v{_FORMAT}.json"
    if marker.exists():
        return json.loads(marker.read_text())  # type: ignore[no-any-return]
    pool = _pool()
    manifest: dict[str, list[int]] = {}
    index = 0
    for row_id in row_ids(workload):
        for column in COLUMNS:
            path = root / BUCKET / key_of(workload, row_id, column)
            path.parent.mkdir(parents=True, exist_ok=True)
            crc = 0
            with open(path, "wb") as f:
                for chunk in object_bytes(
                    pool, f"{workload.slug}/{row_id}/{column}", index, workload.size
                ):
                    f.write(chunk)
                    crc = zlib.crc32(chunk, crc)
            manifest[f"{row_id}/{column}"] = [workload.size, crc]
            index += 1
    marker.write_text(json.dumps(manifest))
    return manifest


def warm_page_cache(workload: Workload, root: Path) -> tuple[int, float]:
    """Reads every object file of ``workload`` once, so it is in the page cache.

    Otherwise the first contender of a workload reads from disk (through the server)
    and every later one from memory: measured on C, 447 MB/s cold against 888 MB/s
    warm for the same ``into_blob_table`` call. Returns (bytes read, seconds).
    """
    start = time.perf_counter()
    buf = bytearray(8 * 1024 * 1024)
    total = 0
    for row_id in row_ids(workload):
        for column in COLUMNS:
            with open(root / BUCKET / key_of(workload, row_id, column), "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total, time.perf_counter() - start


def frame(workload: Workload, url_of) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The workload's file DataFrame; ``url_of(key)`` makes each cell."""
    ids = row_ids(workload)
    data: dict[str, list[str]] = {"id": ids}
    for column in COLUMNS:
        data[column] = [url_of(key_of(workload, row_id, column)) for row_id in ids]
    return pd.DataFrame(data)
