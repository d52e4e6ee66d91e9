"""Multi-node Ray check of file_dataset.ray, run as a script by test_ray_cluster.py.

A ``ray.cluster_utils.Cluster`` on this machine: a head node without CPUs (so every
task runs on a worker node) and two worker nodes with one CPU and a small object store
each. Then, against the S3 server given on the command line:

1. ``read``: reads the file DataFrame with ``read_file_dataset`` and reports each row's
   id, the SHA-256 of each blob and the node that read it;
2. ``pipeline``: runs a ``Pipeline`` in ``map_batches`` over the first rows; its
   function writes ``out.bin`` (the reversed image) and ``node.txt`` (its node id);
3. ``failover``: reads the dataset again, holding every read task at a gate (an actor
   on the head node) after it read its rows. When the first task arrives, the driver
   removes that task's worker node, then opens the gate; the dataset must still
   complete (Ray re-executes the lost task on the other node). Reports every row the
   driver received and every arrival at the gate.

Nothing waits on time: the driver waits for the gate's first arrival, and the gate
waits for the driver.

Usage: ``python _multinode.py --endpoint URL --input in.json --output out.json``; the
input holds ``bucket``, ``frame`` (records), ``batch_size``, ``pipeline_rows`` and
``into_path``. Credentials and endpoint reach the workers only through ``Options``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pyarrow as pa
import ray.data
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from file_dataset import Options, Pipeline
from file_dataset.ray import read_file_dataset
from file_dataset.testing import TEST_CREDENTIALS

OBJECT_STORE_BYTES = 80 * 1024 * 1024
FILE_COLUMNS = ["image.bin", "mask.bin"]
# Find a dead node in about a second instead of Ray's default of about half a minute.
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}


def _digests(batch: pa.Table) -> pa.Table:
    """Each row's id, the SHA-256 of each blob, and the node of this task."""
    node = ray.get_runtime_context().get_node_id()
    out: dict[str, Any] = {"id": batch["id"], "node": pa.array([node] * batch.num_rows)}
    for name in FILE_COLUMNS:
        out[name] = pa.array(
            [
                None if blob is None else hashlib.sha256(blob).hexdigest()
                for blob in batch[name].to_pylist()
            ],
            pa.string(),
        )
    return pa.table(out)


def _held_at_gate(batch: pa.Table, gate: Any) -> pa.Table:
    node = ray.get_runtime_context().get_node_id()
    ray.get(gate.arrive.remote(node, batch["id"][0].as_py()))
    return _digests(batch)


@ray.remote(num_cpus=0)
class Gate:
    """Records the read tasks that arrive and holds them until ``open`` is called."""

    def __init__(self) -> None:
        self._arrivals: list[list[str]] = []
        self._first = asyncio.Event()
        self._open = asyncio.Event()

    async def arrive(self, node: str, first_row_id: str) -> None:
        self._arrivals.append([node, first_row_id])
        self._first.set()
        await self._open.wait()

    async def first_arrival(self) -> list[str]:
        await self._first.wait()
        return self._arrivals[0]

    async def open(self) -> None:
        self._open.set()

    async def arrivals(self) -> list[list[str]]:
        return list(self._arrivals)


def reverse_and_record_node(input_dir: Path, output_dir: Path) -> dict[str, Path]:
    """The pipeline's function: the reversed image, and where it ran."""
    out = output_dir / "out.bin"
    out.write_bytes((input_dir / "image.bin").read_bytes()[::-1])
    node = output_dir / "node.txt"
    node.write_text(ray.get_runtime_context().get_node_id())
    return {"out.bin": out, "node.txt": node}


def _start_cluster(result: dict[str, Any]) -> tuple[Cluster, list[Any]]:
    """A head without CPUs, the driver joined to it, then two worker nodes.

    Ray gives a starting node a fixed 30 s to register (``node.py``, not configurable in
    Ray 2.60), which a machine under heavy load can miss; then this process's Ray
    processes (all its children) are ended and the cluster started again, up to three
    times. The attempts are in ``result["cluster_attempts"]``.
    """
    for attempt in range(1, 4):
        result["cluster_attempts"] = attempt
        cluster = None
        try:
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 0,
                    "object_store_memory": OBJECT_STORE_BYTES,
                    "include_dashboard": False,
                    "_system_config": SYSTEM_CONFIG,
                },
            )
            # The driver joins while the head is the only node: joining later, Ray
            # before 2.55 could attach it to a worker node's raylet (all share one IP),
            # which then could not be removed.
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
            workers = [
                cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
                for _ in range(2)
            ]
            cluster.wait_for_nodes()
            return cluster, workers
        except Exception as e:
            if attempt == 3 or "timed out during startup" not in str(e):
                raise
            print(f"cluster start {attempt} failed ({e}); starting again", file=sys.stderr)
            with contextlib.suppress(Exception):
                ray.shutdown()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.shutdown()
            children = psutil.Process().children(recursive=True)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            psutil.wait_procs(children, timeout=30)
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args()
    spec = json.loads(args.input.read_text())
    frame = pd.DataFrame(spec["frame"], columns=["id", *FILE_COLUMNS])
    batch_size = int(spec["batch_size"])
    assert not any(name.startswith("AWS_ACCESS") for name in os.environ)
    options = Options(
        session_kwargs=dict(TEST_CREDENTIALS), s3_client_kwargs={"endpoint_url": args.endpoint}
    )
    timings: dict[str, float] = {}
    result: dict[str, Any] = {"timings": timings}

    started = time.perf_counter()
    cluster, workers = _start_cluster(result)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        head = ray.get_runtime_context().get_node_id()
        result["nodes"] = {"head": head, "workers": [node.node_id for node in workers]}
        timings["cluster_start_s"] = time.perf_counter() - started

        # 1. read
        started = time.perf_counter()
        dataset = read_file_dataset(frame, batch_size, options)
        rows = dataset.map_batches(_digests, batch_format="pyarrow", batch_size=None).take_all()
        result["read"] = rows
        timings["read_s"] = time.perf_counter() - started

        # 2. pipeline
        started = time.perf_counter()
        inputs = frame.head(int(spec["pipeline_rows"]))
        blocks = [inputs.iloc[i : i + 25] for i in range(0, len(inputs), 25)]
        pipeline = Pipeline(
            reverse_and_record_node,
            write_options={"into_path": spec["into_path"]},
            options=options,
        )
        output = (
            ray.data.from_pandas(blocks)
            .map_batches(pipeline, batch_format="pandas", batch_size=8, concurrency=2)
            .to_pandas()
        )
        result["pipeline"] = output.to_dict(orient="records")
        timings["pipeline_s"] = time.perf_counter() - started

        # 3. failover
        started = time.perf_counter()
        gate = Gate.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)
        ).remote()
        held = read_file_dataset(frame, batch_size, options).map_batches(
            _held_at_gate, batch_format="pyarrow", batch_size=None, fn_kwargs={"gate": gate}
        )
        received: list[dict[str, Any]] = []
        errors: list[str] = []

        def consume() -> None:
            try:
                for batch in held.iter_batches(batch_size=None, batch_format="pyarrow"):
                    received.extend(batch.to_pylist())
            except BaseException as e:
                errors.append(repr(e))

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        victim_id, first_row_id = ray.get(gate.first_arrival.remote(), timeout=120)
        victim = next(node for node in workers if node.node_id == victim_id)
        in_flight_at_removal = ray.get(gate.arrivals.remote())
        cluster.remove_node(victim, allow_graceful=False)
        ray.get(gate.open.remote())
        consumer.join(timeout=180)
        result["failover"] = {
            "victim": victim_id,
            "first_row_id": first_row_id,
            "in_flight_at_removal": in_flight_at_removal,
            "arrivals": ray.get(gate.arrivals.remote()),
            "rows": received,
            "errors": errors,
            "finished": not consumer.is_alive(),
        }
        timings["failover_s"] = time.perf_counter() - started
    except BaseException:
        # printed now: a consumer thread still in Ray when ray.shutdown() runs below
        # makes Ray end the process before Python would print it
        traceback.print_exc()
        sys.stderr.flush()
        raise
    finally:
        args.output.write_text(json.dumps(result))
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
