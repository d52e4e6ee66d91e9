"""Tables and RESULTS.md from result records."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

WORKLOAD_ORDER = ["A", "A'", "B", "C", "D", "W1", "W64", "P"]
SERVER_ORDER = ["plain", "delay", "s3", "moto"]
SERVER_NAMES = {
    "plain": "nginx, no added latency",
    "delay": "nginx, 10 ms first-byte latency",
    "s3": "nginx, 10 ms first-byte latency and 85 MiB/s per connection (S3-like)",
    "moto": "moto (writes)",
}
# Contenders that produce files (compared with into_temp_dir), by name without [tokens];
# the others produce blobs.
DIR = {"fd_tempdir", "fd_pipeline", "s5cmd", "curl"}
PEERS = {
    "ray_download",
    "ray_download[noreserve]",
    "ray_download_noobstore",
    "ray_read_binary",
    "daft_native",
    "daft_ray",
    "s3fs_cat",
    "obstore_async",
    "boto3_seq",
    "boto3_pool",
    "s5cmd",
}
# file_dataset's own read contenders judged against the targets
MINE = [
    "fd_blob",
    "fd_blob[c64]",
    "fd_ray",
    "fd_ray[noreserve]",
    "fd_blob[boto3]",
    "fd_ray[boto3]",
]
WORKLOAD_TEXT = {
    "A": "2,000 x 64 KiB",
    "A'": "20,000 x 16 KiB",
    "B": "200 x 1 MiB",
    "C": "8 x 64 MiB",
    "D": "2 x 1 GiB",
    "W1": "200 x 1 MiB written",
    "W64": "8 x 64 MiB written",
    "P": "Pipeline over B",
}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _cmd(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "-"


def machine_info() -> dict[str, Any]:
    cpu = "-"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import psutil

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            n: _version(n)
            for n in [
                "file-dataset",
                "boto3",
                "botocore",
                "pyarrow",
                "pandas",
                "ray",
                "daft",
                "obstore",
                "s3fs",
                "s5cmd",
                "moto",
            ]
        },
        "nginx": _cmd(["nginx", "-v"]),
        "curl": _cmd(["curl", "--version"]),
    }


ORDER = [
    "fd_blob",
    "fd_blob[c64]",
    "fd_blob_cold",
    "fd_tempdir",
    "fd_ray",
    "fd_ray[noreserve]",
    "fd_ray_local",
    "fd_pipeline",
    "fd_write_files",
    "fd_pipeline_upload",
    "fd_pipeline_io",
    "fd_pipeline_sleep",
]


def _order(name: str) -> tuple[int, int, str]:
    """file_dataset first (default transport, then [boto3] variants), then the peers."""
    base = name.replace("[boto3]", "")
    if base in ORDER:
        return (0 if base == name else 1, ORDER.index(base), name)
    return (2, 0, name)


def _group(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(results, key=lambda r: _order(r["contender"])):
        groups[(r["workload"], r["server"])].append(r)
    return dict(
        sorted(
            groups.items(),
            key=lambda kv: (
                WORKLOAD_ORDER.index(kv[0][0]) if kv[0][0] in WORKLOAD_ORDER else 99,
                SERVER_ORDER.index(kv[0][1]) if kv[0][1] in SERVER_ORDER else 99,
            ),
        )
    )


def _ok(r: dict[str, Any] | None) -> bool:
    return r is not None and r.get("status") == "OK" and "wall" in r


def _rate(r: dict[str, Any]) -> float:
    return float(r["objects"] / r["wall"])


def _baseline(rows: list[dict[str, Any]], contender: str) -> dict[str, Any] | None:
    by = {r["contender"]: r for r in rows}
    if contender.startswith(("fd_write_files", "fd_pipeline_upload")) or contender in (
        "s3transfer_pool",
        "boto3_upload_file",
        "s5cmd_upload",
    ):
        return by.get("fd_write_files")
    if contender.startswith("fd_pipeline_"):
        return by.get("fd_pipeline_io")
    return by.get("fd_tempdir" if contender.split("[")[0] in DIR else "fd_blob")


def _cells(r: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    if "wall" not in r:
        return [r["contender"], r["status"], "", "", "", "", "", "", "", _note(r)]
    base = _baseline(rows, r["contender"])
    ratio = f"{_rate(r) / _rate(base):.2f}x" if _ok(base) and r.get("status") == "OK" else "-"
    req = f"{r['requests'] / r['objects']:.2f}" if r.get("requests") is not None else "-"
    return [
        r["contender"],
        r["status"],
        f"{r['wall']:.2f}",
        f"{_rate(r):,.0f}",
        f"{r['bytes'] / r['wall'] / 1e6:,.0f}",
        f"{1000 * r['cpu'] / r['objects']:.3f}",
        req,
        f"{r['peak_rss'] / 2**20:,.0f}",
        ratio,
        _note(r),
    ]


def _note(r: dict[str, Any]) -> str:
    parts = []
    if r.get("status") != "OK" and r.get("reason"):
        parts.append(str(r["reason"]))
    if r.get("note"):
        parts.append(str(r["note"]))
    return "; ".join(parts).replace("|", "/").replace("\n", " ")[:200]


HEADER = [
    "contender",
    "status",
    "wall s",
    "obj/s",
    "MB/s",
    "CPU ms/obj",
    "req/obj",
    "peak RSS MiB",
    "vs fd",
    "notes",
]


def _wtext(workload: str, rows: list[dict[str, Any]]) -> str:
    for r in rows:
        if r.get("workload_text"):
            return str(r["workload_text"]) + (" (Pipeline over it)" if workload == "P" else "")
    return WORKLOAD_TEXT.get(workload, "")


def table_text(results: list[dict[str, Any]]) -> str:
    lines = []
    for (workload, server), rows in _group(results).items():
        lines.append(f"{workload} ({_wtext(workload, rows)}) on {SERVER_NAMES.get(server, server)}")
        cells = [HEADER] + [_cells(r, rows) for r in rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER) - 1)]
        for c in cells:
            lines.append(
                "  "
                + "  ".join(
                    c[i].rjust(widths[i]) if i else c[i].ljust(widths[i])
                    for i in range(len(widths))
                )
                + "  "
                + c[-1]
            )
        lines.append("")
    return "\n".join(lines)


def _find(
    results: list[dict[str, Any]], workload: str, server: str, contender: str
) -> dict[str, Any] | None:
    for r in results:
        if (r["workload"], r["server"], r["contender"]) == (workload, server, contender):
            return r
    return None


def targets(results: list[dict[str, Any]]) -> list[str]:
    out = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    for w in ("A", "A'"):
        rows = [r for r in results if r["workload"] == w and r["server"] == "delay"]
        for mine in MINE:
            r = _find(results, w, "delay", mine)
            if r is None:
                continue
            peers = [p for p in rows if p["contender"] in PEERS and _ok(p)]
            if not _ok(r) or not peers:
                out.append(f"- {w} @10 ms: `{mine}` ahead of every peer: n/a (not measured)")
                continue
            best = max(peers, key=_rate)
            out.append(
                f"- {w} @10 ms: `{mine}` ahead of every peer: {verdict(_rate(r) > _rate(best))} "
                f"({_rate(r):,.0f} obj/s vs best peer `{best['contender']}` {_rate(best):,.0f} obj/s)"
            )
            ray = _find(results, w, "delay", "ray_download_noobstore")
            if _ok(ray):
                x = _rate(r) / _rate(ray)
                out.append(
                    f"- {w} @10 ms: `{mine}` >= 2x Ray download() without obstore: {verdict(x >= 2)} ({x:.2f}x)"
                )
        for server in ("plain", "delay"):
            for mine in MINE:
                r = _find(results, w, server, mine)
                if _ok(r):
                    ms = 1000 * r["cpu"] / r["objects"]
                    out.append(
                        f"- {w} {server}: client CPU per object <= 0.5 ms (`{mine}`): {verdict(ms <= 0.5)} ({ms:.2f} ms)"
                    )
    for w in ("C", "D"):
        ceiling = _find(results, w, "plain", "curl")
        for mine in ("fd_blob", "fd_tempdir", "fd_blob[boto3]", "fd_tempdir[boto3]"):
            r = _find(results, w, "plain", mine)
            if _ok(r) and _ok(ceiling):
                x = _rate(r) / _rate(ceiling)
                out.append(
                    f"- {w}: `{mine}` >= 90 % of curl: {verdict(x >= 0.9)} ({100 * x:.0f} %)"
                )
        for mine in ("fd_blob", "fd_blob[boto3]"):
            r = _find(results, w, "plain", mine)
            if _ok(r):
                x = r["peak_rss"] / r["bytes"]
                d = (r["peak_rss"] - r["base_rss"]) / r["bytes"]
                out.append(
                    f"- {w}: `{mine}` peak RSS <= 1.3x bytes held: {verdict(x <= 1.3)} "
                    f"({x:.2f}x total process; {d:.2f}x above the pre-read baseline of {r['base_rss'] / 2**20:.0f} MiB)"
                )
        for server in ("plain", "s3"):
            rows = [r for r in results if r["workload"] == w and r["server"] == server]
            peers = [p for p in rows if p["contender"] in PEERS and _ok(p)]
            for mine in ("fd_blob", "fd_tempdir"):
                r = _find(results, w, server, mine)
                if _ok(r) and peers:
                    best = max(peers, key=_rate)
                    out.append(
                        f"- {w} {server}: `{mine}` ahead of every peer: {verdict(_rate(r) > _rate(best))} "
                        f"({r['bytes'] / r['wall'] / 1e6:,.0f} MB/s vs best peer "
                        f"`{best['contender']}` {best['bytes'] / best['wall'] / 1e6:,.0f} MB/s)"
                    )
        r = _find(results, w, "plain", "fd_tempdir")
        if _ok(r) and r.get("requests") is not None:
            out.append(
                f"- {w}: large objects in ranged parts: {r['requests'] / r['objects']:.1f} requests per object (`fd_tempdir`)"
            )
    for name in ("fd_pipeline_sleep", "fd_pipeline_sleep[boto3]"):
        p = _find(results, "P", "moto", name)
        if _ok(p) and p.get("pipeline_ratio"):
            out.append(
                f"- Pipeline overlap (`{name}`, B, fn sleeps one row's I/O): wall <= 1.2x max(I/O, compute): "
                f"{verdict(p['pipeline_ratio'] <= 1.2)} ({p['pipeline_ratio']:.2f}x)"
            )
    for w in ("A", "A'", "B"):
        for server in ("plain", "delay"):
            for ray_name, blob_name in (
                ("fd_ray", "fd_blob"),
                ("fd_ray[noreserve]", "fd_blob"),
                ("fd_ray[boto3]", "fd_blob[boto3]"),
            ):
                r, b = _find(results, w, server, ray_name), _find(results, w, server, blob_name)
                if _ok(r) and _ok(b):
                    x = _rate(r) / _rate(b)
                    floor = _find(results, w, server, "fd_ray_local")
                    context = (
                        f"; Ray over local files, no network: {100 * _rate(floor) / _rate(b):.0f} %"
                        if ray_name == "fd_ray" and _ok(floor)
                        else ""
                    )
                    out.append(
                        f"- {w} {server}: `{ray_name}` within 80 % of `{blob_name}`: {verdict(x >= 0.8)} ({100 * x:.0f} %{context})"
                    )
    r = _find(results, "A'", "plain", "fd_ray") or _find(results, "A'", "delay", "fd_ray")
    if _ok(r) and r.get("requests") is not None:
        x = r["requests"] / r["objects"]
        out.append(
            f"- A': 20,000 rows planned without HEADing every row: {verdict(x < 1.5)} ({x:.2f} requests per object)"
        )
    if not any(_ok(r) for r in results if r["contender"] == "fd_ray"):
        out.append(
            "- `read_file_dataset` targets: n/a (file_dataset.ray.read_file_dataset was not available when measured)"
        )
    return out


def render(
    results: list[dict[str, Any]], info: dict[str, Any], notes: list[str], quick: bool
) -> str:
    lines = [
        "# Benchmark results"
        + (" (quick smoke run: tiny sizes, not representative)" if quick else ""),
        "",
        "Reproduce: `uv sync --all-groups && uv run --all-groups python benchmarks/run.py` "
        "(pieces: `--workloads A,Ap --latency delay`, `--contenders fd_blob,curl`; see `benchmarks/README.md`).",
        "",
        f"- Last update: {info['date']}; machine: {info['cpu']}, {info['memory']}, {info['os']}, Python {info['python']}",
        "- Versions: "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f"; {info['nginx']}; {info['curl'].split(' (')[0]}",
        "- Servers on 127.0.0.1: nginx (1 worker) serving files to path-style S3 GET/HEAD/Range; "
        "the 10 ms server adds `echo_sleep 0.01` before every response; writes go to moto behind an nginx proxy (for request counts).",
        "- Each contender runs in its own process, after its setup (imports, `ray.init` and a warm-up job are not measured); "
        "with `--repeat N` or `--rounds K` the median run or round is shown (the slower middle one for an even count; see the notes column). "
        "CPU = user+system seconds of every process seen in its tree (Ray workers, curl, s5cmd), also those that exit, during the measured region; "
        "peak RSS = largest sum of RSS over that process tree (sampled every 20 ms; Ray's shared object store pages are counted in every process that maps them). "
        "req/obj from the server's access log. `vs fd` = objects/s relative to `fd_blob` (blob contenders) or `fd_tempdir` (contenders that write files), "
        "`fd_write_files` for writes. Every object's size and CRC-32 are checked after the measurement; nulls, missing or wrong bytes mark a contender FAILED.",
        "- MB = 10^6 bytes.",
    ]
    for n in notes:
        lines.append(f"- Note: {n}")
    findings = Path(__file__).with_name("findings.md")
    if not quick and findings.exists():
        lines += ["", findings.read_text().strip()]
    lines += ["", "## Targets of issue 4", ""]
    lines += targets(results) or ["- nothing measured yet"]
    lines += ["", "## Figures", ""]
    for (workload, server), rows in _group(results).items():
        date = max((r.get("date", "") for r in rows), default="")
        lines.append(
            f"### {workload}: {_wtext(workload, rows)}, {SERVER_NAMES.get(server, server)}"
            + (f" ({date})" if date else "")
        )
        lines.append("")
        lines.append("| " + " | ".join(HEADER) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 2) + ["---"]) + "|")
        for r in rows:
            lines.append("| " + " | ".join(_cells(r, rows)) + " |")
        lines.append("")
    descs = {
        r["contender"]: r.get("description", "")
        for r in sorted(results, key=lambda r: _order(r["contender"]))
    }
    lines += ["## Contenders", ""]
    lines += [f"- `{k}`: {v}" for k, v in descs.items()]
    lines.append("")
    return "\n".join(lines)
