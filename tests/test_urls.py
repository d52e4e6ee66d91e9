"""Validation of URLs, file names, row ids and file DataFrames (no I/O)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import file_dataset
from file_dataset._frame import parse_frame, parse_row
from file_dataset._urls import Location, check_component, is_null, parse_url

UNSAFE_COMPONENTS = ["../x", "a/b", "..", ".", "", "/abs", "a\\b", "\\", "x\x00y"]


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [
        ("s3://bucket/key.mha", "bucket", "key.mha"),
        ("s3://my-bucket/a/b/c.mha", "my-bucket", "a/b/c.mha"),
        ("s3://bucket/with space.mha", "bucket", "with space.mha"),
        ("s3://bucket/ünï/cödé.mha", "bucket", "ünï/cödé.mha"),
        ("s3://bucket/a+b.mha", "bucket", "a+b.mha"),
        ("s3://bucket/a%20b.mha", "bucket", "a%20b.mha"),
        ("s3://bucket/100%.mha", "bucket", "100%.mha"),
        ("S3://bucket/upper-scheme", "bucket", "upper-scheme"),
    ],
)
def test_s3_url_key_is_verbatim(url: str, bucket: str, key: str) -> None:
    loc = parse_url(url)
    assert loc == Location("s3", bucket, key)
    assert loc.is_s3
    assert str(loc) == f"s3://{bucket}/{key}"


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("relative/file.mha", "relative/file.mha"),
        ("/abs/file.mha", "/abs/file.mha"),
        (Path("/abs/p.mha"), "/abs/p.mha"),
        ("file:///abs/f.mha", "/abs/f.mha"),
        ("file://localhost/abs/f.mha", "/abs/f.mha"),
        ("file:/abs/f.mha", "/abs/f.mha"),  # RFC 8089's short form (read as relative before)
        ("FILE:/abs/scan%231.mha", "/abs/scan#1.mha"),
    ],
)
def test_local_paths(value: str | Path, path: str) -> None:
    loc = parse_url(value)
    assert not loc.is_s3
    assert loc.path == Path(path)


def test_a_leading_tilde_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert parse_url("~/data/a.mha").path == Path("/home/someone/data/a.mha")
    assert parse_url(Path("~")).path == Path("/home/someone")
    assert parse_url("data/~a.mha").path == Path("data/~a.mha")  # only a leading one
    assert parse_url("file:///tmp/~/a").path == Path("/tmp/~/a")  # URLs are verbatim


@pytest.mark.parametrize(
    "value",
    [
        "ftp://host/file.mha",
        "http://host/file.mha",
        "gs://bucket/key",
        "s3://bucket",
        "s3://bucket/",
        "s3:///key",
        "s3://_bad/key",
        "file://remotehost/x",
        "",
        "s3:/bucket/key",
        "S3:bucket/key",
        "s3a:/bucket/key",
        "file:relative/x.mha",
        " s3://bucket/key",
        "  s3:/bucket/key",
    ],
)
def test_invalid_url_is_value_error_naming_it(value: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_url(value)
    assert isinstance(info.value, file_dataset.InvalidInputError)
    if value:
        assert value in str(info.value)


def test_a_mistyped_s3_url_is_refused_not_read_as_a_relative_path() -> None:
    """Before, these failed only at the transfer, as missing files under the cwd."""
    with pytest.raises(ValueError) as info:
        parse_url("s3:/bucket/key")
    assert str(info.value) == "'s3:/bucket/key' is not a valid S3 URL (expected s3://bucket/key)"
    with pytest.raises(ValueError) as info:
        parse_url(" s3://bucket/key")
    assert str(info.value) == (
        "' s3://bucket/key' has whitespace before a URL: remove it (as it is, the value "
        "would be read as a local path)"
    )
    frame = pd.DataFrame({"id": ["r7"], "image.mha": ["s3:/bucket/key"]})
    with pytest.raises(ValueError, match=r"row id 'r7'.*column 'image\.mha'.*'s3:/bucket/key'"):
        file_dataset.reader(frame).into_size_table()
    for fine in ("s3-data/key", "s3_/x", " spaced name", "a b", "s3://bucket/key "):
        assert parse_url(fine).key.endswith(fine.rsplit("/", 1)[-1])


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("arn:aws:s3:::scans/p01/image.mha", "is an ARN, not a URL or a local path"),
        ("simplecache::s3://scans/p01/image.mha", "is an fsspec chained URL"),
        ("s3//scans/p01/image.mha", "is not a valid S3 URL (expected s3://bucket/key)"),
        ("S3///scans/p01/image.mha", "is not a valid S3 URL (expected s3://bucket/key)"),
    ],
)
def test_other_ways_of_naming_an_object_are_refused_not_read_as_local_paths(
    value: str, said: str
) -> None:
    """Before, these were relative paths, and failed only at the transfer (not found)."""
    with pytest.raises(file_dataset.InvalidInputError) as info:
        parse_url(value)
    assert str(info.value).startswith(f"{value!r} {said}")
    for fine in ("s3-x//y", "notes::draft.txt", "dir/arn:x"):  # still local paths
        assert parse_url(fine) == Location("file", "", fine)


def test_an_access_point_arn_is_refused_for_what_it_is() -> None:
    """Before: "credentials or ports are not allowed in S3 URLs" (the ARN's colons)."""
    url = "s3://arn:aws:s3:us-east-1:123456789012:accesspoint/myap/key.txt"
    with pytest.raises(file_dataset.InvalidInputError) as info:
        parse_url(url)
    assert str(info.value) == (
        f"S3 URLs name a bucket, not an ARN: {url!r}; for an access point, use its alias "
        "(s3://<name>-<id>-s3alias/key), which works as a bucket name"
    )
    assert parse_url("s3://myap-abc123-s3alias/key.txt").bucket == "myap-abc123-s3alias"


@pytest.mark.parametrize("value", [123, 1.5, b"s3://bucket/key", ["s3://bkt/k"]])
def test_non_string_url_is_value_error(value: object) -> None:
    with pytest.raises(ValueError, match="expected an s3:// URL or a local path"):
        parse_url(value)


@pytest.mark.parametrize(
    "value",
    [
        "s3://user:secret@bucket/k",
        "s3://secret@bucket/k",
        "s3://AKIDEXAMPLE:wJalr/secret/K7MDENG@bucket/k",  # AWS secrets hold "/"
        "s3://AKIDEXAMPLE:/secret/K7MDENG@bucket/k",  # even first
        "s3://user:pa@secret@bucket/k",  # and passwords an unencoded "@"
        "ftp://user:secret@host/k",
        "file://user:secret@host/k",
    ],
)
def test_credentials_in_url_never_reach_the_message(value: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_url(value)
    assert "secret" not in str(info.value)
    assert "secret" not in repr(info.value)
    assert "***@" in str(info.value)


def test_prefix_allows_bucket_without_key() -> None:
    assert parse_url("s3://bucket", prefix=True) == Location("s3", "bucket", "")
    assert parse_url("s3://bucket/out/", prefix=True) == Location("s3", "bucket", "out/")


@pytest.mark.parametrize(
    ("prefix", "child"),
    [
        ("s3://bkt", "s3://bkt/1/x.mha"),
        ("s3://bkt/", "s3://bkt/1/x.mha"),
        ("s3://bkt/out", "s3://bkt/out/1/x.mha"),
        ("s3://bkt/out/", "s3://bkt/out/1/x.mha"),
        ("s3://bkt/out//", "s3://bkt/out/1/x.mha"),
    ],
)
def test_child_of_s3_prefix_ignores_trailing_slashes(prefix: str, child: str) -> None:
    assert str(parse_url(prefix, prefix=True).child("1", "x.mha")) == child


@pytest.mark.parametrize("value", UNSAFE_COMPONENTS)
def test_unsafe_component_is_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="cannot be used as a path component"):
        check_component(value, "file name")


@pytest.mark.parametrize("value", ["a", "a b", "ünïcode", "a+b", "%20", "100%", ".hidden", "x.."])
def test_safe_component_is_accepted(value: str) -> None:
    assert check_component(value, "file name") == value


def test_int_component_becomes_string() -> None:
    assert check_component(7, "id") == "7"
    assert check_component(np.int64(42), "id") == "42"


@settings(max_examples=25, deadline=None)
@given(
    st.text(min_size=0, max_size=8),
    st.sampled_from(["/", "\\", "\x00"]),
    st.text(min_size=0, max_size=8),
)
def test_any_name_with_a_separator_is_rejected(before: str, separator: str, after: str) -> None:
    name = before + separator + after
    with pytest.raises(ValueError):
        check_component(name, "file name")
    with pytest.raises(ValueError):
        parse_row({name: "s3://bucket/key"})


@pytest.mark.parametrize("value", [None, float("nan"), np.nan, pd.NA, pd.NaT, np.float64("nan")])
def test_null_cells(value: object) -> None:
    assert is_null(value)


@pytest.mark.parametrize("value", ["", "s3://bkt/k", Path("x"), 0, 0.0, math.inf])
def test_non_null_cells(value: object) -> None:
    assert not is_null(value)


# --- rows and file DataFrames ------------------------------------------------------


def test_row_skips_id_and_keeps_nulls() -> None:
    table = parse_row(
        {"id": "ignored", "a.mha": "s3://bkt/a", "b.mha": None, "c.mha": float("nan")}
    )
    assert table.ids is None
    assert table.columns == ["a.mha", "b.mha", "c.mha"]
    assert table.cells == [[Location("s3", "bkt", "a"), None, None]]


def test_row_from_series() -> None:
    table = parse_row(pd.Series({"a.mha": "s3://bkt/a", "b.mha": pd.NA}))
    assert table.cells == [[Location("s3", "bkt", "a"), None]]


@pytest.mark.parametrize("name", UNSAFE_COMPONENTS)
def test_row_with_unsafe_name_is_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        parse_row({name: "s3://bkt/k"})


def test_row_with_bad_url_names_column_and_value() -> None:
    with pytest.raises(ValueError, match=r"column 'a\.mha'.*ftp://host/x"):
        parse_row({"a.mha": "ftp://host/x"})


def test_frame_with_bad_url_names_row_id() -> None:
    frame = pd.DataFrame({"id": ["r1", "r2"], "a.mha": ["s3://bkt/a", "ftp://host/x"]})
    with pytest.raises(ValueError, match=r"row id 'r2', column 'a\.mha'.*ftp://host/x"):
        parse_frame(frame)


def test_frame_ids_become_strings_in_order() -> None:
    frame = pd.DataFrame({"a.mha": ["s3://bkt/1", "s3://bkt/2", None], "id": [3, 1, 2]})
    table = parse_frame(frame)
    assert table.ids == ["3", "1", "2"]
    assert table.columns == ["a.mha"]
    assert table.cells == [[Location("s3", "bkt", "1")], [Location("s3", "bkt", "2")], [None]]


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (pd.DataFrame({"a.mha": ["s3://bkt/k"]}), "needs an 'id' column.*'a.mha'\\]$"),
        (
            pd.DataFrame({"id": ["1"], "a.mha": ["s3://bkt/k"]}).set_index("id"),
            "needs an 'id' column.*the ids are its index: frame.reset_index\\('id'\\) makes them",
        ),
        (pd.DataFrame({"id": ["1", "1"], "a.mha": ["s3://bkt/k", "s3://bkt/l"]}), "unique"),
        (pd.DataFrame({"id": [1, 1.0], "a.mha": ["s3://bkt/k", "s3://bkt/l"]}), "is a float"),
        (pd.DataFrame({"id": [1, "1"], "a.mha": ["s3://bkt/k", "s3://bkt/l"]}), "unique"),
        (pd.DataFrame({"id": ["1", None], "a.mha": ["s3://bkt/k", "s3://bkt/l"]}), "null"),
        (pd.DataFrame({"id": [1.0, np.nan], "a.mha": ["s3://bkt/k", "s3://bkt/l"]}), "null"),
        (pd.DataFrame({"id": pd.array([1, pd.NA], dtype="Int64"), "a.mha": ["x", "y"]}), "null"),
        (pd.DataFrame({"id": ["../x"], "a.mha": ["s3://bkt/k"]}), "path component"),
        (pd.DataFrame({"id": ["1"], "../a.mha": ["s3://bkt/k"]}), "path component"),
        (pd.DataFrame({"id": ["1"], 5: ["s3://bkt/k"]}), "must be strings"),
        (pd.DataFrame([["1", "s3://bkt/k", "s3://bkt/l"]], columns=["id", "a", "a"]), "unique"),
        (pd.DataFrame([["1", "2", "s3://bkt/l"]], columns=["id", "id", "a"]), "exactly one"),
    ],
)
def test_invalid_frame_is_value_error(frame: pd.DataFrame, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        file_dataset.reader(frame)


def test_reader_rejects_non_mapping() -> None:
    with pytest.raises(ValueError, match=r"expected one row \(a mapping of file name to URL"):
        file_dataset.reader(["s3://bkt/k"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["file:///d/scan#1.mha", "file:///d/scan?v=2", "file:///d/scan?", "file:///d/#"]
)
def test_a_file_url_with_a_query_or_fragment_is_refused(value: str) -> None:
    # urlsplit keeps only the path: "file:///d/scan#1.mha" read /d/scan, another file.
    with pytest.raises(ValueError, match=r"query or fragment.*%3F and %23") as info:
        parse_url(value)
    assert repr(value) in str(info.value)
    assert parse_url("file:///d/scan%231.mha").path == Path("/d/scan#1.mha")
    assert parse_url("/d/scan#1.mha").path == Path("/d/scan#1.mha")  # a plain path is verbatim
    assert parse_url(Path("/d/scan#1.mha").as_uri()).path == Path("/d/scan#1.mha")


@pytest.mark.parametrize("value", ["file://", "FILE://localhost", "file:"])
def test_a_file_url_without_a_path_is_refused(value: str) -> None:
    with pytest.raises(file_dataset.InvalidInputError) as info:
        parse_url(value, prefix=True)
    assert repr(value) in str(info.value)
    assert "expected file:///absolute/path" in str(info.value)


def test_write_files_into_a_file_url_without_a_path_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: "file://" was the working directory, where the row folder was made."""
    source = tmp_path / "a.txt"
    source.write_bytes(b"a")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    with pytest.raises(file_dataset.InvalidInputError, match="names no path"):
        file_dataset.write_files({"a.txt": source}, "file://", "row1")
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("value", ["/d/f\x00x", "file:///d/f%00x", "rel\x00"])
def test_a_local_path_with_a_nul_is_refused_naming_the_row_and_column(value: str) -> None:
    # Before, os.open's bare "embedded null byte" came at the transfer, naming nothing.
    frame = pd.DataFrame({"id": ["ok", "row7"], "image.mha": ["/d/fine", value]})
    with pytest.raises(
        file_dataset.InvalidInputError, match=r"row id 'row7', column 'image\.mha'.*NUL"
    ):
        file_dataset.reader(frame)


def test_a_memoryview_id_is_refused_as_bytes() -> None:
    with pytest.raises(ValueError, match="is bytes: decode it"):
        check_component(memoryview(b"x"), "id")


def test_long_values_are_cut_in_messages() -> None:
    # A cell holding a file's bytes, or a huge string, made messages (and each dropped
    # row's log line) as long as the file.
    for value, unit in ((b"\x00" * 5_000_000, "bytes"), ("ftp://" + "a" * 1_000_000, "characters")):
        frame = pd.DataFrame({"id": ["v1"], "vol.raw": [value]})
        with pytest.raises(ValueError) as info:
            file_dataset.reader(frame)
        message = str(info.value)
        assert len(message) < 600
        assert "row id 'v1'" in message
        assert f"... ({len(value)} {unit})" in message
    with pytest.raises(ValueError) as info:
        parse_url("s3://" + "b" * 5000)
    assert len(str(info.value)) < 400
    # 50 repeated ids of 3,000 characters: ten are shown, each cut
    repeated = [f"{i:02d}" + "x" * 3000 for i in range(50)] * 2
    with pytest.raises(
        ValueError, match=r"repeated ids: \['00x+\.\.\. \(3002 characters\), '01x+"
    ) as info:
        file_dataset.reader(pd.DataFrame({"id": repeated, "f": [None] * 100}))
    assert len(str(info.value)) < 2600
    assert str(info.value).endswith(" and 40 more")
    with pytest.raises(ValueError) as info:
        file_dataset.write_files({"a": "s3://my-bucket/" + "V" * 3000}, "s3://bkt/out", "r1")
    assert "row id 'r1', file 'a': write_files sends local files" in str(info.value)
    assert len(str(info.value)) < 500


def test_a_transfer_errors_url_is_cut_only_beyond_any_valid_s3_url(tmp_path: Path) -> None:
    # A cell holding a text file's contents reads as a (missing) relative path: its
    # message was as long as the text.
    text = "line of text in a file\n" * 5000
    with pytest.raises(file_dataset.TransferError) as info:  # a name too long, here
        file_dataset.reader(pd.DataFrame({"id": ["r1"], "notes.txt": [text]})).into_blob_table()
    message = str(info.value)
    assert message.startswith("cannot read line of text in a file\\nline of text")  # one line
    assert f"... ({len(text)} characters) (row id 'r1', column 'notes.txt')" in message
    assert len(message) < 1600
    assert info.value.url == text  # the attribute keeps it whole
    longest = "s3://" + "b" * 63 + "/" + "k" * 1024  # S3's longest bucket name and key
    error = file_dataset.TransferError(longest, "NoSuchKey", row_id="r1", column="c")
    assert str(error) == f"cannot read {longest} (row id 'r1', column 'c'): NoSuchKey"


@pytest.mark.parametrize(
    ("column", "shown"),
    [
        # a hive partition column, as pandas.read_parquet gives it
        (pd.Categorical([2024, 2025]), "category (int64) values (row id 'a': 2024)"),
        (pd.Categorical([None, 7.5]), "category (float64) values (row id 'b': 7.5)"),
        (
            pd.Categorical([pd.Timestamp("2024-01-02")] * 2),
            "category (datetime64[",  # [ns] with pandas 2, [us] with pandas 3
        ),
    ],
)
def test_a_categorical_column_of_numbers_or_dates_is_refused_whole(
    column: object, shown: str
) -> None:
    """A categorical column (a hive partition column from read_parquet) was read cell
    by cell: an error naming one cell, or a number taken for a relative path."""
    frame = pd.DataFrame({"id": ["a", "b"], "year": column})
    with pytest.raises(file_dataset.InvalidInputError) as info:
        file_dataset.reader(frame)
    assert str(info.value).startswith(f"column 'year' holds {shown}")
    assert str(info.value).endswith("so drop the others first (frame.drop(columns=['year']))")
    strings = frame.assign(year=pd.Categorical(["s3://bk/2024/x", "s3://bk/2025/x"]))
    assert [row[0].key for row in parse_frame(strings).cells] == ["2024/x", "2025/x"]


@pytest.mark.parametrize(
    "column",
    [
        [b"\x89HDF", b"x"],
        [None, bytearray(b"x")],
        pd.array([b"a", None], dtype=pd.ArrowDtype(pa.binary())),
    ],
)
def test_a_column_of_bytes_is_refused_before_any_row(column: object) -> None:
    # A blob table's contents given where URLs belong (read_file_dataset's output fed to
    # a Pipeline): every row failed one by one, each logging the whole file.
    frame = pd.DataFrame({"id": ["a", "b"], "vol.raw": column})
    with pytest.raises(ValueError, match=r"column 'vol\.raw' holds bytes \(row id '[ab]'"):
        file_dataset.reader(frame)
    pipeline = file_dataset.Pipeline(lambda i, o: {}, {"into_path": "/nonexistent/out"})
    with pytest.raises(ValueError, match=r"column 'vol\.raw' holds bytes"):
        pipeline(frame)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # STS's answer (botocore logs it at DEBUG before anything knows the keys)
        (
            "<AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>wJal/K7+x=</SecretAccessKey>"
            "<SessionToken>IQoJ//abc+d==</SessionToken>",
            "<AccessKeyId>***</AccessKeyId><SecretAccessKey>***</SecretAccessKey>"
            "<SessionToken>***</SessionToken>",
        ),
        # container and SSO credentials, as JSON
        (
            '{"AccessKeyId": "ASIAX", "SecretAccessKey": "s/e+c", "Token": "t/o+k", '
            '"NextToken": "n"}',
            '{"AccessKeyId": "***", "SecretAccessKey": "***", "Token": "***", "NextToken": "n"}',
        ),
        # signatures with "/" (decoded SigV2 and SAS), and the text after a URL kept
        (
            "(https://b/k?AWSAccessKeyId=AKIAX&Signature=ab/cd+ef/GH=) and sig=1",
            "(https://b/k?AWSAccessKeyId=***&Signature=***) and sig=***",
        ),
        (
            "https://a.blob.core.windows.net/c?sv=1&sig=ab/cd%2Bef=&se=2",
            "https://a.blob.core.windows.net/c?sv=1&sig=***&se=2",
        ),
        # a token in the other forms of botocore's header records, and a query alone
        (
            "[('X-Amz-Security-Token', b'IQoJ+tok=')] {'X-Amz-Security-Token': bytearray(b'B')}",
            "[('X-Amz-Security-Token', b'***')] {'X-Amz-Security-Token': bytearray(b'***')}",
        ),
        ("X-Amz-Security-Token=IQoJ+tok&x=1", "X-Amz-Security-Token=***&x=1"),
        # Key=value, as a failing credential_process may print what it got
        (
            "got SecretAccessKey=wJal/K7+x and SessionToken=IQoJ;AWS_SECRET_ACCESS_KEY=s",
            "got SecretAccessKey=*** and SessionToken=***;AWS_SECRET_ACCESS_KEY=***",
        ),
        ("column session_token_file.txt", "column session_token_file.txt"),
        # ... as YAML and INI (~/.aws/credentials) show them (helper-111)
        (
            "current values:\nSecretAccessKey: wJal/K7+x\naws_session_token = IQoJ+t\nx: 1",
            "current values:\nSecretAccessKey: ***\naws_session_token = ***\nx: 1",
        ),
        # a signed URL's query percent-encoded in a key, as obstore quotes it (helper-111)
        (
            "GET http://h/b/k.mha%3FX-Amz-Algorithm%3DAWS4-HMAC-SHA256%26X-Amz-Credential%3D"
            "AKIAQ%252F20250101%252Fus-east-1%26X-Amz-Security-Token%3DIQoJ%252Bt%26"
            "X-Amz-Signature%3Ddeadbeef not found",
            "GET http://h/b/k.mha%3FX-Amz-Algorithm%3DAWS4-HMAC-SHA256%26X-Amz-Credential%3D"
            "***%26X-Amz-Security-Token%3D***%26X-Amz-Signature%3D*** not found",
        ),
        ("s3://b/k%3Dv%26signature.bin", "s3://b/k%3Dv%26signature.bin"),
        # ... but not a key's own "%26name%3D" (helper-112)
        ("s3://b/runs%26signature%3Dv2/scan.mha", "s3://b/runs%26signature%3Dv2/scan.mha"),
        ("web/page%3Fid%3D5%26sig%3Dabc/index.html", "web/page%3Fid%3D5%26sig%3Dabc/index.html"),
        # ... but not in a key, nor a message naming the field (a regression hunt's)
        (
            "s3://bkt/exports/session_token=2024-01/part-0.bin",
            "s3://bkt/exports/session_token=2024-01/part-0.bin",
        ),
        ("KeyError: session_token: missing", "KeyError: session_token: missing"),
        # a shell's quoted values (helper-114)
        (
            "declare -x AWS_SECRET_ACCESS_KEY=\"wJal/K7+x\"\nexport AWS_SESSION_TOKEN='IQ+t' "
            "AWS_SESSION_TOKEN:IQ+v",
            "declare -x AWS_SECRET_ACCESS_KEY=\"***\"\nexport AWS_SESSION_TOKEN='***' "
            "AWS_SESSION_TOKEN:***",
        ),
        # ... but not in a key's parentheses or braces (helper-116)
        (
            "s3://b/data/(session_token=abc)/x.bin cfg/{SessionToken: v2}/y.bin",
            "s3://b/data/(session_token=abc)/x.bin cfg/{SessionToken: v2}/y.bin",
        ),
        # the token S3's ExpiredToken answer quotes (helper-114)
        (
            "<Code>ExpiredToken</Code><Token-0>IQoJ+tok</Token-0>",
            "<Code>ExpiredToken</Code><Token-0>***</Token-0>",
        ),
        # YAML's other spellings (helper-112)
        (
            "aws_secret_access_key: wJal/K7+x\nAWS_SESSION_TOKEN: IQoJ+t",
            "aws_secret_access_key: ***\nAWS_SESSION_TOKEN: ***",
        ),
        # a column named token keeps its neighbours
        ("['id', 'token', 'image.mha']", "['id', 'token', 'image.mha']"),
        # names that only look like fields: a relative path, a Hive-style key
        ("signature=v2/scan.mha", "signature=v2/scan.mha"),
        (
            "s3://b/runs/signature=v2/credential=x/scan.mha",
            "s3://b/runs/signature=v2/credential=x/scan.mha",
        ),
    ],
)
def test_mask_secrets(text: str, shown: str) -> None:
    from file_dataset._errors import mask_secrets

    assert mask_secrets(text) == shown


def test_a_name_or_id_with_a_lone_surrogate_is_refused_as_invalid_input(tmp_path: Path) -> None:
    """Before: a bare UnicodeEncodeError from the middle of a write to S3, and a local
    folder named with the raw byte 0xff."""
    source = tmp_path / "a"
    source.write_bytes(b"a")
    with pytest.raises(file_dataset.InvalidInputError, match=r"id 'r\\udcff' is not valid"):
        file_dataset.write_files({"x": source}, tmp_path / "out", "r\udcff")
    with pytest.raises(file_dataset.InvalidInputError, match=r"file name 'x\\udcff' is not valid"):
        file_dataset.write_files({"x\udcff": source}, "s3://bkt/out", "r1")
    with pytest.raises(file_dataset.InvalidInputError, match="lone surrogate"):
        file_dataset.reader({"x\udcff": source})
    assert not (tmp_path / "out").exists()
    assert check_component("naïve ünïcode", "id") == "naïve ünïcode"


def test_an_s3_url_with_a_lone_surrogate_is_refused_before_any_transfer(tmp_path: Path) -> None:
    """Before: accepted, then a bare UnicodeEncodeError from obstore mid-transfer (after
    the good rows were written), not a FileDatasetError, without the URL."""
    cells = pd.Series(["s3://bkt/k", "s3://bkt/k\udcff"], dtype=object)  # Arrow refuses it
    frame = pd.DataFrame({"id": ["good", "bad"], "a": cells})
    for _ in range(2):  # the second time, the bucket is known: the quick path checks too
        with pytest.raises(file_dataset.InvalidInputError) as info:
            file_dataset.reader(frame)
        assert str(info.value) == (
            "row id 'bad', column 'a': S3 URL 's3://bkt/k\\udcff' is not valid Unicode: it "
            "holds a lone surrogate (as Python makes of file-name bytes that are not UTF-8)"
        )
    with pytest.raises(file_dataset.InvalidInputError, match="lone surrogate"):
        file_dataset.write_files({"a": tmp_path}, "s3://bkt/out\udcff", "r1")
    assert parse_url("s3://bkt/ünï/画像.mha").key == "ünï/画像.mha"
    assert parse_url(str(tmp_path / "x\udcff")).key == str(tmp_path / "x\udcff")  # local: fine


def test_a_remembered_secret_is_masked_as_a_repr_shows_it_too() -> None:
    """A token read from a file with its line break: botocore's error quotes the header
    as bytes, b'...\\n', which the plain secret did not match (helper-111)."""
    from file_dataset._errors import mask_secrets, remember_secrets

    remember_secrets("IQoJb3JpZ2luX2VjEXAMPLEremembered\n")
    shown = mask_secrets("Invalid header value b'IQoJb3JpZ2luX2VjEXAMPLEremembered\\n'")
    assert shown == "Invalid header value b'***'"


def test_refreshed_secrets_are_remembered_up_to_a_bound() -> None:
    """A role of short sessions renews its credentials at every request: each was kept
    for good (60,000 strings, 22 MB, in a helper's job; helper-116); a bound shared by
    all credentials forgot those of one refreshed once and still in use (helper-117)."""
    from file_dataset import _errors

    _errors.remember_secrets("kept-static-secret-0001")
    _errors.remember_secrets("role-session-secret-01", source=1)  # refreshed once
    for i in range(1000):
        _errors.remember_secrets(f"refreshed-secret-{i:06d}", source=2)
    known = _errors._known_secrets
    assert {"kept-static-secret-0001", "role-session-secret-01"} <= known
    assert {"refreshed-secret-000999", "refreshed-secret-000998"} <= known  # latest two
    assert "refreshed-secret-000997" not in known
    assert _errors.mask_secrets("x refreshed-secret-000999 y") == "x *** y"
    for source in range(3, 3 + _errors._SOURCES_KEPT):  # sources are bounded too
        _errors.remember_secrets(f"other-source-secret-{source}", source=source)
    assert "role-session-secret-01" not in _errors._known_secrets
    assert "kept-static-secret-0001" in _errors._known_secrets


def test_given_secrets_are_remembered_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options made with new credentials per request (a service acting for many
    tenants) kept every one for good: masking an error cost 10 ms at 100,000 secrets
    (helper-134). The most recently remembered are kept; using one again keeps it."""
    from file_dataset import _errors

    monkeypatch.setattr(_errors, "_SECRETS_KEPT", 8)
    # the other tests' secrets are given back afterwards (their clients stay cached)
    monkeypatch.setattr(_errors, "_kept_secrets", {})
    monkeypatch.setattr(_errors, "_known_secrets", _errors._known_secrets)
    _errors.remember_secrets("tenant-secret-in-use")
    for i in range(20):
        _errors.remember_secrets(f"tenant-secret-{i:06d}")
        _errors.remember_secrets("tenant-secret-in-use")  # its client made again
    known = _errors._known_secrets
    assert "tenant-secret-in-use" in known
    assert {f"tenant-secret-{i:06d}" for i in range(13, 20)} <= known
    assert "tenant-secret-000012" not in known
    assert len(_errors._kept_secrets) == 8
    assert _errors.mask_secrets("x tenant-secret-000019 tenant-secret-in-use") == "x *** ***"
    assert _errors.mask_secrets("tenant-secret-000000") == "tenant-secret-000000"


def test_secrets_of_options_in_use_stay_masked_beyond_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client held (a long transfer) while thousands of other credentials were used:
    its secret fell out of the bound and was shown in clear (helper-135). Secrets of
    an owner still alive (an options' runtime) are kept; once it is gone, the bound
    applies to them again."""
    import gc

    from file_dataset import _errors

    class Runtime:  # stands for an options' runtime, which holds the clients
        pass

    monkeypatch.setattr(_errors, "_SECRETS_KEPT", 8)
    monkeypatch.setattr(_errors, "_kept_secrets", {})
    monkeypatch.setattr(_errors, "_owned_secrets", _errors.weakref.WeakKeyDictionary())
    monkeypatch.setattr(_errors, "_known_secrets", _errors._known_secrets)
    in_use = Runtime()
    _errors.remember_secrets("secret-of-a-client-in-use", owner=in_use)
    for i in range(50):
        _errors.remember_secrets(f"other-tenant-secret-{i:06d}", owner=Runtime())
    gc.collect()
    shown = _errors.mask_secrets("quoting secret-of-a-client-in-use")
    assert shown == "quoting ***"
    assert "other-tenant-secret-000001" not in _errors._known_secrets  # owner gone
    del in_use
    gc.collect()
    _errors.remember_secrets("one-more-tenant-secret")
    assert "secret-of-a-client-in-use" not in _errors._known_secrets


def test_a_file_url_of_a_name_that_is_not_utf8_reads_that_file(tmp_path: Path) -> None:
    """Path.as_uri() percent-encodes the name's bytes; the URL was decoded as UTF-8 with
    replacement characters, so another (missing) file was read (helper-126)."""
    name = os.fsdecode(os.fsencode(tmp_path) + b"/scan\xe9.mha")
    Path(name).write_bytes(b"DATA")
    url = Path(name).as_uri()
    assert url.endswith("/scan%E9.mha")
    assert file_dataset.reader({"f": url}).into_blob_table().to_pylist() == [{"f": b"DATA"}]
