"""FileDataFrameAsBlobDatasource and read_file_dataset on a real local Ray and S3 server."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray.cloudpickle
import ray.data

import file_dataset
import file_dataset._reader
from file_dataset import Options
from file_dataset.ray import FileDataFrameAsBlobDatasource, blob_reader, read_file_dataset
from file_dataset.testing import LocalS3Server

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.ray

BATCH = 50
FILE_COLUMNS = ["image.bin", "mask.bin"]
EXPECTED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image.bin", pa.binary()),
        pa.field("mask.bin", pa.binary()),
    ]
)
CREDENTIAL_VARIABLES = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
}


@pytest.fixture(scope="module")
def materialized(ray_local: None, blob_dataset: Any, options: Options) -> ray.data.Dataset:
    """The 1000-row dataset read once, kept in the object store for several tests."""
    return read_file_dataset(blob_dataset.frame, BATCH, options).materialize()


def _expected_table(blob_dataset: Any) -> pa.Table:
    ids = blob_dataset.frame["id"].tolist()
    columns = {
        name: pa.array([blob_dataset.expected(i, name) for i in ids], pa.binary())
        for name in FILE_COLUMNS
    }
    return pa.table({"id": pa.array(ids, pa.string()), **columns})


# --- reading --------------------------------------------------------------------------


def test_every_row_has_the_uploaded_bytes_and_its_id(
    materialized: ray.data.Dataset, blob_dataset: Any
) -> None:
    schema = materialized.schema()
    assert schema.names == EXPECTED_SCHEMA.names
    assert schema.types == EXPECTED_SCHEMA.types
    frame_ids = blob_dataset.frame["id"].tolist()
    position = {row_id: i for i, row_id in enumerate(frame_ids)}
    seen: list[str] = []
    for block in materialized.iter_batches(batch_size=None, batch_format="pyarrow"):
        assert block.schema.equals(EXPECTED_SCHEMA)
        ids = block["id"].to_pylist()
        assert 0 < len(ids) <= BATCH
        # One block is one read task: consecutive DataFrame rows, in order.
        first = position[ids[0]]
        assert ids == frame_ids[first : first + len(ids)]
        for row in block.to_pylist():
            for name in FILE_COLUMNS:
                assert row[name] == blob_dataset.expected(row["id"], name), (row["id"], name)
        seen.extend(ids)
    assert len(seen) == len(frame_ids) == 1000
    assert sorted(seen) == sorted(frame_ids)
    assert sum(blob_dataset.frame["mask.bin"].isna()) > 0  # null cells were exercised


def test_reading_without_rays_operator_reservation_gives_the_same_rows(
    ray_local: None, blob_dataset: Any, options: Options
) -> None:
    # The README's recipe for short datasets on small clusters: Ray Data's per-operator
    # resource reservation off, on the returned dataset's own context (a dataset copies
    # the driver's context when it is created). Read tasks then run side by side; the
    # rows must not change, and the driver's context must not be touched.
    driver_setting = ray.data.DataContext.get_current().op_resource_reservation_enabled
    frame = blob_dataset.frame.head(200)
    dataset = read_file_dataset(frame, 25, options)
    dataset.context.op_resource_reservation_enabled = False
    assert ray.data.DataContext.get_current().op_resource_reservation_enabled == driver_setting
    table = pa.concat_tables(ray.get(dataset.to_arrow_refs())).sort_by("id")
    assert table.schema.equals(EXPECTED_SCHEMA)
    assert table["id"].to_pylist() == sorted(frame["id"].tolist())
    expected = _expected_table(blob_dataset).slice(0, 200).cast(EXPECTED_SCHEMA)
    assert table.equals(expected.sort_by("id"))  # every cell: bytes and nulls


def _pass_through(batch: pa.Table) -> pa.Table:
    return batch


@pytest.fixture(scope="module")
def ordered_frame(ray_local: None, s3_server: LocalS3Server, put_objects: Any) -> pd.DataFrame:
    """23 rows (6 read tasks of 4 rows, the last of 3), each file's bytes naming its row."""
    bucket = s3_server.create_bucket()
    put_objects(bucket, {f"r{i:03d}": f"row {i:03d} ".encode() * (i + 1) for i in range(23)})
    ids = [f"r{i:03d}" for i in range(23)]
    return pd.DataFrame({"id": ids, "f.bin": [f"s3://{bucket}/{i}" for i in ids]})


def test_rows_come_in_dataframe_order_as_from_into_blob_table(
    ordered_frame: pd.DataFrame, options: Options
) -> None:
    """Without preserve_order Ray gave r000..r003, r008..r022, r004..r007."""
    expected = file_dataset.reader(ordered_frame, options).into_blob_table()
    assert expected["id"].to_pylist() == [f"r{i:03d}" for i in range(23)]
    expected_bytes = [f"row {i:03d} ".encode() * (i + 1) for i in range(23)]
    assert expected["f.bin"].to_pylist() == expected_bytes
    driver_setting = ray.data.DataContext.get_current().execution_options.preserve_order
    dataset = read_file_dataset(ordered_frame, 4, options)
    assert dataset.context.execution_options.preserve_order is True
    # the dataset's own copy of the context: the driver's is left as it was
    assert ray.data.DataContext.get_current().execution_options.preserve_order == driver_setting
    frame = dataset.to_pandas()
    assert frame["id"].tolist() == expected["id"].to_pylist()
    assert frame["f.bin"].tolist() == expected_bytes
    # a following map_batches shares the dataset's context, so the order stays
    passed = dataset.map_batches(_pass_through, batch_format="pyarrow", batch_size=3)
    table = pa.concat_tables(ray.get(passed.to_arrow_refs()))
    assert table["id"].to_pylist() == expected["id"].to_pylist()
    assert table["f.bin"].to_pylist() == expected_bytes


def test_a_pyarrow_table_is_read_as_its_pandas_frame(
    ordered_frame: pd.DataFrame, options: Options
) -> None:
    """reader() and a Pipeline took a pyarrow.Table (as its to_pandas()); this refused
    it: "expected a pandas DataFrame, got Table"."""
    table = pa.Table.from_pandas(ordered_frame, preserve_index=False)
    for source in (table, table.combine_chunks().to_batches()[0]):  # RecordBatch: h-109
        frame = read_file_dataset(source, 5, options).to_pandas()
        assert frame["id"].tolist() == [f"r{i:03d}" for i in range(23)]
        expected = [f"row {i:03d} ".encode() * (i + 1) for i in range(23)]
        assert frame["f.bin"].tolist() == expected


def test_preserve_order_false_leaves_the_order_to_the_drivers_context(
    ordered_frame: pd.DataFrame, options: Options
) -> None:
    driver_setting = ray.data.DataContext.get_current().execution_options.preserve_order
    dataset = blob_reader(ordered_frame, 4, options, preserve_order=False)
    assert dataset.context.execution_options.preserve_order == driver_setting
    rows = dataset.take_all()  # every row, in the order Ray's tasks finished
    assert sorted(row["id"] for row in rows) == ordered_frame["id"].tolist()
    for row in rows:
        i = int(row["id"][1:])
        assert row["f.bin"] == f"row {i:03d} ".encode() * (i + 1)
    ordered = blob_reader(ordered_frame, 4, options)  # the alias keeps order by default
    assert ordered.context.execution_options.preserve_order is True
    assert [row["id"] for row in ordered.take_all()] == ordered_frame["id"].tolist()


def test_options_that_are_not_options_are_refused_when_the_dataset_is_made(
    s3_server: LocalS3Server,
) -> None:
    """A dict of settings used to fail only in the workers, as an AttributeError."""
    frame = pd.DataFrame({"id": ["1"], "a": ["s3://bkt/k"]})
    settings = {"endpoint_url": s3_server.endpoint_url}
    for make, where in [
        (read_file_dataset, "read_file_dataset(options=...)"),
        (FileDataFrameAsBlobDatasource, "FileDataFrameAsBlobDatasource(options=...)"),
    ]:
        with pytest.raises(TypeError) as info:
            make(frame, 4, settings)  # type: ignore[arg-type]
        assert str(info.value) == (
            f"{where} must be a file_dataset.Options, got dict "
            "(build one: Options(session_kwargs=..., s3_client_kwargs=...))"
        )


def test_keywords_that_ray_does_not_take_are_refused_when_the_dataset_is_made(
    options: Options,
) -> None:
    """A misspelt Ray keyword was passed on by read_datasource to a reader this
    datasource does not have."""
    frame = pd.DataFrame({"id": ["1"], "a": ["s3://bkt/k"]})
    with pytest.raises(TypeError) as info:
        read_file_dataset(frame, 4, options, concurency=2, num_cpus=1)
    message = str(info.value)
    assert message.startswith(
        "read_file_dataset() got unexpected keyword arguments ['concurency']: "
        f"ray.data.read_datasource (Ray {ray.__version__}) takes ["
    )
    assert "'concurrency'" in message
    assert "'num_cpus'" in message


def test_blob_reader_is_read_file_dataset() -> None:
    assert blob_reader is read_file_dataset


def test_schema_is_known_without_reading(
    ray_local: None, s3_server: LocalS3Server, put_objects: Callable[..., None], options: Options
) -> None:
    bucket = s3_server.create_bucket()
    put_objects(bucket, {"0/a": b"a", "0/b": b"b"})
    frame = pd.DataFrame(
        {
            "id": ["0", "1"],
            "a": [f"s3://{bucket}/0/a", f"s3://{bucket}/1/a"],  # row 1 does not exist
            "b": [f"s3://{bucket}/0/b", f"s3://{bucket}/1/b"],
        }
    )
    ds = read_file_dataset(frame, 1, options)
    schema = ds.schema(fetch_if_missing=False)
    assert schema is not None
    assert schema.names == ["id", "a", "b"]
    assert schema.types == [pa.string(), pa.binary(), pa.binary()]
    with pytest.raises(file_dataset.ObjectNotFoundError, match=f"s3://{bucket}/1/a") as raised:
        ds.materialize()
    # Ray's RayTaskError(ObjectNotFoundError) takes what its class lacks from the error
    # it wraps: before, status (404) and unreachable came from class defaults instead.
    error: Any = raised.value
    assert (error.url, error.row_id, error.column) == (f"s3://{bucket}/1/a", "1", "a")
    assert (error.status, error.unreachable) == (404, False)


def test_id_last_in_the_frame_is_last_in_the_dataset(
    ray_local: None, s3_server: LocalS3Server, put_objects: Callable[..., None], options: Options
) -> None:
    # The design notes' frames have the file columns first and id last.
    bucket = s3_server.create_bucket()
    put_objects(bucket, {"1/image.mha": b"one", "2/image.mha": b"two"})
    frame = pd.DataFrame(
        {
            "image.mha": [f"s3://{bucket}/1/image.mha", f"s3://{bucket}/2/image.mha"],
            "id": ["1", "2"],
        }
    )
    ds = read_file_dataset(frame, 1, options)
    schema = ds.schema(fetch_if_missing=False)
    assert schema is not None
    assert schema.names == ["image.mha", "id"]
    assert schema.names == file_dataset.reader(frame, options).into_blob_table().column_names
    table = pa.concat_tables(ray.get(ds.materialize().to_arrow_refs()))
    assert table.column_names == ["image.mha", "id"]
    assert table.to_pylist() == [{"image.mha": b"one", "id": "1"}, {"image.mha": b"two", "id": "2"}]
    assert FileDataFrameAsBlobDatasource(frame, 1, options).dataframe.equals(frame)


def test_zero_copy_map_batches_reads_blobs_as_arrow(
    materialized: ray.data.Dataset, blob_dataset: Any
) -> None:
    expected = _expected_table(blob_dataset)

    def check(batch: pa.Table, expected: pa.Table) -> pa.Table:
        # Arrow compute only: no blob becomes a Python object.
        assert isinstance(batch, pa.Table)
        rows = pc.index_in(batch["id"], value_set=expected["id"])
        out: dict[str, Any] = {"id": batch["id"]}
        for name in FILE_COLUMNS:
            column = batch[name]
            assert column.type == pa.binary()
            # Blocks come from the object store: their buffers are the read-only shared
            # memory itself, not a copy.
            assert all(not chunk.buffers()[2].is_mutable for chunk in column.chunks if len(chunk))
            want = expected[name].take(rows)
            same = pc.fill_null(pc.equal(column, want), False)
            both_null = pc.and_(pc.is_null(column), pc.is_null(want))
            out[f"{name}:same"] = pc.or_(same, both_null)
            out[f"{name}:length"] = pc.binary_length(column)
            out[f"{name}:head"] = pc.binary_slice(column, 0, 8)
        return pa.table(out)

    result = materialized.map_batches(
        check,
        batch_format="pyarrow",
        zero_copy_batch=True,
        batch_size=None,
        fn_kwargs={"expected": expected},
    ).to_arrow_refs()
    table = pa.concat_tables(ray.get(result))
    assert table.num_rows == 1000
    assert sorted(table["id"].to_pylist()) == sorted(blob_dataset.frame["id"])
    for name in FILE_COLUMNS:
        assert pc.all(table[f"{name}:same"]).as_py() is True
        for row_id, length, head in zip(
            table["id"].to_pylist(),
            table[f"{name}:length"].to_pylist(),
            table[f"{name}:head"].to_pylist(),
            strict=True,
        ):
            blob = blob_dataset.expected(row_id, name)
            assert length == (None if blob is None else len(blob))
            assert head == (None if blob is None else blob[:8])


def test_blobs_round_trip_through_parquet(
    materialized: ray.data.Dataset, blob_dataset: Any, tmp_path: Any
) -> None:
    materialized.write_parquet(str(tmp_path), min_rows_per_file=500)
    table = ray.data.read_parquet(str(tmp_path)).to_arrow_refs()
    back = pa.concat_tables(ray.get(table))
    assert back.num_rows == 1000
    assert back.schema.field("image.bin").type == pa.binary()
    for row in back.to_pylist():
        for name in FILE_COLUMNS:
            assert row[name] == blob_dataset.expected(row["id"], name)


def test_chunked_blob_columns_flow_through_ray(
    ray_local: None, blob_dataset: Any, options: Options, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader splits a binary column into chunks of at most 64 MiB; make that 4 KiB
    # here and run the read task in this process, so a block has many chunks.
    monkeypatch.setattr(file_dataset._reader, "_CHUNK_BYTES", 4096)
    frame = blob_dataset.frame.head(100)
    [task] = FileDataFrameAsBlobDatasource(frame, 100, options).get_read_tasks(1)
    [block] = list(task())
    assert block["image.bin"].num_chunks > 5
    expected = _expected_table(blob_dataset).slice(0, 100)
    assert block.equals(expected.cast(EXPECTED_SCHEMA))

    def lengths(batch: pa.Table) -> pa.Table:
        return pa.table({"id": batch["id"], "n": pc.binary_length(batch["image.bin"])})

    ds = ray.data.from_arrow(block)
    [round_trip] = ray.get(ds.to_arrow_refs())
    assert round_trip.equals(block)
    out = ds.map_batches(lengths, batch_format="pyarrow", zero_copy_batch=True).to_pandas()
    assert dict(zip(out["id"], out["n"], strict=True)) == {
        row_id: len(blob_dataset.expected(row_id, "image.bin")) for row_id in frame["id"]
    }


def test_empty_frame_gives_an_empty_dataset_with_the_blob_schema(
    ray_local: None, options: Options
) -> None:
    """One task of no rows, so that the dataset has a schema (with no task it has none)."""
    frame = pd.DataFrame({"id": pd.Series([], dtype=str), "a": pd.Series([], dtype=str)})
    datasource = FileDataFrameAsBlobDatasource(frame, 4, options)
    (task,) = datasource.get_read_tasks(8)
    assert task.metadata.num_rows == 0
    assert datasource.estimate_inmemory_data_size() == 0
    dataset = read_file_dataset(frame, 4, options)
    assert dataset.count() == 0
    schema = dataset.materialize().schema()
    assert schema is not None
    assert schema.names == ["id", "a"]
    assert schema.types == [pa.string(), pa.binary()]
    assert dataset.take_all() == []


def test_a_bad_url_in_any_row_fails_when_the_dataset_is_made(
    ray_local: None, options: Options
) -> None:
    """Not in a worker after other batches were read: every cell is checked up front."""
    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(10)], "a": [f"s3://bkt/k{i}" for i in range(10)]}
    )
    frame.loc[8, "a"] = "ftp://host/k8"
    for make in (FileDataFrameAsBlobDatasource, read_file_dataset):
        with pytest.raises(ValueError) as info:
            make(frame, 2, options)
        assert str(info.value) == (
            "row id 'r8', column 'a': unsupported URL scheme 'ftp' in 'ftp://host/k8': "
            "use s3://bucket/key or a local path"
        )


def test_limit_reads_only_what_is_needed(
    ray_local: None, blob_dataset: Any, options: Options
) -> None:
    datasource = FileDataFrameAsBlobDatasource(blob_dataset.frame, BATCH, options)
    tasks = datasource.get_read_tasks(1, per_task_row_limit=3)
    assert len(tasks) == 1000 // BATCH
    assert {task.metadata.num_rows for task in tasks} == {3}
    rows = read_file_dataset(blob_dataset.frame, BATCH, options).limit(5).take_all()
    assert len(rows) == 5
    for row in rows:
        assert row["image.bin"] == blob_dataset.expected(row["id"], "image.bin")


def test_the_readme_recipe_puts_labels_back_beside_the_blobs(
    ray_local: None, blob_dataset: Any, options: Options
) -> None:
    """A label column is refused as a file column; the README's recipe drops it before
    the read and maps it back by id (ids come back as strings)."""
    frame = blob_dataset.frame.head(120).copy()
    frame["id"] = range(120)  # integer ids, as a training CSV has them
    frame["label"] = [i % 3 for i in range(120)]
    labels = dict(zip(frame["id"].astype(str), frame["label"], strict=True))
    ds = read_file_dataset(frame.drop(columns=["label"]), BATCH, options)
    ds = ds.map_batches(lambda b: b.assign(label=b["id"].map(labels)), batch_format="pandas")
    rows = ds.take_all()
    assert [(row["id"], row["label"]) for row in rows] == [(str(i), i % 3) for i in range(120)]
    assert rows[7]["image.bin"] == blob_dataset.expected(
        blob_dataset.frame["id"].iloc[7], "image.bin"
    )


def test_each_batch_is_one_block_unless_more_blocks_are_asked_for(
    ray_local: None, blob_dataset: Any, options: Options
) -> None:
    frame = blob_dataset.frame.head(200)
    dataset = read_file_dataset(frame, BATCH, options).materialize()
    assert dataset.num_blocks() == 200 // BATCH
    refs = dataset.to_arrow_refs()
    tables = ray.get(refs)
    assert [t.num_rows for t in tables] == [BATCH] * (200 // BATCH)
    ids = sorted(i for t in tables for i in t.column("id").to_pylist())
    assert ids == sorted(frame["id"])
    # asking for more blocks than batches makes Ray split every batch
    split = read_file_dataset(frame, BATCH, options, override_num_blocks=16).materialize()
    assert split.num_blocks() == 16
    rows = split.take_all()
    assert sorted(r["id"] for r in rows) == sorted(frame["id"])
    for row in rows[:10]:
        assert row["mask.bin"] == blob_dataset.expected(row["id"], "mask.bin")


def test_default_block_count_only_below_rays_warning_threshold() -> None:
    from file_dataset.ray._datasource import _default_num_blocks

    assert _default_num_blocks(0) == 1  # an empty dataset still needs a valid value
    assert _default_num_blocks(4) == 4
    assert _default_num_blocks(4999) == 4999
    assert _default_num_blocks(5000) is None  # Ray's choice; it would warn otherwise
    assert _default_num_blocks(1_000_000) is None


# --- read tasks and size estimate ----------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "parallelism"), [(1, 1), (7, 8), (64, 10_000)])
def test_one_read_task_per_batch_whatever_the_parallelism(
    blob_dataset: Any, options: Options, batch_size: int, parallelism: int
) -> None:
    frame = blob_dataset.frame
    datasource = FileDataFrameAsBlobDatasource(frame, batch_size, options)
    tasks = datasource.get_read_tasks(parallelism, per_task_row_limit=None, data_context=None)
    assert len(tasks) == math.ceil(len(frame) / batch_size)
    counts = [task.metadata.num_rows for task in tasks]
    assert counts[:-1] == [batch_size] * (len(tasks) - 1)
    assert sum(counts) == len(frame)
    for task in tasks:
        assert task.schema.equals(EXPECTED_SCHEMA)
        assert task.metadata.size_bytes > 0
    assert sum(task.metadata.size_bytes for task in tasks) == pytest.approx(
        datasource.estimate_inmemory_data_size(), rel=1e-3
    )


def test_one_read_task_when_the_batch_is_larger_than_the_frame(
    blob_dataset: Any, options: Options
) -> None:
    frame = blob_dataset.frame.head(10)
    tasks = FileDataFrameAsBlobDatasource(frame, 1500, options).get_read_tasks(64)
    assert [task.metadata.num_rows for task in tasks] == [10]


def test_pickled_read_task_holds_only_its_chunk(blob_dataset: Any, options: Options) -> None:
    small = FileDataFrameAsBlobDatasource(blob_dataset.frame.head(BATCH), BATCH, options)
    large = FileDataFrameAsBlobDatasource(blob_dataset.frame, BATCH, options)
    small_size = len(ray.cloudpickle.dumps(small.get_read_tasks(1)[0]))
    large_sizes = [len(ray.cloudpickle.dumps(task)) for task in large.get_read_tasks(1)]
    frame_size = len(ray.cloudpickle.dumps(blob_dataset.frame))
    assert max(large_sizes) < small_size + 200
    assert max(large_sizes) < frame_size / 5


def test_estimate_is_close_to_the_real_size_for_uniform_rows(
    s3_server: LocalS3Server, put_objects: Callable[..., None], options: Options
) -> None:
    bucket = s3_server.create_bucket()
    rows = 100
    put_objects(
        bucket,
        {
            f"{i}/{name}": bytes([i % 256]) * size
            for i in range(rows)
            for name, size in (("a", 600), ("b", 400))
        },
    )
    frame = pd.DataFrame(
        {
            "id": [f"u{i:04d}" for i in range(rows)],
            "a": [f"s3://{bucket}/{i}/a" for i in range(rows)],
            "b": [f"s3://{bucket}/{i}/b" for i in range(rows)],
        }
    )
    estimate = FileDataFrameAsBlobDatasource(frame, 10, options).estimate_inmemory_data_size()
    real = file_dataset.reader(frame, options).into_blob_table().nbytes
    assert estimate > 0
    assert estimate == pytest.approx(real, rel=0.02)


def test_estimate_sizes_only_the_first_batch_once(
    s3_server: LocalS3Server,
    put_objects: Callable[..., None],
    s3_client: Any,
    options: Options,
) -> None:
    bucket = s3_server.create_bucket()
    batch = 10
    put_objects(bucket, {f"{i}/a": b"x" * 100 for i in range(batch)})
    # Rows after the first batch point at objects that do not exist: a HEAD of any of
    # them would raise FileNotFoundError.
    frame = pd.DataFrame(
        {"id": [str(i) for i in range(1000)], "a": [f"s3://{bucket}/{i}/a" for i in range(1000)]}
    )
    with pytest.raises(FileNotFoundError):
        file_dataset.reader(frame.iloc[batch : batch + 1], options).into_size_table()
    datasource = FileDataFrameAsBlobDatasource(frame, batch, options)
    estimate = datasource.estimate_inmemory_data_size()
    head_bytes = file_dataset.reader(frame.head(batch), options).into_blob_table().nbytes
    assert estimate == pytest.approx(head_bytes * 1000 / batch, rel=0.02)
    # Cached: with the first batch's objects gone, nothing is asked of S3 again.
    for i in range(batch):
        s3_client.delete_object(Bucket=bucket, Key=f"{i}/a")
    assert datasource.estimate_inmemory_data_size() == estimate
    assert len(datasource.get_read_tasks(4)) == 1000 // batch


@pytest.mark.parametrize("dtype", ["inferred", "object", "string_view"])
def test_estimate_counts_nulls_as_nothing_and_sizes_the_first_files_of_each_column(
    dtype: str,
    ray_local: None,
    s3_server: LocalS3Server,
    put_objects: Callable[..., None],
    options: Options,
) -> None:
    """Before: a frame whose first batch held only nulls was estimated at 160 bytes
    (ids and offsets) for 4 KB of files, and so was every read task. An object column
    (read-only under copy-on-write) and a string_view one (pyarrow has no take or
    filter kernel for it) failed to plan at all."""
    bucket = s3_server.create_bucket()
    put_objects(bucket, {f"{i}/a": b"a" * 1000 for i in range(4, 8)})
    put_objects(bucket, {f"{i}/b": b"b" * 300 for i in range(8)})
    frame = pd.DataFrame(
        {
            "id": [f"n{i}" for i in range(8)],
            "a": [None] * 4 + [f"s3://{bucket}/{i}/a" for i in range(4, 8)],
            "b": [f"s3://{bucket}/{i}/b" for i in range(8)],
        }
    )
    if dtype == "object":
        frame = frame.astype(object)
    elif dtype == "string_view":  # as read_parquet(dtype_backend="pyarrow") may give
        columns = {
            name: pa.array(
                frame[name].astype(object).where(frame[name].notna(), None).tolist(),
                pa.string_view(),
            )
            for name in frame
        }
        frame = pa.table(columns).to_pandas(types_mapper=pd.ArrowDtype)
    datasource = FileDataFrameAsBlobDatasource(frame, 4, options)
    real = file_dataset.reader(frame, options).into_blob_table().nbytes
    assert datasource.estimate_inmemory_data_size() == pytest.approx(real, rel=0.05)
    first, second = datasource.get_read_tasks(2)
    assert (first.metadata.size_bytes, second.metadata.size_bytes) == (
        pytest.approx(4 * 300 + 4 * 16, abs=8),
        pytest.approx(4 * 1300 + 4 * 16, abs=8),
    )
    if dtype != "inferred":  # the read itself
        rows = read_file_dataset(frame, 4, options).take_all()
        assert [(r["id"], r["a"], r["b"]) for r in rows] == [
            (f"n{i}", None if i < 4 else b"a" * 1000, b"b" * 300) for i in range(8)
        ]


# --- options and credentials ---------------------------------------------------------------


def test_workers_use_the_endpoint_and_credentials_of_options(
    ray_local: None, blob_dataset: Any, options: Options
) -> None:
    assert not CREDENTIAL_VARIABLES & set(os.environ)
    assert options.s3_client_kwargs["endpoint_url"].startswith("http://127.0.0.1:")

    def where(batch: pa.Table) -> pa.Table:
        names = ",".join(sorted(CREDENTIAL_VARIABLES & set(os.environ)))
        return batch.append_column("pid", pa.array([os.getpid()] * batch.num_rows)).append_column(
            "aws_env", pa.array([names] * batch.num_rows)
        )

    frame = blob_dataset.frame.head(20)
    rows = (
        read_file_dataset(frame, 5, options)
        .map_batches(where, batch_format="pyarrow", batch_size=None)
        .take_all()
    )
    assert len(rows) == 20
    assert all(row["pid"] != os.getpid() for row in rows)
    assert all(row["aws_env"] == "" for row in rows)
    for row in rows:
        assert row["image.bin"] == blob_dataset.expected(row["id"], "image.bin")


def test_worker_without_credentials_in_options_fails_naming_the_url(
    ray_local: None, blob_dataset: Any, s3_server: LocalS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver has credentials in its environment (so sizing the first batch here
    # works); the workers, started without any AWS variable, only have the options.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    no_credentials = Options(
        session_kwargs={"region_name": "us-east-1"},
        s3_client_kwargs={"endpoint_url": s3_server.endpoint_url},
    )
    frame = blob_dataset.frame.head(4)
    ds = read_file_dataset(frame, 2, no_credentials)
    with pytest.raises(OSError) as raised:
        ds.materialize()
    message = str(raised.value)
    assert "NoCredentialsError" in message
    assert any(url in message for url in frame["image.bin"]), message


def test_default_options_freeze_the_drivers_credentials_for_the_workers(
    ray_local: None, blob_dataset: Any, s3_server: LocalS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    options = Options.default(s3_client_kwargs={"endpoint_url": s3_server.endpoint_url})
    frame = blob_dataset.frame.head(4)
    rows = read_file_dataset(frame, 2, options).take_all()
    assert sorted(row["id"] for row in rows) == sorted(frame["id"])
    for row in rows:
        assert row["mask.bin"] == blob_dataset.expected(row["id"], "mask.bin")


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (pd.DataFrame({"a": ["s3://b/k"]}), "'id' column"),
        (pd.DataFrame({"id": ["1", "1"], "a": ["s3://b/k1", "s3://b/k2"]}), "unique"),
        (pd.DataFrame({"id": ["1", None], "a": ["s3://b/k1", "s3://b/k2"]}), "null"),
        ({"id": ["1"], "a": ["s3://b/k"]}, "DataFrame"),
    ],
    ids=["no-id", "repeated-id", "null-id", "not-a-frame"],
)
def test_invalid_frame_is_a_value_error(frame: Any, match: str, options: Options) -> None:
    with pytest.raises(ValueError, match=match):
        FileDataFrameAsBlobDatasource(frame, 4, options)
    with pytest.raises(ValueError, match=match):
        read_file_dataset(frame, 4, options)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "4", True, None])
def test_batch_size_must_be_a_positive_int(batch_size: Any, options: Options) -> None:
    frame = pd.DataFrame({"id": ["1"], "a": ["s3://b/k"]})
    with pytest.raises(file_dataset.InvalidInputError, match="batch_size"):
        FileDataFrameAsBlobDatasource(frame, batch_size, options)
    with pytest.raises(ValueError, match="batch_size"):
        read_file_dataset(frame, batch_size, options)


def test_importing_file_dataset_does_not_import_ray() -> None:
    # ``import file_dataset`` alone gives ``file_dataset.ray`` (as the design's
    # ``file_dataset.ray.blob_reader(...)`` is written), still without loading Ray.
    code = (
        "import sys, file_dataset; "
        "assert 'ray' not in sys.modules, 'ray imported'; "
        "assert file_dataset.ray.blob_reader is file_dataset.ray.read_file_dataset; "
        "assert 'ray.data' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ray_module_exports() -> None:
    import file_dataset.ray as module

    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None
        assert name in dir(module)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_a_local_path_that_is_not_utf8_is_read_as_by_into_blob_table(
    ray_local: None, options: Options, tmp_path: Any
) -> None:
    """helper-126: pandas 3's Arrow strings cannot hold os.fsdecode's surrogates, so the
    size estimate raised a bare UnicodeEncodeError where into_blob_table read the file."""
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/scan\xe9.mha")
    with open(name, "wb") as f:
        f.write(b"DATA")
    frame = pd.DataFrame({"id": ["r1", "r2"], "f.mha": pd.Series([name, None], dtype=object)})
    expected = [{"id": "r1", "f.mha": b"DATA"}, {"id": "r2", "f.mha": None}]
    assert file_dataset.reader(frame, options).into_blob_table().to_pylist() == expected
    rows = read_file_dataset(frame, 1, options).take_all()
    assert [{"id": row["id"], "f.mha": row["f.mha"]} for row in rows] == expected
