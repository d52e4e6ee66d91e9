"""file_dataset benchmark suite: every peer, same servers, same data, one run.

Usage (from the repository root)::

    uv run --all-groups python benchmarks/run.py            # everything (~1 h)
    uv run --all-groups python benchmarks/run.py --workloads A,Ap --latency delay
    uv run --all-groups python benchmarks/run.py --contenders fd_blob,boto3_pool,curl
    uv run python benchmarks/run.py --quick                  # CI smoke, < 60 s

It starts nginx (plain; with a 10 ms first-byte delay through the echo module; and
"S3-like": that delay plus 85 MiB/s per connection, for the large objects C and D)
serving ``<workdir>/data/<bucket>/<key>`` to path-style S3 requests, and moto
(``file_dataset.testing.LocalS3Server``, behind an nginx proxy that logs requests) for
writes; generates the data; runs each contender in its own process (so CPU and peak
RSS are its own); checks every object's bytes; prints a table; and, for full runs,
merges the figures into ``benchmarks/results.json`` and rewrites
``benchmarks/RESULTS.md``. Without nginx, reads fall back to moto (printed).
``--repeat N`` measures each read or write contender N times in its process, after the same
warm-up, and reports the run with the median wall time (steadier figures, and Ray's
first-execution costs are then paid once, as in a long job); for P it runs N (identity
``fn``, sleeping ``fn``) pairs and reports the pair whose ratio is the median. For an
even N there are two middle runs: the slower one (the higher ratio) is reported.
Contenders run in a fixed order (the list below, file_dataset first) and their repeats
back to back, so a load that starts part-way falls on the later ones; ``--rounds K``
runs the whole list K times, forward then reverse then forward..., and reports for each
contender its median round (reads and writes; not P).

Exit status: 1 if any contender returned wrong or missing bytes (FAILED), else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _data import (  # noqa: E402
    ALIASES,
    BUCKET,
    QUICK_READ,
    QUICK_WRITE,
    READ_WORKLOADS,
    WRITE_WORKLOADS,
    Workload,
    frame,
    generate,
    human,
    key_of,
    warm_page_cache,
)
from _servers import Servers  # noqa: E402

CREDS = {"key": "bench-key-id", "secret": "bench-secret-key", "region": "us-east-1"}
OUT_BUCKET = "bench-out"

# Plain fd_* names use the library's default transport (Options.transport="auto":
# obstore); [boto3] or [obstore] force one through FILE_DATASET_TRANSPORT, and [c64] sets
# Options(max_concurrency=64), [p16] Options(part_size=16 MiB), [huge] and [nohuge] set
# FILE_DATASET_HUGE_PAGES=1 and 0, and [noreserve] turns Ray Data's per-operator resource
# reservation off (DataContext.op_resource_reservation_enabled = False), [cpu0.5] has each
# read task of fd_ray ask for 0.5 CPU; tokens combine with "+", and any combination can
# be asked for with --contenders.
READ_CONTENDERS = [
    "fd_blob",
    "fd_blob_cold",
    "fd_tempdir",
    "fd_ray",
    "fd_ray_local",
    "fd_pipeline",
    "fd_blob[c64]",
    "fd_blob[c128]",
    "fd_blob[boto3]",
    "fd_tempdir[boto3]",
    "fd_blob[p16]",
    "fd_tempdir[p16]",
    "fd_blob[huge]",
    "fd_ray[boto3]",
    "fd_pipeline[boto3]",
    "fd_ray[noreserve]",
    "ray_download",
    "ray_download_noobstore",
    "ray_download[noreserve]",
    "ray_read_binary",
    "daft_native",
    "daft_ray",
    "s3fs_cat",
    "obstore_async",
    "boto3_seq",
    "boto3_pool",
    "s5cmd",
    "curl",
]
WRITE_CONTENDERS = [
    "fd_write_files",
    "fd_pipeline_upload",
    "fd_write_files[boto3]",
    "fd_pipeline_upload[boto3]",
    "boto3_upload_file",
    "s3transfer_pool",
    "s5cmd_upload",
]
PIPELINE_CONTENDERS = [
    "fd_pipeline_io",
    "fd_pipeline_sleep",
    "fd_pipeline_io[boto3]",
    "fd_pipeline_sleep[boto3]",
]
QUICK_CONTENDERS = ["fd_blob", "fd_tempdir", "boto3_pool", "curl", "fd_write_files"]
DESCRIPTIONS = {
    "fd_blob": "file_dataset reader(df).into_blob_table(), default transport (obstore)",
    "fd_blob_cold": "into_blob_table as the first call of a process (no warm-up: clients and pool created inside)",
    "fd_tempdir": "file_dataset reader(df).into_temp_dir()",
    "fd_ray": "file_dataset.ray.read_file_dataset, fully materialised to the driver",
    "fd_ray_local": "read_file_dataset over the same objects as local paths: Ray's own cost, no network",
    "fd_pipeline": "file_dataset Pipeline, fn hard-links its inputs aside, no outputs",
    "fd_blob[c64]": "into_blob_table with Options(max_concurrency=64): the defaults, a noise control",
    "fd_blob[c128]": "into_blob_table with Options(max_concurrency=128)",
    "fd_blob[boto3]": "into_blob_table, boto3 transport (FILE_DATASET_TRANSPORT=boto3)",
    "fd_blob_cold[boto3]": "fd_blob_cold, boto3 transport",
    "fd_tempdir[boto3]": "into_temp_dir, boto3 transport",
    "fd_blob[p16]": "into_blob_table with Options(part_size=16 MiB)",
    "fd_tempdir[p16]": "into_temp_dir with Options(part_size=16 MiB)",
    "fd_blob[huge]": "into_blob_table with large buffers in huge pages (FILE_DATASET_HUGE_PAGES=1)",
    "fd_ray[boto3]": "read_file_dataset, boto3 transport (variable inherited by Ray workers)",
    "fd_pipeline[boto3]": "fd_pipeline, boto3 transport",
    "fd_ray[noreserve]": "fd_ray with DataContext.op_resource_reservation_enabled = False",
    "ray_download[noreserve]": "ray_download with DataContext.op_resource_reservation_enabled = False",
    "ray_download": "Ray Data with_column(download()) per file column, obstore installed",
    "ray_download_noobstore": "same, obstore made unimportable (sitecustomize shim)",
    "ray_read_binary": "ray.data.read_binary_files(all paths, include_paths=True)",
    "daft_native": "Daft daft.functions.download(max_connections=64), native runner",
    "daft_ray": "Daft download(max_connections=64) on the Ray runner",
    "s3fs_cat": "s3fs S3FileSystem.cat(all paths)",
    "obstore_async": "obstore get_async + bytes_async, asyncio, 64 in flight",
    "boto3_seq": "boto3 get_object().read(), one at a time",
    "boto3_pool": "boto3 get_object().read(), 32 threads sharing one client",
    "s5cmd": "s5cmd run (cp per object, 64 workers) into a directory",
    "curl": "curl -Z --parallel-max 64 into a directory (ceiling; unsigned)",
    "fd_write_files": "file_dataset write_files, one call per row, default transport (multipart parts go through boto3)",
    "fd_write_files[boto3]": "write_files, boto3 transport",
    "fd_pipeline_upload": "file_dataset Pipeline over local inputs, fn returns its inputs",
    "fd_pipeline_upload[boto3]": "same, boto3 transport",
    "boto3_upload_file": "boto3 upload_file, one at a time (s3transfer inside)",
    "s3transfer_pool": "s3transfer TransferManager, 32 concurrent requests",
    "s5cmd_upload": "s5cmd run (cp per file, 32 workers)",
    "fd_pipeline_io": "Pipeline over B (nginx -> moto), identity fn",
    "fd_pipeline_sleep": "same, fn sleeps one row's I/O time (from fd_pipeline_io)",
    "fd_pipeline_io[boto3]": "fd_pipeline_io, boto3 transport",
    "fd_pipeline_sleep[boto3]": "fd_pipeline_sleep, boto3 transport",
}


def _subreaper() -> None:
    """Orphans of contenders (Ray daemons) become our children, so we can end them."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap_strays(keep: set[int]) -> None:
    me = psutil.Process()
    strays = [p for p in me.children(recursive=True) if p.pid not in keep]
    for p in strays:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(strays, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def _noobstore_shim(workdir: Path) -> Path:
    shim = workdir / "noobstore"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoObstore:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'obstore' or name.startswith('obstore.'):\n"
        "            raise ImportError('obstore disabled for this benchmark contender')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NoObstore())\n"
    )
    return shim


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir)
        self.data_root = self.workdir / "data"
        self.tmp = self.workdir / "tmp"
        self.results: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self._warm_cache: dict[bool, tuple[Path, Path]] = {}
        self._info: dict[str, Any] | None = None

    # --- running one contender ------------------------------------------------------

    def run_one(
        self,
        workload: Workload,
        server: str,
        contender: str,
        spec: dict[str, Any],
        record: bool = True,
    ) -> dict[str, Any]:
        """Runs one contender in its own process and prints its row; with ``record``,
        also keeps the result for the table and saves it (full runs)."""
        runs = self.tmp / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="c-", dir=self.tmp))
        tag = f"{workload.slug}-{server}-{contender}".replace("[", "_").replace("]", "")
        spec_path = runs / f"{tag}.json"
        spec.update(contender=contender, tmp=str(tmp), result=str(runs / f"{tag}.result.json"))
        spec["unsigned_ok"] = not self.reads_on_moto or server != "plain"
        spec["data_root"] = str(self.data_root)
        Path(spec["result"]).unlink(missing_ok=True)
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        env.pop("FILE_DATASET_TRANSPORT", None)
        tokens = contender.partition("[")[2].rstrip("]").split("+")
        for transport in ("boto3", "obstore"):
            if transport in tokens:
                env["FILE_DATASET_TRANSPORT"] = transport
        env.pop("FILE_DATASET_HUGE_PAGES", None)
        for token, value in (("huge", "1"), ("nohuge", "0")):
            if token in tokens:  # FILE_DATASET_HUGE_PAGES: see src/file_dataset/_memory.py
                env["FILE_DATASET_HUGE_PAGES"] = value
        if contender.partition("[")[0] == "ray_download":
            # Ray enables plain http for obstore only for http:// URIs; for s3:// URIs on
            # an http endpoint it would silently return null rows without this.
            env["AWS_ALLOW_HTTP"] = "true"
        if contender == "ray_download_noobstore":
            shim = _noobstore_shim(self.workdir)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
        print(f"  {contender:<24}", end="", flush=True)
        log = open(runs / f"{tag}.log", "wb")  # noqa: SIM115
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "_contenders.py"), str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=self.args.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        _reap_strays(self.server_pids)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            result = json.loads(Path(spec["result"]).read_text())
        except (OSError, ValueError):
            tail = (runs / f"{tag}.log").read_text(errors="replace")[-600:]
            reason = (
                f"timed out after {self.args.timeout} s"
                if timed_out
                else f"crashed (exit {proc.returncode}): {tail}"
            )
            result = {"contender": contender, "status": "FAILED", "reason": reason}
        if result["status"] == "FAILED" and not timed_out:
            tail = (runs / f"{tag}.log").read_text(errors="replace").strip().splitlines()[-3:]
            result.setdefault("log", " | ".join(tail)[-400:])
        result.update(workload=workload.name, server=server, elapsed=time.monotonic() - started)
        result["workload_text"] = f"{workload.count:,} x {human(workload.size)}" + (
            " written" if workload.kind == "write" else ""
        )
        result["description"] = DESCRIPTIONS.get(contender, "")
        self._print_row(result, workload)
        print(
            f"{'':28}(process {result['elapsed']:.1f} s)", flush=True
        ) if self.args.verbose else None
        if record:
            self._record([result])
        return result

    def _record(self, results: list[dict[str, Any]]) -> None:
        """Keeps results for the final table and, in full runs, saves them."""
        if not (self.args.quick or self.args.no_save):
            self._save(results)
        self.results.extend(results)

    @staticmethod
    def _print_row(r: dict[str, Any], workload: Workload) -> None:
        if r["status"] == "SKIPPED":
            print(f"SKIPPED  {r.get('reason', '')}", flush=True)
            return
        if "wall" not in r:
            print(f"{r['status']}  {r.get('reason', '')}", flush=True)
            return
        objs = r["objects"] / r["wall"]
        mbs = r["bytes"] / r["wall"] / 1e6
        cpu = 1000 * r["cpu"] / r["objects"]
        req = f"{r['requests'] / r['objects']:.2f}" if r.get("requests") is not None else "-"
        print(
            f"{r['status']:<7} {r['wall']:7.2f} s {objs:9.0f} obj/s {mbs:8.0f} MB/s "
            f"cpu {cpu:6.2f} ms/obj  req/obj {req:>5}  peak {r['peak_rss'] / 2**20:6.0f} MiB"
            + (f"  [{r['reason']}]" if r.get("reason") else "")
            + (f"  ({r['note']})" if r.get("note") else ""),
            flush=True,
        )

    # --- the suite ------------------------------------------------------------------

    def prepare_reads(self, workload: Workload) -> tuple[Path, Path]:
        manifest = generate(workload, self.data_root)
        self._warm_page_cache(workload)
        if self.reads_on_moto:
            self._upload_to_moto(workload)
        return self._frame_files(workload, manifest, "", lambda key: f"s3://{BUCKET}/{key}")

    def _frame_files(
        self,
        workload: Workload,
        manifest: dict[str, list[int]],
        suffix: str,
        location: Callable[[str], str],
    ) -> tuple[Path, Path]:
        """Writes the workload's file DataFrame (cells from ``location(key)``) and its
        manifest under ``<workdir>/frames``; returns (frame path, manifest path)."""
        frames = self.workdir / "frames"
        frames.mkdir(exist_ok=True)
        mpath = frames / f"{workload.slug}-{workload.size}.manifest.json"
        mpath.write_text(json.dumps(manifest))
        fpath = frames / f"{workload.slug}-{workload.size}{suffix}.parquet"
        frame(workload, location).to_parquet(fpath)
        return fpath, mpath

    def _warm_page_cache(self, workload: Workload) -> None:
        # Every contender then reads the data from memory, not only the ones after the
        # first (which would otherwise pay for the disk).
        n, seconds = warm_page_cache(workload, self.data_root)
        print(f"   page cache warmed: {human(n)} read in {seconds:.2f} s", flush=True)

    def _upload_to_moto(self, workload: Workload, bucket: str = BUCKET, prefix: str = "") -> None:
        """Uploads the workload's files to ``bucket`` under their keys (after ``prefix``)."""
        client = self._moto_client()
        with contextlib.suppress(Exception):
            client.create_bucket(Bucket=bucket)
        import concurrent.futures

        def put(p: Path) -> None:
            key = prefix + str(p.relative_to(self.data_root / BUCKET))
            client.upload_file(str(p), bucket, key)

        folder = self.data_root / BUCKET / key_of(workload, "x", "y").split("/")[0]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(put, [p for p in folder.rglob("*") if p.is_file()]))

    def _moto_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.servers.endpoints["moto"].url,
            aws_access_key_id=CREDS["key"],
            aws_secret_access_key=CREDS["secret"],
            region_name=CREDS["region"],
        )

    def _warm_moto(self, workload: Workload) -> None:
        # moto keeps objects in its own memory: write the workload once before the
        # contenders, so that the first of them does not alone pay for growing moto's heap.
        started = time.monotonic()
        self._clear_out_bucket()
        self._upload_to_moto(workload, OUT_BUCKET, "warm/")
        self._clear_out_bucket()
        print(f"   moto warmed in {time.monotonic() - started:.2f} s", flush=True)

    def _clear_out_bucket(self) -> None:
        client = self._moto_client()
        with contextlib.suppress(Exception):
            client.create_bucket(Bucket=OUT_BUCKET)
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=OUT_BUCKET):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=OUT_BUCKET, Delete={"Objects": keys})

    def _room_for(self, workload: Workload) -> str | None:
        need_disk = 3 * workload.total + (1 << 30)
        free_disk = shutil.disk_usage(self.workdir).free
        avail = psutil.virtual_memory().available
        need_mem = 4 * workload.total + (2 << 30)
        if free_disk < need_disk:
            return f"needs {human(need_disk)} of disk, {human(free_disk)} free"
        if avail < need_mem:
            return f"needs {human(need_mem)} of memory, {human(avail)} available"
        return None

    def run(self) -> int:
        args = self.args
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        _subreaper()
        reads, writes, pipeline = self._select_workloads()
        self.servers = Servers(
            self.workdir,
            self.data_root,
            want_moto=bool(writes or pipeline) or args.moto_reads,
            force_moto_reads=args.moto_reads,
        )
        t0 = time.monotonic()
        with self.servers:
            self.server_pids = {p.pid for p in psutil.Process().children(recursive=True)}
            self.reads_on_moto = self.servers.endpoints["plain"].name.endswith("(moto)")
            self.notes += self.servers.notes
            for workload in reads:
                self._run_read(workload)
            for workload in writes:
                self._run_write(workload)
            if pipeline:
                self._run_pipeline(pipeline)
        print(f"\nfinished in {time.monotonic() - t0:.0f} s")
        return self._finish()

    def _select_workloads(self) -> tuple[list[Workload], list[Workload], Workload | None]:
        args = self.args
        read_set = QUICK_READ if args.quick else READ_WORKLOADS
        write_set = QUICK_WRITE if args.quick else WRITE_WORKLOADS
        if args.workloads:
            names = [
                ALIASES.get(n.strip().upper(), n.strip().upper()) for n in args.workloads.split(",")
            ]
        else:
            names = [*read_set, *write_set] + ([] if args.quick else ["P"])
        unknown = [n for n in names if n not in read_set and n not in write_set and n != "P"]
        if unknown:
            raise SystemExit(f"unknown workloads {unknown}; known: {[*read_set, *write_set, 'P']}")
        reads = [read_set[n] for n in names if n in read_set]
        writes = [write_set[n] for n in names if n in write_set]
        pipeline = READ_WORKLOADS["B"] if "P" in names else None
        return reads, writes, pipeline

    def _contenders(self, default: list[str]) -> list[str]:
        if self.args.quick and not self.args.contenders:
            return [c for c in default if c in QUICK_CONTENDERS]
        if not self.args.contenders:
            return default
        wanted = [c.strip() for c in self.args.contenders.split(",")]
        # a listed contender with other tokens (e.g. fd_ray[cpu0.5]) runs too, after them
        bases = {c.split("[")[0] for c in default}
        extra = [c for c in wanted if c not in default and c.split("[")[0] in bases]
        return [c for c in default if c in wanted] + extra

    def _warm(self, local: bool) -> tuple[Path, Path]:
        """A small other set every contender reads (or writes) first, unmeasured."""
        if local in self._warm_cache:
            return self._warm_cache[local]
        warm = Workload("warm", 64, 4096)
        manifest = generate(warm, self.data_root)
        if self.reads_on_moto and not local:
            self._upload_to_moto(warm)
        frames = self.workdir / "frames"
        frames.mkdir(exist_ok=True)
        mpath = frames / "warm.manifest.json"
        mpath.write_text(json.dumps(manifest))
        fpath = frames / ("warm.local.parquet" if local else "warm.parquet")
        frame(
            warm,
            (lambda key: str(self.data_root / BUCKET / key))
            if local
            else (lambda key: f"s3://{BUCKET}/{key}"),
        ).to_parquet(fpath)
        self._warm_cache[local] = (fpath, mpath)
        return fpath, mpath

    def _base_spec(
        self, server: str, manifest: Path, fpath: Path, workload: Workload, local: bool = False
    ) -> dict[str, Any]:
        endpoint = self.servers.endpoints[server]
        warm_frame, warm_manifest = self._warm(local)
        return {
            "warm_frame": str(warm_frame),
            "warm_manifest": str(warm_manifest),
            "workload": {"name": workload.name, "count": workload.count, "size": workload.size},
            "repeat": self.args.repeat,  # the P workload sets its own (pairs of runs)
            "frame": str(fpath),
            "manifest": str(manifest),
            "endpoint": endpoint.url,
            "log": str(endpoint.log) if endpoint.log else None,
            "creds": CREDS,
        }

    def _run_read(self, workload: Workload) -> None:
        room = self._room_for(workload)
        if room:
            msg = f"workload {workload.name} skipped: {room}"
            print(msg)
            self.notes.append(msg)
            return
        print(f"\n== {workload.describe()}: generating data", flush=True)
        fpath, mpath = self.prepare_reads(workload)
        servers = [s for s in workload.latencies if s in self.servers.endpoints]
        if self.args.latency:
            servers = [s for s in servers if s in self.args.latency.split(",")]
        for server in servers:
            print(
                f"-- {workload.name} on {self.servers.endpoints[server].name} ({self.servers.endpoints[server].url})"
            )
            self._run_contenders(
                workload,
                server,
                self._contenders(READ_CONTENDERS),
                lambda _, s=server: self._base_spec(s, mpath, fpath, workload),
            )

    def _run_contenders(
        self,
        workload: Workload,
        server: str,
        contenders: list[str],
        make_spec: Callable[[str], dict[str, Any]],
    ) -> None:
        """Runs the contenders in list order; with ``--rounds K`` (K > 1), runs the whole
        list K times, forward then reverse then forward..., so that a load that starts
        part-way does not always fall on the same (last) contenders, and keeps for each
        the round with the median wall time (for an even K, the slower middle one)."""
        rounds = max(1, self.args.rounds)
        if rounds == 1:
            for contender in contenders:
                self.run_one(workload, server, contender, make_spec(contender))
            return
        got: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        for n in range(rounds):
            order = contenders if n % 2 == 0 else contenders[::-1]
            print(f"   round {n + 1} of {rounds}" + (" (reverse order)" if n % 2 else ""))
            for contender in order:
                got[contender].append(
                    self.run_one(workload, server, contender, make_spec(contender), record=False)
                )
        chosen = []
        for contender, runs in got.items():
            bad = [r for r in runs if r["status"] != "OK" or "wall" not in r]
            if bad:  # a failure or skip in any round is what is reported
                chosen.append(bad[0])
                continue
            walls = [r["wall"] for r in runs]
            r = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
            which = "" if len(runs) % 2 else ", the slower middle one"
            listed = ", ".join(f"{w:.2f}" for w in walls)
            r["note"] = "; ".join(
                filter(None, [r.get("note"), f"median of {len(runs)} rounds ({listed} s{which})"])
            )
            r["round_walls"] = walls
            chosen.append(r)
            print(f"  {contender:<24}median of {len(runs)} rounds: {r['wall']:.2f} s ({listed})")
        self._record(chosen)

    def _run_write(self, workload: Workload) -> None:
        room = self._room_for(workload)
        if room:
            print(f"workload {workload.name} skipped: {room}")
            return
        print(f"\n== {workload.describe()} (writes to moto): generating data", flush=True)
        manifest = generate(workload, self.data_root)
        self._warm_page_cache(workload)
        fpath, mpath = self._frame_files(
            workload, manifest, ".local", lambda key: str(self.data_root / BUCKET / key)
        )
        self._warm_moto(workload)
        from file_dataset import Options

        multipart_threshold = Options().multipart_threshold  # the library's default
        contenders = self._contenders(WRITE_CONTENDERS)

        def make_spec(contender: str) -> dict[str, Any]:
            self._clear_out_bucket()
            spec = self._base_spec("moto", mpath, fpath, workload, local=True)
            n = contenders.index(contender)
            spec.update(out_bucket=OUT_BUCKET, out_prefix=f"w{n}", write_endpoint=spec["endpoint"])
            if workload.size > multipart_threshold:
                # Warm up on the workload itself: a multipart upload's first use of boto3
                # in a process costs ~1 s of CPU (service model, one client per pool
                # thread), which the small warm-up set never reaches; contenders that hold
                # one client made in their setup would not pay it.
                spec.update(warm_frame=str(fpath), warm_manifest=str(mpath))
            return spec

        self._run_contenders(workload, "moto", contenders, make_spec)
        self._clear_out_bucket()

    def _run_pipeline(self, workload: Workload) -> None:
        """Pipeline over B with an identity ``fn`` (its wall time is the I/O time), then
        with an ``fn`` that sleeps one row's share of that time; ``--repeat N`` runs N
        such pairs back to back and keeps the pair with the median ratio (one run of
        a pair is about 2 s here, and moto's speed varies by 10-20 % between runs)."""
        if self.reads_on_moto:
            print("workload P skipped: needs nginx")
            return
        rounds = max(1, self.args.repeat)
        print(
            f"\n== P: Pipeline overlap over {workload.describe()} (read nginx, write moto)"
            + (f", {rounds} pairs each" if rounds > 1 else ""),
            flush=True,
        )
        fpath, mpath = self.prepare_reads(workload)
        chosen = self._contenders(PIPELINE_CONTENDERS)
        for sleep_name in [c for c in chosen if "_sleep" in c]:
            if sleep_name.replace("_sleep", "_io") not in chosen:
                print(f"  {sleep_name} needs {sleep_name.replace('_sleep', '_io')} too")
        for io_name in [c for c in chosen if "_io" in c]:
            sleep_name = io_name.replace("_io", "_sleep")
            if sleep_name not in chosen:  # the I/O time alone
                self._record([self._pipeline_run(workload, fpath, mpath, io_name, None)])
                continue
            pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for _ in range(rounds):
                io = self._pipeline_run(workload, fpath, mpath, io_name, None)
                if io["status"] != "OK":
                    break
                sleep = self._pipeline_run(
                    workload, fpath, mpath, sleep_name, io["wall"] / workload.rows
                )
                if sleep["status"] != "OK":
                    break
                pairs.append((io, sleep))
            if not pairs:
                continue
            ratios = [sleep["pipeline_ratio"] for _, sleep in pairs]
            # the median; for an even count, the higher (worse) of the two middle ratios
            io, sleep = sorted(pairs, key=lambda pair: pair[1]["pipeline_ratio"])[len(pairs) // 2]
            if rounds > 1:
                listed = ", ".join(f"{r:.2f}" for r in ratios)
                which = "" if len(pairs) % 2 else ", the higher middle one"
                sleep["note"] += f"; median of {len(pairs)} pairs ({listed}{which})"
                print(f"    {sleep_name}: median ratio of {len(pairs)} pairs: {sleep['note']}")
            self._record([io, sleep])
        self._clear_out_bucket()

    def _pipeline_run(
        self,
        workload: Workload,
        fpath: Path,
        mpath: Path,
        contender: str,
        sleep_s: float | None,
    ) -> dict[str, Any]:
        self._clear_out_bucket()
        spec = self._base_spec("moto", mpath, fpath, workload)
        spec.update(
            out_bucket=OUT_BUCKET,
            out_prefix=contender,
            write_endpoint=spec["endpoint"],
            read_endpoint=self.servers.endpoints["plain"].url,
            repeat=1,
        )
        if sleep_s is not None:
            spec["sleep_s"] = sleep_s
        shown = Workload("P", workload.count, workload.size, ("moto",))
        r = self.run_one(shown, "moto", contender, spec, record=False)
        if sleep_s is not None and r["status"] == "OK":
            io_wall = sleep_s * workload.rows
            # compute = the time fn really took (its sleep plus the hard links it makes),
            # as measured around every call
            compute = r.get("compute") or io_wall
            r["pipeline_ratio"] = r["wall"] / max(io_wall, compute)
            r["note"] = (r.get("note") or "") + (
                f"sleep {sleep_s * 1000:.1f} ms/row, fn {compute:.2f} s in all; "
                f"wall / max(I/O, compute) = {r['pipeline_ratio']:.2f}"
            )
            print(f"    -> {r['note']}")
        return r

    # --- reporting ------------------------------------------------------------------

    def _save(self, results: list[dict[str, Any]]) -> None:
        """Merges results into results.json (replacing the same workload, server and
        contender) and rewrites RESULTS.md."""
        from _report import machine_info, render

        store = HERE / "results.json"
        old = json.loads(store.read_text()) if store.exists() else {"results": [], "notes": []}
        keys = {(r["workload"], r["server"], r["contender"]) for r in results}
        merged = [
            r for r in old["results"] if (r["workload"], r["server"], r["contender"]) not in keys
        ]
        if self._info is None:
            self._info = machine_info()
        for r in results:
            r["date"] = self._info["date"]
        merged += results
        notes = sorted(set(old.get("notes", [])) | set(self.notes))
        store.write_text(
            json.dumps({"results": merged, "notes": notes, "machine": self._info}, indent=1)
        )
        (HERE / "RESULTS.md").write_text(render(merged, self._info, notes, quick=False))

    def _finish(self) -> int:
        from _report import machine_info, render, table_text

        failed = [r for r in self.results if r["status"] == "FAILED"]
        print()
        print(table_text(self.results))
        if self.args.quick or self.args.no_save:
            out = self.workdir / "quick-results.md"
            out.write_text(render(self.results, machine_info(), self.notes, quick=True))
            print(f"\n(written to {out}; RESULTS.md untouched in quick mode)")
        else:
            print(f"\nmerged into {HERE / 'results.json'} and {HERE / 'RESULTS.md'}")
        if failed:
            print(f"\n{len(failed)} contender(s) FAILED (wrong or missing bytes, or errors):")
            for r in failed:
                print(
                    f"  {r['workload']} {r['server']} {r['contender']}: {r.get('reason')} {r.get('log', '')}"
                )
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, a few contenders (CI smoke)"
    )
    parser.add_argument("--workloads", help="comma-separated: A,Ap (A'),B,C,D,W1,W64,P")
    parser.add_argument("--contenders", help="comma-separated names (see --list)")
    parser.add_argument("--latency", help="comma-separated servers for reads: plain,delay,s3")
    parser.add_argument(
        "--workdir", default=os.path.join(tempfile.gettempdir(), "file_dataset-bench")
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per contender")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="reads and writes: measure each contender N times in its process, report "
        "the median run; P: run N (identity, sleep) pairs, report the pair with the "
        "median ratio; for an even N, the slower middle run (higher middle ratio)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="reads and writes: run the whole contender list K times, alternating its "
        "order (forward, reverse, ...), and report each contender's median round (for "
        "an even K, the slower middle one); not used by P",
    )
    parser.add_argument(
        "--moto-reads", action="store_true", help="serve reads from moto even if nginx exists"
    )
    parser.add_argument(
        "--no-save", action="store_true", help="do not touch results.json / RESULTS.md"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also print each process's total time"
    )
    parser.add_argument("--list", action="store_true", help="list contenders and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name in READ_CONTENDERS + WRITE_CONTENDERS + PIPELINE_CONTENDERS:
            print(f"{name:<26} {DESCRIPTIONS.get(name, '')}")
        return 0
    if args.timeout is None:
        args.timeout = 60.0 if args.quick else 900.0
    if args.quick:
        args.workdir = str(Path(args.workdir).with_name(Path(args.workdir).name + "-quick"))
    return Suite(args).run()


if __name__ == "__main__":
    sys.exit(main())
