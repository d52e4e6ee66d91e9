"""The same behaviour whichever transport carries the bytes (obstore or boto3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import file_dataset
from file_dataset import Options
from file_dataset.testing import LocalS3Server

MiB = 1024 * 1024


@pytest.fixture(params=["obstore", "boto3"])
def transport_options(s3_server: LocalS3Server, request: pytest.FixtureRequest) -> Options:
    """Small thresholds, so an 11 MiB object takes the ranged-GET and multipart paths."""
    return s3_server.options(
        transport=request.param, part_size=5 * MiB, multipart_threshold=5 * MiB
    )


def test_round_trip_of_awkward_empty_and_large_objects(
    transport_options: Options,
    bucket: str,
    put: Callable[[str, bytes], str],
    read_object: Callable[[str], bytes],
    tmp_path: Path,
) -> None:
    large = bytes(range(256)) * (11 * MiB // 256) + b"tail"
    row = {
        "awkward.txt": put("dir/a b+c%20é%.txt", b"awkward"),
        "empty.bin": put("empty", b""),
        "large.bin": put("large", large),
        "none.bin": None,
    }
    table = file_dataset.reader(row, transport_options).into_blob_table()
    assert table.to_pylist() == [
        {"awkward.txt": b"awkward", "empty.bin": b"", "large.bin": large, "none.bin": None}
    ]
    sizes = file_dataset.reader(row, transport_options).into_size_table()
    assert sizes.to_pylist() == [
        {"awkward.txt": 7, "empty.bin": 0, "large.bin": len(large), "none.bin": None}
    ]
    with file_dataset.reader(row, transport_options).into_temp_dir() as tmp:
        assert sorted(p.name for p in tmp.iterdir()) == ["awkward.txt", "empty.bin", "large.bin"]
        assert (tmp / "large.bin").read_bytes() == large
        assert (tmp / "empty.bin").read_bytes() == b""
        written = file_dataset.write_files(
            {"large.bin": tmp / "large.bin", "é x.txt": tmp / "awkward.txt"},
            f"s3://{bucket}/out/",
            "row 1",
            transport_options,
        )
    assert written == {
        "large.bin": f"s3://{bucket}/out/row 1/large.bin",
        "é x.txt": f"s3://{bucket}/out/row 1/é x.txt",
    }
    assert read_object(written["large.bin"]) == large
    assert read_object(written["é x.txt"]) == b"awkward"


def test_missing_object_names_url_row_and_column(
    transport_options: Options, bucket: str, put: Callable[[str, bytes], str]
) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {"id": ["a", "b"], "x.bin": [put("here", b"1"), f"s3://{bucket}/not/here"]}
    )
    for read in ("into_blob_table", "into_size_table"):
        with pytest.raises(FileNotFoundError) as raised:
            getattr(file_dataset.reader(frame, transport_options), read)()
        message = str(raised.value)
        assert f"s3://{bucket}/not/here" in message
        assert "'b'" in message
        assert "'x.bin'" in message


def test_missing_bucket_is_not_found(transport_options: Options) -> None:
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-here/k"):
        file_dataset.reader(
            {"k": "s3://no-such-bucket-here/k"}, transport_options
        ).into_blob_table()


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_large_first_response_streams_into_place(
    s3_server: LocalS3Server,
    transport: str,
    put: Callable[[str, bytes], str],
) -> None:
    """Default thresholds: the first 16 MiB come in one response, streamed in 1 MiB chunks
    straight into the object's buffer or file, then one ranged part."""
    options = s3_server.options(transport=transport)
    data = bytes(range(251)) * (19 * MiB // 251)  # not a multiple of the chunk size
    row = {"big.bin": put("streamed", data)}
    blob = file_dataset.reader(row, options).into_blob_table().column("big.bin")
    assert blob.to_pylist() == [data]
    with file_dataset.reader(row, options).into_temp_dir() as tmp:
        assert [p.name for p in tmp.iterdir()] == ["big.bin"]
        assert (tmp / "big.bin").read_bytes() == data
