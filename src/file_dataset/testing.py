"""A local S3 server for tests: moto in server mode on 127.0.0.1.

Use it to test your own pipelines against real HTTP without touching AWS::

    from file_dataset.testing import LocalS3Server

    with LocalS3Server() as s3:
        bucket = s3.create_bucket()
        options = s3.options()  # endpoint and test credentials, picklable
        ...

The server runs in a child process by default (``mode="process"``), so it does not
compete with the code under test for the GIL, and separate processes (Ray workers)
reach it by its URL. ``mode="thread"`` runs it in a thread of the calling process.
Needs the ``testing`` extra (``moto[server]``).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import threading
import urllib.request
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Unpack

from file_dataset._errors import InvalidInputError
from file_dataset._options import Options, OptionsArgs

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:  # the stubs are a development dependency: at run time (typing.get_type_hints)
    S3Client = Any  # the client is any boto3 S3 client

__all__ = ["LocalS3Server"]

TEST_CREDENTIALS = {
    "aws_access_key_id": "testing-key-id",
    "aws_secret_access_key": "testing-secret-key",
    "region_name": "us-east-1",
}
_counter = itertools.count()


def _require_moto() -> None:
    """Raises an ImportError naming what to install when moto's server is missing."""
    for name in ("moto", "flask"):  # moto, and what its server runs on
        try:
            found = importlib.util.find_spec(name) is not None  # found, not imported
        except ImportError:
            found = False
        if not found:
            raise ImportError(
                f"file_dataset.testing.LocalS3Server needs moto's server ({name} is not "
                "installed): pip install 'moto[server]' (or this package's 'testing' extra)"
            )


class LocalS3Server:
    """A moto S3 server on 127.0.0.1 with a free port.

    Args:
        mode: ``"process"`` (default) or ``"thread"``.
        host: The address to listen on; keep the loopback address.

    Raises:
        ValueError: ``mode`` is neither ``"process"`` nor ``"thread"`` (an
            :class:`~file_dataset.InvalidInputError`).
    """

    def __init__(self, mode: Literal["process", "thread"] = "process", host: str = "127.0.0.1"):
        if mode not in ("process", "thread"):
            # anything else used to start a child process, as "process" does
            raise InvalidInputError(f"mode must be 'process' or 'thread', got {mode!r}")
        self.mode = mode
        self.host = host
        self.port: int | None = None
        self._process: subprocess.Popen[str] | None = None
        self._thread_server: Any = None

    @property
    def endpoint_url(self) -> str:
        """The server's URL, e.g. ``http://127.0.0.1:41234``."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalS3Server:
        """Starts the server and waits until it answers.

        Returns:
            The server itself.

        Raises:
            ImportError: moto's server is not installed (this package's ``testing``
                extra installs it).
        """
        _require_moto()
        if self.mode == "thread":
            from moto.server import ThreadedMotoServer

            _quiet_request_log()
            server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
            server.start()
            self._thread_server = server
            self.port = int(server.get_host_and_port()[1])
        else:
            # The server ends when its standard input closes: with this process, even
            # when it is killed and cannot stop it (no orphaned servers).
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "file_dataset.testing",
                    "--host",
                    self.host,
                    "--exit-with-parent",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self._process.stdout is not None
            line = self._process.stdout.readline()  # blocks until the port is printed
            if not line:
                code = self._process.wait()
                raise RuntimeError(f"the moto server exited with code {code} before starting")
            self.port = int(json.loads(line)["port"])
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # The listening socket exists before the port is reported, so a request is
        # answered (queued by the kernel until the server thread accepts it).
        with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=30):  # noqa: S310
            pass

    def stop(self) -> None:
        """Stops the server."""
        if self._thread_server is not None:
            self._thread_server.stop()
            self._thread_server = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            for pipe in (self._process.stdin, self._process.stdout):
                if pipe is not None:
                    pipe.close()
            self._process = None

    def __repr__(self) -> str:
        running = self._process is not None or self._thread_server is not None
        where = f"http://{self.host}:{self.port}" if running else "not running"
        return f"LocalS3Server(mode={self.mode!r}, {where})"

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Deletes every bucket and object."""
        url = f"{self.endpoint_url}/moto-api/reset"
        request = urllib.request.Request(url, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310
            pass

    def options(self, **kwargs: Unpack[OptionsArgs]) -> Options:
        """Options that reach this server with test credentials.

        Args:
            **kwargs: Any :class:`~file_dataset.Options` argument. ``session_kwargs``
                and ``s3_client_kwargs`` are merged over the test credentials and the
                server's endpoint (so ``s3_client_kwargs={"config": ...}`` keeps the
                endpoint).

        Returns:
            The options.
        """
        arguments: dict[str, Any] = dict(kwargs)
        session_kwargs = {**TEST_CREDENTIALS, **(arguments.pop("session_kwargs", None) or {})}
        client_kwargs = {
            "endpoint_url": self.endpoint_url,
            **(arguments.pop("s3_client_kwargs", None) or {}),
        }
        return Options(session_kwargs=session_kwargs, s3_client_kwargs=client_kwargs, **arguments)

    def client(self) -> S3Client:
        """A boto3 S3 client for this server (for setting up and checking tests)."""
        return self.options().s3_client()

    def create_bucket(self, name: str | None = None) -> str:
        """Creates a bucket (a fresh unique name when ``name`` is omitted).

        Returns:
            The bucket's name.
        """
        bucket = name or f"test-bucket-{os.getpid()}-{next(_counter)}"
        self.client().create_bucket(Bucket=bucket)
        return bucket


def _quiet_request_log() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def _main() -> None:
    import argparse

    _quiet_request_log()
    from moto.server import ThreadedMotoServer

    parser = argparse.ArgumentParser(description="Run a local moto S3 server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="exit when standard input closes (the parent holds the other end of a pipe)",
    )
    args = parser.parse_args()
    if args.exit_with_parent:

        def exit_when_stdin_closes() -> None:
            sys.stdin.buffer.read()
            os._exit(0)

        threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    print(json.dumps({"port": port, "endpoint_url": f"http://{args.host}:{port}"}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    _main()
