"""One contender, run in its own process: ``python _contenders.py SPEC.json``.

The parent (run.py) writes a spec, this process sets up (imports, Ray start, ...)
outside the measured region, runs the contender once inside it, then checks every
object's bytes and writes a result JSON next to the spec. Measured: wall time, CPU
seconds of this process and all its descendants (Ray workers, curl, s5cmd; including
those that exit during the run, see CpuTracker), peak RSS of the process tree (sampled
every 20 ms), and the server's request count.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

# Ray would start its workers through `uv run` when the suite runs under uv: slow, and
# not what a deployed cluster does.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

CHUNK = 8 * 1024 * 1024


class Skip(Exception):
    """The contender cannot run here (a tool or module is missing)."""


# --- measuring ----------------------------------------------------------------------


def _tree() -> list[psutil.Process]:
    me = psutil.Process()
    try:
        return [me, *me.children(recursive=True)]
    except psutil.Error:
        return [me]


class _Seen:
    """One process seen in the tree: its CPU at the start (0 if born later) and when
    last read, as user+system of its own (``own``) and of its waited-for children
    (``kids``: the kernel's children_user+children_system), and its last parent."""

    __slots__ = ("gone", "handle", "kids", "kids0", "own", "own0", "ppid")

    def __init__(self, handle: psutil.Process) -> None:
        self.handle = handle
        self.own = self.kids = self.own0 = self.kids0 = 0.0
        self.ppid = -1
        self.gone = False


class CpuTracker:
    """CPU seconds used by a process tree over a region, including processes that exit
    during it (whoever reaps them, even a process outside the tree).

    Every process seen in the tree (listed at the start, then by the sampler) is read
    until it is gone; it adds (its last own CPU - its own CPU at the start, 0 if it was
    not there at the start). A figure can never be negative this way: CPU read for one
    process only grows.

    children_user/children_system (``kids``) are needed for processes that live and
    are reaped between two listings of the tree (a short subprocess). But when a
    tracked parent P reaps a tracked child C, the kernel adds C's *final* own+kids to
    P's kids, and C's own CPU is already counted from C's own reads: adding P's kids
    as they are would count C twice. So P adds
        (P's last kids - P's kids at the start) - sum over tracked C gone whose last
        parent was P of (C's last own + C's last kids),
    clamped at 0. If P did reap C, P's kids hold C's final figures, which are at least
    C's last ones, so what remains is C's tail after its last read (the CPU it used
    before exiting, not counted elsewhere) plus the children P reaped unseen: nothing
    counted twice. For this to hold, every C reaped before P's last read must be known
    gone when the sum is made: ``finish`` reads every process and only then checks
    which are gone, so that check comes after every parent's last read. If C was
    reaped by some other process (it was reparented), the subtraction is too much and
    only makes P's share smaller (clamped at 0): an undercount, never a double count.
    What can still be missed: a process both born and reaped (by a process outside the
    tree) between two listings, and the tail of a tracked process reaped outside the
    tree (at most one sampling interval of its CPU).
    """

    def __init__(self) -> None:
        self.seen: dict[tuple[int, float], _Seen] = {}

    @staticmethod
    def _key(p: psutil.Process) -> tuple[int, float] | None:
        try:
            return (p.pid, p.create_time())  # create_time: a reused pid is another process
        except psutil.Error:
            return None

    @staticmethod
    def _read(e: _Seen) -> bool:
        try:
            with e.handle.oneshot():
                t = e.handle.cpu_times()
                ppid = e.handle.ppid()
        except psutil.ZombieProcess:
            return True  # exited, not reaped yet: its last read figures stand
        except psutil.NoSuchProcess:
            e.gone = True
            return False
        except psutil.Error:
            return False
        e.own = t.user + t.system
        e.kids = t.children_user + t.children_system
        e.ppid = ppid
        return True

    def add(self, procs: Iterable[psutil.Process], at_start: bool = False) -> None:
        """Starts tracking the listed processes not tracked yet."""
        for p in procs:
            key = self._key(p)
            if key is None or key in self.seen:
                continue
            e = _Seen(p)
            if self._read(e) and at_start:
                e.own0, e.kids0 = e.own, e.kids
            self.seen[key] = e

    def sample(self) -> None:
        for e in self.seen.values():
            if not e.gone:
                self._read(e)

    def finish(self, procs: Iterable[psutil.Process]) -> float:
        """Last reads (after adding ``procs``), then the total CPU seconds."""
        self.add(procs)
        self.sample()
        for e in self.seen.values():  # after every last read (see the class docstring)
            if not e.gone and not e.handle.is_running():
                e.gone = True
        by_pid: dict[int, list[tuple[float, _Seen]]] = {}
        for (pid, created), e in self.seen.items():
            by_pid.setdefault(pid, []).append((created, e))
        reaped: dict[int, float] = {}  # id(parent entry) -> CPU of its gone children
        for (_, created), c in self.seen.items():
            if not c.gone:
                continue
            # the parent: the process with that pid created before this child
            parents = [(pc, pe) for pc, pe in by_pid.get(c.ppid, []) if pc <= created]
            if parents:
                parent = max(parents, key=lambda pair: pair[0])[1]
                reaped[id(parent)] = reaped.get(id(parent), 0.0) + c.own + c.kids
        total = 0.0
        for e in self.seen.values():
            total += max(0.0, e.own - e.own0)
            total += max(0.0, e.kids - e.kids0 - reaped.get(id(e), 0.0))
        return total  # every term is >= 0


def _tree_rss(procs: list[psutil.Process] | None = None) -> int:
    total = 0
    for p in _tree() if procs is None else procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class Meter:
    def __init__(self, log: str | None) -> None:
        self.log = log
        self.peak = 0
        self._stop = threading.Event()
        self._cpu = CpuTracker()

    def _offset(self) -> int:
        return os.path.getsize(self.log) if self.log and os.path.exists(self.log) else 0

    def _sample(self) -> None:
        # Listing the process tree scans all of /proc (~5 ms for Ray's ~18 processes):
        # do it every 0.5 s, read only the known processes' RSS every 20 ms, and the CPU
        # of every process seen so far (until it is gone; see CpuTracker) every 0.1 s
        # (~50 us a process).
        procs = _tree()
        self._cpu.add(procs)
        listed = time.perf_counter()
        tick = 0
        while not self._stop.wait(0.02):
            tick += 1
            if time.perf_counter() - listed > 0.5:
                procs, listed = _tree(), time.perf_counter()
                self._cpu.add(procs)
            self.peak = max(self.peak, _tree_rss(procs))
            if tick % 5 == 0:
                self._cpu.sample()

    def __enter__(self) -> Meter:
        self.log_start = self._offset()
        self.base_rss = _tree_rss()
        self.peak = self.base_rss
        self._cpu.add(_tree(), at_start=True)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        procs = _tree()
        self.cpu = self._cpu.finish(procs)
        self.peak = max(
            self.peak, _tree_rss(procs), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        self.requests: int | None = None
        if self.log:
            time.sleep(0.1)  # nginx logs a request as it finishes it
            with open(self.log, "rb") as f:
                f.seek(self.log_start)
                self.requests = f.read().count(b"\n")


# --- checking -----------------------------------------------------------------------


class Checker:
    """Compares what a contender produced with the manifest."""

    def __init__(self, manifest: dict[str, list[int]]) -> None:
        self.manifest = manifest
        self.seen: set[str] = set()
        self.nulls = 0
        self.wrong: list[str] = []

    def blob(self, name: str, data: Any) -> None:
        if name not in self.manifest:
            self.wrong.append(f"unexpected object {name}")
            return
        self.seen.add(name)
        if data is None:
            self.nulls += 1
            return
        view = memoryview(data).cast("B")
        size, crc = self.manifest[name]
        if len(view) != size:
            self.wrong.append(f"{name}: {len(view)} bytes, expected {size}")
        elif zlib.crc32(view) != crc:
            self.wrong.append(f"{name}: checksum mismatch")

    def file(self, name: str, path: Path) -> None:
        if not path.is_file():
            self.blob(name, None)
            return
        crc = 0
        n = 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                crc = zlib.crc32(chunk, crc)
                n += len(chunk)
        if name not in self.manifest:
            self.wrong.append(f"unexpected object {name}")
            return
        self.seen.add(name)
        size, want = self.manifest[name]
        if n != size:
            self.wrong.append(f"{name}: {n} bytes, expected {size}")
        elif crc != want:
            self.wrong.append(f"{name}: checksum mismatch")

    def table(self, table: Any, columns: Iterable[tuple[str, str]], id_column: str = "id") -> None:
        """Checks an Arrow table: ``columns`` pairs (file name, binary column)."""
        ids = table.column(id_column).to_pylist()
        for name, binary in columns:
            col = table.column(binary)
            i = 0
            for chunk in col.chunks:
                for j in range(len(chunk)):
                    value = chunk[j]
                    self.blob(f"{ids[i]}/{name}", value.as_buffer() if value.is_valid else None)
                    i += 1

    def summary(self) -> tuple[bool, str, int]:
        missing = len(set(self.manifest) - self.seen)
        problems = []
        if self.nulls:
            problems.append(f"{self.nulls} nulls")
        if missing:
            problems.append(f"{missing} missing")
        if self.wrong:
            problems.append(f"{len(self.wrong)} wrong (e.g. {self.wrong[0]})")
        return (not problems, "; ".join(problems), self.nulls)


# --- helpers ------------------------------------------------------------------------


def _pairs(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(row id, file column, cell) for every cell of the frame."""
    import pandas as pd

    df = pd.read_parquet(spec["frame"])
    spec["_df"] = df
    cols = [c for c in df.columns if c != "id"]
    return [(str(r["id"]), c, str(r[c])) for _, r in df.iterrows() for c in cols]


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


_MEMO: dict[Any, Any] = {}


def _memo(key: Any, make: Callable[[], Any]) -> Any:
    """One instance per process and key, so the warm-up and the measured run share it."""
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


def _options(spec: dict[str, Any], **kw: Any) -> Any:
    if spec.get("max_concurrency"):
        kw["max_concurrency"] = int(spec["max_concurrency"])
    if spec.get("part_mib"):
        kw["part_size"] = int(spec["part_mib"]) << 20
    return _memo(("options", spec["endpoint"]), lambda: _new_options(spec, **kw))


def _new_options(spec: dict[str, Any], **kw: Any) -> Any:
    from file_dataset import Options

    creds = spec["creds"]
    return Options(
        session_kwargs={
            "aws_access_key_id": creds["key"],
            "aws_secret_access_key": creds["secret"],
            "region_name": creds["region"],
        },
        s3_client_kwargs={"endpoint_url": spec["endpoint"]},
        **kw,
    )


def _boto3_client(spec: dict[str, Any], pool: int = 10) -> Any:
    return _memo(("boto3", spec["endpoint"], pool), lambda: _new_boto3_client(spec, pool))


def _new_boto3_client(spec: dict[str, Any], pool: int) -> Any:
    import boto3
    from botocore.config import Config

    creds = spec["creds"]
    return boto3.session.Session().client(
        "s3",
        endpoint_url=spec["endpoint"],
        aws_access_key_id=creds["key"],
        aws_secret_access_key=creds["secret"],
        region_name=creds["region"],
        config=Config(max_pool_connections=pool, retries={"mode": "standard", "max_attempts": 3}),
    )


def _pyarrow_fs(spec: dict[str, Any]) -> Any:
    import pyarrow.fs

    creds = spec["creds"]
    return pyarrow.fs.S3FileSystem(
        access_key=creds["key"],
        secret_key=creds["secret"],
        region=creds["region"],
        endpoint_override=spec["endpoint"],  # with http://, which Ray passes on to obstore
        scheme="http",
        allow_bucket_creation=False,
    )


def _env_creds(spec: dict[str, Any]) -> dict[str, str]:
    creds = spec["creds"]
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=creds["key"],
        AWS_SECRET_ACCESS_KEY=creds["secret"],
        AWS_REGION=creds["region"],
        AWS_DEFAULT_REGION=creds["region"],
    )
    return env


def _tmpdir(spec: dict[str, Any]) -> Path:
    return Path(tempfile.mkdtemp(prefix="dl-", dir=spec["tmp"]))


def _check_dir(checker: Checker, root: Path, pairs: list[tuple[str, str, str]]) -> None:
    for row_id, col, _ in pairs:
        checker.file(f"{row_id}/{col}", root / row_id / col)


def _ray_init(spec: dict[str, Any]) -> Any:
    import ray

    if ray.is_initialized():
        return ray

    total = spec["workload"]["count"] * spec["workload"]["size"]
    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        object_store_memory=max(2 << 30, 3 * total),
        _temp_dir=f"/tmp/rayb{os.getpid()}",  # short: Ray's socket paths are limited to 107 bytes
    )
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    with contextlib.suppress(AttributeError):
        ctx.print_on_execution_start = False
    if spec.get("ray_noreserve"):
        # Ray Data otherwise budgets one operator at about half the CPUs of a small
        # cluster, and at nothing in an execution's first second (findings.md, 5th round)
        ctx.op_resource_reservation_enabled = False
    # start the workers outside the measured region
    ray.data.range(8, override_num_blocks=4).map_batches(lambda b: b).materialize()
    return ray


# --- read contenders ----------------------------------------------------------------
# Each takes (spec, pairs, checker) and returns a function that does the measured work
# and returns a function that checks the result (called after the measurement).

Prepared = Callable[[], Callable[[], None]]


def fd_blob(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    import file_dataset

    options = _options(spec)
    df = spec["_df"]

    def run() -> Callable[[], None]:
        table = file_dataset.reader(df, options).into_blob_table()
        return lambda: checker.table(table, [(c, c) for c in df.columns if c != "id"])

    return run


def fd_tempdir(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    import file_dataset

    options = _options(spec)
    df = spec["_df"]

    def run() -> Callable[[], None]:
        ctx = file_dataset.reader(df, options).into_temp_dir(dir=spec["tmp"])
        root = ctx.__enter__()

        def check() -> None:
            try:
                _check_dir(checker, root, pairs)
            finally:
                ctx.__exit__(None, None, None)

        return check

    return run


def fd_ray(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    try:
        from file_dataset.ray import read_file_dataset
    except ImportError as e:
        raise Skip(f"file_dataset.ray.read_file_dataset not available ({e})") from e
    import pyarrow as pa

    ray = _ray_init(spec)
    options = _options(spec)
    df = spec["_df"]

    def run() -> Callable[[], None]:
        batch = min(2500, max(1, -(-len(df) // 4)))  # about 4 read tasks (2 CPUs)
        kwargs = {"num_cpus": spec["ray_num_cpus"]} if "ray_num_cpus" in spec else {}
        ds = read_file_dataset(df, batch_size=batch, options=options, **kwargs)
        table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
        cols = [c for c in df.columns if c != "id"]
        return lambda: checker.table(table, [(c, c) for c in cols])

    return run


def fd_ray_local(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    """fd_ray over the same objects as local files (the server's own copies): what Ray
    costs (tasks, object store, transfer to the driver) when reading is almost free."""
    root = spec["data_root"]
    df = spec["_df"].copy()
    for column in df.columns:
        if column != "id":
            df[column] = [f"{root}/{url[len('s3://') :]}" for url in df[column]]
    return fd_ray({**spec, "_df": df}, pairs, checker)


def fd_pipeline(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    """Pipeline whose fn keeps its inputs (hard links) and returns no outputs."""
    import file_dataset

    options = _options(spec)
    df = spec["_df"]
    keep = _tmpdir(spec)
    out = _tmpdir(spec)

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Any]:
        target = keep / str(len(os.listdir(keep)))
        target.mkdir()
        for p in input_dir.iterdir():
            os.link(p, target / p.name)
        return {}

    order = list(df["id"])

    def run() -> Callable[[], None]:
        result = file_dataset.Pipeline(fn, {"into_path": str(out)}, options, on_error="raise")(df)
        assert len(result) == len(df), result

        def check() -> None:
            for n, row_id in enumerate(order):
                for col in [c for c in df.columns if c != "id"]:
                    checker.file(f"{row_id}/{col}", keep / str(n) / col)

        return check

    return run


def _ray_download(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    import pyarrow as pa

    ray = _ray_init(spec)
    from ray.data._internal.planner import _obstore_download
    from ray.data.expressions import col as ray_col  # noqa: F401
    from ray.data.expressions import download

    spec["_note"] = f"ray obstore path: {bool(_obstore_download.OBSTORE_AVAILABLE)}"
    want_obstore = not spec["contender"].startswith("ray_download_noobstore")
    if bool(_obstore_download.OBSTORE_AVAILABLE) != want_obstore:
        raise RuntimeError(f"obstore toggle did not take effect ({spec['_note']})")
    fs = _pyarrow_fs(spec)
    df = spec["_df"]
    cols = [c for c in df.columns if c != "id"]

    def run() -> Callable[[], None]:
        ds = ray.data.from_pandas(df)
        for c in cols:
            ds = ds.with_column(f"{c}:bytes", download(c, filesystem=fs))
        table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
        return lambda: checker.table(table, [(c, f"{c}:bytes") for c in cols])

    return run


def ray_read_binary(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    import pyarrow as pa

    ray = _ray_init(spec)
    fs = _pyarrow_fs(spec)
    name_of = {url.removeprefix("s3://"): f"{rid}/{c}" for rid, c, url in pairs}

    def run() -> Callable[[], None]:
        ds = ray.data.read_binary_files(list(name_of), filesystem=fs, include_paths=True)
        table = pa.concat_tables(ray.get(ds.to_arrow_refs()))

        def check() -> None:
            paths = table.column("path").to_pylist()
            data = table.column("bytes")
            i = 0
            for chunk in data.chunks:
                for j in range(len(chunk)):
                    v = chunk[j]
                    checker.blob(
                        name_of.get(paths[i], paths[i]), v.as_buffer() if v.is_valid else None
                    )
                    i += 1

        return check

    return run


def _daft(spec: dict[str, Any], pairs: list, checker: Checker, on_ray: bool) -> Prepared:
    try:
        import daft
        from daft.io import IOConfig, S3Config
    except ImportError as e:
        raise Skip(f"daft not installed ({e})") from e
    if on_ray:
        _ray_init(spec)
        _memo("daft-runner", lambda: daft.set_runner_ray(noop_if_initialized=True))
    else:
        _memo("daft-runner", daft.set_runner_native)
    creds = spec["creds"]
    io = IOConfig(
        s3=S3Config(
            endpoint_url=spec["endpoint"],
            key_id=creds["key"],
            access_key=creds["secret"],
            region_name=creds["region"],
            use_ssl=False,
            force_virtual_addressing=False,
        )
    )
    df = spec["_df"]
    cols = [c for c in df.columns if c != "id"]

    def run() -> Callable[[], None]:
        d = daft.from_pandas(df)
        for c in cols:
            # download() defaults to max_connections=32 (and overrides S3Config's with
            # it); file_dataset keeps 64 transfers in flight by default
            d = d.with_column(
                f"{c}:bytes",
                daft.functions.download(daft.col(c), max_connections=64, io_config=io),
            )
        table = d.to_arrow()
        return lambda: checker.table(table, [(c, f"{c}:bytes") for c in cols])

    return run


def daft_native(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    return _daft(spec, pairs, checker, on_ray=False)


def daft_ray(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    return _daft(spec, pairs, checker, on_ray=True)


def s3fs_cat(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    import s3fs

    creds = spec["creds"]
    fs = _memo(
        "s3fs",
        lambda: s3fs.S3FileSystem(
            key=creds["key"],
            secret=creds["secret"],
            endpoint_url=spec["endpoint"],
            client_kwargs={"region_name": creds["region"]},
            use_listings_cache=False,
        ),
    )
    name_of = {url.removeprefix("s3://"): f"{rid}/{c}" for rid, c, url in pairs}

    def run() -> Callable[[], None]:
        out = fs.cat(list(name_of), on_error="return")

        def check() -> None:
            for path, data in out.items():
                name = name_of.get(path.removeprefix("s3://"), path)
                checker.blob(name, None if isinstance(data, BaseException) else data)

        return check

    return run


def obstore_async(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    import obstore
    from obstore.store import S3Store

    creds = spec["creds"]
    stores: dict[str, Any] = _memo("stores", dict)
    for _, _, url in pairs:
        bucket, _ = _split(url)
        if bucket not in stores:
            stores[bucket] = S3Store(
                bucket,
                endpoint=spec["endpoint"],
                access_key_id=creds["key"],
                secret_access_key=creds["secret"],
                region=creds["region"],
                virtual_hosted_style_request=False,
                client_options={"allow_http": True},
            )

    async def main(out: dict[str, Any]) -> None:
        sem = asyncio.Semaphore(64)

        async def one(name: str, url: str) -> None:
            bucket, key = _split(url)
            async with sem:
                res = await obstore.get_async(stores[bucket], key)
                out[name] = await res.bytes_async()

        await asyncio.gather(*(one(f"{rid}/{c}", url) for rid, c, url in pairs))

    def run() -> Callable[[], None]:
        # The bytes go into a dict this function owns, and main() returns None: on
        # Python 3.11, asyncio.run() ends (Runner.run's finally -> signal.getsignal ->
        # enum's ValueError message) by formatting a repr of the main task, result
        # included, and that renders every byte (4 x 64 MiB: 17.8 s instead of 0.3 s).
        out: dict[str, Any] = {}
        asyncio.run(main(out))
        return lambda: [checker.blob(n, d) for n, d in out.items()] and None

    return run


def boto3_seq(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    client = _boto3_client(spec)

    def run() -> Callable[[], None]:
        out = {}
        for rid, c, url in pairs:
            bucket, key = _split(url)
            out[f"{rid}/{c}"] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return lambda: [checker.blob(n, d) for n, d in out.items()] and None

    return run


def boto3_pool(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    """The usual hand-written pool: 32 threads sharing one client (clients are thread-safe)."""
    threads = 32
    client = _boto3_client(spec, threads)
    pool = _memo("pool", lambda: concurrent.futures.ThreadPoolExecutor(threads))

    def get(url: str) -> bytes:
        bucket, key = _split(url)
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def run() -> Callable[[], None]:
        datas = list(pool.map(get, [url for _, _, url in pairs]))
        out = {f"{rid}/{c}": d for (rid, c, _), d in zip(pairs, datas, strict=True)}
        return lambda: [checker.blob(n, d) for n, d in out.items()] and None

    return run


def _s5cmd_binary() -> str:
    found = shutil.which("s5cmd") or os.path.join(os.path.dirname(sys.executable), "s5cmd")
    if not os.access(found, os.X_OK):
        raise Skip("s5cmd not installed")
    return found


def s5cmd(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    binary = _s5cmd_binary()
    root = _tmpdir(spec)
    cmds = Path(spec["tmp"]) / "s5cmd-read.txt"
    cmds.write_text("".join(f'cp "{url}" "{root}/{rid}/{c}"\n' for rid, c, url in pairs))
    env = _env_creds(spec)

    def run() -> Callable[[], None]:
        subprocess.run(
            [
                binary,
                "--endpoint-url",
                spec["endpoint"],
                "--numworkers",
                "64",
                "--log",
                "error",
                "run",
                str(cmds),
            ],
            check=True,
            env=env,
        )
        return lambda: _check_dir(checker, root, pairs)

    return run


def curl(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    binary = shutil.which("curl")
    if binary is None:
        raise Skip("curl not installed")
    if not spec.get("unsigned_ok", True):
        raise Skip("curl sends unsigned requests, which moto refuses (reads fell back to moto)")
    root = _tmpdir(spec)
    cfg = Path(spec["tmp"]) / "curl.cfg"
    lines = []
    for rid, c, url in pairs:
        bucket, key = _split(url)
        lines.append(f'url = "{spec["endpoint"]}/{bucket}/{key}"\noutput = "{root}/{rid}/{c}"\n')
    cfg.write_text("".join(lines))

    def run() -> Callable[[], None]:
        subprocess.run(
            [
                binary,
                "-Z",
                "--parallel-max",
                "64",
                "-s",
                "-S",
                "--fail",
                "--create-dirs",
                "-K",
                str(cfg),
            ],
            check=True,
        )
        return lambda: _check_dir(checker, root, pairs)

    return run


# --- write contenders ---------------------------------------------------------------
# The frame holds local paths; objects go to s3://<out bucket>/<prefix>/<id>/<name>.


def _written_checker(spec: dict[str, Any], pairs: list, checker: Checker) -> Callable[[], None]:
    """Reads every written object back (after the measurement) and checks it."""

    def check() -> None:
        client = _boto3_client(spec, 8)
        bucket, prefix = spec["out_bucket"], spec["out_prefix"]

        def get(rid: str, c: str) -> tuple[str, bytes | None]:
            try:
                body = client.get_object(Bucket=bucket, Key=f"{prefix}/{rid}/{c}")["Body"].read()
            except Exception:
                return f"{rid}/{c}", None
            return f"{rid}/{c}", body

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for name, data in pool.map(lambda p: get(p[0], p[1]), pairs):
                checker.blob(name, data)

    return check


def fd_write_files(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    import file_dataset

    options = _options(spec)
    into = f"s3://{spec['out_bucket']}/{spec['out_prefix']}"
    rows: dict[str, dict[str, str]] = {}
    for rid, c, path in pairs:
        rows.setdefault(rid, {})[c] = path

    def run() -> Callable[[], None]:
        for rid, files in rows.items():
            file_dataset.write_files(files, into, rid, options)
        return _written_checker(spec, pairs, checker)

    return run


def fd_pipeline_upload(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    """Pipeline over a frame (local paths, or s3 URLs on nginx for the overlap test)
    whose fn returns its inputs (hard links), optionally after sleeping."""
    import file_dataset

    write_opts = _options({**spec, "endpoint": spec["write_endpoint"]})
    read_opts = (
        _options(spec)
        if spec.get("read_endpoint") is None
        else _options({**spec, "endpoint": spec["read_endpoint"]})
    )
    into = f"s3://{spec['out_bucket']}/{spec['out_prefix']}"
    sleep_s = float(spec.get("sleep_s") or 0)
    df = spec["_df"]
    spec["_compute_s"] = 0.0  # the time spent in fn, summed over rows

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        start = time.perf_counter()
        if sleep_s:
            time.sleep(sleep_s)
        out = {}
        for p in input_dir.iterdir():
            os.link(p, output_dir / p.name)
            out[p.name] = output_dir / p.name
        spec["_compute_s"] += time.perf_counter() - start
        return out

    def run() -> Callable[[], None]:
        result = file_dataset.Pipeline(
            fn, {"into_path": into, "options": write_opts}, read_opts, on_error="raise"
        )(df)
        assert len(result) == len(df)
        return _written_checker({**spec, "endpoint": spec["write_endpoint"]}, pairs, checker)

    return run


def boto3_upload_file(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    client = _boto3_client(spec)

    def run() -> Callable[[], None]:
        for rid, c, path in pairs:
            client.upload_file(path, spec["out_bucket"], f"{spec['out_prefix']}/{rid}/{c}")
        return _written_checker(spec, pairs, checker)

    return run


def s3transfer_pool(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    from s3transfer.manager import TransferConfig, TransferManager

    client = _boto3_client(spec, 32)

    def run() -> Callable[[], None]:
        config = TransferConfig(max_request_concurrency=32)
        with TransferManager(client, config) as manager:
            futures = [
                manager.upload(path, spec["out_bucket"], f"{spec['out_prefix']}/{rid}/{c}")
                for rid, c, path in pairs
            ]
            for f in futures:
                f.result()
        return _written_checker(spec, pairs, checker)

    return run


def s5cmd_upload(spec: dict[str, Any], pairs: list, checker: Checker) -> Prepared:
    binary = _s5cmd_binary()
    cmds = Path(spec["tmp"]) / "s5cmd-write.txt"
    cmds.write_text(
        "".join(
            f'cp "{path}" "s3://{spec["out_bucket"]}/{spec["out_prefix"]}/{rid}/{c}"\n'
            for rid, c, path in pairs
        )
    )
    env = _env_creds(spec)

    def run() -> Callable[[], None]:
        subprocess.run(
            [
                binary,
                "--endpoint-url",
                spec["endpoint"],
                "--numworkers",
                "32",
                "--log",
                "error",
                "run",
                str(cmds),
            ],
            check=True,
            env=env,
        )
        return _written_checker(spec, pairs, checker)

    return run


CONTENDERS: dict[str, Callable[..., Prepared]] = {
    "fd_blob": fd_blob,
    "fd_blob_cold": fd_blob,
    "fd_tempdir": fd_tempdir,
    "fd_ray": fd_ray,
    "fd_pipeline": fd_pipeline,
    "ray_download": _ray_download,
    "ray_download_noobstore": _ray_download,
    "ray_read_binary": ray_read_binary,
    "daft_native": daft_native,
    "daft_ray": daft_ray,
    "s3fs_cat": s3fs_cat,
    "obstore_async": obstore_async,
    "boto3_seq": boto3_seq,
    "boto3_pool": boto3_pool,
    "s5cmd": s5cmd,
    "curl": curl,
    "fd_write_files": fd_write_files,
    "fd_pipeline_upload": fd_pipeline_upload,
    "fd_ray_local": fd_ray_local,
    "fd_pipeline_io": fd_pipeline_upload,
    "fd_pipeline_sleep": fd_pipeline_upload,
    "boto3_upload_file": boto3_upload_file,
    "s3transfer_pool": s3transfer_pool,
    "s5cmd_upload": s5cmd_upload,
}


# Processes started per run: nothing to warm up (their start is part of their cost).
NO_WARMUP = {"s5cmd", "curl", "s5cmd_upload", "fd_blob_cold"}


_T0 = time.perf_counter()


def _phase(name: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.2f} s] {name}", file=sys.stderr, flush=True)


def main(spec_path: str) -> None:
    _phase("started")
    spec = json.loads(Path(spec_path).read_text())
    result: dict[str, Any] = {"contender": spec["contender"], "status": "ERROR"}
    out = Path(spec["result"])
    try:
        manifest = json.loads(Path(spec["manifest"]).read_text())
        checker = Checker(manifest)
        pairs = _pairs(spec)
        impl_name = spec["contender"].split("[")[0]
        tokens = spec["contender"].partition("[")[2].rstrip("]").replace("+", ",").split(",")
        for token in tokens:  # e.g. fd_blob[obstore+c64]: 64 concurrent transfers
            if token.startswith("c") and token[1:].isdigit():
                spec["max_concurrency"] = int(token[1:])
            if token.startswith("p") and token[1:].isdigit():  # part size in MiB
                spec["part_mib"] = int(token[1:])
            if token == "noreserve":  # Ray Data without per-operator reservations
                spec["ray_noreserve"] = True
            if token.startswith("cpu"):  # CPUs asked for by each read task, e.g. cpu0.5
                spec["ray_num_cpus"] = float(token[3:])
        prepare = CONTENDERS[impl_name]
        try:
            if spec.get("warm_frame") and impl_name not in NO_WARMUP:
                # the same clients, pools and workers read a small other set first
                warm = {
                    **spec,
                    "frame": spec["warm_frame"],
                    "out_prefix": f"{spec.get('out_prefix')}-warm",
                }
                warm_checker = Checker(json.loads(Path(spec["warm_manifest"]).read_text()))
                warm_pairs = _pairs(warm)
                _phase("warm-up")
                prepare(warm, warm_pairs, warm_checker)()()
                ok, problems, _ = warm_checker.summary()
                if not ok:
                    raise RuntimeError(f"warm-up read wrong bytes: {problems}")
            _phase("prepare")
            run = prepare(spec, pairs, checker)
        except Skip as e:
            result.update(status="SKIPPED", reason=str(e))
            return
        # --repeat: measure several times in this process (after the same warm-up) and
        # report the run with the median wall time (for an even count, the slower of the
        # two middle runs); only the last run's bytes are kept
        # and checked, so a repeat never holds more than one run's output.
        meters: list[Meter] = []
        error = None
        for _ in range(max(1, int(spec.get("repeat") or 1))):
            check = None  # let the previous run's output go before the next run
            with Meter(spec.get("log")) as meter:
                try:
                    check = run()
                except Exception as e:
                    error = e
                    tb = traceback.format_exc()
            meters.append(meter)
            if error is not None:
                break
        # the median; for an even count, the slower of the two middle runs (conservative)
        meter = sorted(meters, key=lambda m: m.wall)[len(meters) // 2]
        if len(meters) > 1:
            walls = ", ".join(f"{m.wall:.2f}" for m in meters)
            which = "" if len(meters) % 2 else ", the slower middle one"
            note = f"median of {len(meters)} runs ({walls} s{which})"
            spec["_note"] = "; ".join(filter(None, [spec.get("_note"), note]))
        result.update(
            wall=meter.wall,
            walls=[m.wall for m in meters],
            cpu=meter.cpu,
            peak_rss=max(m.peak for m in meters),
            base_rss=meters[0].base_rss,
            requests=meter.requests,
            objects=len(pairs),
            bytes=sum(s for s, _ in manifest.values()),
            note=spec.get("_note", ""),
            compute=spec.get("_compute_s"),
        )
        if error is not None:
            result.update(
                status="FAILED", reason=f"raised {type(error).__name__}: {str(error)[:300]}"
            )
            sys.stderr.write(tb)
            return
        _phase("check")
        assert check is not None
        check()
        _phase("checked")
        ok, problems, nulls = checker.summary()
        result.update(nulls=nulls)
        result.update(status="OK" if ok else "FAILED", reason=problems)
    except Exception as e:
        traceback.print_exc()
        result.update(status="FAILED", reason=f"{type(e).__name__}: {str(e)[:300]}")
    finally:
        out.write_text(json.dumps(result))
        if "ray" in sys.modules:
            try:
                import ray

                if ray.is_initialized():
                    ray.shutdown()
                shutil.rmtree(f"/tmp/rayb{os.getpid()}", ignore_errors=True)
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # do not wait for Ray's or pools' shutdown


if __name__ == "__main__":
    main(sys.argv[1])
