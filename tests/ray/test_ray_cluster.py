"""read_file_dataset and Pipeline on a multi-node Ray cluster, losing a node mid-read.

``ray.cluster_utils.Cluster`` cannot share a process with the session's local Ray, so
the cluster runs in ``_multinode.py``, a script started here that prints nothing we
need and writes its findings as JSON. This module's name sorts before the other Ray
test modules, so the cluster runs before the session's local Ray starts.
"""

from __future__ import annotations

import collections
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from file_dataset.testing import LocalS3Server

# The first test sets up the cluster: up to three starts (see _multinode._start_cluster)
# and the run, within the subprocess timeout below.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

SCRIPT = Path(__file__).with_name("_multinode.py")
BATCH = 50
PIPELINE_ROWS = 100
FILE_COLUMNS = ["image.bin", "mask.bin"]


def _sha256(blob: bytes | None) -> str | None:
    return None if blob is None else hashlib.sha256(blob).hexdigest()


@pytest.fixture(scope="module")
def cluster_run(
    blob_dataset: Any, s3_server: LocalS3Server, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("multinode")
    spec = {
        "bucket": blob_dataset.bucket,
        "frame": blob_dataset.frame.to_dict(orient="records"),
        "batch_size": BATCH,
        "pipeline_rows": PIPELINE_ROWS,
        "into_path": f"s3://{blob_dataset.bucket}/multinode-out/",
    }
    (folder / "in.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--endpoint",
            s3_server.endpoint_url,
            "--input",
            str(folder / "in.json"),
            "--output",
            str(folder / "out.json"),
        ],
        capture_output=True,
        text=True,
        timeout=420,  # up to three cluster starts (see _multinode._start_cluster)
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result: dict[str, Any] = json.loads((folder / "out.json").read_text())
    failover = result.get("failover", {})
    print(
        f"multinode timings: {result['timings']}; failover: victim {failover.get('victim')}, "
        f"{len(failover.get('arrivals', []))} gate arrivals for "
        f"{-(-len(blob_dataset.frame) // BATCH)} read tasks"
    )
    return result


def _check_rows(rows: list[dict[str, Any]], blob_dataset: Any) -> None:
    counts = collections.Counter(row["id"] for row in rows)
    assert len(rows) == 1000
    assert set(counts) == set(blob_dataset.frame["id"])
    assert set(counts.values()) == {1}  # every row exactly once
    for row in rows:
        for name in FILE_COLUMNS:
            assert row[name] == _sha256(blob_dataset.expected(row["id"], name)), row["id"]


def test_read_on_two_worker_nodes(cluster_run: dict[str, Any], blob_dataset: Any) -> None:
    rows = cluster_run["read"]
    _check_rows(rows, blob_dataset)
    workers = set(cluster_run["nodes"]["workers"])
    assert {row["node"] for row in rows} == workers  # the head has no CPU


def test_pipeline_on_two_worker_nodes(
    cluster_run: dict[str, Any], blob_dataset: Any, s3_client: Any
) -> None:
    output = cluster_run["pipeline"]
    ids = list(blob_dataset.frame["id"][:PIPELINE_ROWS])
    assert sorted(row["id"] for row in output) == sorted(ids)
    prefix = f"s3://{blob_dataset.bucket}/"
    nodes = set()
    for row in output:
        assert row["out.bin"] == f"{prefix}multinode-out/{row['id']}/out.bin"
        body = s3_client.get_object(
            Bucket=blob_dataset.bucket, Key=row["out.bin"].removeprefix(prefix)
        )["Body"].read()
        assert body == blob_dataset.expected(row["id"], "image.bin")[::-1]
        node = s3_client.get_object(
            Bucket=blob_dataset.bucket, Key=row["node.txt"].removeprefix(prefix)
        )["Body"].read()
        nodes.add(node.decode())
    assert nodes <= set(cluster_run["nodes"]["workers"])


def test_losing_a_node_mid_read_still_gives_every_row_once(
    cluster_run: dict[str, Any], blob_dataset: Any
) -> None:
    failover = cluster_run["failover"]
    assert failover["finished"]
    assert failover["errors"] == []
    victim = failover["victim"]
    assert victim in cluster_run["nodes"]["workers"]
    # The victim was running a read task (held at the gate) when it was removed.
    assert [victim, failover["first_row_id"]] in failover["in_flight_at_removal"]
    _check_rows(failover["rows"], blob_dataset)
    # That task was executed again, on the surviving node, and its rows came from there.
    survivors = {
        node for node, row_id in failover["arrivals"] if row_id == failover["first_row_id"]
    }
    assert survivors - {victim}
    by_id = {row["id"]: row for row in failover["rows"]}
    assert by_id[failover["first_row_id"]]["node"] != victim
