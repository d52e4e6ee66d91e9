"""Pipeline over file DataFrames, against the local S3 server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import errno
import functools
import http.server
import inspect
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import file_dataset
import file_dataset._pipeline
from file_dataset import Options, Pipeline
from file_dataset.testing import LocalS3Server

Put = Callable[[str, bytes], str]
ReadObject = Callable[[str], bytes]

CANARY_SECRET = "canary-secret-pipeline-31337"


def upper(input_dir: Path, output_dir: Path) -> dict[str, Path]:
    """Concatenates the input files (by name) in upper case into ``output.mha``."""
    if any(p.read_bytes() == b"fail" for p in input_dir.iterdir()):
        raise RuntimeError("this row is poisoned")
    out = output_dir / "output.mha"
    out.write_bytes(b"".join(p.read_bytes().upper() for p in sorted(input_dir.iterdir())))
    return {"output.mha": out}


# How the log line of a row dropped by upper() ends: where it raised.
RAISED_IN_UPPER = f" (raised at {__file__}:{upper.__code__.co_firstlineno + 3} in upper)"


def reverse(input_dir: Path, output_dir: Path) -> dict[str, Path]:
    out = output_dir / "final.bin"
    out.write_bytes((input_dir / "output.mha").read_bytes()[::-1])
    return {"final.bin": out}


@pytest.fixture
def images(put: Put) -> pd.DataFrame:
    """The spec's file DataFrame: three images and their ids."""
    return pd.DataFrame(
        {
            "image.mha": [put(f"image{i}.mha", f"img{i}".encode()) for i in (1, 2, 3)],
            "id": ["1", "2", "3"],
        }
    )


def keys(s3_client: Any, bucket: str, prefix: str = "") -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def outputs(frame: pd.DataFrame, read_object: ReadObject, column: str) -> dict[str, bytes]:
    """The content of every output object, by row id."""
    return {row["id"]: read_object(row[column]) for _, row in frame.iterrows()}


# --- Usage 3 --------------------------------------------------------------------------


def test_pipeline_over_dataframe(
    images: pd.DataFrame, options: Options, bucket: str, system_tmp: Path, read_object: ReadObject
) -> None:
    pipeline = Pipeline(
        upper, write_options={"into_path": f"s3://{bucket}/resampled/"}, options=options
    )
    result = pipeline(images)
    # The design notes' order: the input has id last, and so has the output.
    assert list(result.columns) == ["output.mha", "id"]
    assert result["id"].tolist() == ["1", "2", "3"]
    assert result["output.mha"].tolist() == [
        f"s3://{bucket}/resampled/{i}/output.mha" for i in (1, 2, 3)
    ]
    assert outputs(result, read_object, "output.mha") == {"1": b"IMG1", "2": b"IMG2", "3": b"IMG3"}
    assert pipeline.last_failures == []
    assert list(system_tmp.iterdir()) == []


def test_pipeline_over_a_single_row(
    options: Options, bucket: str, put: Put, read_object: ReadObject
) -> None:
    # "This API also works for data frames": a row (mapping or Series) works too.
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/one"}, options)
    row = {"id": 7, "image.mha": put("one.mha", b"one"), "mask.mha": None}
    assert pipeline(row) == {"id": 7, "output.mha": f"s3://{bucket}/one/7/output.mha"}
    assert read_object(f"s3://{bucket}/one/7/output.mha") == b"ONE"
    series = pd.Series({"id": "s", "image.mha": put("two.mha", b"two")})
    assert pipeline(series) == {"id": "s", "output.mha": f"s3://{bucket}/one/s/output.mha"}
    assert read_object(f"s3://{bucket}/one/s/output.mha") == b"TWO"
    # id given last: the result has it last too, as a DataFrame's output would
    last = pipeline({"image.mha": put("last.mha", b"last"), "id": "z"})
    assert list(last.items()) == [("output.mha", f"s3://{bucket}/one/z/output.mha"), ("id", "z")]
    # a failed row is dropped: None, and reported
    assert pipeline({"id": "bad", "image.mha": put("bad.mha", b"fail")}) is None
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("bad", "fn")]
    with pytest.raises(ValueError, match="needs an 'id'"):
        pipeline({"image.mha": put("three.mha", b"x")})
    with pytest.raises(ValueError, match="a file DataFrame or a row"):
        pipeline(["not", "a", "row"])  # type: ignore[call-overload]


def test_pipeline_over_arrow_and_numpy_batches(
    images: pd.DataFrame, options: Options, bucket: str, read_object: ReadObject
) -> None:
    # Ray's map_batches hands these over unless batch_format="pandas" is given.
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/batches"}, options)
    numpy_batch = {name: images[name].to_numpy() for name in images.columns}
    arrow = pa.Table.from_pandas(images)
    for batch in (arrow, arrow.to_batches()[0], numpy_batch):  # RecordBatch: helper-109
        result = pipeline(batch)
        assert isinstance(result, pd.DataFrame)
        assert result["id"].tolist() == ["1", "2", "3"]
        assert outputs(result, read_object, "output.mha") == {
            "1": b"IMG1",
            "2": b"IMG2",
            "3": b"IMG3",
        }


def test_two_pipelines_chained(
    images: pd.DataFrame, options: Options, bucket: str, read_object: ReadObject
) -> None:
    first = Pipeline(upper, {"into_path": f"s3://{bucket}/first"}, options)
    second = Pipeline(reverse, {"into_path": f"s3://{bucket}/second"}, options)
    result = second(first(images))
    assert list(result.columns) == ["final.bin", "id"]  # id stays last, as in the input
    assert result["final.bin"].tolist() == [
        f"s3://{bucket}/second/{i}/final.bin" for i in (1, 2, 3)
    ]
    assert outputs(result, read_object, "final.bin") == {"1": b"1GMI", "2": b"2GMI", "3": b"3GMI"}


def forward(input_dir: Path, output_dir: Path) -> dict[str, Path]:
    """Passes the input through: once by its own path, once by a link in ``output_dir``."""
    link = output_dir / "linked.mha"
    link.symlink_to(input_dir / "image.mha")
    return {"image.mha": input_dir / "image.mha", "linked.mha": link}


@pytest.mark.parametrize("into", ["s3", "local"])
def test_fn_forwarding_its_inputs_as_outputs(
    into: str,
    options: Options,
    bucket: str,
    put: Put,
    tmp_path: Path,
    system_tmp: Path,
    read_object: ReadObject,
) -> None:
    # The design names "forwarding input as an output" as a use. Each row's upload
    # runs after fn returns, so its input folder must still be there: eight rows keep
    # several uploads in flight while later rows' inputs come and go.
    ids = [str(i) for i in range(8)]
    frame = pd.DataFrame(
        {"id": ids, "image.mha": [put(f"in/{i}.mha", f"image {i}".encode()) for i in ids]}
    )
    into_path = f"s3://{bucket}/fwd" if into == "s3" else str(tmp_path / "fwd")
    pipeline = Pipeline(forward, {"into_path": into_path}, options)
    result = pipeline(frame)
    assert pipeline.last_failures == []
    assert result["id"].tolist() == ids
    for column in ("image.mha", "linked.mha"):
        assert result[column].tolist() == [f"{into_path}/{i}/{column}" for i in ids]
        written = (
            outputs(result, read_object, column)
            if into == "s3"
            else {i: Path(result[column][n]).read_bytes() for n, i in enumerate(ids)}
        )
        assert written == {i: f"image {i}".encode() for i in ids}
    assert list(system_tmp.iterdir()) == []  # the kept input folders went too


def test_pipeline_to_local_folder_with_int_ids(options: Options, tmp_path: Path, put: Put) -> None:
    frame = pd.DataFrame({"id": [20, 10], "a": [put(f"a{i}", b"x") for i in (2, 1)]})
    result = Pipeline(upper, {"into_path": tmp_path / "out"}, options)(frame)
    assert result["id"].tolist() == [20, 10]  # the input's ids, as the design shows
    assert result["id"].dtype == frame["id"].dtype
    assert result["output.mha"].tolist() == [
        str(tmp_path / "out" / i / "output.mha") for i in ("20", "10")
    ]
    assert (tmp_path / "out" / "10" / "output.mha").read_bytes() == b"X"


def test_fn_called_in_row_order_with_nulls_absent(
    options: Options, tmp_path: Path, put: Put
) -> None:
    ids = [f"r{i}" for i in (5, 3, 9, 1, 7, 0)]
    seen: list[tuple[str, list[str]]] = []

    def record(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        names = sorted(p.name for p in input_dir.iterdir())
        seen.append(((input_dir / "a").read_text(), names))
        return {}

    nulls = [None, np.nan, pd.NA, "present", None, np.nan]
    frame = pd.DataFrame(
        {
            "id": ids,
            "a": [put(f"a/{i}", i.encode()) for i in ids],
            "b": [put("b", b"b") if isinstance(n, str) else n for n in nulls],
        }
    )
    result = Pipeline(record, {"into_path": tmp_path}, options)(frame)
    assert seen == [(i, ["a", "b"] if i == "r1" else ["a"]) for i in ids]
    assert result.to_dict("list") == {"id": ids}


def test_outputs_differ_between_rows(options: Options, tmp_path: Path) -> None:
    def some(input_dir: Path, output_dir: Path) -> dict[str, Any]:
        (output_dir / "x").write_bytes(b"x")
        if any(input_dir.iterdir()):
            return {"x": output_dir / "x", "y": None}
        return {"y": output_dir / "x"}

    frame = pd.DataFrame({"id": ["1", "2"], "in": [None, tmp_path / "in"]})
    (tmp_path / "in").write_bytes(b"in")
    result = Pipeline(some, {"into_path": tmp_path / "out"}, options)(frame)
    assert list(result.columns) == ["id", "y", "x"]
    assert result["y"].tolist()[0] == str(tmp_path / "out" / "1" / "y")
    assert pd.isna(result["y"].tolist()[1])
    assert pd.isna(result["x"].tolist()[0])
    assert result["x"].tolist()[1] == str(tmp_path / "out" / "2" / "x")


def test_output_ids_keep_the_input_dtype_and_join_back(
    options: Options, tmp_path: Path, put: Put
) -> None:
    # Like ray.data.read_csv's int64 ids: the output joins back to the input on "id",
    # also when rows are dropped, and a batch whose rows all fail keeps the dtype.
    frame = pd.DataFrame(
        {"id": np.array([7, 3, 5], dtype=np.int64), "f": [put(f"f{i}", b"ok") for i in "abc"]}
    )
    frame.loc[1, "f"] = put("poison", b"fail")
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    result = pipeline(frame)
    assert result["id"].dtype == np.int64
    assert result["id"].tolist() == [7, 5]
    assert [failure.id for failure in pipeline.last_failures] == ["3"]
    joined = frame.merge(result, on="id")
    assert joined["id"].tolist() == [7, 5]
    assert joined["output.mha"].tolist() == [str(tmp_path / "out" / i / "output.mha") for i in "75"]
    assert Path(joined["output.mha"][0]).read_bytes() == b"OK"
    none_left = pipeline(frame.iloc[[1]])
    assert list(none_left.columns) == ["id"]
    assert none_left["id"].dtype == np.int64
    assert len(none_left) == 0


def test_outputs_a_row_did_not_produce_are_missing_and_arrow_reads_strings(
    options: Options, tmp_path: Path
) -> None:
    """Before: NaN in an object column, which makes Arrow (Ray Data, Parquet) store the
    column as pickled Python objects instead of strings. The columns have the dtype
    pandas itself gives strings (pandas 3's "str"; they were always object), so the
    frame equals one built by hand."""

    def some(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        data = (input_dir / "f").read_bytes()
        (output_dir / "r").write_bytes(data)
        outputs = {"r": output_dir / "r"}
        if data != b"1":
            (output_dir / "s").write_bytes(data * 2)
            outputs["s"] = output_dir / "s"
        return outputs

    for i in range(3):
        (tmp_path / f"in{i}").write_bytes(str(i).encode())
    frame = pd.DataFrame({"id": ["a", "b", "c"], "f": [tmp_path / f"in{i}" for i in range(3)]})
    result = Pipeline(some, {"into_path": tmp_path / "out"}, options, on_error="raise")(frame)
    out = tmp_path / "out"
    cells = {
        "r": [str(out / "a" / "r"), str(out / "b" / "r"), str(out / "c" / "r")],
        "s": [str(out / "a" / "s"), None, str(out / "c" / "s")],
    }
    expected = pd.DataFrame({"id": ["a", "b", "c"], **cells})
    pd.testing.assert_frame_equal(result, expected)
    assert result["s"].isna().tolist() == [False, True, False]
    table = pa.Table.from_pandas(result, preserve_index=False)
    assert pa.types.is_string(table.schema.field("s").type) or pa.types.is_large_string(
        table.schema.field("s").type
    )
    assert table.column("s").to_pylist() == [str(out / "a" / "s"), None, str(out / "c" / "s")]
    assert (out / "c" / "s").read_bytes() == b"22"
    # pandas' string inference can be switched at any time: each call follows it
    flipped = not pd.get_option("future.infer_string")
    with warnings.catch_warnings(), pd.option_context("future.infer_string", flipped):
        warnings.simplefilter("ignore")  # pandas 3 warns that the option will go
        again = Pipeline(some, {"into_path": out}, options)(frame)
        outputs = again[["r", "s"]]  # (id keeps the input's dtype)
        pd.testing.assert_frame_equal(outputs, pd.DataFrame(cells))
        assert again["s"].dtype == pd.Series(["x"]).dtype


def test_output_has_a_fresh_index_and_joins_on_id(options: Options, tmp_path: Path) -> None:
    """As the README says: the input's index is not kept (join on ``id``)."""
    (tmp_path / "in").write_bytes(b"x")
    (tmp_path / "poison").write_bytes(b"fail")
    frame = pd.DataFrame(
        {"id": ["a", "b", "c"], "f": [tmp_path / "in", tmp_path / "poison", tmp_path / "in"]},
        index=[10, 20, 30],
    )
    result = Pipeline(upper, {"into_path": tmp_path / "out"}, options)(frame)
    assert result.index.tolist() == [0, 1]
    assert result["id"].tolist() == ["a", "c"]
    joined = frame.merge(result, on="id")
    assert joined["output.mha"].tolist() == [str(tmp_path / "out" / i / "output.mha") for i in "ac"]


def test_fn_returning_an_empty_mapping_keeps_the_row(options: Options, tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["1", "2"], "f": [None, None]})
    pipeline = Pipeline(lambda i, o: {}, {"into_path": tmp_path}, options)
    assert pipeline(frame).to_dict("list") == {"id": ["1", "2"]}
    assert pipeline.last_failures == []


NONE_RETURNED = (
    "fn returned None; it must return a mapping of output file name to local path "
    "({} when the row has no outputs)"
)


def test_fn_returning_none_fails_the_row(
    options: Options, bucket: str, s3_client: Any, caplog: pytest.LogCaptureFixture, put: Put
) -> None:
    """A forgotten ``return`` must not pass as a row with no outputs."""

    def forgot_return(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        out = output_dir / "output.mha"
        out.write_bytes((input_dir / "f").read_bytes())
        if out.read_bytes() == b"ok":
            return {"output.mha": out}
        return None  # type: ignore[return-value]

    frame = pd.DataFrame({"id": ["a", "b"], "f": [put("a", b"ok"), put("b", b"no return")]})
    pipeline = Pipeline(forgot_return, {"into_path": f"s3://{bucket}/out"}, options)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        result = pipeline(frame)
    assert result.to_dict("list") == {
        "id": ["a"],
        "output.mha": [f"s3://{bucket}/out/a/output.mha"],
    }
    [failure] = pipeline.last_failures
    assert (failure.id, failure.stage) == ("b", "fn")
    assert isinstance(failure.error, TypeError)
    assert str(failure.error) == NONE_RETURNED
    assert f"row id 'b' (fn failed): {NONE_RETURNED}" in caplog.text
    assert keys(s3_client, bucket, "out/") == ["out/a/output.mha"]
    raising = Pipeline(forgot_return, {"into_path": f"s3://{bucket}/r"}, options, on_error="raise")
    with pytest.raises(TypeError) as info:
        raising(frame.iloc[[1]])
    assert str(info.value) == NONE_RETURNED


def test_empty_dataframe(options: Options, tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": pd.Series([], dtype=object), "f": pd.Series([], dtype=object)})
    result = Pipeline(upper, {"into_path": tmp_path}, options)(frame)
    assert list(result.columns) == ["id"]
    assert len(result) == 0


def test_longest_id(options: Options, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"long")
    row_id = "i" * 255
    result = Pipeline(upper, {"into_path": tmp_path / "out"}, options)(
        pd.DataFrame({"id": [row_id], "f": [tmp_path / "in"]})
    )
    assert result["id"].tolist() == [row_id]
    assert (tmp_path / "out" / row_id / "output.mha").read_bytes() == b"LONG"


def test_an_id_too_long_for_an_s3_key_is_refused_before_any_row(
    options: Options, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(b"x")
    prefix = "out/" + "p" * 1000  # 1,005 bytes with its slash: 17 left for id, "/" and a name
    frame = pd.DataFrame({"id": ["short", "i" * 18], "f": [tmp_path / "in"] * 2})
    calls: list[str] = []

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        calls.append(input_dir.name)
        return upper(input_dir, output_dir)

    with pytest.raises(ValueError, match=r"is 18 bytes long: .* an id can have at most 17 bytes"):
        Pipeline(fn, {"into_path": f"s3://{bucket}/{prefix}"}, options)(frame)
    assert calls == []
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    result = Pipeline(upper, {"into_path": f"s3://{bucket}/{prefix}"}, options)(frame[:1])
    assert result["output.mha"].tolist() == [f"s3://{bucket}/{prefix}/short/output.mha"]


def test_a_dict_of_columns_is_refused_not_run_as_one_row(options: Options, tmp_path: Path) -> None:
    """Before: one row with id "['1', '2']", dropped with a warning; the call gave None."""
    (tmp_path / "in").write_bytes(b"x")
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    with pytest.raises(ValueError, match=r"id \['1', '2'\] is of type list: .* pass pd.DataFrame"):
        pipeline({"id": ["1", "2"], "f": [str(tmp_path / "in")] * 2})
    assert not (tmp_path / "out").exists()
    assert pipeline.last_failures == []


# --- failing rows ---------------------------------------------------------------------


@pytest.fixture
def nothing_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint counts as reached by an earlier Pipeline (of an earlier test)."""
    from file_dataset import _pipeline

    monkeypatch.setattr(_pipeline, "_REACHED", {})


@pytest.fixture
def terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The captured stderr is taken for a terminal: a bar is drawn only where it is
    redrawn in place."""
    # capsys's stream is made anew for the test's call: its class is patched
    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True)


def test_progress_bar_counts_every_row_and_the_dropped_ones(
    options: Options,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    terminal: None,
    put: Put,
    read_object: ReadObject,
) -> None:
    frame = pd.DataFrame(
        {
            "id": ["ok-1", "bad-2", "ok-3", "ok-4"],
            "f": [put(k, d) for k, d in [("1", b"a"), ("2", b"fail"), ("3", b"c"), ("4", b"d")]],
        }
    )
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out"}, options, progress=True)
    result = pickle.loads(pickle.dumps(pipeline))(frame)
    assert result["id"].tolist() == ["ok-1", "ok-3", "ok-4"]
    assert outputs(result, read_object, "output.mha") == {"ok-1": b"A", "ok-3": b"C", "ok-4": b"D"}
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("file_dataset.Pipeline: 100%")
    assert "4/4" in final
    assert "dropped=1" in final
    assert Pipeline(upper, {"into_path": f"s3://{bucket}/o2"}, options)(frame).shape[0] == 3
    assert capsys.readouterr().err == ""  # no bar unless asked for


def test_progress_bar_counts_a_row_when_its_upload_is_done(
    options: Options, bucket: str, terminal: None, put: Put, read_object: ReadObject
) -> None:
    """Before: a row was counted when collected, up to three fn calls after its upload
    was done; with a slow fn the bar read 0 for minutes while rows were written."""
    import tqdm

    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(6)], "f": [put(str(i), b"x") for i in range(6)]}
    )
    seen: list[int] = []

    def wait_for_the_bar(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        index = len(seen)
        bars = [b for b in tqdm.tqdm._instances if b.desc == "file_dataset.Pipeline"]
        # every earlier row has been handed to its upload: wait (10 s at most) until
        # the bar counts them, as their uploads end
        deadline = threading.Event()
        timer = threading.Timer(10, deadline.set)
        timer.start()
        try:
            while bars[0].n < index and not deadline.wait(0.005):
                pass
        finally:
            timer.cancel()
        seen.append(bars[0].n)
        return upper(input_dir, output_dir)

    pipeline = Pipeline(
        wait_for_the_bar, {"into_path": f"s3://{bucket}/out"}, options, progress=True
    )
    result = pipeline(frame)
    assert seen == [0, 1, 2, 3, 4, 5]
    assert outputs(result, read_object, "output.mha") == {f"r{i}": b"X" for i in range(6)}


def test_a_raising_pipeline_bar_does_not_count_a_dropped_row(
    options: Options, bucket: str, capsys: pytest.CaptureFixture[str], terminal: None, put: Put
) -> None:
    """Before: the bar ended at "1/2 [..., dropped=1]", and the call raised: nothing
    was dropped."""
    frame = pd.DataFrame({"id": ["bad-1", "ok-2"], "f": [put("1", b"fail"), put("2", b"b")]})
    pipeline = Pipeline(
        upper, {"into_path": f"s3://{bucket}/out"}, options, on_error="raise", progress=True
    )
    with pytest.raises(RuntimeError, match="this row is poisoned"):
        pipeline(frame)
    err = capsys.readouterr().err
    assert err.replace("\r", "\n").strip().splitlines()[-1].startswith("file_dataset.Pipeline:")
    assert "dropped" not in err
    assert "0/2" in err


def test_a_missing_aws_profile_names_the_pipeline_and_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: "Options.default() uses the profile ...", a call the user never made."""
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile-here")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    with pytest.raises(file_dataset.InvalidInputError) as info:
        Pipeline(upper, {"into_path": tmp_path / "out"})
    assert str(info.value).startswith(
        "Pipeline without options= resolves the S3 endpoint as "
        "Options.default(freeze_credentials=False) does, and failed: "
    )
    assert "'no-such-profile-here'" in str(info.value)
    assert str(info.value).endswith("(pass options=Options() to build it without that)")
    (tmp_path / "in").write_bytes(b"local")
    frame = pd.DataFrame({"id": ["r1"], "f": [tmp_path / "in"]})
    result = Pipeline(upper, {"into_path": tmp_path / "out"}, Options())(frame)
    assert (tmp_path / "out" / "r1" / "output.mha").read_bytes() == b"LOCAL"
    assert result["id"].tolist() == ["r1"]


def test_a_dropped_row_warning_does_not_run_into_the_progress_bar(
    options: Options, bucket: str, capsys: pytest.CaptureFixture[str], terminal: None, put: Put
) -> None:
    """The bar is cleared before the warning is written to the terminal, then redrawn."""
    frame = pd.DataFrame({"id": ["bad-1", "ok-2"], "f": [put("1", b"fail"), put("2", b"b")]})
    handler = logging.StreamHandler(sys.stderr)  # the capture's stderr
    logger = logging.getLogger("file_dataset")
    logger.addHandler(handler)
    try:
        Pipeline(upper, {"into_path": f"s3://{bucket}/out"}, options, progress=True)(frame)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    before, found, after = err.partition("file_dataset.Pipeline dropped row id 'bad-1' (fn failed)")
    assert found
    assert before.endswith("\r")  # the bar was cleared: the warning starts the line
    assert "]" in before  # after a bar had been drawn
    *_, bar, summary = after.replace("\r", "\n").strip().splitlines()
    assert bar.startswith("file_dataset.Pipeline: 100%")
    assert summary.startswith("file_dataset.Pipeline wrote 1 of 2 rows and dropped 1 (fn: 1)")


def test_progress_to_a_file_draws_no_bar_and_still_says_how_the_call_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr sent to a file (cron): no bar, and before, with no logging set up,
    nothing at all for a clean call (its summary is at INFO)."""
    (tmp_path / "in.txt").write_bytes(b"in")
    frame = pd.DataFrame({"id": ["r1", "r2"], "f": [str(tmp_path / "in.txt")] * 2})
    into = {"into_path": str(tmp_path / "out")}
    assert not logging.getLogger("file_dataset").isEnabledFor(logging.INFO)
    Pipeline(lambda i, o: {"g.txt": i / "f"}, into, progress=True)(frame)
    assert capsys.readouterr().err == "file_dataset.Pipeline wrote 2 of 2 rows\n"
    assert (tmp_path / "out" / "r2" / "g.txt").read_bytes() == b"in"
    Pipeline(lambda i, o: {"g.txt": i / "f"}, into)(frame)  # not asked for: nothing
    assert capsys.readouterr().err == ""
    logging.getLogger("file_dataset").setLevel(logging.CRITICAL)  # silenced on purpose
    try:
        Pipeline(lambda i, o: {"g.txt": i / "f"}, into, progress=True)(frame)
    finally:
        logging.getLogger("file_dataset").setLevel(logging.NOTSET)
    assert capsys.readouterr().err == ""


def test_progress_without_stderr_shows_no_bar_and_processes_the_rows(
    options: Options,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    put: Put,
    read_object: ReadObject,
) -> None:
    """Under pythonw or some daemons ``sys.stderr`` is None: tqdm then failed the call."""
    frame = pd.DataFrame(
        {"id": ["ok-1", "bad-2", "ok-3"], "f": [put("1", b"a"), put("2", b"fail"), put("3", b"c")]}
    )
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out"}, options, progress=True)
    monkeypatch.setattr(sys, "stderr", None)
    result = pipeline(frame)
    assert result["output.mha"].tolist() == [
        f"s3://{bucket}/out/ok-1/output.mha",
        f"s3://{bucket}/out/ok-3/output.mha",
    ]
    assert outputs(result, read_object, "output.mha") == {"ok-1": b"A", "ok-3": b"C"}
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("bad-2", "fn")]


def test_failing_fn_row_dropped_and_logged(
    options: Options,
    bucket: str,
    s3_client: Any,
    system_tmp: Path,
    caplog: pytest.LogCaptureFixture,
    put: Put,
    read_object: ReadObject,
) -> None:
    frame = pd.DataFrame(
        {
            "id": ["ok-1", "bad-2", "ok-3"],
            "f": [put(k, d) for k, d in [("1", b"a"), ("2", b"fail"), ("3", b"c")]],
        }
    )
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out"}, options)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        result = pipeline(frame)
    assert result["id"].tolist() == ["ok-1", "ok-3"]
    assert outputs(result, read_object, "output.mha") == {"ok-1": b"A", "ok-3": b"C"}
    record, summary = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "file_dataset.Pipeline dropped row id 'bad-2' (fn failed): "
        "RuntimeError: this row is poisoned" + RAISED_IN_UPPER
    )
    assert summary.levelno == logging.WARNING
    assert summary.getMessage() == (
        "file_dataset.Pipeline wrote 2 of 3 rows and dropped 1 (fn: 1); their ids and "
        "errors are on Pipeline.last_failures"
    )
    [failure] = pipeline.last_failures
    assert (failure.id, failure.stage) == ("bad-2", "fn")
    assert isinstance(failure.error, RuntimeError)
    assert "out/bad-2/" not in str(s3_client.list_objects_v2(Bucket=bucket))
    assert list(system_tmp.iterdir()) == []


def test_a_multi_line_failure_is_one_log_line(
    options: Options, bucket: str, caplog: pytest.LogCaptureFixture, put: Put
) -> None:
    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        raise ValueError("first line\nsecond line")

    raised_at = f" (raised at {__file__}:{fn.__code__.co_firstlineno + 1} in fn)"

    frame = pd.DataFrame({"id": ["r1"], "f": [put("multi-line", b"x")]})
    pipeline = Pipeline(fn, {"into_path": f"s3://{bucket}/out"}, options)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        assert pipeline(frame).empty
    record, _summary = caplog.records
    assert record.getMessage() == (
        "file_dataset.Pipeline dropped row id 'r1' (fn failed): "
        "ValueError: first line\\nsecond line" + raised_at
    )
    assert str(pipeline.last_failures[0].error) == "first line\nsecond line"


def test_a_signed_url_returned_by_fn_is_masked_in_the_log(
    options: Options, bucket: str, caplog: pytest.LogCaptureFixture, put: Put
) -> None:
    # With a space before it, it was taken as a path in output_dir and quoted whole.
    signed = " https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIALEAKCHECK0000000&Signature=SIGLEAK"

    def fn(input_dir: Path, output_dir: Path) -> dict[str, str]:
        return {"x": signed}

    frame = pd.DataFrame({"id": ["r1"], "f": [put("signed-out", b"x")]})
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        assert Pipeline(fn, {"into_path": f"s3://{bucket}/out"}, options)(frame).empty
    record, _summary = caplog.records
    assert "AWSAccessKeyId=***&Signature=***" in record.getMessage()
    assert "AKIALEAKCHECK0000000" not in record.getMessage()
    assert "SIGLEAK" not in record.getMessage()

    def fetching_fn(input_dir: Path, output_dir: Path) -> dict[str, str]:
        raise OSError(f"could not fetch {signed.strip()}")  # as an HTTP library says it

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        assert Pipeline(fetching_fn, {"into_path": f"s3://{bucket}/out"}, options)(frame).empty
    record, _summary = caplog.records
    assert record.getMessage().endswith(
        "OSError: could not fetch https://b.s3.amazonaws.com/k?AWSAccessKeyId=***&Signature=***"
        f" (raised at {__file__}:{fetching_fn.__code__.co_firstlineno + 1} in fetching_fn)"
    )


def test_fn_returning_missing_path_row_dropped(
    options: Options, tmp_path: Path, system_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def lie(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        return {"out": output_dir / "never-written"}

    (tmp_path / "in").write_bytes(b"x")
    pipeline = Pipeline(lie, {"into_path": tmp_path / "out"}, options)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        result = pipeline(pd.DataFrame({"id": ["7"], "f": [tmp_path / "in"]}))
    assert len(result) == 0
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("7", "fn")]
    assert "'7'" in caplog.text
    assert "never-written" in caplog.text
    assert not (tmp_path / "out").exists()
    assert list(system_tmp.iterdir()) == []


def test_fn_returning_a_folder_fails_the_row_saying_so(options: Options, tmp_path: Path) -> None:
    def folder(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        (output_dir / "sub").mkdir()
        return {"out": output_dir / "sub", "gone": output_dir / "never-written"}

    (tmp_path / "in").write_bytes(b"x")
    pipeline = Pipeline(folder, {"into_path": tmp_path / "out"}, options)
    assert len(pipeline(pd.DataFrame({"id": ["7"], "f": [tmp_path / "in"]}))) == 0
    error = pipeline.last_failures[0].error
    # Before: a FileNotFoundError, counted as a missing input by handlers of those.
    assert isinstance(error, IsADirectoryError)
    assert re.fullmatch(
        r"fn returned 'out' -> '/.*/sub', which is a directory, not a file", str(error)
    )
    pipeline.fn = lambda input_dir, output_dir: {"gone": output_dir / "never-written"}
    assert len(pipeline(pd.DataFrame({"id": ["7"], "f": [tmp_path / "in"]}))) == 0
    assert isinstance(pipeline.last_failures[0].error, FileNotFoundError)
    assert str(pipeline.last_failures[0].error).endswith(
        "/never-written', which is not an existing file"
    )


def _join_pipeline_threads() -> None:
    """Waits for the threads of Pipeline calls that ended early to finish their cleanup."""
    for thread in threading.enumerate():
        if thread.name.startswith("file_dataset-pipeline"):
            thread.join()


def test_an_interrupt_while_a_download_is_awaited_ends_the_call_and_leaves_nothing(
    options: Options, tmp_path: Path, system_tmp: Path
) -> None:
    """Ctrl-C during the wait for a row's download. Before, the call first waited for
    every download under way (seconds for large files), and the awaited row's folders,
    with its whole input, stayed in the temp folder for good."""
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(name.encode())
    frame = pd.DataFrame({"id": ["r1", "r2"], "f": [tmp_path / "a", tmp_path / "b"]})
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    gate = threading.Event()
    timed_out: list[bool] = []
    download = pipeline._download

    def held(columns: list[str], values: list[Any], row_id: str) -> tuple[Path, Path]:
        if row_id == "r1":  # interrupt the calling thread, then download only later
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            timed_out.append(not gate.wait(60))  # a safety net, not a synchronisation
        return download(columns, values, row_id)

    pipeline._download = held  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        pipeline(frame)
    gate.set()  # the call has ended while r1's download was still held
    _join_pipeline_threads()
    assert timed_out == [False]
    assert list(system_tmp.iterdir()) == []
    assert not (tmp_path / "out").exists()
    pipeline._download = download  # type: ignore[method-assign]
    assert pipeline(frame)["id"].tolist() == ["r1", "r2"]  # the next call works
    assert (tmp_path / "out" / "r2" / "output.mha").read_bytes() == b"B"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_in_fn_ends_the_call_and_leaves_nothing(
    interrupt: type[BaseException],
    options: Options,
    tmp_path: Path,
    system_tmp: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "a").write_bytes(b"a")
    frame = pd.DataFrame({"id": ["r1", "r2", "r3"], "f": [tmp_path / "a"] * 3})
    seen: list[str] = []
    folders: list[Path] = []

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        seen.append((input_dir / "f").read_text())
        folders[:] = [input_dir, output_dir]
        if len(seen) == 2:
            raise interrupt()
        return upper(input_dir, output_dir)

    with pytest.raises(interrupt), caplog.at_level(logging.WARNING, logger="file_dataset"):
        Pipeline(fn, {"into_path": tmp_path / "out"}, options)(frame)
    # the interrupted row's folders are gone when the call ends (a pool thread removed
    # them a moment later for KeyboardInterrupt)
    assert [folder.exists() for folder in folders] == [False, False]
    _join_pipeline_threads()
    assert seen == ["a", "a"]
    assert list(system_tmp.iterdir()) == []
    assert os.listdir(tmp_path / "out") == ["r1"]  # the upload already under way ends
    # Before, an interrupted call logged nothing (a batch system's SIGTERM, say).
    [line] = [record.getMessage() for record in caplog.records]
    said = re.fullmatch(
        rf"file_dataset.Pipeline interrupted by {interrupt.__name__} after writing (\d) of "
        r"3 rows: the rows written stay written(?:, and (\d) more row\(s\) being uploaded "
        r"complete on their own)?",
        line,
    )
    assert said is not None, line
    assert int(said.group(1)) + int(said.group(2) or 0) == 1  # r1, written or on its way


def test_an_interrupt_while_an_upload_is_awaited_counts_that_upload_as_under_way(
    options: Options,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upload being awaited was taken off the list of uploads before the wait, so
    the line said "0 of 1 rows" and nothing under way, and then the row landed
    (helper-100: Ctrl-C usually lands there once uploads are slower than fn)."""
    (tmp_path / "a").write_bytes(b"a")
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    gate = threading.Event()
    timed_out: list[bool] = []
    upload = pipeline._upload

    def held(row_id: str, outputs: dict[str, Path], folders: list[Path]) -> dict[str, str]:
        timed_out.append(not gate.wait(60))  # a safety net, not a synchronisation
        return upload(row_id, outputs, folders)

    # Ctrl-C landing in the calling thread's wait for the upload, as a signal does
    # there (a real SIGINT sent just before the wait begins is seen only after it).
    wait = concurrent.futures.Future.exception
    armed = [True]

    def interrupted(future: concurrent.futures.Future[Any], timeout: Any = None) -> Any:
        if armed and not future.done() and threading.current_thread() is threading.main_thread():
            armed.clear()
            raise KeyboardInterrupt
        return wait(future, timeout)

    monkeypatch.setattr(concurrent.futures.Future, "exception", interrupted)
    pipeline._upload = held  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING, "file_dataset"):
        pipeline(pd.DataFrame({"id": ["r1"], "f": [tmp_path / "a"]}))
    gate.set()  # the call has ended while r1's upload was held
    _join_pipeline_threads()
    assert armed == []
    assert timed_out == [False]
    assert [record.getMessage() for record in caplog.records] == [
        "file_dataset.Pipeline interrupted by KeyboardInterrupt after writing 0 of 1 rows: "
        "the rows written stay written, and 1 more row(s) being uploaded complete on "
        "their own"
    ]
    assert (tmp_path / "out" / "r1" / "output.mha").read_bytes() == b"A"


def test_an_interrupt_right_after_fn_returns_leaves_nothing(
    options: Options, tmp_path: Path, system_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between fn's return and the start of the row's upload. Before, that row's
    input and output folders stayed in the temp folder for good (a helper saw it in 2
    runs of 7)."""
    (tmp_path / "a").write_bytes(b"a")
    frame = pd.DataFrame({"id": ["r1", "r2", "r3"], "f": [tmp_path / "a"] * 3})
    folders: list[Path] = []
    where = file_dataset._pipeline._where

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        folders[:] = [input_dir, output_dir]
        return upper(input_dir, output_dir)

    def interrupted(paths: Any, input_dir: Path, output_dir: Path) -> tuple[bool, bool]:
        calls.append(input_dir)
        if len(calls) == 2:  # the first call after fn returned on row r2
            raise KeyboardInterrupt
        return where(paths, input_dir, output_dir)

    calls: list[Path] = []
    monkeypatch.setattr(file_dataset._pipeline, "_where", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(fn, {"into_path": tmp_path / "out"}, options)(frame)
    assert [folder.exists() for folder in folders] == [False, False]
    _join_pipeline_threads()
    assert list(system_tmp.iterdir()) == []
    assert os.listdir(tmp_path / "out") == ["r1"]


def test_temporary_folders_do_not_name_the_row(
    options: Options, tmp_path: Path, system_tmp: Path
) -> None:
    """The folders were named after the row id (file_dataset-in.PATIENT-SMITH-1961.x),
    in a temporary folder that every user of the machine may list."""
    (tmp_path / "a").write_bytes(b"a")
    seen: list[Path] = []

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        seen.extend([input_dir, output_dir])
        assert stat.S_IMODE(input_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(output_dir.stat().st_mode) == 0o700
        return upper(input_dir, output_dir)

    frame = pd.DataFrame({"id": ["PATIENT-SMITH-1961"], "f": [tmp_path / "a"]})
    Pipeline(fn, {"into_path": tmp_path / "out"}, options)(frame)
    assert [path.parent for path in seen] == [system_tmp, system_tmp]
    assert seen[0].name.startswith("file_dataset-in.")
    assert seen[1].name.startswith("file_dataset-out.")
    assert not any("PATIENT" in path.name for path in seen)
    assert (tmp_path / "out" / "PATIENT-SMITH-1961" / "output.mha").read_bytes() == b"A"


def test_the_readme_wrapper_runs_an_async_fn_with_or_without_a_running_loop(
    options: Options, tmp_path: Path
) -> None:
    """README: asyncio.run(fn(i, o)) alone drops every row where a loop is running (a
    notebook, a helper saw); the recipe's wrapper works there and in a script."""
    import asyncio

    def run_coroutine(fn: Any) -> Any:  # as in the README
        def call(input_dir: Path, output_dir: Path) -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # no loop on this thread
                return asyncio.run(fn(input_dir, output_dir))
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop of its own
                return pool.submit(asyncio.run, fn(input_dir, output_dir)).result()

        return call

    async def async_fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        await asyncio.sleep(0)
        (output_dir / "out.txt").write_bytes((input_dir / "f").read_bytes().upper())
        return {"out.txt": output_dir / "out.txt"}

    (tmp_path / "a").write_bytes(b"abc")
    frame = pd.DataFrame({"id": ["r1", "r2"], "f": [tmp_path / "a"] * 2})
    outside = Pipeline(run_coroutine(async_fn), {"into_path": tmp_path / "o1"}, options)(frame)

    async def main() -> Any:  # as a notebook cell runs
        return Pipeline(run_coroutine(async_fn), {"into_path": tmp_path / "o2"}, options)(frame)

    inside = asyncio.run(main())
    for result, out in ((outside, "o1"), (inside, "o2")):
        assert result["id"].tolist() == ["r1", "r2"]
        assert (tmp_path / out / "r2" / "out.txt").read_bytes() == b"ABC"


def test_missing_object_row_dropped(
    options: Options, bucket: str, system_tmp: Path, caplog: pytest.LogCaptureFixture, put: Put
) -> None:
    missing = f"s3://{bucket}/missing.mha"
    frame = pd.DataFrame({"id": ["1", "2"], "f": [missing, put("k", b"k")]})
    calls: list[str] = []

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        calls.append((input_dir / "f").read_text())
        return upper(input_dir, output_dir)

    pipeline = Pipeline(fn, {"into_path": f"s3://{bucket}/out"}, options)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        result = pipeline(frame)
    assert calls == ["k"]
    assert result["id"].tolist() == ["2"]
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("1", "read")]
    assert isinstance(pipeline.last_failures[0].error, FileNotFoundError)
    assert missing in caplog.text
    assert "'1'" in caplog.text
    assert list(system_tmp.iterdir()) == []


class _RefusingWrites(http.server.BaseHTTPRequestHandler):
    """A bucket that is there (its HEAD answers 200) and refuses every write (500)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<Error><Code>InternalError</Code><Message>Try again.</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_upload_failure_row_dropped(
    options: Options,
    bucket: str,
    tmp_path: Path,
    system_tmp: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "in").write_bytes(b"x")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingWrites)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    refusing = options.replace(
        s3_client_kwargs={"endpoint_url": f"http://127.0.0.1:{server.server_address[1]}"},
        max_attempts=1,
    )
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out", "options": refusing}, options)
    try:
        with caplog.at_level(logging.WARNING, logger="file_dataset"):
            result = pipeline(pd.DataFrame({"id": ["1", "2"], "f": [tmp_path / "in"] * 2}))
    finally:
        server.shutdown()
        server.server_close()
    assert len(result) == 0
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("1", "write"), ("2", "write")]
    assert f"s3://{bucket}/out/1/output.mha" in caplog.text
    assert "InternalError: Try again." in caplog.text
    assert list(system_tmp.iterdir()) == []


def _one_output_unreadable(input_dir: Path, output_dir: Path) -> dict[str, Path]:
    (output_dir / "ok.mha").write_bytes(b"ok")
    return {"ok.mha": output_dir / "ok.mha", "bad.mha": Path("/proc/self/mem")}  # EIO


def test_a_row_dropped_at_its_upload_says_where_its_other_outputs_may_be(
    options: Options, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the log line named the failed output only, though the row's other
    outputs could be written already (the only place a Ray job's driver sees it)."""
    pipeline = Pipeline(_one_output_unreadable, {"into_path": f"s3://{bucket}/out"}, options)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        result = pipeline(pd.DataFrame({"id": [7], "f": [None]}))
    assert len(result) == 0
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("7", "write")]
    [line] = [r.getMessage() for r in caplog.records if "dropped row id" in r.getMessage()]
    assert line == (
        "file_dataset.Pipeline dropped row id '7' (write failed): cannot read "
        "/proc/self/mem (row id '7', column 'bad.mha'): Input/output error; 1 other "
        f"file(s) of row id '7' are written already under s3://{bucket}/out/7/ ('ok.mha'; "
        "each whole, none half-written: a rerun of the row overwrites them)"
    )


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_an_unreachable_endpoint_ends_the_call_instead_of_dropping_every_row(
    nothing_reached: None,
    transport: str,
    options: Options,
    bucket: str,
    tmp_path: Path,
    system_tmp: Path,
) -> None:
    """Before: every row was dropped in turn, each after its retries (a helper measured
    39.5 s for 2 rows with boto3's), one warning per row, for the whole frame."""
    calls: list[str] = []

    def count(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        calls.append((input_dir / "f").read_text())
        return {}

    unreachable = options.replace(  # the discard port: nothing listens
        s3_client_kwargs={"endpoint_url": "http://127.0.0.1:9"}, max_attempts=1, transport=transport
    )
    (tmp_path / "in").write_text("local")
    # Reads: the first row's download could not connect.
    frame = pd.DataFrame({"id": ["1", "2", "3"], "f": [f"s3://{bucket}/in/{i}" for i in "123"]})
    pipeline = Pipeline(count, {"into_path": tmp_path / "out"}, unreachable)
    with pytest.raises(file_dataset.TransferError) as raised:
        pipeline(frame)
    assert raised.value.unreachable
    assert (raised.value.row_id, raised.value.url) == ("1", f"s3://{bucket}/in/1")
    assert "no Pipeline of this process has reached it yet" in "".join(raised.value.__notes__)
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("1", "read")]
    assert "downloads use Pipeline(options=...)" not in "".join(raised.value.__notes__)
    # Options given for the writes only: the note says that reads do not use them.
    split = Pipeline(count, {"into_path": f"s3://{bucket}/out", "options": options}, unreachable)
    with pytest.raises(file_dataset.TransferError) as raised:
        split(frame)
    assert raised.value.__notes__[-2:] == [
        "file_dataset.Pipeline: downloads use Pipeline(options=...), not "
        "write_options['options'] (those serve the downloads only when options= is left out)",
        "file_dataset.Pipeline stopped after writing 0 of 3 rows: the rows written stay written",
    ]
    # Writes: refused before any row, by the check of the destination bucket.
    to_s3 = Pipeline(count, {"into_path": f"s3://{bucket}/out", "options": unreachable}, options)
    with pytest.raises(file_dataset.TransferError) as raised:
        to_s3(pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]}))
    assert raised.value.unreachable
    assert str(raised.value).startswith(f"cannot write s3://{bucket}/out: ")
    assert calls == []
    # A row with only local files (or null cells) first does not count as reaching it.
    frame = pd.DataFrame({"id": ["1", "2"], "f": [tmp_path / "in", f"s3://{bucket}/in/2"]})
    with pytest.raises(file_dataset.TransferError) as raised:
        pipeline(frame)
    assert (raised.value.row_id, raised.value.unreachable) == ("2", True)
    assert calls == ["local"]
    assert list(system_tmp.iterdir()) == []


def test_an_unreachable_error_raised_in_fn_drops_its_row(
    nothing_reached: None, bucket: str, tmp_path: Path, options: Options
) -> None:
    """Before: a TransferError with unreachable set, raised by fn's own read from a dead
    endpoint, ended the call as if the Pipeline's transfers had failed (a regression
    hunt's finding)."""
    dead = options.replace(s3_client_kwargs={"endpoint_url": "http://127.0.0.1:9"}, max_attempts=1)

    def side_read(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        file_dataset.reader({"side.txt": f"s3://{bucket}/side.txt"}, dead).into_blob_table()
        return {}

    (tmp_path / "in").write_bytes(b"x")
    pipeline = Pipeline(side_read, {"into_path": tmp_path / "out"}, options)
    assert pipeline(pd.DataFrame({"id": ["1", "2"], "f": [tmp_path / "in"] * 2})).empty
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("1", "fn"), ("2", "fn")]
    assert all(getattr(f.error, "unreachable", False) for f in pipeline.last_failures)


def test_options_made_after_the_endpoint_changed_have_not_reached_it(
    nothing_reached: None,
    s3_server: LocalS3Server,
    bucket: str,
    put: Put,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: Options() equal in value to options that had reached moto counted as
    having reached the dead endpoint AWS_ENDPOINT_URL then named, so every row was
    dropped in turn (a regression hunt's finding)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    frame = pd.DataFrame({"id": ["1"], "f": [put("in/1", b"one")]})
    assert Pipeline(upper, {"into_path": tmp_path / "out"}, Options(max_attempts=1))(frame)[
        "id"
    ].tolist() == ["1"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(file_dataset.TransferError) as raised:
        Pipeline(upper, {"into_path": tmp_path / "out"}, Options(max_attempts=1))(frame)
    assert raised.value.unreachable
    assert "127.0.0.1:9" in str(raised.value)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_reached_endpoint_stays_reached_when_the_options_get_a_new_runtime(
    transport: str,
    nothing_reached: None,
    s3_server: LocalS3Server,
    put: Put,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Options whose runtime (pool and clients) was retired, after an AWS_* variable
    changed, get a new one in the new environment; the same endpoint must still count
    as reached, or an outage part-way would end the call (a regression hunt's
    reasoning)."""
    relay = _Relay(s3_server.endpoint_url)
    options = s3_server.options(
        transport=transport, max_attempts=1, s3_client_kwargs={"endpoint_url": relay.endpoint_url}
    )
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    assert pipeline(pd.DataFrame({"id": ["1"], "f": [put("in/1", b"one")]}))["id"].tolist() == ["1"]
    monkeypatch.setenv("AWS_UNRELATED_MARKER", "changed")  # a new environment
    for attempts in range(2, 11):  # more option values than the process keeps runtimes for
        options.replace(max_attempts=attempts).s3_client()
    relay.cut()
    later = pd.DataFrame({"id": ["2"], "f": [put("in/2", b"two")]})
    assert pipeline(later).empty
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("2", "read")]


class _Relay:
    """A TCP relay to moto that can be cut, as an endpoint that goes away part-way."""

    def __init__(self, upstream: str) -> None:
        import urllib.parse

        target = urllib.parse.urlsplit(upstream)
        self._target = (target.hostname or "", target.port or 80)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self._target)
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Closes the listening socket and every connection: nothing answers any more."""
        for sock in [self._server, *self._open]:  # shutdown wakes the threads using it
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_an_endpoint_that_goes_away_after_it_was_reached_drops_rows(
    nothing_reached: None,
    transport: str,
    s3_server: LocalS3Server,
    bucket: str,
    put: Put,
    tmp_path: Path,
    system_tmp: Path,
) -> None:
    """An outage part-way (the endpoint reached by an earlier call of this process)
    drops its rows, as before: stopping would end a long job for a blip. A helper saw
    the first version stop whenever a row with only local files came first."""
    relay = _Relay(s3_server.endpoint_url)
    options = s3_server.options(
        transport=transport, max_attempts=1, s3_client_kwargs={"endpoint_url": relay.endpoint_url}
    )
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    first = pd.DataFrame({"id": ["1"], "f": [put("in/1", b"one")]})
    assert pipeline(first)["id"].tolist() == ["1"]
    relay.cut()
    later = pd.DataFrame({"id": ["2", "3"], "f": [put("in/2", b"two"), put("in/3", b"three")]})
    assert pipeline(later).empty
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("2", "read"), ("3", "read")]
    assert all(getattr(f.error, "unreachable", False) for f in pipeline.last_failures)
    assert (tmp_path / "out" / "1" / "output.mha").read_bytes() == b"ONE"
    assert list(system_tmp.iterdir()) == []


def test_a_row_folder_that_cannot_be_removed_is_named_with_its_error_and_removed_at_exit(
    tmp_path: Path,
    system_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: the warning guessed "is something fn started still writing in it?" and
    dropped the real error (a helper's run at ulimit -n 16 left 51-69 folders, each
    named with that guess), and the folders stayed after the process ended."""
    from file_dataset import _local

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        (output_dir / "scratch.tmp").write_bytes(b"scratch")
        (output_dir / "out.txt").write_bytes(b"out")
        return {"out.txt": output_dir / "out.txt"}

    real = os.unlink

    def out_of_descriptors(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(path) == "scratch.tmp":
            raise OSError(errno.EMFILE, "Too many open files")
        real(path, *args, **kwargs)

    (tmp_path / "in").write_bytes(b"x")
    monkeypatch.setattr(os, "unlink", out_of_descriptors)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        result = Pipeline(fn, {"into_path": tmp_path / "out"})(
            pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]})
        )
    monkeypatch.undo()
    assert (tmp_path / "out" / "1" / "out.txt").read_bytes() == b"out"
    assert result["id"].tolist() == ["1"]
    [left] = [path for path in system_tmp.iterdir() if path.name.startswith("file_dataset-out")]
    assert caplog.messages[0] == (  # without the guess at fn's threads (an audit's)
        f"file_dataset could not remove its temporary folder {left} ([Errno 24] Too many "
        "open files); it is tried again when the interpreter exits"
    )
    _local._remove_left_folders()  # as at exit
    assert list(system_tmp.iterdir()) == []


def test_a_failure_without_a_message_is_logged_by_its_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: "dropped row id '1' (read failed): " and nothing after it, for a bare
    MemoryError from a read (a regression hunt's finding)."""
    from file_dataset import _local

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError  # as an allocation that fails

    (tmp_path / "in").write_bytes(b"x")
    monkeypatch.setattr(_local.LocalBackend, "copy_into", no_memory)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        Pipeline(upper, {"into_path": tmp_path / "out"})(
            pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]})
        )
    assert (
        caplog.messages[0] == "file_dataset.Pipeline dropped row id '1' (read failed): MemoryError"
    )


def test_no_bar_where_it_cannot_be_redrawn_and_one_summary_line_per_call(
    options: Options,
    bucket: str,
    put: Put,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: with stderr sent to a file (cron), the bar was one endless line of
    redraws with every warning behind it, and no line said how the call ended."""
    frame = pd.DataFrame({"id": ["ok-1", "bad-2"], "f": [put("1", b"a"), put("2", b"fail")]})
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out"}, options, progress=True)
    with caplog.at_level(logging.INFO, logger="file_dataset"):
        assert pipeline(frame)["id"].tolist() == ["ok-1"]
        assert pipeline(frame.iloc[:1])["id"].tolist() == ["ok-1"]
    assert capsys.readouterr().err == ""  # captured stderr is no terminal
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "file_dataset.Pipeline dropped row id 'bad-2' (fn failed): RuntimeError: "
            "this row is poisoned" + RAISED_IN_UPPER,
        ),
        (
            "WARNING",
            "file_dataset.Pipeline wrote 1 of 2 rows and dropped 1 (fn: 1); their ids "
            "and errors are on Pipeline.last_failures",
        ),
        ("INFO", "file_dataset.Pipeline wrote 1 of 1 rows"),
    ]


@pytest.mark.parametrize("on_error", ["drop", "raise"])
def test_a_missing_destination_bucket_is_refused_before_any_row(
    on_error: str, options: Options, tmp_path: Path, system_tmp: Path
) -> None:
    """Before: every row was downloaded and run through fn, then dropped at its upload."""
    calls: list[Path] = []

    def count(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        calls.append(input_dir)
        return {}

    (tmp_path / "in").write_bytes(b"x")
    pipeline = Pipeline(
        count, {"into_path": "s3://no-such-bucket-pipeline/out"}, options, on_error=on_error
    )
    with pytest.raises(FileNotFoundError) as info:
        pipeline(pd.DataFrame({"id": ["1", "2"], "f": [tmp_path / "in"] * 2}))
    assert isinstance(info.value, file_dataset.ObjectNotFoundError)
    assert str(info.value) == (
        "cannot write s3://no-such-bucket-pipeline/out: the bucket does not exist"
    )
    assert info.value.status == 404  # as write_files says of the same bucket (was None)
    assert calls == []
    assert pipeline.last_failures == []
    assert list(system_tmp.iterdir()) == []
    assert len(pipeline(pd.DataFrame({"id": [], "f": []}))) == 0  # no rows: nothing asked
    (tmp_path / "a file").write_bytes(b"")
    local = Pipeline(count, {"into_path": tmp_path / "a file"}, options, on_error=on_error)
    with pytest.raises(file_dataset.TransferError) as not_a_folder:
        local(pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]}))
    assert str(not_a_folder.value) == (
        f"cannot write {tmp_path / 'a file'}: the Pipeline's into_path is not a folder: "
        "it is a file"
    )
    # Before: the built-in NotADirectoryError only, which `except FileDatasetError`
    # missed (write_files raises a TransferError for the same path); now both.
    assert isinstance(not_a_folder.value, NotADirectoryError)
    assert not_a_folder.value.errno == errno.ENOTDIR
    assert (not_a_folder.value.url, not_a_folder.value.operation) == (
        str(tmp_path / "a file"),
        "write",
    )
    assert calls == []


def test_a_local_destination_this_process_may_not_write_in_is_a_permission_error(
    options: Options, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was the built-in PermissionError, which ``except FileDatasetError`` missed,
    while write_files' refusal of the same folder is an ObjectAccessDeniedError. (Tests
    may run as root, which may write anywhere: the check is refused here.)"""
    import file_dataset._pipeline

    (tmp_path / "in").write_bytes(b"in")
    monkeypatch.setattr(file_dataset._pipeline.os, "access", lambda *args: False)
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out" / "deeper"}, options)
    with pytest.raises(PermissionError) as info:
        pipeline(pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]}))
    error = info.value
    assert isinstance(error, file_dataset.ObjectAccessDeniedError)
    assert (error.url, error.operation) == (str(tmp_path / "out" / "deeper"), "write")
    assert f"no permission to write in {str(tmp_path)!r}" in str(error)
    assert not (tmp_path / "out").exists()


def test_a_local_destination_no_row_folder_can_be_made_in_is_refused_before_any_row(
    options: Options, tmp_path: Path
) -> None:
    """Before: only a file at into_path itself was seen; a link to nothing, a loop of
    links or a path under a file let every row download and run fn, then dropped it."""
    (tmp_path / "in").write_bytes(b"in")
    (tmp_path / "plain").write_bytes(b"")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    calls: list[Path] = []

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        calls.append(input_dir)
        return upper(input_dir, output_dir)

    frame = pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]})
    for into, message in [
        ("dangling", "it is a link to nothing or a loop of links"),
        ("loop", "it is a link to nothing or a loop of links"),
        ("plain/out", f"{str(tmp_path / 'plain')!r} is a file"),
        ("dangling/out", f"{str(tmp_path / 'dangling')!r} is a link to nothing or a loop of links"),
    ]:
        with pytest.raises(NotADirectoryError) as info:
            Pipeline(fn, {"into_path": tmp_path / into}, options)(frame)
        assert isinstance(info.value, file_dataset.TransferError)
        assert str(info.value) == (
            f"cannot write {tmp_path / into}: the Pipeline's into_path is not a folder: " + message
        )
    assert calls == []
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real").mkdir()
    result = Pipeline(fn, {"into_path": linked / "new" / "deeper"}, options)(frame)
    assert result["output.mha"].tolist() == [str(linked / "new" / "deeper" / "1" / "output.mha")]
    assert (tmp_path / "real" / "new" / "deeper" / "1" / "output.mha").read_bytes() == b"IN"


def test_on_error_raise_reraises_fn_error(
    options: Options, bucket: str, system_tmp: Path, put: Put
) -> None:
    frame = pd.DataFrame({"id": ["1", "2"], "f": [put("1", b"fail"), "s3://x-y-z/k"]})
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out"}, options, on_error="raise")
    with pytest.raises(RuntimeError, match="this row is poisoned") as info:
        pipeline(frame)
    assert info.value.__notes__ == [
        "file_dataset.Pipeline: fn failed on row id '1'",
        "file_dataset.Pipeline stopped after writing 0 of 2 rows: the rows written stay written",
    ]
    # raised as fn raised it: not "during handling of" the Pipeline's own bookkeeping
    assert info.value.__context__ is None
    assert info.value.__cause__ is None
    assert list(system_tmp.iterdir()) == []


def test_settings_changed_after_construction_are_checked_at_the_next_call(
    options: Options, bucket: str, system_tmp: Path, put: Put
) -> None:
    """``pipeline.on_error = "Raise"`` (a typo) made every failure drop its row
    unseen, and options set to a dict failed mid-call with an AttributeError. Each
    call now checks its settings as the constructor does, before any row."""
    frame = pd.DataFrame({"id": ["1"], "f": [put("1", b"fail")]})
    calls: list[Path] = []

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        calls.append(input_dir)
        return upper(input_dir, output_dir)

    pipeline = Pipeline(fn, {"into_path": f"s3://{bucket}/out"}, options)
    for name, value, kind, message in [
        ("on_error", "Raise", ValueError, "on_error must be 'drop' or 'raise', got 'Raise'"),
        ("options", {"region_name": "x"}, TypeError, "must be a file_dataset.Options"),
        ("progress", "yes", TypeError, "progress must be True or False"),
        ("write_options", {"into_path": 5}, ValueError, "5"),
        ("fn", lambda input_dir: {}, TypeError, "cannot be called as fn"),
    ]:
        saved = getattr(pipeline, name)
        setattr(pipeline, name, value)
        with pytest.raises(kind, match=re.escape(message)):
            pipeline(frame)
        setattr(pipeline, name, saved)
    pipeline.write_options["intopath"] = "s3://elsewhere/"  # the dict, changed in place
    with pytest.raises(ValueError, match="unknown write_options"):
        pipeline(frame)
    del pipeline.write_options["intopath"]
    assert calls == []
    pipeline.on_error = "raise"  # a valid change takes effect
    with pytest.raises(RuntimeError, match="this row is poisoned"):
        pipeline(frame)
    assert len(calls) == 1
    assert list(system_tmp.iterdir()) == []


def test_on_error_raise_reraises_missing_object(
    options: Options, bucket: str, system_tmp: Path
) -> None:
    missing = f"s3://{bucket}/missing.mha"
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out"}, options, on_error="raise")
    with pytest.raises(FileNotFoundError) as info:
        pipeline(pd.DataFrame({"id": ["row-1"], "f": [missing]}))
    assert missing in str(info.value)
    assert "'row-1'" in str(info.value)
    assert list(system_tmp.iterdir()) == []


# --- invalid input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"f": ["s3://bkt/k"]}),
        pd.DataFrame({"id": ["1", "1"], "f": ["s3://bkt/k", "s3://bkt/l"]}),
        pd.DataFrame({"id": ["1", None], "f": ["s3://bkt/k", "s3://bkt/l"]}),
        pd.DataFrame({"id": ["1", "../x"], "f": ["s3://bkt/k", "s3://bkt/l"]}),
        pd.DataFrame({"id": ["1"], "a/b": ["s3://bkt/k"]}),
    ],
    ids=["no-id", "duplicate-id", "null-id", "escaping-id", "escaping-name"],
)
def test_invalid_dataframe_rejected_before_any_row(
    frame: pd.DataFrame, options: Options, tmp_path: Path, system_tmp: Path
) -> None:
    calls: list[Path] = []
    pipeline = Pipeline(lambda i, o: calls.append(i), {"into_path": tmp_path / "out"}, options)
    with pytest.raises(ValueError):
        pipeline(frame)
    assert calls == []
    assert not (tmp_path / "out").exists()
    assert list(system_tmp.iterdir()) == []


def test_names_too_long_for_local_files_are_refused_before_any_row(
    options: Options, bucket: str, put: Put, tmp_path: Path, system_tmp: Path
) -> None:
    # Before, each row was downloaded and run through fn, and only then dropped.
    calls: list[Path] = []

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        calls.append(input_dir)
        return {}

    source = put("long.mha", b"x")
    long_id = pd.DataFrame({"id": ["ok", "i" * 300], "image.mha": [source, source]})
    local = Pipeline(fn, {"into_path": tmp_path / "out"}, options)
    with pytest.raises(ValueError, match=r"id \(folder name\) 'i+'\.\.\. is 300 bytes long"):
        local(long_id)
    # to S3 a 300-byte id is a fine key component
    remote = Pipeline(fn, {"into_path": f"s3://{bucket}/long"}, options)
    assert remote(long_id)["id"].tolist() == ["ok", "i" * 300]
    # an input file name always becomes a file of input_dir
    long_name = pd.DataFrame({"id": ["ok"], "n" * 300: [source]})
    calls.clear()
    with pytest.raises(ValueError, match=r"column \(file name\) 'n+'\.\.\. is 300 bytes long"):
        remote(long_name)
    assert calls == []
    assert not (tmp_path / "out").exists()
    assert list(system_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([1, 3], "int64 values (row id 'r1': 1)"),
        ([True, False], "bool values (row id 'r1': True)"),
        ([float("nan"), 0.5], "float64 values (row id 'r2': 0.5)"),
        (pd.array([None, 4], dtype="Int64"), "Int64 values (row id 'r2': 4)"),
        # microseconds from pandas 3 on, as pandas 2 gives them when asked
        (pd.to_datetime(["2026-01-01", None]).as_unit("us"), "datetime64[us] values (row id"),
    ],
    ids=["int", "bool", "float", "nullable-int", "datetime"],
)
def test_a_column_of_numbers_is_refused_before_any_row(
    values: Any, shown: str, options: Options, tmp_path: Path
) -> None:
    """Before, a label column made a Pipeline drop every row, one warning per row."""
    (tmp_path / "a").write_bytes(b"a")
    frame = pd.DataFrame({"id": ["r1", "r2"], "f": [tmp_path / "a"] * 2, "label": values})
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    with pytest.raises(ValueError) as info:
        pipeline(frame)
    assert str(info.value).startswith(f"column 'label' holds {shown}")
    assert str(info.value).endswith(
        "not file URLs or paths: every column of a file DataFrame except 'id' is a file "
        "column, so drop the others first (frame.drop(columns=['label']))"
    )
    assert not (tmp_path / "out").exists()
    frame["label"] = [float("nan")] * 2  # all null: a file column without files
    assert pipeline(frame)["id"].tolist() == ["r1", "r2"]
    # The same from Arrow, where a NaN is a value, not a null: it was refused.
    arrow_nan = pd.arrays.ArrowExtensionArray(pa.array([float("nan")] * 2))
    assert pipeline(frame.assign(label=arrow_nan))["id"].tolist() == ["r1", "r2"]
    with pytest.raises(ValueError, match="column 'label' holds int64 values"):
        file_dataset.reader(frame.assign(label=[1, 2])).into_blob_table()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"write_options": {}}, ValueError),
        ({"write_options": {"into_path": "s3://bkt/o", "bogus": 1}}, ValueError),
        ({"write_options": {"into_path": "ftp://host/o"}}, ValueError),
        ({"write_options": {"into_path": "s3://bkt/o"}, "on_error": "ignore"}, ValueError),
        ({"write_options": {"into_path": "s3://bkt/o"}, "fn": "not callable"}, TypeError),
        ({"write_options": "s3://bkt/o"}, TypeError),
    ],
)
def test_invalid_pipeline_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Pipeline(**{"fn": upper, **kwargs})


@pytest.mark.parametrize("progress", ["false", 0.0, 2, "True"])
def test_progress_that_is_not_a_bool_is_refused_when_built(progress: Any) -> None:
    """Before: "false" was taken by its truth and drew a bar."""
    with pytest.raises(TypeError) as info:
        Pipeline(upper, {"into_path": "s3://bkt/o"}, progress=progress)
    assert str(info.value) == f"progress must be True or False, got {progress!r}"
    assert Pipeline(upper, {"into_path": "s3://bkt/o"}, progress=np.bool_(True)).progress is True
    for accepted, shown in [(None, False), (0, False), (1, True)]:  # as before
        assert Pipeline(upper, {"into_path": "s3://bkt/o"}, progress=accepted).progress is shown


def one_argument(input_dir: Path) -> dict[str, Path]:
    return {}


def keyword_only(*, input_dir: Path, output_dir: Path) -> dict[str, Path]:
    return {}


def three_arguments(input_dir: Path, output_dir: Path, extra: int) -> dict[str, Path]:
    return {}


@pytest.mark.parametrize(
    ("fn", "shown"),
    [
        (one_argument, "one_argument(input_dir: 'Path') -> 'dict[str, Path]'"),
        (
            keyword_only,
            "keyword_only(*, input_dir: 'Path', output_dir: 'Path') -> 'dict[str, Path]'",
        ),
        (
            three_arguments,
            "three_arguments(input_dir: 'Path', output_dir: 'Path', extra: 'int') -> "
            "'dict[str, Path]'",
        ),
        (lambda: {}, "<lambda>()"),
    ],
    ids=["one-argument", "keyword-only", "three-arguments", "no-argument-lambda"],
)
def test_fn_that_cannot_take_input_and_output_dirs_is_refused_when_built(
    fn: Callable[..., Any], shown: str, tmp_path: Path
) -> None:
    """It used to be accepted, and then every row was dropped."""
    with pytest.raises(TypeError) as info:
        Pipeline(fn, {"into_path": tmp_path})
    assert str(info.value) == (
        f"fn {shown} cannot be called as fn(input_dir, output_dir): the Pipeline calls it "
        "with two positional arguments, the row's input folder and an empty output folder"
    )


class _UnreadableSignature:
    """As an fn of Python 3.14 whose annotations name what is imported only under
    TYPE_CHECKING: reading its signature evaluates them, and raises NameError."""

    @property
    def __signature__(self) -> inspect.Signature:
        raise NameError("name 'Path' is not defined")

    def __call__(self, input_dir: Path, output_dir: Path) -> dict[str, Path]:
        (output_dir / "o.bin").write_bytes((input_dir / "f").read_bytes())
        return {"o.bin": output_dir / "o.bin"}


def test_an_fn_whose_signature_cannot_be_read_is_taken_unchecked(tmp_path: Path) -> None:
    """Pipeline(fn) raised the NameError on Python 3.14 (helper-97), though calling fn
    works: 3.14 evaluates annotations only when they are read."""
    (tmp_path / "in").write_bytes(b"data")
    pipeline = Pipeline(_UnreadableSignature(), {"into_path": tmp_path / "out"})
    result = pipeline(pd.DataFrame({"id": ["r1"], "f": [tmp_path / "in"]}))
    assert result["o.bin"].tolist() == [str(tmp_path / "out" / "r1" / "o.bin")]
    assert (tmp_path / "out" / "r1" / "o.bin").read_bytes() == b"data"


async def _async_fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
    return {}


class _AsyncCallable:
    async def __call__(self, input_dir: Path, output_dir: Path) -> dict[str, Path]:
        return {}


@pytest.mark.parametrize(
    "fn",
    [_async_fn, _AsyncCallable(), functools.partial(_async_fn)],
    ids=["async-def", "async-callable", "partial"],
)
def test_an_async_fn_is_refused_when_built(fn: Callable[..., Any], tmp_path: Path) -> None:
    # It was accepted, and every row was dropped ("got coroutine"), with a warning that
    # the coroutine was never awaited.
    with pytest.raises(TypeError, match=r"is an async function: .*asyncio\.run\(fn\(i, o\)\)"):
        Pipeline(fn, {"into_path": tmp_path})


def _generator_fn(input_dir: Path, output_dir: Path) -> Any:
    yield {}


async def _async_generator_fn(input_dir: Path, output_dir: Path) -> Any:
    yield {}


class _GeneratorCallable:
    def __call__(self, input_dir: Path, output_dir: Path) -> Any:
        yield {}


@pytest.mark.parametrize(
    "fn",
    [_generator_fn, _async_generator_fn, _GeneratorCallable(), functools.partial(_generator_fn)],
    ids=["generator", "async-generator", "generator-callable", "partial"],
)
def test_a_generator_fn_is_refused_when_built(fn: Callable[..., Any], tmp_path: Path) -> None:
    """helper-129: it was accepted, and every row was dropped ("got generator")."""
    with pytest.raises(TypeError, match=r"is a generator function \(it yields\): calling it"):
        Pipeline(fn, {"into_path": tmp_path})


def test_an_async_fn_behind_a_wrapper_is_named(
    tmp_path: Path,
) -> None:
    @functools.wraps(_async_fn)
    def wrapped(input_dir: Path, output_dir: Path) -> Any:
        return _async_fn(input_dir, output_dir)

    (tmp_path / "in").write_bytes(b"x")
    frame = pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]})
    pipeline = Pipeline(wrapped, {"into_path": tmp_path / "out"})
    assert pipeline(frame).empty
    assert str(pipeline.last_failures[0].error).startswith(
        "fn returned a coroutine, not a mapping of file name to path: fn is async"
    )


def test_an_fn_that_replaces_its_output_dir_or_returns_a_device_leaves_nothing(
    tmp_path: Path, system_tmp: Path
) -> None:
    # A file put where output_dir was stayed in the temporary directory after every row.
    def replace(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        shutil.rmtree(output_dir)
        output_dir.write_bytes(b"in the way")
        return {}

    (tmp_path / "in").write_bytes(b"x")
    frame = pd.DataFrame({"id": ["1", "2"], "f": [tmp_path / "in"] * 2})
    result = Pipeline(replace, {"into_path": tmp_path / "out"}, on_error="raise")(frame)
    assert result["id"].tolist() == ["1", "2"]
    assert list(system_tmp.iterdir()) == []
    # A device is not "not an existing file".
    device = Pipeline(lambda i, o: {"x": "/dev/null"}, {"into_path": tmp_path / "out"})
    assert device(frame).empty
    assert str(device.last_failures[0].error) == (
        "fn returned 'x' -> '/dev/null', which is a device, pipe or socket, not a regular file"
    )
    assert type(device.last_failures[0].error) is OSError
    assert list(system_tmp.iterdir()) == []


class _Callable:
    def __call__(self, input_dir: Path, output_dir: Path) -> dict[str, Path]:
        return {}


@pytest.mark.parametrize(
    "fn",
    [
        lambda *args: {},
        lambda i, o, extra=1: {},
        _Callable(),
        functools.partial(lambda prefix, i, o: {}, "p"),
    ],
    ids=["varargs", "default-third", "callable-object", "partial"],
)
def test_fn_that_takes_two_positional_arguments_is_accepted(
    fn: Callable[..., Any], options: Options, tmp_path: Path
) -> None:
    pipeline = Pipeline(fn, {"into_path": tmp_path}, options, on_error="raise")
    assert pipeline(pd.DataFrame({"id": ["1", "2"], "f": [None, None]}))["id"].tolist() == [
        "1",
        "2",
    ]


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"options": {"endpoint_url": "http://127.0.0.1:1"}}, "Pipeline(options=...)"),
        (
            {"write_options": {"into_path": "s3://bkt/o", "options": {"region_name": "x"}}},
            "Pipeline(write_options={'options': ...})",
        ),
    ],
    ids=["options", "write-options"],
)
def test_options_that_are_not_options_are_refused_when_built(
    kwargs: dict[str, Any], where: str
) -> None:
    """A dict of settings used to fail every row as an AttributeError (all dropped)."""
    with pytest.raises(TypeError) as info:
        Pipeline(**{"fn": upper, "write_options": {"into_path": "s3://bkt/o"}, **kwargs})
    assert str(info.value) == (
        f"{where} must be a file_dataset.Options, got dict "
        "(build one: Options(session_kwargs=..., s3_client_kwargs=...))"
    )


def test_default_options_are_kept(options: Options) -> None:
    assert Pipeline(upper, {"into_path": "s3://bkt/o"}).options == Options()
    pipeline = Pipeline(upper, {"into_path": "s3://bkt/o", "options": options})
    assert pipeline.write_options["options"] is options
    other = Options(max_concurrency=3)
    both = Pipeline(upper, {"into_path": "s3://bkt/o", "options": options}, other)
    assert (both.options, both.write_options["options"]) == (other, options)


def test_options_given_for_the_writes_only_serve_the_downloads_too(
    options: Options, bucket: str, put: Put
) -> None:
    """helper-142, writing from the design notes, gave its Options in write_options
    only: the downloads then took Options() from the environment (no endpoint, no
    credentials in this sealed one) and the call stopped on the first row."""
    frame = pd.DataFrame({"id": ["1", "2"], "f.txt": [put("in/1", b"ab"), put("in/2", b"cd")]})
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out/", "options": options})
    assert pipeline.options is options
    out = pipeline(frame)
    assert out["id"].tolist() == ["1", "2"]
    urls = out["output.mha"].tolist()
    assert urls == [f"s3://{bucket}/out/{i}/output.mha" for i in ("1", "2")]
    assert pipeline.last_failures == []
    blobs = file_dataset.reader(pd.DataFrame({"id": ["1", "2"], "o": urls}), options)
    assert blobs.into_blob_table()["o"].to_pylist() == [b"AB", b"CD"]


def test_default_options_carry_an_endpoint_configured_in_the_environment(
    s3_server: LocalS3Server,
    bucket: str,
    put: Put,
    read_object: ReadObject,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: Options() alone, so copies on Ray workers (which do not see the driver's
    AWS_ENDPOINT_URL_S3) read from and wrote to another server."""
    url = put("in.bin", b"abc")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/env"}, on_error="raise")
    assert pipeline.options.s3_client_kwargs == {"endpoint_url": s3_server.endpoint_url}
    assert pipeline.options.session_kwargs == {}  # credentials are not frozen
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # as on a worker
    copy = pickle.loads(pickle.dumps(pipeline))
    result = copy(pd.DataFrame({"id": ["1"], "f": [url]}))
    assert result["output.mha"].tolist() == [f"s3://{bucket}/env/1/output.mha"]
    assert read_object(f"s3://{bucket}/env/1/output.mha") == b"ABC"


def test_write_options_given_as_a_string_says_what_is_expected() -> None:
    with pytest.raises(TypeError) as info:
        Pipeline(upper, "s3://bkt/o")  # type: ignore[arg-type]
    assert str(info.value) == (
        "write_options must be a mapping such as {'into_path': 's3://bucket/prefix/'}, got str"
    )


@pytest.mark.parametrize("arrow", [False, True])
def test_a_column_of_lists_is_refused_before_any_row(
    arrow: bool, options: Options, tmp_path: Path
) -> None:
    """Before: a list or struct column (from Parquet, say) dropped every row, one by one,
    where reader() refused the frame at once."""
    (tmp_path / "a").write_bytes(b"a")
    table = pa.table({"id": ["r1", "r2"], "f": [str(tmp_path / "a")] * 2, "tags": [["x"], []]})
    frame = table.to_pandas(types_mapper=pd.ArrowDtype if arrow else None)
    calls: list[Path] = []
    pipeline = Pipeline(lambda i, o: calls.append(i) or {}, {"into_path": tmp_path / "out"})
    with pytest.raises(ValueError) as info:
        pipeline(frame)
    kind = "list" if arrow else "ndarray"
    assert str(info.value).startswith(f"column 'tags' holds {kind} values (row id 'r1': ")
    assert str(info.value).endswith("so drop the others first (frame.drop(columns=['tags']))")
    assert calls == []


def test_a_metadata_column_is_refused_whole_whatever_the_order_of_its_rows(
    tmp_path: Path,
) -> None:
    """Parquet's date32 and decimal columns arrive as object columns of date and Decimal:
    every row was dropped, one by one. A column with some paths is read cell by cell
    (a number there drops its row), wherever the number is."""
    import datetime
    import decimal

    (tmp_path / "a").write_bytes(b"a")
    source = str(tmp_path / "a")
    pipeline = Pipeline(lambda i, o: {"b": i / "f"}, {"into_path": tmp_path / "out"})
    for label, shown in [
        ([None, datetime.date(2024, 1, 2), datetime.date(2024, 1, 3)], "date"),
        ([decimal.Decimal("1.5")] * 3, "Decimal"),
    ]:
        frame = pd.DataFrame({"id": ["r1", "r2", "r3"], "f": [source] * 3})
        frame["label"] = pd.Series(label, dtype=object)
        with pytest.raises(file_dataset.InvalidInputError) as info:
            pipeline(frame)
        assert str(info.value).startswith(f"column 'label' holds {shown} values (row id ")
    assert not (tmp_path / "out").exists()
    for cells in ([0, source, source], [source, source, 0]):
        frame = pd.DataFrame({"id": ["r1", "r2", "r3"], "f": pd.Series(cells, dtype=object)})
        out = pipeline(frame)
        assert len(out) == 2
        assert [failure.stage for failure in pipeline.last_failures] == ["read"]


def test_string_view_ids_come_back_whole_when_a_row_is_dropped(
    options: Options, tmp_path: Path
) -> None:
    """Before: with string_view ids (read_parquet(dtype_backend="pyarrow") may give
    them) and a dropped row, the call raised pyarrow's ArrowNotImplementedError after
    every row was written, and the frame mapping ids to outputs was lost."""
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(b"fail" if name == "b" else name.encode())
    table = pa.table(
        {
            "id": pa.array(["a", "b", "c"], pa.string_view()),
            "f": pa.array([str(tmp_path / n) for n in "abc"], pa.string_view()),
        }
    )
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    result = Pipeline(upper, {"into_path": tmp_path / "out"}, options)(frame)
    assert result["id"].dtype == frame["id"].dtype
    assert pa.array(result["id"].array).to_pylist() == ["a", "c"]
    assert list(result["output.mha"]) == [str(tmp_path / "out" / n / "output.mha") for n in "ac"]
    assert (tmp_path / "out" / "c" / "output.mha").read_bytes() == b"C"


def test_write_options_without_into_path_name_the_keys_given_instead() -> None:
    with pytest.raises(ValueError) as info:
        Pipeline(upper, {"into": "s3://bkt/o"})
    assert str(info.value) == "write_options needs an 'into_path' (unknown keys: ['into'])"
    with pytest.raises(ValueError) as info:
        Pipeline(upper, {"into_path": "s3://bkt/o", "option": None, 1: None})
    settings = (
        "(write_options takes 'into_path' and 'options'; the writes' settings, such as "
        "upload_args or part_size, go in 'options': Options(upload_args={...}))"
    )
    assert str(info.value) == f"unknown write_options: [1, 'option'] {settings}"
    # Before: no word of where upload_args go (helper-87, migrating from ExtraArgs).
    with pytest.raises(ValueError) as info:
        Pipeline(upper, {"into_path": "s3://bkt/o", "upload_args": {"StorageClass": "GLACIER"}})
    assert str(info.value) == f"unknown write_options: ['upload_args'] {settings}"


def test_a_single_row_without_an_id_is_refused_as_a_row(
    options: Options, tmp_path: Path, put: Put
) -> None:
    calls: list[Path] = []
    pipeline = Pipeline(lambda i, o: calls.append(i), {"into_path": tmp_path / "out"}, options)
    with pytest.raises(ValueError) as info:
        pipeline({"image.mha": put("a", b"a")})
    assert str(info.value) == (
        "a row given to a Pipeline needs an 'id': its outputs are written under "
        "<into_path>/<id>/ (the row has ['image.mha'])"
    )
    assert calls == []


def test_an_output_named_id_fails_its_row_before_anything_is_written(
    options: Options, bucket: str, s3_client: Any, put: Put
) -> None:
    """``id`` is the output's row id column: an output file of that name would clash
    with it. Only the row that returns one is dropped, and it writes nothing."""

    def named_id(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        out = output_dir / "s"
        out.write_bytes((input_dir / "f").read_bytes())
        return {"id": out, "ok.bin": out} if out.read_bytes() == b"2" else {"ok.bin": out}

    pipeline = Pipeline(named_id, {"into_path": f"s3://{bucket}/out"}, options)
    frame = pd.DataFrame(
        {"id": ["1", "2", "3"], "f": [put(f"k{i}", str(i).encode()) for i in (1, 2, 3)]}
    )
    result = pipeline(frame)
    assert result["id"].tolist() == ["1", "3"]
    assert result["ok.bin"].tolist() == [
        f"s3://{bucket}/out/1/ok.bin",
        f"s3://{bucket}/out/3/ok.bin",
    ]
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix="out/")
    assert sorted(o["Key"] for o in listing["Contents"]) == ["out/1/ok.bin", "out/3/ok.bin"]
    (failure,) = pipeline.last_failures
    assert (failure.id, failure.stage) == ("2", "fn")
    assert "fn returned an output named 'id', which is reserved" in str(failure.error)


@pytest.mark.parametrize(
    "url", ["s3://out-bucket/results/x.mha", "gs://b/k", "https://host/x?a=1&b=2"]
)
def test_fn_returning_a_url_fails_the_row_showing_the_url(
    url: str, options: Options, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The URL used to be shown mangled by Path ('s3:/b/k') as 'not an existing file'."""
    pipeline = Pipeline(lambda i, o: {"x.mha": url}, {"into_path": tmp_path / "out"}, options)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        result = pipeline(pd.DataFrame({"id": ["r1"], "f": [None]}))
    assert len(result) == 0
    [failure] = pipeline.last_failures
    assert (failure.id, failure.stage) == ("r1", "fn")
    assert isinstance(failure.error, ValueError)
    assert str(failure.error) == (
        f"fn returned 'x.mha' -> {url!r}, a URL; outputs must be local files written by fn "
        "(in output_dir), which the Pipeline then writes to into_path"
    )
    assert "'r1'" in caplog.text
    assert repr(url) in caplog.text
    assert not (tmp_path / "out").exists()


def test_fn_returning_a_url_with_credentials_shows_them_masked(
    options: Options, tmp_path: Path
) -> None:
    url = f"s3://user:{CANARY_SECRET}@b/k"
    pipeline = Pipeline(lambda i, o: {"x": url}, {"into_path": tmp_path}, options)
    pipeline(pd.DataFrame({"id": ["1"], "f": [None]}))
    message = str(pipeline.last_failures[0].error)
    assert CANARY_SECRET not in message
    assert "'s3://***@b/k', a URL" in message


@pytest.mark.parametrize(
    ("value", "type_name"), [(5, "an int"), (b"/tmp/out", "a bytes"), (["a"], "a list")]
)
def test_fn_returning_a_value_that_is_not_a_path_names_the_output_and_type(
    value: Any, type_name: str, options: Options, tmp_path: Path
) -> None:
    def odd(input_dir: Path, output_dir: Path) -> dict[str, Any]:
        (output_dir / "ok").write_bytes(b"ok")
        return {"ok.bin": output_dir / "ok", "odd.bin": value}

    pipeline = Pipeline(odd, {"into_path": tmp_path / "out"}, options, on_error="raise")
    with pytest.raises(TypeError) as info:
        pipeline(pd.DataFrame({"id": ["7"], "f": [None]}))
    assert str(info.value) == (
        f"fn returned 'odd.bin' -> {type_name}; an output must be the local path "
        "(str or os.PathLike) of a file that fn wrote"
    )
    assert not (tmp_path / "out").exists()


def test_fn_returning_a_file_url_writes_that_local_file(
    options: Options, bucket: str, put: Put, read_object: ReadObject
) -> None:
    """``file://`` URLs are local paths, as in ``write_files``."""

    def as_file_url(input_dir: Path, output_dir: Path) -> dict[str, str]:
        out = output_dir / "out.bin"
        out.write_bytes((input_dir / "f").read_bytes()[::-1])
        return {"out.bin": out.as_uri()}

    pipeline = Pipeline(as_file_url, {"into_path": f"s3://{bucket}/o"}, options, on_error="raise")
    result = pipeline(pd.DataFrame({"id": ["1"], "f": [put("in", b"abc")]}))
    assert result["out.bin"].tolist() == [f"s3://{bucket}/o/1/out.bin"]
    assert read_object(f"s3://{bucket}/o/1/out.bin") == b"cba"


def test_an_fn_error_without_a_message_is_logged_by_its_type(
    options: Options, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: "(fn failed): " and nothing else for a bare assert; "'a'" for a KeyError."""

    def check(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        if (input_dir / "f").read_bytes() == b"k":
            return {"x": {}["a"]}
        raise AssertionError

    (tmp_path / "in1").write_bytes(b"k")
    (tmp_path / "in2").write_bytes(b"z")
    frame = pd.DataFrame({"id": ["1", "2"], "f": [tmp_path / "in1", tmp_path / "in2"]})
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        result = Pipeline(check, {"into_path": tmp_path / "out"}, options)(frame)
    assert len(result) == 0
    line = check.__code__.co_firstlineno
    assert [r.getMessage() for r in caplog.records] == [
        # where it was raised, as under Ray this line is all the driver sees of it
        "file_dataset.Pipeline dropped row id '1' (fn failed): KeyError: 'a' "
        f"(raised at {__file__}:{line + 2} in check)",
        "file_dataset.Pipeline dropped row id '2' (fn failed): AssertionError "
        f"(raised at {__file__}:{line + 3} in check)",
        "file_dataset.Pipeline wrote 0 of 2 rows and dropped 2 (fn: 2); their ids and errors "
        "are on Pipeline.last_failures",
    ]


def test_a_relative_output_path_is_in_output_dir(
    options: Options, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: looked up in the working directory, where a stale file was sent instead."""

    def relative(input_dir: Path, output_dir: Path) -> dict[str, str]:
        (output_dir / "out.txt").write_bytes((input_dir / "f").read_bytes() * 2)
        return {"out.txt": "out.txt"}

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.txt").write_bytes(b"STALE FILE IN THE WORKING DIRECTORY")
    (tmp_path / "in").write_bytes(b"ab")
    pipeline = Pipeline(relative, {"into_path": tmp_path / "out"}, options, on_error="raise")
    result = pipeline(pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]}))
    assert result["out.txt"].tolist() == [str(tmp_path / "out" / "1" / "out.txt")]
    assert (tmp_path / "out" / "1" / "out.txt").read_bytes() == b"abab"


@pytest.mark.parametrize(
    "linked", [None, "symlink", "hard link"], ids=["outside", "link-to-outside", "hard-link"]
)
def test_an_output_outside_output_dir_is_sent_before_fn_runs_again(
    linked: str | None,
    options: Options,
    bucket: str,
    put: Put,
    read_object: ReadObject,
    tmp_path: Path,
) -> None:
    """fn may rewrite a fixed scratch file on its next call: that row's upload goes first.

    Before, the upload overlapped the next fn call and could send the next row's
    bytes (or an empty file, or none) for a row reported as written.
    """
    scratch = tmp_path / "scratch"
    seen: list[str] = []

    def tool(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        if seen:  # the previous row's output is complete on S3 before this call
            previous = seen[-1]
            assert read_object(f"s3://{bucket}/o/{previous}/out.bin") == previous.encode() * 1000
        row = (input_dir / "f").read_bytes().decode()
        seen.append(row)
        if linked == "hard link":  # rewritten in place: the same file under two names
            scratch.mkdir(exist_ok=True)
            (scratch / "out.bin").write_bytes(row.encode() * 1000)
            os.link(scratch / "out.bin", output_dir / "out.bin")
            return {"out.bin": output_dir / "out.bin"}
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir()
        (scratch / "out.bin").write_bytes(row.encode() * 1000)
        if linked == "symlink":
            (output_dir / "out.bin").symlink_to(scratch / "out.bin")
            return {"out.bin": output_dir / "out.bin"}
        return {"out.bin": scratch / "out.bin"}

    ids = [f"r{i:02}" for i in range(8)]
    frame = pd.DataFrame({"id": ids, "f": [put(f"in/{i}", i.encode()) for i in ids]})
    pipeline = Pipeline(tool, {"into_path": f"s3://{bucket}/o"}, options, on_error="raise")
    result = pipeline(frame)
    assert seen == ids
    assert result["id"].tolist() == ids
    assert {i: read_object(u) for i, u in zip(ids, result["out.bin"], strict=True)} == {
        i: i.encode() * 1000 for i in ids
    }


def test_a_hard_link_to_an_input_keeps_the_upload_overlapping_the_next_fn(
    options: Options, put: Put, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard link whose every name is in the row's own folders (an input linked into
    output_dir) cannot be rewritten by the next fn call. Every hard link used to be
    sent before fn ran again, so such a fn lost the overlap of its uploads with the
    next row (the benchmark's Pipeline, which links its inputs, went from 1.15 to 1.9
    times max(I/O, compute)). Here row r0's upload waits until fn has been called for
    r1: it could not, before."""
    import threading

    import file_dataset._pipeline

    second_call = threading.Event()
    waited: list[bool] = []
    write = file_dataset._pipeline.write_files

    def gated(outputs: Any, into_path: Any, row_id: Any, options: Any) -> Any:
        if row_id == "r0":
            waited.append(second_call.wait(timeout=10))  # a guard: fails, not hangs
        return write(outputs, into_path, row_id, options)

    monkeypatch.setattr(file_dataset._pipeline, "write_files", gated)

    def link(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        if (input_dir / "f").read_bytes() == b"r1":
            second_call.set()
        os.link(input_dir / "f", output_dir / "g")
        return {"g": output_dir / "g"}

    ids = ["r0", "r1", "r2"]
    frame = pd.DataFrame({"id": ids, "f": [put(f"in/{i}", i.encode()) for i in ids]})
    pipeline = Pipeline(link, {"into_path": tmp_path / "out"}, options, on_error="raise")
    assert pipeline(frame)["id"].tolist() == ids
    assert waited == [True]
    assert [(tmp_path / "out" / i / "g").read_bytes() for i in ids] == [b"r0", b"r1", b"r2"]


def test_output_name_escaping_is_a_failed_row(options: Options, tmp_path: Path) -> None:
    def escape(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        (output_dir / "x").write_bytes(b"x")
        return {"../escaped": output_dir / "x"}

    pipeline = Pipeline(escape, {"into_path": tmp_path / "out"}, options)
    result = pipeline(pd.DataFrame({"id": ["1"], "f": [None]}))
    assert len(result) == 0
    assert isinstance(pipeline.last_failures[0].error, ValueError)
    assert not (tmp_path / "escaped").exists()
    assert not (tmp_path / "out").exists()


# --- one Pipeline, several threads --------------------------------------------------


def test_one_pipeline_called_from_several_threads_keeps_each_calls_failures_and_bar(
    options: Options,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    terminal: None,
    put: Put,
    read_object: ReadObject,
) -> None:
    """Four threads call one Pipeline at once, each on its own rows: each sees its own
    outputs, its own ``last_failures`` and its own progress bar."""
    chunks = [[f"t{t}-r{i}" for i in range(3 + t)] for t in range(4)]  # 3, 4, 5, 6 rows
    failing = [chunk[1::2] for chunk in chunks]  # never a chunk's first row
    poisoned = {row_id for rows in failing for row_id in rows}
    first_rows = {chunk[0] for chunk in chunks}
    # Every call waits here on its first row, so all four are under way at once before
    # any row fails or any bar moves.
    all_started = threading.Barrier(len(chunks), timeout=60)

    def mirror(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        row_id = (input_dir / "f").read_text()
        if row_id in first_rows:
            all_started.wait()
        if row_id in poisoned:
            raise RuntimeError(f"row {row_id} is poisoned")
        out = output_dir / "out.bin"
        out.write_bytes(row_id.encode()[::-1])
        return {"out.bin": out}

    pipeline = Pipeline(mirror, {"into_path": f"s3://{bucket}/out"}, options, progress=True)

    def run(frame: pd.DataFrame, failing_ids: list[str]) -> None:
        chunk = frame["id"].tolist()
        result = pipeline(frame)
        kept = [row_id for row_id in chunk if row_id not in failing_ids]
        assert result["id"].tolist() == kept
        assert result["out.bin"].tolist() == [f"s3://{bucket}/out/{i}/out.bin" for i in kept]
        for row_id in (kept[0], kept[-1]):
            assert read_object(f"s3://{bucket}/out/{row_id}/out.bin") == row_id.encode()[::-1]
        assert [(f.id, f.stage) for f in pipeline.last_failures] == [
            (row_id, "fn") for row_id in failing_ids
        ]
        assert all(isinstance(f.error, RuntimeError) for f in pipeline.last_failures)

    frames = [
        pd.DataFrame({"id": chunk, "f": [put(f"in/{i}", i.encode()) for i in chunk]})
        for chunk in chunks
    ]
    with concurrent.futures.ThreadPoolExecutor(len(chunks)) as callers:
        calls = [callers.submit(run, c, f) for c, f in zip(frames, failing, strict=True)]
        for call in calls:
            call.result()
    assert pipeline.last_failures == []  # this thread made no call
    err = capsys.readouterr().err
    for chunk, failing_ids in zip(chunks, failing, strict=True):
        n = len(chunk)
        assert re.search(rf"100%\|[^|]*\| {n}/{n} \[[^\]]*dropped={len(failing_ids)}\]", err)
    counts = re.findall(r"(\d+)/(\d+) \[", err)
    assert counts
    assert all(int(done) <= int(total) for done, total in counts)


def test_last_failures_is_per_thread_and_read_only(options: Options, bucket: str, put: Put) -> None:
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out"}, options)
    seen: list[list[file_dataset.RowFailure]] = []
    before = threading.Thread(target=lambda: seen.append(pipeline.last_failures))
    before.start()
    before.join()
    frame = pd.DataFrame({"id": ["ok", "bad"], "f": [put("ok", b"ok"), put("bad", b"fail")]})
    assert pipeline(frame)["id"].tolist() == ["ok"]
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("bad", "fn")]
    after = threading.Thread(target=lambda: seen.append(pipeline.last_failures))
    after.start()
    after.join()
    assert seen == [[], []]  # threads that made no call
    assert [f.id for f in pipeline.last_failures] == ["bad"]  # still this thread's
    with pytest.raises(AttributeError):
        pipeline.last_failures = []  # type: ignore[misc]


# --- pickling and repr ------------------------------------------------------------------


@pytest.mark.parametrize(
    "round_trip",
    [
        lambda p: pickle.loads(pickle.dumps(p)),
        lambda p: cloudpickle.loads(cloudpickle.dumps(p)),
    ],
    ids=["pickle", "cloudpickle"],
)
def test_pickled_pipeline_works(
    round_trip: Callable[[Pipeline], Pipeline],
    images: pd.DataFrame,
    options: Options,
    bucket: str,
    put: Put,
    read_object: ReadObject,
) -> None:
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/pickled"}, options)
    poisoned = pd.DataFrame({"id": ["bad"], "image.mha": [put("poisoned.mha", b"fail")]})
    pipeline(pd.concat([images.iloc[:1], poisoned]))  # live clients and failures stay here
    assert [f.id for f in pipeline.last_failures] == ["bad"]
    copy = round_trip(pipeline)
    assert copy.options == options
    assert copy.write_options == pipeline.write_options
    assert copy.on_error == "drop"
    assert copy.last_failures == []
    result = copy(pd.concat([images, poisoned]))
    assert outputs(result, read_object, "output.mha") == {"1": b"IMG1", "2": b"IMG2", "3": b"IMG3"}
    assert [f.id for f in copy.last_failures] == ["bad"]
    assert [f.id for f in pipeline.last_failures] == ["bad"]  # the original's own call


def test_pipeline_from_an_older_pickle_works(
    images: pd.DataFrame, options: Options, bucket: str, read_object: ReadObject
) -> None:
    """Older pickles carry ``last_failures`` and ``_bar`` (or lack ``progress``)."""
    for extra in ({"last_failures": [], "_bar": None, "progress": False}, {"last_failures": []}):
        old = Pipeline.__new__(Pipeline)
        old.__setstate__(
            {
                "fn": upper,
                "write_options": {"into_path": f"s3://{bucket}/old"},
                "options": options,
                "on_error": "drop",
                **extra,
            }
        )
        assert old.last_failures == []
        assert old.progress is False
        result = old(images)
        assert outputs(result, read_object, "output.mha") == {
            "1": b"IMG1",
            "2": b"IMG2",
            "3": b"IMG3",
        }
        assert pickle.loads(pickle.dumps(old)).last_failures == []


def test_cloudpickled_pipeline_with_closure(options: Options, tmp_path: Path) -> None:
    suffix = b"!"

    def shout(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        (output_dir / "o").write_bytes((input_dir / "f").read_bytes() + suffix)
        return {"o": output_dir / "o"}

    (tmp_path / "in").write_bytes(b"hey")
    copy = cloudpickle.loads(cloudpickle.dumps(Pipeline(shout, {"into_path": tmp_path}, options)))
    result = copy(pd.DataFrame({"id": ["1"], "f": [tmp_path / "in"]}))
    assert Path(result["o"][0]).read_bytes() == b"hey!"


def test_repr_has_no_secret(s3_server: LocalS3Server) -> None:
    options = Options(
        {"aws_access_key_id": "id", "aws_secret_access_key": CANARY_SECRET},
        {"endpoint_url": s3_server.endpoint_url},
    )
    pipeline = Pipeline(upper, {"into_path": "s3://bkt/out", "options": options}, options)
    assert CANARY_SECRET not in repr(pipeline)
    assert CANARY_SECRET not in str(pipeline)
    assert "upper" in repr(pipeline)
    assert "s3://bkt/out" in repr(pipeline)


def test_exports_row_failure() -> None:
    assert file_dataset.RowFailure("1", "fn", ValueError("x")).stage == "fn"


def _done_ids(
    options: Options, into_path: str | Path, names: list[str], since: Any = None
) -> set[str]:
    """The README's way ("Resuming a long job")."""
    return file_dataset.written_ids(into_path, names, options, since=since)


def test_resuming_counts_only_outputs_written_since_the_job_began(
    options: Options, bucket: str, tmp_path: Path
) -> None:
    """A rerun of a changed fn into the same into_path, killed part-way, left a row with
    one output of each version, which the README's recipe without ``since`` counted
    as done (helper-99)."""
    frame = pd.DataFrame({"id": [1, 2], "f": [None, None]})

    def version(tag: bytes) -> Callable[[Path, Path], dict[str, Path]]:
        def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
            for name in ("a", "b"):
                (output_dir / name).write_bytes(tag)
            return {"a": output_dir / "a", "b": output_dir / "b"}

        return fn

    began = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    for into in (f"s3://{bucket}/since/out", tmp_path / "out"):
        assert len(Pipeline(version(b"v1"), {"into_path": into}, options)(frame)) == 2
        # a job that began after these were written counts none of them
        rerun = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
        assert _done_ids(options, into, ["a", "b"]) == {"1", "2"}
        assert _done_ids(options, into, ["a", "b"], began) == {"1", "2"}
        assert _done_ids(options, into, ["a", "b"], rerun) == set()
    # row 2 as if that rerun had been killed after its first output (local mtimes)
    later = rerun.timestamp() + 1
    for row_id, names in (("1", ("a", "b")), ("2", ("a",))):
        for name in names:
            os.utime(tmp_path / "out" / row_id / name, (later, later))
    assert _done_ids(options, tmp_path / "out", ["a", "b"]) == {"1", "2"}
    assert _done_ids(options, tmp_path / "out", ["a", "b"], rerun) == {"1"}
    assert _done_ids(options, f"file://{tmp_path}/out/", ["a", "b"], rerun) == {"1"}
    # a first run: nothing there yet (it raised FileNotFoundError; helper-100)
    assert _done_ids(options, tmp_path / "never-written", ["a"]) == set()


def test_resuming_reruns_only_rows_not_done(
    options: Options, bucket: str, put: Callable[[str, bytes], str], tmp_path: Path
) -> None:
    frame = pd.DataFrame(
        {"id": [1, 2, 3, 4], "f": [put(f"resume/in/{i}", b"in%d" % i) for i in range(1, 5)]}
    )
    runs: list[bytes] = []
    failing = {b"in3"}

    def two_outputs(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        data = (input_dir / "f").read_bytes()
        runs.append(data)
        if data in failing:
            raise RuntimeError("flaky")
        (output_dir / "a").write_bytes(data + b"-a")
        (output_dir / "b").write_bytes(data + b"-b")
        return {"a": output_dir / "a", "b": output_dir / "b"}

    into = f"s3://{bucket}/resume/out/"
    pipeline = Pipeline(two_outputs, {"into_path": into}, options)
    assert pipeline(frame)["id"].tolist() == [1, 2, 4]
    # row 4 as if its upload had failed after its first output
    options.s3_client().delete_object(Bucket=bucket, Key="resume/out/4/b")
    assert _done_ids(options, into, ["a", "b"]) == {"1", "2"}
    assert _done_ids(options, into.rstrip("/"), ["a"]) == {"1", "2", "4"}
    todo = frame[~frame["id"].astype(str).isin(_done_ids(options, into, ["a", "b"]))]
    runs.clear()
    failing.clear()
    assert pipeline(todo)["id"].tolist() == [3, 4]
    assert sorted(runs) == [b"in3", b"in4"]
    assert _done_ids(options, into, ["a", "b"]) == {"1", "2", "3", "4"}
    got = (
        file_dataset.reader({"a": f"{into}3/a", "b": f"{into}4/b"}, options)
        .into_blob_table()
        .to_pylist()
    )
    assert got == [{"a": b"in3-a", "b": b"in4-b"}]


@pytest.mark.parametrize("transport", ["auto", "boto3"])
@pytest.mark.parametrize("stage", ["read", "write"])
def test_no_credentials_at_all_ends_the_call_instead_of_dropping_every_row(
    s3_server: LocalS3Server,
    bucket: str,
    put: Callable[[str, bytes], str],
    tmp_path: Path,
    transport: str,
    stage: str,
) -> None:
    """Before: every row was dropped (a million-row job "finished" with nothing written)."""
    nobody = Options(
        session_kwargs={"region_name": "us-east-1"},
        s3_client_kwargs={"endpoint_url": s3_server.endpoint_url},
        transport=transport,
    )
    local = tmp_path / "in.bin"
    local.write_bytes(b"x")
    if stage == "read":
        cells = [put(f"nocreds/{i}", b"x") for i in range(3)]
        pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, nobody)
    else:
        cells = [str(local)] * 3
        pipeline = Pipeline(
            upper, {"into_path": f"s3://{bucket}/nocreds-out", "options": nobody}, nobody
        )
    frame = pd.DataFrame({"id": ["r0", "r1", "r2"], "f": cells})
    with pytest.raises(file_dataset.TransferError) as raised:
        pipeline(frame)
    assert "NoCredentialsError: Unable to locate credentials" in str(raised.value)
    assert raised.value.row_id == "r0"
    notes = "".join(raised.value.__notes__)
    assert "no credentials were found" in notes
    assert "options=Options.default() carries the driver's credentials" in notes  # h-108
    assert [failure.id for failure in pipeline.last_failures] == ["r0"]
    assert not list(tmp_path.glob("out/*"))


class _RefusingSomeReads(http.server.BaseHTTPRequestHandler):
    """Answers a GET of ``s3://bkt/<key>`` by key: ``ok*`` with the key's bytes (206 to a
    ranged GET), ``denied``
    with 403 AccessDenied (one object's permissions), ``refused`` with ``code``."""

    code = "ExpiredToken"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        key = self.path.split("?")[0].rsplit("/", 1)[-1]
        if key.startswith("ok"):
            status, body = 200, key.encode()
        else:
            code = "AccessDenied" if key == "denied" else self.code
            status = 403 if code in ("AccessDenied", "InvalidAccessKeyId") else 400
            body = f"<Error><Code>{code}</Code><Message>No.</Message></Error>".encode()
        ranged = status == 200 and self.headers.get("Range")
        self.send_response(206 if ranged else status)
        self.send_header("Content-Length", str(len(body)))
        if status == 200:  # the first bytes asked for are the whole object
            self.send_header("ETag", '"e"')
            if ranged:
                self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
@pytest.mark.parametrize("code", ["ExpiredToken", "InvalidAccessKeyId"])
def test_credentials_that_s3_refuses_part_way_end_the_call(
    transport: str,
    code: str,
    tmp_path: Path,
    system_tmp: Path,
    fake_s3_options: Callable[..., Options],
) -> None:
    """Before: expired (or unknown) credentials dropped every remaining row, quickly (a
    helper saw 28 of 30 rows go in 1.5 s), and the call returned as if done. A refusal of
    one object (AccessDenied) still drops its row alone."""

    class Handler(_RefusingSomeReads):
        pass

    Handler.code = code
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = fake_s3_options(server.server_address[1], transport)
    keys = ["ok1", "denied", "ok2", "refused", "ok3"]
    frame = pd.DataFrame(
        {"id": ["p1", "p2", "p3", "p4", "p5"], "f": [f"s3://bkt/{k}" for k in keys]}
    )
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    try:
        with pytest.raises(file_dataset.ObjectAccessDeniedError) as raised:
            pipeline(frame)
    finally:
        server.shutdown()
        server.server_close()
    error = raised.value
    assert (error.row_id, error.url, error.credentials_failed) == ("p4", "s3://bkt/refused", True)
    assert f"access denied ({code}: No.)" in str(error)
    assert "the credentials failed" in "".join(error.__notes__)
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("p2", "read"), ("p4", "read")]
    assert not pipeline.last_failures[0].error.credentials_failed  # one object's refusal
    written = {p.parent.name: p.read_bytes() for p in (tmp_path / "out").glob("*/output.mha")}
    assert written.items() <= {"p1": b"OK1", "p3": b"OK2"}.items()
    assert "p5" not in written
    assert list(system_tmp.iterdir()) == []


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_credentials_that_fail_to_load_end_the_call(
    s3_server: LocalS3Server,
    put: Callable[[str, bytes], str],
    tmp_path: Path,
    broken_profile: str,
    transport: str,
) -> None:
    """Before: a credential_process that fails dropped every row, each with botocore's
    CredentialRetrievalError, and the call returned an empty frame."""
    broken = Options(
        {"profile_name": broken_profile},
        {"endpoint_url": s3_server.endpoint_url},
        transport=transport,
        max_attempts=1,
    )
    cells = [put(f"broken/{i}", b"x") for i in range(3)]
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, broken)
    with pytest.raises(file_dataset.TransferError) as raised:
        pipeline(pd.DataFrame({"id": ["r0", "r1", "r2"], "f": cells}))
    assert "CredentialRetrievalError" in str(raised.value)
    assert (raised.value.row_id, raised.value.credentials_failed) == ("r0", True)
    assert "the credentials failed" in "".join(raised.value.__notes__)
    assert [failure.id for failure in pipeline.last_failures] == ["r0"]
    assert not list(tmp_path.glob("out/*"))


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_a_profile_named_by_the_environment_that_is_not_there_ends_the_call(
    s3_server: LocalS3Server,
    put: Callable[[str, bytes], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    """AWS_PROFILE naming no profile, with options built by hand (checked only at the
    first transfer): every row was dropped with ProfileNotFound (helper-111)."""
    cells = [put(f"ghost/{i}", b"x") for i in range(3)]
    options = Options(
        s3_client_kwargs={"endpoint_url": s3_server.endpoint_url}, transport=transport
    )
    monkeypatch.setenv("AWS_PROFILE", "ghost")
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    with pytest.raises(file_dataset.TransferError) as raised:
        pipeline(pd.DataFrame({"id": ["r0", "r1", "r2"], "f": cells}))
    assert "ProfileNotFound: The config profile (ghost) could not be found" in str(raised.value)
    assert (raised.value.row_id, raised.value.credentials_failed) == ("r0", True)
    assert [failure.id for failure in pipeline.last_failures] == ["r0"]


def test_a_call_that_stops_says_how_many_rows_it_wrote(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a raising call said nothing of the rows it had written (up to three of
    them were still uploading when fn raised)."""
    for i in range(6):
        (tmp_path / f"in{i}").write_bytes(b"ok" if i != 4 else b"fail")
    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(6)], "f": [tmp_path / f"in{i}" for i in range(6)]}
    )
    frame.loc[1, "f"] = tmp_path / "missing"  # dropped at its download
    into = tmp_path / "out"
    pipeline = Pipeline(upper, {"into_path": into}, Options(), on_error="raise")
    with pytest.raises(file_dataset.ObjectNotFoundError) as first:
        pipeline(frame)
    assert first.value.__notes__[-1] == (
        "file_dataset.Pipeline stopped after writing 1 of 6 rows: the rows written stay written"
    )
    frame = frame.drop(index=1)
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="file_dataset"),
        pytest.raises(RuntimeError) as raised,
    ):
        pipeline(frame)
    text = "file_dataset.Pipeline stopped after writing 3 of 5 rows: the rows written stay written"
    assert raised.value.__notes__ == ["file_dataset.Pipeline: fn failed on row id 'r4'", text]
    assert [r.getMessage() for r in caplog.records] == [
        f"{text} (RuntimeError: this row is poisoned)"
    ]
    assert sorted(p.name for p in into.iterdir()) == ["r0", "r2", "r3"]


_SHARED_ERROR = RuntimeError("one object for every call")


def test_the_raised_at_suffix_names_fns_own_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a built-in fn (os.link) was said to raise in the Pipeline's own code,
    and a library's failure (json.loads) named the library's line, not fn's."""
    import json

    (tmp_path / "in").write_bytes(b"not json")
    frame = pd.DataFrame({"id": ["r1"], "f": [tmp_path / "in"]})

    def parse(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        json.loads((input_dir / "f").read_text())
        return {}

    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        Pipeline(os.link, {"into_path": tmp_path / "out"})(frame)  # folders: EPERM, EEXIST
        Pipeline(parse, {"into_path": tmp_path / "out"})(frame)
    mkdir_line, _, parse_line, _ = caplog.messages
    assert mkdir_line.startswith(
        "file_dataset.Pipeline dropped row id 'r1' (fn failed): FileExistsError"
    )
    assert "raised at" not in mkdir_line
    assert parse_line.startswith(
        "file_dataset.Pipeline dropped row id 'r1' (fn failed): JSONDecodeError"
    )
    assert parse_line.endswith(
        f" (raised at {__file__}:{parse.__code__.co_firstlineno + 1} in parse)"
    )


def test_notes_of_one_exception_raised_in_every_call_do_not_pile_up(tmp_path: Path) -> None:
    """An fn raising one module-level exception object got two more notes per call."""
    (tmp_path / "in").write_bytes(b"x")
    frame = pd.DataFrame({"id": ["r1"], "f": [tmp_path / "in"]})

    def fail(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        raise _SHARED_ERROR

    pipeline = Pipeline(fail, {"into_path": tmp_path / "out"}, on_error="raise")
    for row_id in ("r1", "r2", "r3"):
        with pytest.raises(RuntimeError):
            pipeline(frame.assign(id=[row_id]))
    assert _SHARED_ERROR.__notes__ == [
        "file_dataset.Pipeline: fn failed on row id 'r3'",
        "file_dataset.Pipeline stopped after writing 0 of 1 rows: the rows written stay written",
    ]


def test_a_stop_at_an_upload_says_the_row_may_be_written_in_part(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"x")
    frame = pd.DataFrame({"id": ["r1"], "f": [tmp_path / "in"]})

    def two(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        for name in ("a.txt", "b.txt"):
            (output_dir / name).write_bytes(name.encode())
        return {"a.txt": output_dir / "a.txt", "b.txt": output_dir / "b.txt"}

    (tmp_path / "out" / "r1" / "b.txt").mkdir(parents=True)  # b.txt cannot be written
    with pytest.raises(file_dataset.TransferError) as raised:
        Pipeline(two, {"into_path": tmp_path / "out"}, on_error="raise")(frame)
    assert raised.value.__notes__[-1] == (
        "file_dataset.Pipeline stopped after writing 0 of 1 rows: the rows written stay "
        "written (a row that failed at its upload may have some of its outputs written)"
    )
    assert (tmp_path / "out" / "r1" / "a.txt").read_bytes() == b"a.txt"
    # a row of one output cannot be written in part: not said (helper-113)
    (tmp_path / "one" / "r1" / "a.txt").mkdir(parents=True)
    with pytest.raises(file_dataset.TransferError) as raised:
        Pipeline(
            lambda i, o: two(i, o) and {"a.txt": o / "a.txt"},
            {"into_path": tmp_path / "one"},
            on_error="raise",
        )(frame)
    assert raised.value.__notes__[-1] == (
        "file_dataset.Pipeline stopped after writing 0 of 1 rows: the rows written stay written"
    )


def test_a_call_of_the_same_pipeline_inside_fn_keeps_the_outer_failures(tmp_path: Path) -> None:
    """last_failures showed the inner call's failures after the outer call returned
    (helper-118)."""
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        value = (input_dir / "x").read_text()
        if value == "a":  # an inner call with a row that fails
            pipeline(pd.DataFrame({"id": ["inner"], "x": [str(tmp_path / "missing")]}))
        if value == "b":
            raise RuntimeError("row b fails")
        (output_dir / "y").write_text(value)
        return {"y": output_dir / "y"}

    pipeline = Pipeline(fn, {"into_path": tmp_path / "out"})
    frame = pd.DataFrame({"id": ["a", "b", "c"], "x": [str(tmp_path / n) for n in "abc"]})
    assert list(pipeline(frame)["id"]) == ["a", "c"]
    assert [failure.id for failure in pipeline.last_failures] == ["b"]


_EXITING_CHILD = """
import sys, threading
exiting = threading.Event()
# registered before concurrent.futures is imported: called after its exit hook has ended
# every thread pool, before the interpreter waits for the thread below
threading._register_atexit(exiting.set)
import pandas as pd
import file_dataset

folder = sys.argv[1]
def fn(input_dir, output_dir):
    if (input_dir / "x").read_text() == "x0":
        exiting.wait()  # the main thread has ended and the interpreter is exiting
    (output_dir / "y").write_text((input_dir / "x").read_text())
    return {"y": output_dir / "y"}
frame = pd.DataFrame({"id": [f"r{i}" for i in range(4)], "x": [f"{folder}/x{i}" for i in range(4)]})
pipeline = file_dataset.Pipeline(fn, {"into_path": f"{folder}/out"})
threading.Thread(target=lambda: print(len(pipeline(frame)), "rows written")).start()
"""


def test_a_pipeline_in_a_thread_left_running_at_exit_finishes(tmp_path: Path) -> None:
    """Python ends every thread pool before it waits for the threads left running: the
    Pipeline's next stage raised "cannot schedule new futures after shutdown", it
    wrote nothing more and left its row folders in TMPDIR (helper-118)."""
    for i in range(4):
        (tmp_path / f"x{i}").write_text(f"x{i}")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _EXITING_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert (done.returncode, done.stdout) == (0, "4 rows written\n"), done.stderr
    assert [(tmp_path / "out" / f"r{i}" / "y").read_text() for i in range(4)] == [
        f"x{i}" for i in range(4)
    ]
    assert list(scratch.iterdir()) == []


def test_a_stage_whose_thread_cannot_start_is_not_run_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "can't start new thread" (a thread or pid limit) is raised with the stage queued
    already: running it on the calling thread too downloaded a row twice and left its
    second folders in TMPDIR (helper-119). The call stops, as before."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for i in range(4):
        (tmp_path / f"x{i}").write_text(f"x{i}")
    starts = []
    start = threading.Thread.start

    def refusing_start(thread: threading.Thread) -> None:
        if thread.name.startswith("file_dataset-pipeline"):
            starts.append(thread.name)
            if len(starts) == 2:
                raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refusing_start)
    calls: list[str] = []

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        calls.append((input_dir / "x").read_text())
        (output_dir / "y").write_text(calls[-1])
        return {"y": output_dir / "y"}

    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(4)], "x": [str(tmp_path / f"x{i}") for i in range(4)]}
    )
    with pytest.raises(RuntimeError, match="can't start new thread"):
        Pipeline(fn, {"into_path": tmp_path / "out"})(frame)
    assert len(calls) == len(set(calls))
    assert list(scratch.iterdir()) == []


def _refuse_folders(
    monkeypatch: pytest.MonkeyPatch, refused: Callable[[str], OSError | None]
) -> None:
    """mkdtemp raises ``refused(prefix)`` where it is not None, as the system would."""
    made = tempfile.mkdtemp

    def mkdtemp(suffix: str | None = None, prefix: str | None = None, dir: Any = None) -> str:
        error = refused(prefix or "")
        if error is not None:
            raise error
        return made(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


def test_a_row_whose_input_folder_cannot_be_made_is_dropped(
    options: Options,
    put: Put,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """helper-122: the input folder was made outside the row's error handling, so one
    refusal (no inodes left, a folder made immutable for a moment) ended the whole
    call with a bare PermissionError naming no row, and the later rows were not run."""
    ids = [f"r{i}" for i in range(4)]
    frame = pd.DataFrame({"id": ids, "a.bin": [put(f"in/{i}", b"r%d" % i) for i in range(4)]})
    lock = threading.Lock()
    inputs: list[str] = []

    def refused(prefix: str) -> OSError | None:
        with lock:  # downloads run on the pool's threads
            inputs.append(prefix)
            second = [p for p in inputs if p == "file_dataset-in."] == [prefix] * 2
        if prefix == "file_dataset-in." and second:
            return OSError(errno.ENOSPC, "No space left on device", "/tmp/x/q1w2e3")
        return None

    _refuse_folders(monkeypatch, refused)
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    with caplog.at_level(logging.WARNING, logger="file_dataset"):
        result = pipeline(frame)
    [failure] = pipeline.last_failures
    assert failure.stage == "read"
    dropped = failure.id
    assert list(result["id"]) == [i for i in ids if i != dropped]
    for row_id in result["id"]:
        assert (tmp_path / "out" / row_id / "output.mha").read_bytes() == row_id.upper().encode()
    assert not (tmp_path / "out" / dropped).exists()
    assert failure.error.errno == errno.ENOSPC
    assert failure.error.filename == tempfile.gettempdir()  # not the folder never made
    assert str(failure.error).startswith(
        f"[Errno {errno.ENOSPC}] file_dataset.Pipeline, for row id '{dropped}', cannot make "
        "its folder there (No space left on device); set TMPDIR to a folder this process "
        "may write in, with room"
    )
    assert f"dropped row id '{dropped}' (read failed)" in caplog.text


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EACCES, errno.EROFS])
def test_a_temporary_folder_that_is_gone_or_read_only_stops_a_pipeline(
    code: int, options: Options, put: Put, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tmp cleaner removed TMPDIR, or it may not be written in: every row would fail,
    so the call stops at the first, saying why (it raised a bare OSError naming a
    folder never made; helper-124 found the first fix dropped every row instead)."""
    frame = pd.DataFrame({"id": ["a", "b", "c"], "a.bin": [put(f"gone/{i}", b"x") for i in "abc"]})
    gone = tmp_path / "tmp"
    monkeypatch.setattr(tempfile, "tempdir", str(gone))  # what gettempdir() had cached
    if code != errno.ENOENT:  # (as root, the system refuses nothing: mkdtemp plays it)
        _refuse_folders(monkeypatch, lambda prefix: OSError(code, os.strerror(code), "/x"))
    pipeline = Pipeline(upper, {"into_path": tmp_path / "out"}, options)
    with pytest.raises(OSError) as raised:
        pipeline(frame)
    assert raised.value.errno == code
    assert raised.value.filename == str(gone)
    assert "file_dataset.Pipeline, for row id 'a', cannot make its folder there" in str(
        raised.value
    )
    assert "is not there or may not be written in" in "\n".join(raised.value.__notes__)
    assert [(f.id, f.stage) for f in pipeline.last_failures] == [("a", "read")]
    assert not (tmp_path / "out").exists()


def test_a_function_of_a_module_found_only_here_pickles_as_before_outside_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fn goes by value only when Ray pickles the Pipeline (see the Ray tests): a copy,
    or a process pool here, gets the same function and module globals (helper-124: a
    module-level lock made every pickle fail, a big global made it big)."""
    import copy
    import importlib

    (tmp_path / "steps_r6k.py").write_text(
        "import threading\nLOCK = threading.Lock()\nBIG = bytes(1 << 20)\n\n\n"
        "def step(input_dir, output_dir):\n    with LOCK:\n        return {'n': len(BIG)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    steps = importlib.import_module("steps_r6k")
    pipeline = Pipeline(steps.step, {"into_path": tmp_path / "out"})
    pickled = pickle.dumps(pipeline)
    assert len(pickled) < 2000
    assert pickle.loads(pickled).fn is steps.step
    assert copy.deepcopy(pipeline).fn is steps.step


def test_a_function_of_an_installed_module_is_pickled_by_reference(tmp_path: Path) -> None:
    pipeline = Pipeline(functools.partial(shutil.copy), {"into_path": tmp_path / "out"})
    pickled = pickle.dumps(pipeline)
    assert b"shutil" in pickled  # a reference: the module's name
    assert b"cloudpickle" not in pickled


class _Decoded:
    """Stands for a large image that fn decoded before it failed."""


def test_a_dropped_row_does_not_keep_the_locals_of_fn(
    options: Options, put: Put, tmp_path: Path
) -> None:
    """helper-123: each failure's traceback kept fn's frame and its locals, so every
    dropped row's decoded image stayed in memory until the thread's next call (80 rows
    of 20 MiB: 1.6 GB). The traceback's text stays."""
    import gc
    import weakref

    alive: list[weakref.ref[_Decoded]] = []

    def decode_then_fail(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        image = _Decoded()
        alive.append(weakref.ref(image))
        raise ValueError(f"cannot resample {sorted(p.name for p in input_dir.iterdir())}")

    frame = pd.DataFrame({"id": ["a", "b", "c"], "x.bin": [put(f"loc/{i}", b"1") for i in "abc"]})
    pipeline = Pipeline(decode_then_fail, {"into_path": tmp_path / "out"}, options)
    assert pipeline(frame).empty
    gc.collect()
    assert [ref() for ref in alive] == [None, None, None]
    assert [failure.id for failure in pipeline.last_failures] == ["a", "b", "c"]
    text = "".join(traceback.format_exception(pipeline.last_failures[0].error))
    assert "in decode_then_fail\n    raise ValueError(" in text
    assert text.endswith("ValueError: cannot resample ['x.bin']\n")


def test_local_paths_that_are_not_utf8_are_logged_and_returned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """helper-126: a path holding os.fsdecode's surrogates (a name that is not UTF-8)
    made the dropped row's line unwritable to a UTF-8 log (the handler dropped it), and
    such an into_path made the Pipeline raise after writing every row (pandas 3's Arrow
    strings cannot hold the surrogates)."""
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/gone\xff.mha")
    source = tmp_path / "s.bin"
    source.write_bytes(b"S")
    into = os.fsdecode(os.fsencode(tmp_path) + b"/out\xe9")
    frame = pd.DataFrame(
        {"id": ["r1", "r2"], "image.mha": pd.Series([missing, None], dtype=object)}
    )
    log = tmp_path / "log.txt"
    handler = logging.FileHandler(log, encoding="utf-8")
    logger = logging.getLogger("file_dataset")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="file_dataset"):
            result = Pipeline(lambda i, o: {"x.bin": source}, {"into_path": into})(frame)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert list(result["id"]) == ["r2"]
    assert list(result["x.bin"]) == [f"{into}/r2/x.bin"]
    assert Path(into, "r2", "x.bin").read_bytes() == b"S"
    text = log.read_text(encoding="utf-8")
    assert f"dropped row id 'r1' (read failed): cannot read {tmp_path}/gone\\udcff.mha" in text


def test_clearing_a_dropped_rows_locals_leaves_fns_generators_running(
    options: Options, put: Put, tmp_path: Path
) -> None:
    """helper-127: clearing the frames closed a suspended generator that fn's error had
    passed through (a long-lived worker handing fn the error it caught), on Python 3.11
    and 3.12, and every later row failed. A sub-exception of an exception group (an
    asyncio.TaskGroup in fn) kept its locals."""
    import gc
    import weakref

    def worker() -> Any:
        result: Any = None
        while True:
            data = yield result
            try:
                if data == b"bad":
                    raise ValueError("bad content")
                result = data.upper()
            except ValueError as e:
                result = e  # handed back to fn

    running = worker()
    next(running)
    alive: list[weakref.ref[_Decoded]] = []

    def decode() -> None:
        image = _Decoded()
        alive.append(weakref.ref(image))
        raise KeyError("in a task")

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        data = (input_dir / "x.bin").read_bytes()
        if data == b"group":
            caught: list[Exception] = []
            try:
                decode()
            except KeyError as e:
                caught.append(e)
            raise ExceptionGroup("tasks failed", caught)  # (no __context__)
        result = running.send(data)
        if isinstance(result, Exception):
            raise result
        (output_dir / "y.bin").write_bytes(result)
        return {"y.bin": output_dir / "y.bin"}

    cells = [b"bad", b"good", b"group", b"fine"]
    frame = pd.DataFrame(
        {"id": list("abcd"), "x.bin": [put(f"gen/{i}", c) for i, c in enumerate(cells)]}
    )
    pipeline = Pipeline(fn, {"into_path": tmp_path / "out"}, options)
    result = pipeline(frame)
    assert list(result["id"]) == ["b", "d"]
    assert (tmp_path / "out" / "d" / "y.bin").read_bytes() == b"FINE"
    assert running.gi_frame is not None  # still suspended, not closed
    gc.collect()
    assert [ref() for ref in alive] == [None]
    assert [failure.id for failure in pipeline.last_failures] == ["a", "c"]


def test_a_dropped_row_of_an_async_fn_does_not_keep_its_locals(
    options: Options, put: Put, tmp_path: Path
) -> None:
    """helper-129: the frames of finished coroutines were left uncleared with those of
    suspended ones, so an async fn run as the README shows kept each dropped row's
    image (5 of 5 rows)."""
    import gc
    import weakref

    alive: list[weakref.ref[_Decoded]] = []

    async def load_and_fail(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        image = _Decoded()
        alive.append(weakref.ref(image))
        raise ValueError("bad image")

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        return asyncio.run(load_and_fail(input_dir, output_dir))

    frame = pd.DataFrame({"id": ["a", "b"], "x.bin": [put(f"co/{i}", b"x") for i in "ab"]})
    pipeline = Pipeline(fn, {"into_path": tmp_path / "out"}, options)
    assert pipeline(frame).empty
    gc.collect()
    assert [ref() for ref in alive] == [None, None]
    assert [str(failure.error) for failure in pipeline.last_failures] == ["bad image"] * 2


def test_an_interrupt_while_the_destination_is_checked_is_logged(
    options: Options, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """helper-125: a SIGTERM turned into SystemExit while the first client was made (the
    check of into_path's bucket, before any row) left no line in the job's log."""
    frame = pd.DataFrame({"id": ["r1", "r2"], "f": [None, None]})
    pipeline = Pipeline(upper, {"into_path": f"s3://{bucket}/out"}, options)

    def terminated() -> None:
        raise SystemExit(1)

    pipeline._check_destination = terminated  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="file_dataset"), pytest.raises(SystemExit):
        pipeline(frame)
    assert (
        "file_dataset.Pipeline interrupted by SystemExit after writing 0 of 2 rows: the rows "
        "written stay written"
    ) in caplog.text


def test_a_generator_made_before_gc_freeze_is_not_closed_by_a_dropped_row(
    options: Options, tmp_path: Path
) -> None:
    """helper-131: gc.get_referrers does not see objects frozen by gc.freeze() (Ray
    Serve freezes them at start), so the suspended worker generator was taken for a
    finished one, closed, and every later row failed."""
    import gc

    def worker() -> Any:
        result: Any = None
        while True:
            job = yield result
            try:
                if job == "bad":
                    raise ValueError("bad job")
                result = job
            except ValueError as e:
                result = e

    running = worker()
    next(running)
    gc.freeze()
    try:

        def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
            result = running.send((input_dir / "x.txt").read_text())
            if isinstance(result, Exception):
                raise result
            (output_dir / "y.txt").write_text(result)
            return {"y.txt": output_dir / "y.txt"}

        for name in ("bad", "ok1", "ok2"):
            (tmp_path / name).write_text(name)
        frame = pd.DataFrame(
            {"id": ["a", "b", "c"], "x.txt": [str(tmp_path / n) for n in ("bad", "ok1", "ok2")]}
        )
        result = Pipeline(fn, {"into_path": tmp_path / "out"}, options)(frame)
    finally:
        gc.unfreeze()
    assert list(result["id"]) == ["b", "c"]
    assert (tmp_path / "out" / "c" / "y.txt").read_text() == "ok2"
    assert running.gi_frame is not None


class _Record:
    """Holds a value; any other attribute is a KeyError, as record classes do."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __getattr__(self, name: str) -> Any:
        raise KeyError(name)


def test_a_dropped_rows_frame_held_by_an_object_with_getattr_is_dropped_cleanly(
    options: Options, tmp_path: Path
) -> None:
    """helper-132: looking for the generators that hold a row's frames read gi_frame of
    every object that refers to them; a __getattr__ raising KeyError ended the call."""
    import sys

    kept: list[_Record] = []

    async def go() -> None:
        kept.append(_Record(sys._getframe()))
        raise ValueError("bad row")

    def fn(input_dir: Path, output_dir: Path) -> dict[str, Path]:
        return asyncio.run(go())  # type: ignore[func-returns-value]

    (tmp_path / "x").write_text("x")
    frame = pd.DataFrame({"id": ["a", "b"], "x": [str(tmp_path / "x")] * 2})
    pipeline = Pipeline(fn, {"into_path": tmp_path / "out"}, options)
    assert pipeline(frame).empty
    assert [(f.id, str(f.error)) for f in pipeline.last_failures] == [
        ("a", "bad row"),
        ("b", "bad row"),
    ]
