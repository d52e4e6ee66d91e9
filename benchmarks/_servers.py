"""The servers of the benchmark: nginx (plain, with 10 ms first-byte delay, and "S3-like")
and moto.

nginx serves ``<root>/<bucket>/<key>`` to path-style S3 GET/HEAD/Range requests (it
ignores signatures). A second nginx ``server`` adds ``echo_sleep`` before serving, like
S3's first-byte latency. A third adds the same delay and caps each response at
``s3_rate_mib`` MiB/s (``limit_rate``), like the per-connection throughput of S3 (AWS's
performance guidelines plan on 85-90 MB/s per request): over loopback one connection is
never the bottleneck, on S3 it is, and that is what ranged parts are for. A fourth one
proxies to moto, only to log (count) requests. Every server listens on 127.0.0.1 only
and is stopped by :meth:`Servers.stop`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ECHO_MODULE_CANDIDATES = [
    "/usr/lib/nginx/modules/ngx_http_echo_module.so",
    "/usr/lib64/nginx/modules/ngx_http_echo_module.so",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def echo_module() -> str | None:
    for candidate in ECHO_MODULE_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    return None


@dataclass
class Endpoint:
    """One place to read or write: an S3 endpoint URL plus how to count its requests."""

    name: str
    url: str
    log: Path | None = None  # access log, one line per request

    def log_offset(self) -> int:
        if self.log is None or not self.log.exists():
            return 0
        return self.log.stat().st_size

    def requests_since(self, offset: int) -> int | None:
        if self.log is None:
            return None
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().count(b"\n")


@dataclass
class Servers:
    """Starts and stops nginx and moto under ``workdir``."""

    workdir: Path
    data_root: Path
    delay_ms: int = 10
    s3_rate_mib: int = 85
    want_moto: bool = True
    force_moto_reads: bool = False
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _nginx: subprocess.Popen[bytes] | None = None
    _moto: object | None = None

    def start(self) -> Servers:
        nginx = None if self.force_moto_reads else nginx_binary()
        moto_needed = self.want_moto or nginx is None
        moto_url = None
        if moto_needed:
            from file_dataset.testing import LocalS3Server

            self._moto = LocalS3Server().start()
            moto_url = self._moto.endpoint_url  # type: ignore[attr-defined]
        if nginx is None:
            msg = (
                "nginx not installed (or --moto-reads): reads go to moto, whose speed is "
                "not representative; request counts unavailable"
            )
            self.notes.append(msg)
            print(f"[servers] {msg}", flush=True)
            assert moto_url is not None
            self.endpoints["plain"] = Endpoint("plain (moto)", moto_url)
            self.endpoints["moto"] = Endpoint("moto", moto_url)
            return self
        self._start_nginx(nginx, moto_url)
        return self

    def _start_nginx(self, nginx: str, moto_url: str | None) -> None:
        prefix = self.workdir / "nginx"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        echo = echo_module()
        ports = {name: free_port() for name in ("plain", "delay", "s3", "moto")}
        logs = {name: prefix / "logs" / f"{name}.log" for name in ports}
        root = self.data_root
        os.chmod(self.workdir, 0o755)
        lines = []
        if echo:
            lines.append(f"load_module {echo};")
        if os.geteuid() == 0:
            lines.append("user root;")
        lines += [
            "worker_processes 1;",
            "worker_rlimit_nofile 65536;",
            f"pid {prefix}/nginx.pid;",
            f"error_log {prefix}/logs/error.log warn;",
            "events { worker_connections 4096; multi_accept on; }",
            "http {",
            "  access_log off;",
            "  sendfile on; tcp_nopush on; tcp_nodelay on;",
            "  keepalive_requests 1000000; keepalive_timeout 120s;",
            "  open_file_cache max=1000 inactive=20s;",  # each cached file holds a descriptor
            "  default_type application/octet-stream;",
            "  log_format short '$request_method $uri $status $body_bytes_sent';",
            f"  client_body_temp_path {prefix}/tmp/body;",
            f"  proxy_temp_path {prefix}/tmp/proxy;",
            f"  fastcgi_temp_path {prefix}/tmp/fcgi; uwsgi_temp_path {prefix}/tmp/uwsgi;",
            f"  scgi_temp_path {prefix}/tmp/scgi;",
            "  server {",
            f"    listen 127.0.0.1:{ports['plain']} reuseport;",
            f"    access_log {logs['plain']} short;",
            f"    root {root};",
            "    location / { }",
            "  }",
        ]
        if echo:
            sleep = self.delay_ms / 1000
            lines += [
                "  server {",
                f"    listen 127.0.0.1:{ports['delay']};",
                f"    access_log {logs['delay']} short;",
                f"    root {root};",
                f"    location / {{ echo_sleep {sleep}; echo_exec @file; }}",
                "    location @file { }",
                "  }",
                "  server {",
                f"    listen 127.0.0.1:{ports['s3']};",
                f"    access_log {logs['s3']} short;",
                f"    root {root};",
                f"    limit_rate {self.s3_rate_mib}m;",  # bytes/s per response
                f"    location / {{ echo_sleep {sleep}; echo_exec @file; }}",
                "    location @file { }",
                "  }",
            ]
        else:
            self.notes.append("nginx echo module missing: no 10 ms latency or S3-like server")
        if moto_url:
            lines += [
                "  server {",
                f"    listen 127.0.0.1:{ports['moto']};",
                f"    access_log {logs['moto']} short;",
                "    client_max_body_size 0;",
                "    location / {",
                f"      proxy_pass {moto_url};",
                "      proxy_http_version 1.1;",
                "      proxy_set_header Host $http_host;",
                "      proxy_request_buffering off; proxy_buffering off;",
                "      proxy_read_timeout 600s; proxy_send_timeout 600s;",
                "    }",
                "  }",
            ]
        lines.append("}")
        conf = prefix / "nginx.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._nginx = subprocess.Popen(
            [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(prefix / "logs" / "stderr.log", "wb"),  # noqa: SIM115
        )
        self.endpoints["plain"] = Endpoint(
            "nginx", f"http://127.0.0.1:{ports['plain']}", logs["plain"]
        )
        if echo:
            self.endpoints["delay"] = Endpoint(
                f"nginx+{self.delay_ms}ms", f"http://127.0.0.1:{ports['delay']}", logs["delay"]
            )
            self.endpoints["s3"] = Endpoint(
                f"nginx+{self.delay_ms}ms, {self.s3_rate_mib} MiB/s per connection",
                f"http://127.0.0.1:{ports['s3']}",
                logs["s3"],
            )
        if moto_url:
            self.endpoints["moto"] = Endpoint(
                "moto (via nginx log)", f"http://127.0.0.1:{ports['moto']}", logs["moto"]
            )
        deadline = time.monotonic() + 15
        for name in ("plain", "delay", "s3", "moto"):
            if name not in self.endpoints:
                continue
            while True:
                if self._nginx.poll() is not None:
                    raise RuntimeError(
                        "nginx exited: " + (prefix / "logs" / "stderr.log").read_text()
                    )
                try:
                    req = urllib.request.Request(self.endpoints[name].url + "/", method="HEAD")
                    urllib.request.urlopen(req, timeout=5).close()
                    break
                except urllib.error.HTTPError:
                    break  # it answers
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    @property
    def moto(self) -> object | None:
        return self._moto

    def stop(self) -> None:
        if self._nginx is not None:
            self._nginx.terminate()
            try:
                self._nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._nginx.kill()
                self._nginx.wait()
            self._nginx = None
        if self._moto is not None:
            self._moto.stop()  # type: ignore[attr-defined]
            self._moto = None

    def __enter__(self) -> Servers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
