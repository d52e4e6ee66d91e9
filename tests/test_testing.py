"""file_dataset.testing.LocalS3Server in both modes."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import file_dataset
from file_dataset.testing import LocalS3Server


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_local_s3_server_round_trip(mode: str, tmp_path: Path) -> None:
    server = LocalS3Server(mode=mode)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not started"):
        server.endpoint_url  # noqa: B018
    assert repr(server) == f"LocalS3Server(mode={mode!r}, not running)"
    with server:
        assert server.endpoint_url == f"http://127.0.0.1:{server.port}"
        assert repr(server) == f"LocalS3Server(mode={mode!r}, {server.endpoint_url})"
        bucket = server.create_bucket()
        assert server.create_bucket() != bucket
        options = server.options(max_concurrency=2)
        assert options.max_concurrency == 2
        assert options.s3_client_kwargs == {"endpoint_url": server.endpoint_url}
        (tmp_path / "f").write_bytes(b"through " + mode.encode())
        urls = file_dataset.write_files({"f": tmp_path / "f"}, f"s3://{bucket}/p", "1", options)
        assert urls == {"f": f"s3://{bucket}/p/1/f"}
        blobs = file_dataset.reader(urls, options).into_blob_table()
        assert blobs.column("f").to_pylist() == [b"through " + mode.encode()]
        assert server.client().get_object(Bucket=bucket, Key="p/1/f")["Body"].read() == (
            b"through " + mode.encode()
        )
        server.reset()
        assert server.client().list_buckets()["Buckets"] == []
        assert server.create_bucket("named-bucket") == "named-bucket"
        endpoint = server.endpoint_url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5)
    assert repr(server) == f"LocalS3Server(mode={mode!r}, not running)"


def test_session_server_is_a_child_process(s3_server: LocalS3Server) -> None:
    assert s3_server.mode == "process"
    assert s3_server._process is not None
    assert s3_server._process.poll() is None


def test_options_merge_session_and_client_kwargs_over_the_servers(
    s3_server: LocalS3Server,
) -> None:
    """A test may add its own session or client settings and still reach the server."""
    from botocore.config import Config

    options = s3_server.options(
        session_kwargs={"region_name": "eu-west-1"},
        s3_client_kwargs={"config": Config(connect_timeout=7)},
        max_concurrency=3,
    )
    assert options.session_kwargs["region_name"] == "eu-west-1"
    assert options.session_kwargs["aws_access_key_id"] == "testing-key-id"
    assert options.s3_client_kwargs["endpoint_url"] == s3_server.endpoint_url
    assert options.max_concurrency == 3
    client = options.s3_client()
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.connect_timeout == 7
    bucket = s3_server.create_bucket()
    client.put_object(Bucket=bucket, Key="k", Body=b"merged")
    assert s3_server.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"merged"


def test_the_server_process_ends_when_its_owner_is_killed(tmp_path: Path) -> None:
    """An owner that dies without stopping the server (SIGKILL, a crash) leaves no
    moto process behind."""
    import os
    import select
    import signal
    import subprocess
    import sys

    script = tmp_path / "owner.py"
    script.write_text(
        "import sys\n"
        "from file_dataset.testing import LocalS3Server\n"
        "server = LocalS3Server().start()\n"
        "print(server._process.pid, server.endpoint_url, flush=True)\n"
        "sys.stdin.read()\n"
    )
    owner = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    pid_text, endpoint = owner.stdout.readline().split()
    with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=30) as answer:
        assert answer.status == 200
    server_exited = os.pidfd_open(int(pid_text))  # readable once the process has ended
    try:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=60)
        readable, _, _ = select.select([server_exited], [], [], 60)
        assert readable == [server_exited], "the moto server outlived its owner"
    finally:
        os.close(server_exited)
        for pipe in (owner.stdin, owner.stdout):
            if pipe is not None:
                pipe.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(file_dataset.InvalidInputError) as info:
        LocalS3Server(mode="threads")  # type: ignore[arg-type]
    assert str(info.value) == "mode must be 'process' or 'thread', got 'threads'"


_WITHOUT_MOTO = """
import sys

class NoMoto:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "moto" or name.startswith("moto."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoMoto)
from file_dataset.testing import LocalS3Server
for mode in ("process", "thread"):
    try:
        LocalS3Server(mode=mode).start()
    except ImportError as e:
        print(mode, e)
"""


def test_without_moto_the_server_says_what_to_install() -> None:
    """Before: the child's traceback and "the moto server exited with code 1", or a
    bare ModuleNotFoundError in thread mode."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_MOTO], capture_output=True, text=True, timeout=120
    )
    message = (
        "file_dataset.testing.LocalS3Server needs moto's server (moto is not installed): "
        "pip install 'moto[server]' (or this package's 'testing' extra)"
    )
    assert done.stdout.splitlines() == [f"process {message}", f"thread {message}"]
