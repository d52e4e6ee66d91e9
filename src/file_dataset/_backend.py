"""The small interface every storage backend implements.

The reader, writer and pipeline never look at a URL's scheme: they ask
:func:`backend_for` for the backend of a location and call these few methods. A
different transport (another S3 client library, another cloud) is one new class.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import botocore.exceptions
import numpy as np
import pyarrow as pa

from file_dataset._errors import ObjectAccessDeniedError, TransferError, source_error
from file_dataset._memory import huge_page_buffer, prefault
from file_dataset._options import CallStopped, Options, call_stopped
from file_dataset._urls import KEY_MAX, Location

# A part of a multipart upload as CompleteMultipartUpload takes it (without its number):
# {"ETag": ..., "ChecksumCRC32": ...}.
Part = dict[str, str]
# Object bytes as a backend hands them over: any contiguous buffer, never copied only to
# change its type (Arrow and os.pwrite both take a memoryview).
Blob = bytes | bytearray | memoryview
# The buffer a file-like body (boto3's, a local file's) is read into, reused chunk by
# chunk (obstore's streams choose their own chunk size).
CHUNK_BYTES = 1024 * 1024
# A first response at least this large is streamed into a sink (when one is given)
# instead of being returned as one buffer.
STREAM_BYTES = 8 * 1024 * 1024
# Where a streamed first response goes: called once with the object's total size and
# version tag, as soon as the response's headers are in (on the thread that then reads
# its body), it returns the object's buffer (filled in place) or a function that stores
# ``data`` at byte ``offset`` of the object (a file's).
Store = memoryview | Callable[[int, Blob], None]
Sink = Callable[[int, str | None], Store]
# What a read of a later part reports when the object is no longer the one whose first
# part was read (a ranged GET's If-Match failed, or a local file was rewritten).
CHANGED = (
    "the object changed while it was being read (it was replaced or rewritten after its "
    "first bytes arrived); nothing of it was kept, read it again"
)


def is_weak(tag: str) -> bool:
    """Whether an ETag is weak (``W/"..."``): ``If-Match`` never matches one."""
    return tag.startswith(("W/", "w/"))


def check_same_version(url: str, first: str | None, later: str | None) -> None:
    """Refuses a later part whose ETag is not the first response's.

    ``If-Match`` asks the server to refuse such a part, but some S3-compatible servers
    ignore it, and a weak ETag cannot be asked for; comparing the ETags catches both.
    A response without an ETag cannot be checked (nor can objects of servers that send
    none).

    Raises:
        TransferError: The ETags differ.
    """
    if first and later and first.strip('"') != later.strip('"'):
        raise TransferError(url, CHANGED)


# What a write reports when its local source changed while it was being sent (the
# destination is then left as it was: nothing is written).
SOURCE_CHANGED = (
    "the local file changed while it was being uploaded; nothing was written, write it again"
)

# What a read reports when a body stopped coming part-way, up to max_attempts times.
BODY_STALLED = (
    "the endpoint stopped sending the body part-way: nothing arrived within the "
    "read_timeout of the Options' Config, in each of up to max_attempts responses"
)

# S3's codes for credentials refused whatever the object (not SignatureDoesNotMatch,
# which some S3-compatible servers give for one odd key alone), and for a signature
# whose time is off (a clock 15 minutes wrong fails every request signed with it).
CREDENTIALS_REFUSED = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "TokenRefreshRequired",
        "InvalidToken",
        "InvalidAccessKeyId",
        "RequestTimeTooSkewed",
    }
)
# botocore's errors for credentials it could not find, load or refresh (no request sent),
# and for the profile or config file they come from (AWS_PROFILE naming none, say).
CREDENTIALS_MISSING: tuple[type[Exception], ...] = (
    botocore.exceptions.ProfileNotFound,
    botocore.exceptions.ConfigParseError,
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.SSOError,
    botocore.exceptions.TokenRetrievalError,
)


def credentials_failed(error: BaseException, code: str) -> bool:
    """Whether a transport's ``error`` is one of the credentials themselves.

    ``code`` is S3's error code, if any. Every later request with such credentials
    would fail too, whatever its object.
    """
    return code in CREDENTIALS_REFUSED or isinstance(error, CREDENTIALS_MISSING)


def answered_after(status: str | None, retries: int) -> str:
    """What a failed answer's reason adds, on both transports: `` (503 after 7 retries)``.

    ``status`` is left out (``None``) where the reason already says it (an answer
    without S3's error body reads "503: Service Unavailable"); no retries, no words.
    """
    said = [status] if status else []
    said += [f"after {retries} {'retry' if retries == 1 else 'retries'}"] if retries else []
    return f" ({' '.join(said)})" if said else ""


# What a HEAD of a missing object reports: its 404 has no body naming the error.
HEAD_NOT_FOUND = "not found (404: no such key, or no such bucket)"


def not_found_reason(url: str, code: str, reason: str, *, bare_head: bool) -> str:
    """Why an object was not found, from S3's error ``code`` and ``reason``.

    A missing bucket says so; a missing key gets a hint when its URL's shape explains
    it. ``bare_head``: a HEAD's 404, whose empty body cannot tell the two apart.
    """
    if code == "NoSuchBucket":
        return "the bucket does not exist"
    reason = HEAD_NOT_FOUND if bare_head else reason or "not found"
    if url.endswith("/"):
        hint = (
            "a key ending in '/' names a folder marker object, not the objects under that "
            "prefix (this library lists nothing)"
        )
    elif "?versionid=" in url.lower():
        hint = "'?versionId=' is read as part of the key (only latest versions are read)"
    elif re.search(r"(?i)[?&](?:x-amz-signature|x-amz-credential|awsaccesskeyid)=", url):
        hint = (
            "a signed URL's query is read as part of the key: an s3:// URL names the key "
            "alone, and the Options' credentials sign the request"
        )
    else:
        return reason
    return f"{reason.rstrip('.')}; {hint}"


def file_version(stat: os.stat_result) -> str:
    """A local file's version tag: it changes when the file is replaced or rewritten."""
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def read_source(src: Path) -> bytes:
    """Reads a local file to be written in one request, whole and unchanged.

    Raises:
        TransferError: The file cannot be read, or it changed while it was read (so
            the bytes could be a mix of two versions): nothing has been sent yet.
    """
    try:
        with open(src, "rb") as f:
            before = file_version(os.fstat(f.fileno()))
            data = f.read()
            after = file_version(os.fstat(f.fileno()))
    except OSError as e:  # as a local read says it: ENOENT, EACCES, EIO kept as errno
        raise source_error(e, str(src)) from e
    if before != after:
        raise TransferError(str(src), SOURCE_CHANGED, operation="read")
    return data


# Copies at least this large go through numpy, which copies without holding the GIL.
_GIL_FREE_COPY_BYTES = 64 * 1024


def new_buffer(size: int, *, populate: bool = True) -> memoryview:
    """A writable buffer of ``size`` bytes for an object's contents, not zero-filled.

    ``bytearray(size)`` zero-fills fresh pages while holding the GIL (34 ms per 64 MiB
    on the project's machine, stalling every other transfer); Arrow's allocation from
    the system allocator leaves the memory untouched, so its pages are first touched by
    the copies into it, which run without the GIL. (Arrow's default pool reuses freed
    memory faster but was 2-4x slower to touch the first time, and keeps what it took.)
    A buffer of a huge page or more may be a mapping of its own in huge pages, and its
    pages are faulted in at once unless ``populate`` is false (the caller then faults
    in each part as it reads it, with ``prefault``); see :mod:`file_dataset._memory`.
    """
    view = huge_page_buffer(size)
    if view is None:
        view = memoryview(pa.allocate_buffer(size, memory_pool=pa.system_memory_pool())).cast("B")
    if populate:
        prefault(view)
    return view


def copy_into(view: memoryview, offset: int, data: Blob) -> None:
    """Copies ``data`` into ``view`` at ``offset`` (large copies without the GIL)."""
    n = len(data)
    if n >= _GIL_FREE_COPY_BYTES:
        np.copyto(np.frombuffer(view[offset : offset + n], np.uint8), np.frombuffer(data, np.uint8))
    else:
        view[offset : offset + n] = data


def store_writer(store: Store) -> Callable[[int, Blob], None]:
    """A function that stores ``data`` at byte ``offset`` of what a sink returned."""
    if isinstance(store, memoryview):
        return partial(copy_into, store)
    return store


def write_chunks(write: Callable[[int, Blob], None], offset: int, chunks: Iterator[Blob]) -> None:
    """Stores a stream of buffers with ``write`` at consecutive offsets from ``offset``.

    On a transfer thread, it stops between buffers once the call is stopped (a
    failure, or an interrupt: see ``_options.RunState``): the stream is closed (its
    connection with it) and :class:`CallStopped` raised.
    """
    for chunk in chunks:
        if call_stopped():
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            raise CallStopped
        write(offset, chunk)
        offset += len(chunk)


def readinto_chunks(
    readinto: Callable[[memoryview], int], length: int, short: Callable[[int], Exception]
) -> Iterator[memoryview]:
    """Streams ``length`` bytes from ``readinto`` through one reused buffer.

    Each chunk is a view of the same buffer, valid until the next one is read: the
    caller writes it out first. ``short(done)`` is raised if the source ends early.
    """
    buf = memoryview(bytearray(min(length, CHUNK_BYTES)))
    done = 0
    while done < length:
        n = readinto(buf[: min(len(buf), length - done)])
        if not n:
            raise short(done)
        done += n
        yield buf[:n]


class Backend(Protocol):
    """Reads and writes whole objects or byte ranges of one kind of storage."""

    def read_first(
        self, loc: Location, length: int, sink: Sink | None = None
    ) -> tuple[Blob | None, int, str | None]:
        """Reads up to ``length`` bytes from the start of an object in one request.

        Args:
            loc: The object.
            length: The most bytes to read.
            sink: Optional; a backend may stream a large response (at least
                :data:`STREAM_BYTES`) into what ``sink(total, tag)`` returns (the
                object's buffer, or a function storing bytes at an offset) as it
                arrives, so that it is never held twice in memory, and then return
                ``None`` for the bytes. It must when the object is larger than
                ``length`` (then more parts follow, and ``sink``, called as soon as
                the headers are in, asks for them before the body is read).

        Returns:
            The bytes read (``None`` when they went to the sink), the object's total
            size, and its version tag (an S3 ETag, a local file's identity; ``None``
            when unknown). When the total is not more than ``length`` the bytes are
            the whole object.
        """
        ...

    def read_into(
        self, loc: Location, start: int, view: memoryview, tag: str | None = None
    ) -> None:
        """Fills ``view`` with the object's bytes from ``start`` (a ranged GET).

        When ``tag`` (from :meth:`read_first`) is given, the read fails with
        :data:`CHANGED` if the object no longer has that version (S3: ``If-Match``),
        so the parts of one object always come from the same version.
        """
        ...

    def read_chunks(
        self, loc: Location, start: int, length: int, tag: str | None = None
    ) -> Iterator[Blob]:
        """Reads ``length`` bytes from ``start`` (a ranged GET) as a stream of buffers.

        Used where the bytes go on to a file: each buffer of the transport's is
        written as it arrives, so a part in flight holds about one chunk of memory.
        Raises if the object ends before ``length`` bytes, and, like
        :meth:`read_into`, if it no longer has version ``tag``.
        """
        ...

    def size(self, loc: Location) -> int:
        """The object's size in bytes, without reading its content (a HEAD)."""
        ...

    def write(self, src: Path, loc: Location) -> None:
        """Writes a whole local file to ``loc`` in one request (atomic for local paths)."""
        ...

    def multipart_start(self, loc: Location) -> str:
        """Starts a multipart write and returns its id."""
        ...

    def multipart_part(
        self, loc: Location, upload_id: str, number: int, src: Path, start: int, length: int
    ) -> Part:
        """Writes part ``number`` (from 1) from a byte range of ``src``.

        Returns the part as CompleteMultipartUpload names it: its ``ETag``, and the
        checksum it was sent with (``ChecksumCRC32``), if any.
        """
        ...

    def multipart_complete(self, loc: Location, upload_id: str, parts: list[Part]) -> None:
        """Completes a multipart write from its parts, in part order."""
        ...

    def multipart_abort(self, loc: Location, upload_id: str) -> None:
        """Abandons a multipart write; its parts are discarded."""
        ...

    @property
    def supports_multipart(self) -> bool:
        """Whether large writes should be split into parts."""
        ...


_TRANSPORTS = ("auto", "obstore", "boto3")
# Whether "auto" picks obstore (when installed and able to honour the options): it costs
# a fraction of boto3's client CPU per request (benchmarks/RESULTS.md).
AUTO_PREFERS_OBSTORE = True


T = TypeVar("T")


def backoff(attempt: int) -> float:
    """Seconds to wait before trying again for the ``attempt``-th time (from 1)."""
    return float(min(0.05 * 2**attempt, 2.0))


def retried(call: Callable[[], T], dropped: Callable[[Exception], bool], attempts: int) -> T:
    """``call()``, made again while it raises an answer cut short, ``attempts`` in all.

    ``dropped`` says which errors are such answers: the drops that the library below
    neither wraps nor retries itself.
    """
    for attempt in range(1, attempts):
        try:
            return call()
        except Exception as e:
            if not dropped(e):
                raise
        time.sleep(backoff(attempt))
    return call()


def _client_error(error: TransferError) -> bool:
    """Whether ``error`` is an answer of 400-499 (not a 5xx, a throttle, no answer)."""
    return error.status is not None and 400 <= error.status < 500


def explain_head(backend: Backend, loc: Location, translate: Callable[[], NoReturn]) -> int:
    """The size of an object whose HEAD failed, or the HEAD's error, made clearer.

    A HEAD's answer has no body, so a 4xx other than "not found" (an invalid or
    expired session token, a missing SSE-C key: 400 Bad Request; a gateway that
    refuses HEAD: 405; a 403, which may be an unknown access key, a KMS key's or a
    policy's denial, or a missing key to credentials without ``s3:ListBucket``) shows
    only its status. A one-byte GET of the object then asks again: when it is refused
    with a 4xx, its error (with S3's code and message) is raised instead, as the
    HEAD's; when it is answered, the size it gives is returned (other failures of the
    GET leave the HEAD's error as it was).

    Args:
        backend: The backend whose HEAD failed.
        loc: The object.
        translate: Raises the HEAD's own error (the backend's ``translate_error``).

    Returns:
        The object's size, from the GET's answer.
    """
    try:
        translate()
    except TransferError as failed:
        bare_denial = type(failed) is ObjectAccessDeniedError and failed.status == 403
        if not (type(failed) is TransferError or bare_denial) or not _client_error(failed):
            raise
        try:
            _, total, _ = backend.read_first(loc, 1)
        except TransferError as told:
            if not _client_error(told):
                raise failed from failed.__cause__
            clearer = type(told)(str(loc), told.reason, operation="head")
            clearer._take_findings(told)
            try:
                raise clearer from failed
            finally:
                del clearer  # (kept in this frame, which its traceback holds: a cycle)
        return total


def transport_of(options: Options) -> str:
    """The transport asked for: ``FILE_DATASET_TRANSPORT`` if set, else ``options.transport``.

    The environment variable (``auto``, ``obstore`` or ``boto3``, in any case)
    overrides every ``Options`` of the process, and of Ray workers that inherit it; the
    benchmark suite uses it to measure both transports. Another value is logged once,
    at WARNING, and ignored.
    """
    forced = os.environ.get("FILE_DATASET_TRANSPORT")
    if forced:
        value = forced.strip().lower()
        if value in _TRANSPORTS:
            return value
        if forced not in _IGNORED_TRANSPORTS:
            _IGNORED_TRANSPORTS.add(forced)
            logging.getLogger("file_dataset").warning(
                "FILE_DATASET_TRANSPORT=%r is not one of %s: ignored, so the options' "
                "transport applies",
                forced,
                ", ".join(_TRANSPORTS),
            )
    return str(getattr(options, "transport", "auto"))


_IGNORED_TRANSPORTS: set[str] = set()  # values of FILE_DATASET_TRANSPORT logged once


# Caches keyed by an Options object's identity (backend_for here, and the can_serve
# lookups of _s3_obstore) keep that object alive, and a Ray worker unpickles a
# new, equal Options for every task: such a cache is emptied when it reaches this size.
_MAX_BY_IDENTITY = 256


def remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Stores ``value`` in a cache keyed by an options identity, keeping it bounded."""
    if len(cache) >= _MAX_BY_IDENTITY:
        cache.clear()
    cache[key] = value


# backend_for is called once per object; its answer depends only on the options (by
# identity), the kind of location (local, S3, S3 with a key obstore cannot address), and
# the FILE_DATASET_TRANSPORT override, so each answer is kept (backends hold no state of
# a transfer and are shared by threads).
_BACKENDS: dict[tuple[int, str, str | None], tuple[Options, Backend]] = {}
# A forked child decides again (its parent's obstore backends are unusable there).
os.register_at_fork(after_in_child=_BACKENDS.clear)
_FALLBACK_SAID: list[bool] = []  # whether this process said it uses boto3 after a fork
os.register_at_fork(after_in_child=_FALLBACK_SAID.clear)
# object_store's Path refuses ASCII control characters in a key (and "", "." and ".."
# segments, and strips a leading or trailing "/"), although S3 allows all of them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ODD_SEGMENTS = frozenset({"", ".", ".."})


def obstore_addresses(key: str) -> bool:
    """Whether obstore requests exactly ``key``.

    Any string is a valid S3 key, but object_store's ``Path`` drops a leading or
    trailing ``/`` (so ``"/a"`` would silently read the object ``"a"``) and refuses
    empty, ``.`` and ``..`` segments (``a//b``, ``a/./b``) and ASCII control
    characters. Such keys go through boto3, which sends every key verbatim. So do keys
    longer than S3's 1,024 bytes (only other servers hold them): the Rust ``http``
    crate caps a URL at 65,534 bytes, and obstore panics on a longer one instead of
    raising an error.
    """
    return (
        len(key) <= KEY_MAX
        and (key.isascii() or len(key.encode("utf-8", "surrogatepass")) <= KEY_MAX)
        and not _CONTROL.search(key)
        and not _ODD_SEGMENTS.intersection(key.split("/"))
    )


def is_directory_bucket(bucket: str) -> bool:
    """Whether ``bucket`` is named as an S3 Express One Zone directory bucket.

    Such buckets (``<name>--<zone id>--x-s3``) are served by zonal endpoints with a
    session-based signature, which boto3's endpoint rules resolve and obstore does not
    (it would send their requests to the region's general endpoint): they go by boto3.
    """
    return bucket.endswith("--x-s3")


def backend_for(loc: Location, options: Options) -> Backend:
    """The backend that serves ``loc``.

    S3 goes through obstore (a fraction of boto3's client CPU per request) when the
    transport (see :func:`transport_of`) is ``"obstore"``, or ``"auto"`` with
    :data:`AUTO_PREFERS_OBSTORE` set and obstore installed and able to honour every
    setting of ``options`` (``_s3_obstore.can_serve``), and the key is one obstore
    addresses verbatim (:func:`obstore_addresses`) in a bucket that is no directory
    bucket (:func:`is_directory_bucket`); otherwise through boto3.

    Args:
        loc: A parsed location.
        options: The options the backend uses.

    Returns:
        A backend instance, shared by calls with the same ``options`` object.

    Raises:
        ImportError: ``transport="obstore"`` but obstore is not installed.
    """
    if loc.is_s3:
        by_obstore = obstore_addresses(loc.key) and not is_directory_bucket(loc.bucket)
        kind = "s3" if by_obstore else "s3-by-boto3"
    else:
        kind = "local"
    key = (id(options), kind, os.environ.get("FILE_DATASET_TRANSPORT"))
    known = _BACKENDS.get(key)
    if known is not None and known[0] is options:
        return known[1]
    backend = _new_backend(kind, options)
    remember(_BACKENDS, key, (options, backend))
    return backend


class ObstoreMissingError(ImportError):
    """``Options(transport="obstore")`` without the obstore package."""


class ObstoreUnusableError(RuntimeError):
    """``Options(transport="obstore")`` in a child forked after obstore was used."""


# Failures of the options themselves, the same for every object: a Pipeline ends its
# call on one rather than drop every row, and they are not said to be one object's.
SETUP_FAILURES = (ObstoreMissingError, ObstoreUnusableError)


# The transports' modules, and those the libraries under them import lazily, are
# imported on the first transfer, by whichever thread makes it. A fork() while one of
# those imports is under way would leave the child a module lock held by a thread it
# does not have: its first transfer would wait for ever. So before any fork the forking
# thread imports them itself, which waits for an import under way. (The list is what a
# first transfer imports, both transports, measured with boto3 1.43 and obstore 0.12.)
_LAZY_MODULES = (
    "file_dataset._local",
    "file_dataset._s3",
    "file_dataset._s3_obstore",
    "boto3.s3.inject",
    "boto3.s3.transfer",
    "s3transfer.subscribers",
    "encodings.idna",
    "pyarrow.pandas_compat",
    "pyarrow.vendored.version",
)
_NOT_IMPORTABLE: set[str] = set()  # tried once (obstore not installed, say)


def _import_transports_before_fork() -> None:
    for name in _LAZY_MODULES:
        if name not in _NOT_IMPORTABLE:
            try:
                importlib.import_module(name)
            except Exception:  # the child says so if it needs the module
                _NOT_IMPORTABLE.add(name)


os.register_at_fork(before=_import_transports_before_fork)


def _say_forked_fallback() -> None:
    """Says once per process, at INFO, that a forked child uses boto3 instead of obstore.

    It is correct but slower for small objects (boto3 costs several times obstore's
    CPU per request), which a process pool made with ``fork`` would never learn.
    """
    if not _FALLBACK_SAID:
        _FALLBACK_SAID.append(True)
        logging.getLogger("file_dataset").info(
            "file_dataset: this process was forked from one that had used obstore, whose "
            "runtime does not survive fork(): its S3 requests go through boto3 (more CPU "
            "per request); start it with 'spawn' or 'forkserver' to keep obstore"
        )


def _new_backend(kind: str, options: Options) -> Backend:
    if kind != "local":
        transport = transport_of(options)
        wants_obstore = transport == "obstore" or (transport == "auto" and AUTO_PREFERS_OBSTORE)
        if wants_obstore and kind == "s3":
            try:
                from file_dataset._s3_obstore import (
                    ObstoreS3Backend,
                    can_serve,
                    forked_after_obstore,
                )
            except ImportError as e:
                if transport == "obstore":
                    raise ObstoreMissingError(
                        "Options(transport='obstore') needs the obstore package "
                        "(pip install obstore)"
                    ) from e
            else:
                if forked_after_obstore():
                    # obstore's runtime does not survive fork(): its threads are gone in
                    # this child, which would wait for them for ever, and its I/O
                    # driver is shared with the parent, which it could crash.
                    if transport == "obstore":
                        raise ObstoreUnusableError(
                            "Options(transport='obstore') cannot be used in a process "
                            "forked from one that had already used obstore (its runtime "
                            "does not survive fork); use the 'spawn' or 'forkserver' "
                            "start method, or transport='auto' or 'boto3'"
                        )
                    _say_forked_fallback()
                elif transport == "obstore" or can_serve(options):
                    return ObstoreS3Backend(options)
        from file_dataset._s3 import S3Backend

        return S3Backend(options)
    from file_dataset._local import LocalBackend

    return LocalBackend()
