"""Pipeline inside Ray Data's map_batches, on a real local Ray and S3 server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd
import pytest
import ray.cloudpickle
import ray.data

from file_dataset import Options, Pipeline

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.ray

FAILING_ID = "case-0042"


def reverse_and_tag(input_dir: Path, output_dir: Path) -> dict[str, Path]:
    """Writes ``out.bin`` = reversed image + mask (when there is one); fails for one id."""
    image = (input_dir / "image.bin").read_bytes()
    if image == b"fail":
        raise RuntimeError("this row fails on purpose")
    mask = input_dir / "mask.bin"
    out = output_dir / "out.bin"
    out.write_bytes(image[::-1] + (mask.read_bytes() if mask.exists() else b""))
    return {"out.bin": out}


# The design notes' output type, in their functional syntax.
ResampledOutput = TypedDict("ResampledOutput", {"output.mha": Path})


def resample(input_dir: Path, output_dir: Path) -> ResampledOutput:
    output = output_dir / "output.mha"
    output.write_bytes((input_dir / "image.bin").read_bytes().upper())
    return {"output.mha": output}


# As in a script without `from __future__ import annotations` (this module has it): the
# annotations are the classes themselves, which cloudpickle must rebuild in the worker.
resample.__annotations__ = {"input_dir": Path, "output_dir": Path, "return": ResampledOutput}


def _outputs_in_map_batches(
    fn: Any, frame: pd.DataFrame, prefix: str, blob_dataset: Any, s3_client: Any, options: Options
) -> dict[str, bytes]:
    """Runs a Pipeline of ``fn`` over ``frame`` in map_batches; each row's output.mha."""
    bucket = blob_dataset.bucket
    into_path = f"s3://{bucket}/{prefix}/"
    pipeline = Pipeline(fn=fn, write_options={"into_path": into_path}, options=options)
    output = (
        ray.data.from_pandas(frame)
        .map_batches(pipeline, batch_format="pandas", batch_size=2)
        .to_pandas()
    )
    assert sorted(output["id"]) == sorted(frame["id"])
    assert sorted(output["output.mha"]) == sorted(f"{into_path}{i}/output.mha" for i in frame["id"])
    return {
        row_id: s3_client.get_object(Bucket=bucket, Key=f"{prefix}/{row_id}/output.mha")[
            "Body"
        ].read()
        for row_id in frame["id"]
    }


def test_a_function_annotated_with_a_functional_typeddict_runs_in_map_batches(
    ray_local: None, blob_dataset: Any, s3_client: Any, options: Options
) -> None:
    # Python 3.11's TypedDict("Name", {...}) made cloudpickle fail in every worker:
    # "cannot inherit from both a TypedDict type and a non-TypedDict base class".
    frame = blob_dataset.frame.iloc[300:304]
    pipeline = Pipeline(fn=resample, write_options={"into_path": "s3://bkt/x/"}, options=options)
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(pipeline))
    assert copy.fn.__annotations__["return"].__annotations__ == {"output.mha": Path}
    got = _outputs_in_map_batches(resample, frame, "typeddict", blob_dataset, s3_client, options)
    assert got == {i: blob_dataset.expected(i, "image.bin").upper() for i in frame["id"]}


# TypedDicts that the function reaches other than through its own annotations, each
# one way (one class each: a class once reached is fixed for the rest of the session).
ViaHelper = TypedDict("ViaHelper", {"output.mha": Path})
ViaGlobalDict = TypedDict("ViaGlobalDict", {"output.mha": Path})
ViaDefault = TypedDict("ViaDefault", {"output.mha": Path})
ViaAttribute = TypedDict("ViaAttribute", {"output.mha": Path})
ViaPartial = TypedDict("ViaPartial", {"output.mha": Path})
KINDS = {"output": ViaGlobalDict}


def write_output(output_dir: Path, data: bytes, kind: Any = ViaDefault) -> Any:
    output = output_dir / "output.mha"
    output.write_bytes(data)
    return {"output.mha": output}


write_output.__annotations__ = {"output_dir": Path, "data": bytes, "return": ViaHelper}


class Resampler:
    def __init__(self) -> None:
        self.kind = ViaAttribute

    def __call__(self, input_dir: Path, output_dir: Path, *, extra: Any = None) -> Any:
        # rebuilt in the worker (on Python 3.14 cloudpickle 3.1 rebuilds it without
        # its __annotations__, which PEP 649 computes: its keys stay)
        assert KINDS["output"].__required_keys__ == frozenset({"output.mha"})
        return write_output(output_dir, (input_dir / "image.bin").read_bytes()[::-1])


def test_typeddicts_reached_through_helpers_globals_and_objects_travel_too(
    ray_local: None, blob_dataset: Any, s3_client: Any, options: Options
) -> None:
    import functools

    frame = blob_dataset.frame.iloc[310:313]
    fn = functools.partial(Resampler(), extra=ViaPartial)
    got = _outputs_in_map_batches(fn, frame, "typeddict-reached", blob_dataset, s3_client, options)
    assert got == {i: blob_dataset.expected(i, "image.bin")[::-1] for i in frame["id"]}


def test_pipeline_in_map_batches_writes_every_row_but_the_failing_one(
    ray_local: None, blob_dataset: Any, s3_client: Any, options: Options
) -> None:
    bucket = blob_dataset.bucket
    frame = blob_dataset.frame.head(100).copy()
    # The failing row's image says "fail".
    fail_key = f"inputs/{FAILING_ID}/image-fail.bin"
    s3_client.put_object(Bucket=bucket, Key=fail_key, Body=b"fail")
    frame.loc[frame["id"] == FAILING_ID, "image.bin"] = f"s3://{bucket}/{fail_key}"
    into_path = f"s3://{bucket}/pipeline-out/"
    pipeline = Pipeline(reverse_and_tag, write_options={"into_path": into_path}, options=options)

    # Four input blocks, so that both concurrent tasks get work (with a single block Ray
    # warns that concurrency=2 cannot be used). Not override_num_blocks=4: with pandas 3
    # Ray 2.60's from_pandas splits the frame into NumPy arrays and fails.
    blocks = [frame.iloc[start : start + 25] for start in range(0, len(frame), 25)]
    output = (
        ray.data.from_pandas(blocks)
        .map_batches(pipeline, batch_format="pandas", batch_size=8, concurrency=2)
        .to_pandas()
    )

    assert isinstance(output, pd.DataFrame)
    expected_ids = [i for i in frame["id"] if i != FAILING_ID]
    assert len(output) == 99
    assert sorted(output["id"]) == sorted(expected_ids)
    assert FAILING_ID not in set(output["id"])
    for row_id, url in zip(output["id"], output["out.bin"], strict=True):
        assert url == f"{into_path}{row_id}/out.bin"
        body = s3_client.get_object(Bucket=bucket, Key=f"pipeline-out/{row_id}/out.bin")
        mask = blob_dataset.expected(row_id, "mask.bin") or b""
        assert body["Body"].read() == blob_dataset.expected(row_id, "image.bin")[::-1] + mask
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="pipeline-out/")
    keys = {item["Key"] for item in listed.get("Contents", [])}
    assert keys == {f"pipeline-out/{row_id}/out.bin" for row_id in expected_ids}


@pytest.mark.parametrize("batch_format", ["default", "pyarrow"])
def test_pipeline_in_map_batches_with_other_batch_formats(
    batch_format: str, ray_local: None, blob_dataset: Any, s3_client: Any, options: Options
) -> None:
    # Without batch_format="pandas", Ray hands over a dict of NumPy columns ("default")
    # or a pyarrow Table: the Pipeline takes either as the same file DataFrame.
    bucket = blob_dataset.bucket
    frame = blob_dataset.frame.iloc[200:210]
    into_path = f"s3://{bucket}/formats-{batch_format}/"
    pipeline = Pipeline(reverse_and_tag, write_options={"into_path": into_path}, options=options)
    output = (
        ray.data.from_pandas(frame)
        .map_batches(pipeline, batch_format=batch_format, batch_size=4)
        .to_pandas()
    )
    assert sorted(output["id"]) == sorted(frame["id"])
    for row_id, url in zip(output["id"], output["out.bin"], strict=True):
        assert url == f"{into_path}{row_id}/out.bin"
        key = f"formats-{batch_format}/{row_id}/out.bin"
        mask = blob_dataset.expected(row_id, "mask.bin") or b""
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == blob_dataset.expected(row_id, "image.bin")[::-1] + mask


_USER_MODULE = """
from pathlib import Path

SUFFIX = b"-from-a-test-module"


def _tag(data):
    return data[::-1] + SUFFIX


def resample(input_dir: Path, output_dir: Path) -> dict:
    out = output_dir / "output.mha"
    out.write_bytes(_tag((input_dir / "image.bin").read_bytes()))
    return {"output.mha": out}
"""


def test_a_function_of_a_module_the_workers_cannot_import_runs_in_map_batches(
    ray_local: None,
    blob_dataset: Any,
    s3_client: Any,
    options: Options,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """helper-120: a function defined at the top of a test file (pytest puts the file's
    folder on sys.path; Ray's workers do not have it) failed in every worker with
    "ModuleNotFoundError: No module named 'test_...'"."""
    import importlib

    (tmp_path / "user_steps_q7.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("user_steps_q7")
    frame = blob_dataset.frame.iloc[320:323]
    got = _outputs_in_map_batches(
        module.resample, frame, "unimportable", blob_dataset, s3_client, options
    )
    expected = {i: blob_dataset.expected(i, "image.bin")[::-1] for i in frame["id"]}
    assert got == {i: data + b"-from-a-test-module" for i, data in expected.items()}
    assert "user_steps_q7" not in ray.cloudpickle.list_registry_pickle_by_value()  # as it was


_STEPS_MODULE = """
import threading
from pathlib import Path

from steps_helpers_r5k import tagged

import file_dataset

LOCK = threading.Lock()  # cannot be pickled by value: locked_step goes by reference


def step(input_dir: Path, output_dir: Path) -> dict:
    out = output_dir / "y"
    out.write_bytes(tagged((input_dir / "x").read_bytes()))
    return {"y": out}


def locked_step(input_dir: Path, output_dir: Path) -> dict:
    with LOCK:
        return step(input_dir, output_dir)


INNER = file_dataset.Pipeline(step, {"into_path": "s3://bucket/inner"})


def outer_step(input_dir: Path, output_dir: Path) -> dict:
    return INNER.fn(input_dir, output_dir)
"""

_UNPICKLING_CHILD = """
import pickle, sys
from pathlib import Path

pipeline = pickle.loads(sys.stdin.buffer.read())
source = Path(sys.argv[1])
print(pipeline.fn(source, source).get("y").read_bytes().decode())
"""


def _unpickled_elsewhere(pickled: bytes, data: Path) -> subprocess.CompletedProcess[bytes]:
    """Unpickles a Pipeline in a process whose sys.path lacks the test's folder (as a
    Ray worker's), and calls its fn on ``data``."""
    return subprocess.run(
        [sys.executable, "-c", _UNPICKLING_CHILD, str(data)],
        input=pickled,
        capture_output=True,
        timeout=120,
        cwd=data,  # (a folder holding no module)
    )


def test_ray_pickles_a_function_of_a_module_found_only_here_by_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With the helper modules of the same folder; a Pipeline that a global of fn holds
    (helper-124: pickling it waited forever on a lock); a module-level lock, which
    cannot go by value, by reference as before; cloudpickle's registry left as it was."""
    import importlib

    (tmp_path / "steps_r5k.py").write_text(_STEPS_MODULE)
    (tmp_path / "steps_helpers_r5k.py").write_text("def tagged(data):\n    return data + b'+t'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    steps = importlib.import_module("steps_r5k")
    data = tmp_path / "data"
    data.mkdir()
    (data / "x").write_bytes(b"row")
    before = ray.cloudpickle.list_registry_pickle_by_value()
    for fn in (steps.step, steps.outer_step):
        outcome: list[bytes] = []
        pipeline = Pipeline(fn, {"into_path": tmp_path / "out"})
        pickling = threading.Thread(
            target=lambda p=pipeline, out=outcome: out.append(ray.cloudpickle.dumps(p)),
            daemon=True,
        )
        pickling.start()
        pickling.join(timeout=60)
        assert len(outcome) == 1, fn
        done = _unpickled_elsewhere(outcome[0], data)
        assert (done.returncode, done.stdout) == (0, b"row+t\n"), done.stderr.decode()
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        locked = ray.cloudpickle.dumps(Pipeline(steps.locked_step, {"into_path": tmp_path}))
    assert b"No module named 'steps_r5k'" in _unpickled_elsewhere(locked, data).stderr
    assert (  # said on the driver (helper-129: the workers' error names no cause)
        "fn's module 'steps_r5k' is not found where Ray's workers look (it was imported "
        f"from {os.path.realpath(tmp_path)}) and fn cannot be pickled by value (TypeError: "
        "cannot pickle '_thread.lock' object)"
    ) in caplog.text
    assert ray.cloudpickle.list_registry_pickle_by_value() == before


def test_a_pythonpath_the_job_sets_counts_as_a_folder_workers_import_from(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime_env={"env_vars": {"PYTHONPATH": ...}} puts that folder on the workers'
    path: fn of a module there goes by reference, as Ray would import it (helper-131).
    py_modules do not count (helper-132: a test file's fn failed in every worker when
    the job shipped the library under test)."""
    import importlib

    (tmp_path / "shipped_q9.py").write_text("def step(input_dir, output_dir):\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shipped = importlib.import_module("shipped_q9")
    pipeline = Pipeline(shipped.step, {"into_path": tmp_path / "out"})
    assert b"FnByValue" in ray.cloudpickle.dumps(pipeline)  # the session's job ships none

    class Context:
        def __init__(self) -> None:
            self.runtime_env: dict[str, Any] = {}

    context = Context()
    monkeypatch.setattr(ray, "get_runtime_context", lambda: context)
    context.runtime_env = {"py_modules": ["gcs://_ray_pkg_0.zip"]}
    assert b"FnByValue" in ray.cloudpickle.dumps(pipeline)
    context.runtime_env = {"env_vars": {"PYTHONPATH": str(tmp_path)}}
    assert b"FnByValue" not in ray.cloudpickle.dumps(pipeline)
