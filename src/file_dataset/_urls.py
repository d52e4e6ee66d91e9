"""Parsing and validation of object URLs, file names and row ids.

Two kinds of location are supported: ``s3://bucket/key`` (the key is used verbatim:
spaces, unicode, ``+`` and ``%`` are never decoded) and local paths, given as ``str``,
``os.PathLike`` or ``file://`` URLs.
"""

from __future__ import annotations

import decimal
import math
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa

from file_dataset._errors import InvalidInputError, InvalidTypeError, quoted, quoted_masked

URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]{1,254}$")
# Bucket names already checked by parse_url, so that the URLs of a large DataFrame (most
# of them in a few buckets) skip the checks (a set's add and lookup are atomic).
_VALID_BUCKETS: set[str] = set()


class Location(NamedTuple):
    """A parsed object location: an S3 object or a local file.

    A named tuple rather than a frozen dataclass: one is made per cell of a DataFrame,
    and a tuple is made four times faster.

    Attributes:
        scheme: ``"s3"`` or ``"file"``.
        bucket: The S3 bucket; empty for local files.
        key: The S3 key (verbatim) or, for local files, the path as a string.
    """

    scheme: str
    bucket: str
    key: str

    @property
    def is_s3(self) -> bool:
        """Whether the location is an S3 object."""
        return self.scheme == "s3"

    @property
    def path(self) -> Path:
        """The local path of a ``file`` location."""
        return Path(self.key)

    def __str__(self) -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self.key}"
        return self.key

    def child(self, *parts: str) -> Location:
        """Returns the location ``self/part/part…`` (``self`` is a prefix or folder)."""
        if self.is_s3:
            prefix = self.key.rstrip("/")
            key = "/".join([prefix, *parts]) if prefix else "/".join(parts)
            return Location("s3", self.bucket, key)
        return Location("file", "", str(local_child(self.key, *parts)))


def local_child(folder: str | Path, *parts: str) -> Path:
    """``folder/part/…``, made absolute if :func:`parse_url` would read it otherwise.

    A path the library returns must name the same file when read back. Under a
    relative ``folder`` such as ``.``, an id ``~x`` gives ``~x/…`` (the home folder to
    :func:`parse_url`, and to a shell), an id ``file:`` gives ``file:/…`` (a file URL
    naming ``/…``) and an id ``s3:`` gives ``s3:/…`` (a mistyped S3 URL).
    """
    path = Path(folder).joinpath(*parts)
    if path.is_absolute():
        return path
    text = str(path)
    try:
        # "~x" is taken for user x's home folder only where that user exists
        same = not text.startswith("~") and parse_url(text) == Location("file", "", text)
    except InvalidInputError:
        same = False
    return path if same else Path.cwd() / path


def is_null(value: Any) -> bool:
    """Whether a cell means "no file" (``None``, NaN, ``pd.NA`` or ``NaT``)."""
    if value is None:
        return True
    if isinstance(value, (str, os.PathLike)):
        return False
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, pa.Scalar):  # an Arrow value in an object column
        return not value.is_valid
    if not pd.api.types.is_scalar(value):  # [None] or an array of NaN: not "no file"
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
    except decimal.InvalidOperation:  # pandas on Decimal("sNaN"): not a number either
        return True


def _checked_s3_parts(value: Any) -> tuple[str, str] | None:
    """``(bucket, key)`` of an ``s3://`` URL with a key, in a bucket already checked."""
    if type(value) is str and value.startswith("s3://"):
        bucket, _, key = value[5:].partition("/")
        if key and bucket in _VALID_BUCKETS and (key.isascii() or _is_utf8(key)):
            return bucket, key
    return None


def _is_utf8(text: str) -> bool:
    """Whether ``text`` holds no lone surrogate, which no UTF-8 (S3 key, Arrow string) can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_checked_s3_url(value: Any) -> bool:
    """Whether ``value`` is an ``s3://`` URL with a key, in a bucket already checked.

    A quick test that makes no location: such a value is one :func:`parse_url` accepts.
    """
    return _checked_s3_parts(value) is not None


# A lone surrogate is os.listdir's stand-in for file-name bytes that are not UTF-8.
_SURROGATE = (
    "is not valid Unicode: it holds a lone surrogate (as Python makes of file-name bytes "
    "that are not UTF-8)"
)


def parse_url(value: Any, *, prefix: bool = False) -> Location:
    """Parses an object URL or a local path.

    Args:
        value: ``s3://bucket/key``, ``file:///path``, a local path string or a
            ``os.PathLike``. A leading ``~`` of a local path is expanded to the home
            folder; relative paths stay relative (to the working directory at transfer
            time, which local Ray workers share with the driver).
        prefix: Whether ``value`` is a destination prefix (then an ``s3://bucket`` with
            no key is allowed).

    Returns:
        The parsed location.

    Raises:
        InvalidInputError: The value is not a supported URL or path.
    """
    known = _checked_s3_parts(value)  # the common case, without the checks below
    if known is not None:
        return Location("s3", *known)
    if isinstance(value, pa.Scalar):  # an Arrow string in an object column, as for ids
        return parse_url(value.as_py(), prefix=prefix)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes) or not isinstance(value, str):
        raise InvalidTypeError(
            f"expected an s3:// URL or a local path, got {type(value).__name__} {quoted(value)}"
        )
    if not value:
        raise InvalidInputError("expected an s3:// URL or a local path, got an empty string")
    if value[:5].lower() == "file:" and value[5:7] != "//":
        if value[5:6] != "/":  # it would otherwise be read as a relative path
            raise InvalidInputError(
                f"{quoted_masked(value)} is not a valid file URL (expected file:///absolute/path)"
            )
        value = "file://" + value[5:]  # RFC 8089's short form: file:/path is file:///path
    match = URL_SCHEME.match(value)
    if match is None:
        _check_not_a_broken_url(value)
        if value.startswith("~"):  # "~/data" or "~user/data", as a shell would read it
            value = os.path.expanduser(value)
        return Location("file", "", _no_nul(value))
    scheme = match.group(1).lower()
    rest = value[match.end() :]
    if scheme == "file":
        parsed = urllib.parse.urlsplit(value)
        if parsed.netloc not in ("", "localhost"):
            raise InvalidInputError(f"file URL must name a local path: {quoted_masked(value)}")
        if "?" in value or "#" in value:
            # urlsplit would drop them with what follows, and so read another file.
            raise InvalidInputError(
                f"file URL {quoted_masked(value)} has a query or fragment ('?' or '#'), "
                "which names no file: write them as %3F and %23 (as Path.as_uri() does), or "
                "give the path"
            )
        if not parsed.path:
            # "file://" and "file://localhost" name no path; read as "" they meant the
            # working directory, where write_files then wrote its row folders.
            raise InvalidInputError(
                f"file URL {quoted_masked(value)} names no path (expected file:///absolute/path)"
            )
        # Path.as_uri() percent-encodes a name's bytes, UTF-8 or not: decoded back with
        # surrogateescape (url2pathname's "replace" read another, missing file)
        path = (
            urllib.parse.unquote(parsed.path, errors="surrogateescape")
            if os.name == "posix"
            else urllib.request.url2pathname(parsed.path)
        )
        return Location("file", "", _no_nul(path))
    if scheme not in ("s3", "s3a"):
        raise InvalidInputError(
            f"unsupported URL scheme {quoted(scheme)} in {quoted_masked(value)}: "
            "use s3://bucket/key or a local path"
        )
    bucket, _, key = rest.partition("/")
    if bucket.lower().startswith("arn:"):
        raise InvalidInputError(
            f"S3 URLs name a bucket, not an ARN: {quoted_masked(value)}; for an access "
            "point, use its alias (s3://<name>-<id>-s3alias/key), which works as a "
            "bucket name"
        )
    if "@" in bucket or ":" in bucket:
        raise InvalidInputError(
            f"credentials or ports are not allowed in S3 URLs: {quoted_masked(value)}; "
            "pass credentials through file_dataset.Options"
        )
    if not _BUCKET.match(bucket):
        raise InvalidInputError(f"invalid S3 bucket name in {quoted_masked(value)}")
    if not key and not prefix:
        raise InvalidInputError(f"S3 URL has no object key: {quoted_masked(value)}")
    if not key.isascii() and not _is_utf8(key):
        raise InvalidInputError(f"S3 URL {quoted_masked(value)} {_SURROGATE}")
    if len(_VALID_BUCKETS) < 4096:
        _VALID_BUCKETS.add(bucket)
    return Location("s3", bucket, key)


def local_folder(value: Any, what: str) -> str:
    """A local folder given as a path or a ``file://`` URL, read as ``into_path`` is.

    So ``download_to("file:///data/x")`` writes to ``/data/x`` (not to a relative folder
    named ``file:``), and an empty string or ``file://`` is refused rather than taken
    for the working directory.

    Raises:
        InvalidInputError: Not a local path or ``file://`` URL (an ``s3://`` URL, say).
    """
    if isinstance(value, str) and not value:
        raise InvalidInputError(f"{what}: expected a local folder, got an empty string")
    if isinstance(value, bytes) or not isinstance(value, str | os.PathLike):
        raise InvalidTypeError(
            f"{what}: expected a local folder (a path or a file:// URL), got "
            f"{type(value).__name__} {quoted(value)}"
        )
    # Told by its scheme before it is parsed: parse_url would judge an S3 URL's bucket
    # name, or name s3:// as the scheme to use.
    text = os.fspath(value)
    match = URL_SCHEME.match(text)
    scheme = match.group(1).lower() if match else "file"
    if scheme in ("s3", "s3a"):
        raise InvalidInputError(
            f"{what} must be a local folder, got the S3 URL {quoted_masked(text)}"
        )
    if scheme != "file":
        raise InvalidInputError(
            f"{what}: expected a local folder (a path or a file:// URL), got {quoted_masked(text)}"
        )
    try:
        return os.fspath(parse_url(value, prefix=True).path)
    except InvalidInputError as e:
        raise type(e)(f"{what}: {e}") from None


def _no_nul(path: str) -> str:
    """Refuses a local path with a NUL character, which no file system allows."""
    if "\0" in path:
        raise InvalidInputError(f"local path {quoted(path)} contains a NUL character")
    return path


# "s3:/bucket/key", "s3:bucket/key", "S3:\\bucket\\key", "s3//bucket/key": an S3 URL
# with its "://" mistyped
_BROKEN_S3_URL = re.compile(r"^s3a?(:(?!//)|//)", re.IGNORECASE)
# fsspec's chained URLs, such as "simplecache::s3://bucket/key"
_CHAINED_URL = re.compile(r"::[A-Za-z][A-Za-z0-9+.\-]*://")


def _check_not_a_broken_url(value: str) -> None:
    """Refuses what would otherwise be read as a relative path by mistake.

    That is a mistyped S3 URL, or another way of naming an object: an ARN, an fsspec
    chained URL.
    """
    if _BROKEN_S3_URL.match(value):
        raise InvalidInputError(
            f"{quoted_masked(value)} is not a valid S3 URL (expected s3://bucket/key)"
        )
    if value[:4].lower() == "arn:":
        raise InvalidInputError(
            f"{quoted_masked(value)} is an ARN, not a URL or a local path: write the object "
            "as s3://bucket/key (for an access point, its alias works as the bucket name; "
            "for a local file of that name, ./ before it)"
        )
    if _CHAINED_URL.search(value):
        raise InvalidInputError(
            f"{quoted_masked(value)} is an fsspec chained URL, which this library does not "
            "read: give the s3:// URL of the object itself (and cache or unpack it in your "
            "own code)"
        )
    stripped = value.lstrip()
    if stripped != value and (URL_SCHEME.match(stripped) or _BROKEN_S3_URL.match(stripped)):
        raise InvalidInputError(
            f"{quoted_masked(value)} has whitespace before a URL: remove it (as it is, "
            "the value would be read as a local path)"
        )


def check_component(value: Any, what: str) -> str:
    """Checks that a file name or row id is safe to use as one path component.

    Args:
        value: The name or id. Ids that are not strings are converted with ``str``.
        what: What the value is, for the error message (``"file name"``, ``"id"``).

    Returns:
        The value as a string.

    Raises:
        InvalidInputError: The value is bytes or a boolean, empty, ``.``/``..``,
            absolute, or contains a path separator, a NUL character or a lone
            surrogate.
    """
    if isinstance(value, bytes | bytearray | memoryview):  # str() would make "b'...'" of it
        raise InvalidInputError(f"{what} {quoted(value)} is bytes: decode it to a str first")
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b":
        raise InvalidInputError(  # str() would make a folder named "True" of it
            f"{what} {quoted(value)} is a boolean: give a str or an int"
        )
    text = value if isinstance(value, str) else str(value)
    if (
        not text
        or text in (".", "..")
        or "/" in text
        or "\\" in text
        or "\x00" in text
        or os.path.isabs(text)
    ):
        raise InvalidInputError(
            f"{what} {quoted(value)} cannot be used as a path component: it must be non-empty, "
            "not '.' or '..', and contain no '/', '\\' or NUL character"
        )
    if not text.isascii() and not _is_utf8(text):
        # no S3 key or Arrow string can hold it, and UnicodeEncodeError came mid-call
        raise InvalidInputError(f"{what} {quoted(value)} {_SURROGATE}")
    return text


def check_id(value: Any) -> str:
    """Checks a row id: a str or an int (or another scalar whose ``str`` names it).

    Returns:
        The id as a string.

    Raises:
        InvalidInputError: The id is a float (``5.0`` would name a folder ``5.0``, not
            ``5``), a collection (a list, tuple, dict, ...: a dict of columns given as
            one row, say), bytes or a boolean, or not a safe path component.
    """
    if isinstance(value, pa.Scalar):  # from an object column built of Arrow values
        value = value.as_py()
    if isinstance(value, str | int | bytes | bytearray | memoryview):  # bytes: see below
        return check_component(value, "id")
    floating = (
        isinstance(value, float | complex)
        or getattr(getattr(value, "dtype", None), "kind", "") in ("f", "c")
        # 5.0, 5.5, 5E+1, Infinity: any exponent but 0 (an integral decimal has 0)
        or (isinstance(value, decimal.Decimal) and value.as_tuple().exponent != 0)
    )
    if floating or isinstance(value, Iterable) or hasattr(value, "keys"):
        kind = "a float" if isinstance(value, float) else f"of type {type(value).__name__}"
        hint = (
            " (convert the column, e.g. frame['id'].astype('int64'))"
            if floating
            else " (a dict of columns is one row: pass pd.DataFrame(...) for several)"
            if isinstance(value, list | tuple)
            else ""
        )
        raise InvalidInputError(f"id {quoted(value)} is {kind}: give a str or an int{hint}")
    return check_component(value, "id")


# The longest file or folder name (in bytes) of the usual local file systems.
NAME_MAX = 255
KEY_MAX = 1024  # S3's limit on a key, in UTF-8 bytes


def check_local_name(text: str, what: str) -> None:
    """Checks that a file name or id fits in one component of a local path.

    S3 keys allow longer components than local file systems, so this is checked only
    where a name becomes a local file or folder, before anything is transferred.

    Raises:
        InvalidInputError: ``text`` is longer than :data:`NAME_MAX` bytes.
    """
    size = len(os.fsencode(text))
    if size > NAME_MAX:
        raise InvalidInputError(
            f"{what} {text[:40]!r}... is {size} bytes long: a local file or folder name "
            f"can have at most {NAME_MAX}"
        )


def check_key_room(into: Location, ids: Iterable[str]) -> None:
    """Checks that every id leaves room under an S3 ``into`` for a one-byte file name.

    Raises:
        InvalidInputError: ``<into>/<id>/x`` would be longer than :data:`KEY_MAX` bytes
            for some id (its outputs could not be written under any name).
    """
    room = KEY_MAX - len(into.child("").key.encode("utf-8", "surrogatepass")) - 2
    for row_id in ids:
        size = len(row_id.encode("utf-8", "surrogatepass"))
        if size > room:
            raise InvalidInputError(
                f"id {quoted(row_id)} is {size} bytes long: under {quoted(str(into))} "
                f"an id can have at most {max(room, 0)} bytes, as S3 keys can have at most "
                f"{KEY_MAX} (<into_path>/<id>/<file name>)"
            )


def temp_prefix(name: str, limit: int = 64) -> str:
    """A prefix for a temporary file or folder named after ``name``.

    File names are limited to 255 bytes, so a temporary name built from a long (but
    valid) file name or id would fail: only the first ``limit`` UTF-8 bytes are kept.
    """
    short = name.encode("utf-8", "ignore")[:limit].decode("utf-8", "ignore")
    return f".{short}."
