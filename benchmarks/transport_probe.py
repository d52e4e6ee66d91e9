"""Other ways to carry the bytes of C or D, against this library (probes, not contenders).

Ways: ``crt_file`` and ``crt_mem`` (the AWS CRT's ``S3Client``, its own parallel ranged
GETs, into files with ``recv_filepath`` or into Arrow buffers from ``on_body`` chunks),
``presigned`` (a prototype: each object's 8 MiB ranged parts as GETs of one presigned
URL over urllib3, read with http.client's ``readinto`` straight into an Arrow buffer:
no botocore per request, no obstore copy), ``pool`` (32 threads, one boto3 GET per
object, ``.read()``), ``fd_blob`` and ``fd_tempdir``.

awscrt is not a dependency of the project; for the CRT ways install it beside the
environment first:

    uv pip install --target /tmp/awscrt awscrt
    PYTHONPATH=/tmp/awscrt uv run --all-groups python benchmarks/transport_probe.py C-67108864

The workload's data and frame must exist (any earlier ``benchmarks/run.py`` run that
included the workload made them under ``--workdir``). The probe starts the suite's
nginx servers, then, for each way, one process that reads the whole workload
``1 + rounds`` times and prints each read's wall time, its CPU per object (user and
system) and the CRC-32 of the first object. The first read in a process pays for
set-up (clients, connections, fresh memory): compare first reads with first reads,
later ones with later ones.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WAYS = ("crt_file", "crt_mem", "presigned", "pool", "fd_blob", "fd_tempdir")
KEY, SECRET, REGION = "bench-key-id", "bench-secret-key", "us-east-1"


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


@functools.cache
def _boto3_client(endpoint: str, connections: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
        config=Config(max_pool_connections=connections, signature_version="s3v4"),
    )


@functools.cache
def _threads(count: int) -> Any:
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(count)


@functools.cache
def _http() -> Any:
    import urllib3

    return urllib3.PoolManager(maxsize=64, retries=False)


def _presigned_read(url: str, endpoint: str) -> Any:
    """One object: a ranged GET of its first part gives its size, then its other parts."""
    import pyarrow as pa

    from file_dataset._memory import prefault

    part = 8 << 20
    bucket, key = url[len("s3://") :].split("/", 1)
    signed = _boto3_client(endpoint, 64).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600
    )

    def get(start: int, length: int) -> Any:
        ranged = {"Range": f"bytes={start}-{start + length - 1}"}
        return _http().request("GET", signed, headers=ranged, preload_content=False)

    def fill(view: memoryview, response: Any) -> None:
        if response.status != 206:
            raise OSError(f"{url}: answered {response.status}")
        prefault(view)
        done = 0
        while done < len(view):
            got = response._fp.readinto(view[done : done + (1 << 20)])
            if not got:
                raise OSError(f"{url}: the body ended early")
            done += got
        response.release_conn()

    first = get(0, part)
    total = int(first.headers["Content-Range"].rsplit("/", 1)[1])
    buffer = pa.allocate_buffer(total, memory_pool=pa.system_memory_pool())
    view = memoryview(buffer).cast("B")
    later = [
        _threads(64).submit(
            lambda s: fill(view[s : min(s + part, total)], get(s, min(part, total - s))), s
        )
        for s in range(part, total, part)
    ]
    fill(view[: min(part, total)], first)
    for future in later:
        future.result()
    return buffer


@functools.cache
def _crt_client(part_size: int) -> Any:
    """One client per process, as one would keep it."""
    from awscrt.auth import AwsCredentialsProvider
    from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
    from awscrt.s3 import S3Client, S3RequestTlsMode

    loops = EventLoopGroup(2)
    return S3Client(
        bootstrap=ClientBootstrap(loops, DefaultHostResolver(loops)),
        region=REGION,
        tls_mode=S3RequestTlsMode.DISABLED,
        credential_provider=AwsCredentialsProvider.new_static(KEY, SECRET),
        part_size=part_size,
        throughput_target_gbps=100.0,
    )


def _read_once(
    way: str, urls: list[str], size: int, endpoint: str, scratch: Path
) -> Callable[[], list[int]]:
    """Reads every URL once; returns a function giving their CRC-32s (not timed)."""
    if way.startswith("crt"):
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3RequestType

        client = _crt_client(8 << 20)
        host = endpoint.split("//", 1)[1]
        if way == "crt_file":
            folder = Path(tempfile.mkdtemp(dir=scratch))
            requests = [
                client.make_request(
                    type=S3RequestType.GET_OBJECT,
                    request=HttpRequest("GET", "/" + url[5:], HttpHeaders([("Host", host)])),
                    recv_filepath=str(folder / str(i)),
                )
                for i, url in enumerate(urls)
            ]
            for request in requests:
                request.finished_future.result()
            return lambda: [zlib.crc32((folder / str(i)).read_bytes()) for i in range(len(urls))]
        import pyarrow as pa

        buffers = [pa.allocate_buffer(size) for _ in urls]

        def into(view: memoryview) -> Callable[..., None]:
            def on_body(chunk: bytes, offset: int, **_: Any) -> None:
                view[offset : offset + len(chunk)] = chunk

            return on_body

        requests = [
            client.make_request(
                type=S3RequestType.GET_OBJECT,
                request=HttpRequest("GET", "/" + url[5:], HttpHeaders([("Host", host)])),
                on_body=into(memoryview(buffer).cast("B")),
            )
            for url, buffer in zip(urls, buffers, strict=True)
        ]
        for request in requests:
            request.finished_future.result()
        return lambda: [zlib.crc32(buffer) for buffer in buffers]
    if way == "presigned":
        buffers = list(_threads(16).map(lambda url: _presigned_read(url, endpoint), urls))
        return lambda: [zlib.crc32(buffer) for buffer in buffers]
    if way == "pool":

        def whole(url: str) -> bytes:
            bucket, key = url[len("s3://") :].split("/", 1)
            body = _boto3_client(endpoint, 32).get_object(Bucket=bucket, Key=key)["Body"]
            return body.read()  # type: ignore[no-any-return]

        datas = list(_threads(32).map(whole, urls))
        return lambda: [zlib.crc32(data) for data in datas]
    import pandas as pd

    import file_dataset

    options = _options(endpoint)
    frame = pd.DataFrame({"id": [str(i) for i in range(len(urls))], "x.bin": urls})
    if way == "fd_blob":
        table = file_dataset.reader(frame, options).into_blob_table()
        return lambda: [zlib.crc32(table["x.bin"][i].as_buffer()) for i in range(len(urls))]
    folder = file_dataset.reader(frame, options).into_temp_dir()
    return lambda: [
        zlib.crc32((Path(folder.path) / str(i) / "x.bin").read_bytes()) for i in range(len(urls))
    ]


@functools.cache
def _options(endpoint: str) -> Any:
    """One Options per process: its clients and connections are kept between reads."""
    import file_dataset

    return file_dataset.Options(
        session_kwargs={
            "aws_access_key_id": KEY,
            "aws_secret_access_key": SECRET,
            "region_name": REGION,
        },
        s3_client_kwargs={"endpoint_url": endpoint},
    )


def _child(way: str, workload: str, endpoint: str, frames: Path, rounds: int) -> None:
    import pandas as pd

    frame = pd.read_parquet(frames / f"{workload}.parquet")
    urls = [url for column in frame.columns if column != "id" for url in frame[column]]
    size = int(workload.split("-")[1])
    scratch = Path(tempfile.mkdtemp(prefix="crt-probe-"))
    walls = []
    try:
        for n in range(1 + rounds):
            started, before = time.perf_counter(), _cpu()
            crcs = _read_once(way, urls, size, endpoint, scratch)
            wall = time.perf_counter() - started
            user, system = (after - then for after, then in zip(_cpu(), before, strict=True))
            first = crcs()[0]
            walls.append(wall)
            print(
                f"{way:10} {workload} read {n}: {wall:.3f} s, {len(urls) * size / wall / 1e6:,.0f} MB/s, "
                f"CPU {user * 1000 / len(urls):.0f} user + {system * 1000 / len(urls):.0f} "
                f"system ms/object, crc {first:08x}",
                flush=True,
            )
            for leftover in scratch.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    later = sorted(walls[1:]) or walls
    print(f"{way:10} {workload} median of later reads {later[len(later) // 2]:.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workload", help="a data set name, e.g. C-67108864 or D-1073741824")
    parser.add_argument("--server", default="plain", choices=("plain", "s3"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "file_dataset-bench"
    )
    parser.add_argument("--child", nargs=2, metavar=("WAY", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    frames = args.workdir / "frames"
    if args.child:
        _child(args.child[0], args.workload, args.child[1], frames, args.rounds)
        return
    sys.path.insert(0, str(HERE))
    from _servers import Servers

    servers = Servers(
        Path(tempfile.mkdtemp(prefix="crt-probe-servers-")), args.workdir / "data", want_moto=False
    )
    servers.start()
    try:
        endpoint = servers.endpoints[args.server].url
        for way in args.ways.split(","):
            command = [sys.executable, __file__, args.workload, "--rounds", str(args.rounds)]
            command += ["--workdir", str(args.workdir), "--child", way, endpoint]
            subprocess.run(command, check=False, env=os.environ)
    finally:
        servers.stop()


if __name__ == "__main__":
    main()
