"""S3 (and S3-compatible servers) as a storage backend, through boto3."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import http.client
import io
import os
import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.httpchecksum import StreamingChecksumBody
from s3transfer.upload import UploadSubmissionTask
from s3transfer.utils import ReadFileChunk, get_filtered_dict
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeoutError

from file_dataset._backend import (
    BODY_STALLED,
    CHANGED,
    CHUNK_BYTES,
    CREDENTIALS_REFUSED,
    SOURCE_CHANGED,
    STREAM_BYTES,
    Blob,
    Part,
    Sink,
    answered_after,
    backoff,
    check_same_version,
    credentials_failed,
    explain_head,
    is_weak,
    new_buffer,
    not_found_reason,
    read_source,
    readinto_chunks,
    retried,
    write_chunks,
)
from file_dataset._errors import (
    ObjectAccessDeniedError,
    ObjectNotFoundError,
    TransferError,
    drop_foreign_frames,
    forget_unmasked,
    found,
    mask_secrets,
    masked_cause,
    masked_cut,
    no_descriptor_left,
    source_error,
)
from file_dataset._options import (
    CallStopped,
    Options,
    call_stopped,
    stop_if_stopped,
    unwatch_socket,
    watch_socket,
)
from file_dataset._urls import Location

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchUpload"})
_DENIED = frozenset(
    {
        "AccessDenied",
        "Forbidden",
        "403",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "ExpiredToken",
        "ExpiredTokenException",
        "TokenRefreshRequired",
        "InvalidToken",
    }
)
_EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"})


def denied_reason(code: object, message: str = "", operation: str = "") -> str:
    """The reason of an access-denied error: S3's code and message, and what to check.

    S3's message is kept unless it only repeats the code: a denial by a bucket policy
    or a KMS key names the action and the resource there, and only there. A bare
    denial of a read or HEAD may also be a missing object: S3 answers 403, not 404,
    for a key that does not exist when the credentials may not list the bucket.
    """
    said = " ".join(message.split())
    bare = said.rstrip(".").lower() in _BARE
    told = code if bare else f"{code}: {masked_cut(said, 500)}"
    if code in _EXPIRED:
        hint = (
            "the temporary credentials have expired (credentials given in the Options, "
            "as Options.default() freezes them, are not refreshed: "
            "Options.default(freeze_credentials=False) lets each process refresh its own)"
        )
    elif code == "RequestTimeTooSkewed":
        hint = (
            "this machine's clock differs from S3's by more than 15 minutes, and "
            "requests are signed with the time: set the clock right (NTP)"
        )
    elif code in CREDENTIALS_REFUSED or code == "SignatureDoesNotMatch":
        hint = "check the credentials in Options"
    else:
        hint = (
            "check the credentials in Options and what they may do (the bucket's "
            "policy, the KMS key of an encrypted object, request_payer=True for a "
            "requester-pays bucket)"
        )
        if bare and operation in ("read", "head"):
            hint += (
                ", or whether the object exists: to credentials that may not list the "
                "bucket (s3:ListBucket), S3 answers 403, not 404, for a missing key"
            )
    return f"access denied ({told}); {hint}"


# What S3 and S3-compatible servers say with a denial when they say nothing more.
_BARE = frozenset({"", "access denied", "forbidden"})


# S3 answers a read of an archived object with 403 InvalidObjectState: the credentials
# are fine, so it is not an access-denied error.
ARCHIVED = (
    "the object is archived (a Glacier storage class or an archive tier) and must be "
    "restored before it can be read (S3 RestoreObject)"
)


def translate_error(error: Exception, url: str, operation: str) -> NoReturn:
    """Raises the file_dataset error that matches a botocore error, chained to it.

    A :class:`TransferError` (raised by our own checks inside the same ``try``) is
    raised as it is. The error's ``status`` is that of S3's answer, if any.
    """
    if isinstance(error, TransferError):
        try:
            raise error
        finally:
            del error  # (kept in this frame, which its traceback holds: a cycle)
    drop_foreign_frames(error)
    try:
        _translate(error, url, operation)
    except TransferError as failure:
        code = ""
        if isinstance(error, ClientError):
            failure.status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = _error_code(error)
        failure.credentials_failed = credentials_failed(error, code)
        forget_unmasked(failure, error)
        raise


def _translate(error: Exception, url: str, operation: str) -> NoReturn:
    cause = masked_cause(error)  # botocore and urllib3 quote the endpoint, password and all
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = _error_code(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # a gateway's message may quote the request's headers: its token, say
        message = masked_cut(str(info.get("Message") or "").strip(), 1000)
        reason = f"{code or status}{': ' + message if message else ''}"
        if code in _NOT_FOUND or status == 404:
            bare_head = operation == "head" and code in ("404", "NotFound", "")
            reason = not_found_reason(url, code, reason, bare_head=bare_head)
            raise ObjectNotFoundError(url, reason, operation=operation) from cause
        if code == "PreconditionFailed" or status == 412:  # a later part's If-Match
            raise TransferError(url, CHANGED, operation=operation) from cause
        if code == "InvalidObjectState":
            raise TransferError(url, f"{ARCHIVED} ({reason})", operation=operation) from cause
        if code in _DENIED or status == 403:
            raise ObjectAccessDeniedError(
                url, denied_reason(code or status, message, operation), operation=operation
            ) from cause
        if isinstance(status, int) and status >= 500:  # a server's failure, retried
            retries = error.response.get("ResponseMetadata", {}).get("RetryAttempts") or 0
            # a bodyless answer's code is its status ("503: Service Unavailable")
            reason += answered_after(None if code == str(status) else str(status), retries)
        raise TransferError(url, reason, operation=operation) from cause
    if isinstance(error, FlexibleChecksumError):
        raise TransferError(
            url,
            f"the bytes received do not match the checksum the server sent ({cause}); "
            "nothing was kept",
            operation=operation,
        ) from cause
    shortage = no_descriptor_left(error)
    if shortage is not None:
        raise found(
            TransferError(url, shortage, operation=operation), errno=errno.EMFILE
        ) from cause
    reason = f"{type(error).__name__}: {mask_secrets(str(error))}"
    # No connection could be made (refused, no route, TLS, a proxy), or no answer came
    # in time.
    unreachable = isinstance(error, BotoConnectionError | ReadTimeoutError)
    raise found(TransferError(url, reason, operation=operation), unreachable=unreachable) from cause


# What reading a response body raises when the connection drops part-way (botocore
# wraps some of urllib3's errors, http.client raises IncompleteRead for a chunked body;
# a clean close shows up as a short read instead).
_DROPPED = (BotoCoreError, Urllib3Error, OSError, http.client.HTTPException)
# What an answer dropped part-way raises when botocore has not wrapped it.
_ANSWER_DROPPED = (Urllib3Error, http.client.HTTPException, ConnectionError)


def _completion_unheard(error: Exception) -> bool:
    """Whether a failed CompleteMultipartUpload may have completed the upload all the same.

    Its answer was lost (the connection dropped, or no answer came in time), or
    botocore asked again after such a loss and the server no longer knew the upload
    (``NoSuchUpload``: S3 forgets an upload once it is completed).
    """
    if isinstance(error, ClientError):
        return _no_such_upload(error)
    return isinstance(error, BotoConnectionError | HTTPClientError)


def _error_code(error: ClientError) -> str:
    """The S3 error code of an answer (indented XML puts line breaks around it)."""
    return str(error.response.get("Error", {}).get("Code", "")).strip()


def _no_such_upload(error: Exception) -> bool:
    """Whether S3 answered that it does not know the upload (``NoSuchUpload``)."""
    return isinstance(error, ClientError) and _error_code(error) == "NoSuchUpload"


def _multipart_etag(parts: list[Part]) -> str | None:
    """The ETag S3 gives the object that ``parts`` make, or None if it cannot be known.

    The MD5 of the parts' MD5s, then ``-`` and their count; None when a part's ETag is
    no MD5 (a server that makes them otherwise, as S3 does for objects encrypted with
    a customer's key).
    """
    digests = []
    for part in parts:
        etag = str(part.get("ETag", "")).strip('"')
        if len(etag) != 32:
            return None
        try:
            digests.append(bytes.fromhex(etag))
        except ValueError:
            return None
    if not digests:
        return None
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def _answer_dropped(error: Exception) -> bool:
    return isinstance(error, _ANSWER_DROPPED)


def _readinto(body: Any) -> Callable[[memoryview], int]:
    """The cheapest way to read a boto3 response body into a buffer of ours.

    botocore's and urllib3's ``readinto`` read a new bytes object and copy it (for a
    large read, http.client's ``read`` copies once more), all under the GIL. The
    http.client response underneath reads from the socket straight into the buffer,
    with the GIL released: one copy, the kernel's. urllib3 is bypassed for the body
    only, so the function returns the connection to its pool once the body is
    complete; a body left unfinished is closed with its connection by
    ``body.close()`` as usual. A body that comes with a checksum (botocore's
    ``StreamingChecksumBody``, when the server sent one for the whole object), and
    bodies of other shapes, use botocore's ``readinto``, so the checksum is computed.

    On a transfer thread, the connection's socket is watched while the body is read
    (see ``_options.RunState``): once the call is stopped, a read blocked on a body
    that stalls returns at once, and :class:`CallStopped` is raised, instead of after
    the read timeout.
    """
    raw: Any = getattr(body, "_raw_stream", None)
    response = getattr(raw, "_fp", None)
    release = getattr(raw, "release_conn", None)
    if (
        isinstance(body, StreamingChecksumBody)
        or not isinstance(response, http.client.HTTPResponse)
        or release is None
    ):
        return body.readinto  # type: ignore[no-any-return]
    read = response.readinto
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if isinstance(sock, socket.socket):
        watch_socket(sock)

    def readinto(view: memoryview) -> int:
        try:
            n = read(view)
        except (OSError, http.client.HTTPException):
            stop_if_stopped()  # (a socket shut by the stop, under TLS)
            raise
        if not n:
            stop_if_stopped()  # the socket was shut by the stop: not a dropped body
        elif response.isclosed() and unwatch_socket():  # (the last bytes) to the pool
            release()
        return n

    return readinto


# Requests that change nothing on the server: one left unanswered may be given up.
_READS = frozenset({"GET", "HEAD"})


def _is_part(method: str, url: str) -> bool:
    """Whether a request sends a part of a multipart upload (UploadPart).

    A part's request may be given up while its body is being sent once its call is
    stopped: the server does not store a part whose body is cut short, and the
    stopped upload is aborted.
    """
    return method == "PUT" and "uploadId=" in url and "partNumber=" in url


# botocore's connection pool classes, and their subclasses made by _watching_pool.
_WATCHING: dict[type, type] = {}


def watch_answers(client: Any) -> None:
    """Makes ``client``'s connections watch the socket for a stop where that is safe.

    On a transfer thread, a GET or HEAD whose answer has not begun (a server that
    took the request and says nothing) is left at once when its call is stopped, as a
    body that stalls is (see :func:`_readinto`): the socket is shut, and
    :class:`CallStopped` is raised instead of waiting for the read timeout. So is a
    multipart upload's part while it is sent (a send blocked on a server that stopped
    reading it): its upload is then aborted. Not a part sent whole, nor other writes:
    the server may be acting on the request, so their calls wait for its answer. botocore makes the
    connection pools of the classes its HTTP session lists per scheme, a dict shared
    with its pool managers, changed here in place before the client sends anything;
    an unknown layout is left as it is.
    """
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    classes = getattr(session, "_pool_classes_by_scheme", None)
    if not isinstance(classes, dict):
        return
    for scheme, pool in list(classes.items()):
        if isinstance(pool, type) and isinstance(getattr(pool, "ConnectionCls", None), type):
            classes[scheme] = _watching_pool(pool)


def _watching_pool(pool: type) -> type:
    """A subclass of ``pool`` whose connections watch for a stop (see :func:`watch_answers`)."""
    if pool in _WATCHING.values():
        return pool
    made = _WATCHING.get(pool)
    if made is not None:
        return made
    connection: Any = pool.ConnectionCls  # type: ignore[attr-defined]

    class Connection(connection):  # type: ignore[misc]
        _fd_watched = False  # whether the request under way is watched for a stop
        _fd_half_shut = False  # shut for sending by a stop once its request was sent

        @property
        def is_connected(self) -> bool:  # (urllib3 2 asks before it reuses one)
            return not self._fd_half_shut and bool(super().is_connected)

        def close(self) -> None:
            self._fd_half_shut = False
            super().close()

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            self._fd_watched = method in _READS
            if not _is_part(method, url):
                return super().request(method, url, *args, **kwargs)
            # A part is watched while it is sent, shut for sending only: a send
            # blocked on a server that stopped reading fails at once, and the server
            # never gets the whole body. One sent whole waits for its answer (the
            # server may be storing it: its upload is aborted only after that).
            if self.sock is None:
                self.connect()
            if isinstance(self.sock, socket.socket):
                watch_socket(self.sock, socket.SHUT_WR)
            try:
                sent = super().request(method, url, *args, **kwargs)
            except BaseException:
                # The send failed: EPIPE on a plain socket (urllib3 would go on to
                # read an answer), SSLEOFError on a TLS one (botocore would retry).
                unwatch_socket()
                if call_stopped():
                    raise CallStopped from None
                raise
            # (shut just after its last byte: its answer is still read, then closed)
            self._fd_half_shut = not unwatch_socket()
            return sent

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            sock = self.sock
            watched = self._fd_watched and isinstance(sock, socket.socket)
            # (a part shut for sending just after its last byte: no answer may come)
            if not watched and not self._fd_half_shut:
                return super().getresponse(*args, **kwargs)
            if watched:
                watch_socket(sock)
            try:
                response = super().getresponse(*args, **kwargs)
            except BaseException:
                if watched:
                    unwatch_socket()
                if call_stopped():  # shut by the stop: no dropped connection
                    raise CallStopped from None
                raise
            if watched and not unwatch_socket():  # (urllib3 then closes the connection)
                raise CallStopped
            return response

    Connection.__name__ = Connection.__qualname__ = f"Watching{connection.__name__}"
    made = _WATCHING[pool] = type(
        f"Watching{pool.__name__}", (pool,), {"ConnectionCls": Connection}
    )
    return made


def _check_end(body: Any) -> None:
    """Called once a body's bytes have all arrived: checks its checksum, if it has one.

    botocore compares a ``StreamingChecksumBody``'s checksum when a read finds the end
    of the body, which reading exactly the expected length never does; this read does.

    Raises:
        FlexibleChecksumError: The bytes do not match the checksum the server sent.
    """
    if isinstance(body, StreamingChecksumBody):
        body.readinto(bytearray(1))  # type: ignore[arg-type]


def fill_some(body: Any, view: memoryview) -> tuple[int, bool]:
    """Reads a response body straight into ``view`` (see :func:`_readinto`).

    Returns:
        How many bytes arrived (fewer than ``len(view)`` if the connection closed or
        dropped first), and whether the body stalled (see :func:`_stalled`).
    """
    readinto = _readinto(body)
    done = 0
    try:
        while done < len(view):
            # At most CHUNK_BYTES a read: a stopped call (see write_chunks) stops
            # between them, with its connection closed below.
            stop_if_stopped()
            n = readinto(view[done : done + CHUNK_BYTES])
            if not n:
                break
            done += n
        if done == len(view):
            _check_end(body)
    except FlexibleChecksumError:
        raise
    except _DROPPED as e:
        return done, _stalled(e)
    finally:
        body.close()
    return done, False


def _stalled(error: Exception) -> bool:
    """Whether a body was cut short by a stall (no bytes in ``read_timeout``).

    The error itself is not kept: urllib3 keeps it in a variable of a frame it went
    through, a reference cycle that holds the reading frames, and the buffer in them,
    until a garbage collection (see :func:`drop_foreign_frames`, which cuts it).
    """
    drop_foreign_frames(error)
    return isinstance(error, TimeoutError | ReadTimeoutError | Urllib3ReadTimeoutError)


def _cut_short(done: int, length: int, stalled: bool) -> str:
    """Why a body stayed short after every attempt: a stall, or a connection closed."""
    return BODY_STALLED if stalled else f"connection closed after {done} of {length} bytes"


class _BytesBody(io.BytesIO):
    """A body already read whole, in place of botocore's stream."""


def _total(content_range: str | None, size: int, url: str) -> int:
    """The object's size from a first response's ``Content-Range`` (else its length)."""
    if not content_range:
        return size  # the whole object
    total = str(content_range).rsplit("/", 1)[-1]
    if not total.isdigit():  # "bytes 0-1023/*": legal, but the rest cannot be planned
        raise TransferError(
            url, f"the server did not say the object's size (Content-Range {content_range})"
        )
    return int(total)


class _SourceShrank(Exception):
    """A part's file ended before the part did (raised while its request is sent)."""


class _PartBody(ReadFileChunk):
    """A part of a local file that fails at once when the file ends early.

    It streams the part as s3transfer's ``ReadFileChunk`` does. The request announces
    the part's length; a file cut short while it is sent would send fewer bytes, and
    the server would wait for the rest until the read timeout, for every attempt. Once
    short, the body cannot be rewound either, so botocore does not send it again.

    Its reads also stop once the call sending it (on the same thread) is stopped: a
    ``write_files`` interrupted, or failed in another file, then returns without
    sending every part in flight to the end (up to ``2 * max_concurrency`` parts of
    ``part_size``).
    """

    shrank = False

    def read(self, amount: int | None = None) -> bytes:
        stop_if_stopped()
        data: bytes = super().read(amount)
        if not data and amount != 0 and self.tell() < len(self):
            self.shrank = True
            raise _SourceShrank(f"the file ended {len(self) - self.tell()} bytes early")
        return data

    def seek(self, where: int, whence: int = 0) -> None:
        if self.shrank:
            raise _SourceShrank("the file ended early")
        super().seek(where, whence)


class S3Backend:
    """Reads and writes S3 objects with the calling thread's boto3 client."""

    supports_multipart = True

    def __init__(self, options: Options) -> None:
        self._options = options

    def _args(self, request: str) -> dict[str, Any]:
        """The extra arguments of one kind of request.

        ``RequestPayer`` when the options pay as requester, and for the requests of an
        upload (``put``, ``create``, ``part``, ``complete``) the options'
        ``upload_args`` that the request takes: the same split as boto3's own
        ``upload_file`` (s3transfer's lists).
        """
        args: dict[str, Any] = {}
        if self._options.request_payer:
            args["RequestPayer"] = "requester"
        upload = dict(self._options.upload_args)
        if request in ("create", "part") and self._sends_checksums():
            # as boto3's upload_file: an upload declared CRC32 when it starts, its parts
            # sent with theirs (botocore's default), and those listed when it completes
            args["ChecksumAlgorithm"] = "CRC32"
        if upload and request in ("put", "create", "part", "complete"):
            task = UploadSubmissionTask
            if request == "put":
                chosen = get_filtered_dict(upload, blocklisted_keys=task.PUT_OBJECT_BLOCKLIST)
            elif request == "create":
                chosen = get_filtered_dict(upload, blocklisted_keys=task.CREATE_MULTIPART_BLOCKLIST)
            elif request == "part":
                chosen = get_filtered_dict(upload, task.UPLOAD_PART_ARGS)
            else:
                chosen = get_filtered_dict(upload, task.COMPLETE_MULTIPART_ARGS)
            args.update(chosen)
        return args

    def _sends_checksums(self) -> bool:
        """Whether botocore adds checksums to requests that take one (its default).

        Not when the options' ``Config`` (or the environment, or the profile) sets
        ``request_checksum_calculation="when_required"``, for a server that refuses them.
        """
        config = self._options.s3_client().meta.config
        return getattr(config, "request_checksum_calculation", None) == "when_supported"

    def read_first(
        self, loc: Location, length: int, sink: Sink | None = None
    ) -> tuple[Blob | None, int, str | None]:
        url = str(loc)
        try:
            resp = self._get_first(loc, length)
            content_range = resp.get("ContentRange")
            if resp.get("ContentLength") is None:
                # Chunked, or ended by closing the connection: the body says how long it
                # is only once read to its end (botocore would otherwise read nothing).
                data = resp["Body"].read()
                resp["ContentLength"] = len(data)
                resp["Body"] = _BytesBody(data)
            size = int(resp["ContentLength"])
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 206 and not content_range:
                # Part of the object, but which part? Taking it for the whole object
                # would cut the object short without an error.
                resp["Body"].close()
                raise TransferError(
                    url,
                    f"asked for bytes 0-{length - 1}, the server answered 206 (part of the "
                    f"object) with a body of {size} bytes but no Content-Range",
                )
            total = _total(content_range, size, url)
            if (
                content_range and not str(content_range).startswith(f"bytes 0-{size - 1}/")
            ) or size < min(total, length):
                # The later parts start where the range asked for ends: a body shorter
                # than its range, or a range shorter than asked for, would leave a hole
                # in the object that nothing fills.
                resp["Body"].close()
                raise TransferError(
                    url,
                    f"asked for bytes 0-{length - 1}, the server answered {content_range} "
                    f"with a body of {size} bytes",
                )
            tag = resp.get("ETag")
            # A server that ignores Range sends the whole object: it is all taken from
            # this answer, in one buffer (the caller then asks for no more of it).
            if sink is not None and size <= length and (size >= STREAM_BYTES or total > size):
                # Straight into the object's buffer, or through a small one to its file.
                try:
                    store = sink(total, tag)
                except BaseException:  # (a full disk, a stopped call): the answer is left
                    resp["Body"].close()
                    raise
                if isinstance(store, memoryview):
                    self._fill_range(loc, 0, store[:size], tag, resp["Body"])
                else:
                    write_chunks(store, 0, self.read_chunks(loc, 0, size, tag, resp["Body"]))
                return None, total, tag
            buf = new_buffer(size)
            self._fill_range(loc, 0, buf, tag, resp["Body"])
            return buf, total, tag
        except (ClientError, BotoCoreError, *_ANSWER_DROPPED) as e:
            translate_error(e, url, "read")

    def _get_first(self, loc: Location, length: int) -> Any:
        """The answer to a GET of the first ``length`` bytes (of the whole, if empty).

        An error answer whose body is cut short (a connection reset while the 416 of an
        empty object arrives) reaches here as urllib3's or http.client's own error,
        which botocore neither wraps nor retries: the GET is made again, up to
        ``max_attempts`` times.
        """
        client = self._options.s3_client()  # no such profile, a bad region: translated

        def get() -> Any:
            try:
                return client.get_object(
                    Bucket=loc.bucket,
                    Key=loc.key,
                    Range=f"bytes=0-{length - 1}",
                    **self._args("get"),
                )
            except ClientError as e:
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if e.response.get("Error", {}).get("Code") != "InvalidRange" and status != 416:
                    raise
                # A Range on an empty object is "unsatisfiable": read it plainly.
                return client.get_object(Bucket=loc.bucket, Key=loc.key, **self._args("get"))

        return retried(get, _answer_dropped, self._options.max_attempts)

    def _get_range(self, loc: Location, start: int, length: int, tag: str | None) -> Any:
        """A ranged GET, checked to answer that range (not the whole object)."""
        extra = self._args("get")
        if tag and not is_weak(tag):  # a weak ETag never matches If-Match
            extra["IfMatch"] = tag
        end = start + length - 1
        resp = self._options.s3_client().get_object(
            Bucket=loc.bucket, Key=loc.key, Range=f"bytes={start}-{end}", **extra
        )
        try:
            check_same_version(str(loc), tag, resp.get("ETag"))
        except TransferError:
            resp["Body"].close()
            raise
        answered = resp.get("ContentRange")
        sent = resp.get("ContentLength")  # None when chunked: read until the range is in
        if not str(answered).startswith(f"bytes {start}-{end}/") or sent not in (length, None):
            resp["Body"].close()
            raise TransferError(
                str(loc),
                f"asked for bytes {start}-{end}, the server answered "
                f"{answered or 'with the whole object'} with a body of "
                f"{resp.get('ContentLength')} bytes",
            )
        return resp

    def _fill_range(
        self, loc: Location, start: int, view: memoryview, tag: str | None, body: Any = None
    ) -> None:
        """Fills ``view`` with the object's bytes from ``start``.

        ``body``, if given, is a response for that range already under way. A
        connection that drops part-way is resumed where it stopped, with ``If-Match``
        (so every byte comes from one version), up to ``max_attempts`` responses in all.
        (obstore resumes its bodies the same way.)
        """
        url = str(loc)
        done = 0
        stalled = False  # whether the last response was cut short by a stall
        for attempt in range(max(1, self._options.max_attempts)):
            if attempt:
                time.sleep(backoff(attempt))
            if body is None:
                try:
                    resp = self._get_range(loc, start + done, len(view) - done, tag)
                except (ClientError, BotoCoreError) as e:
                    translate_error(e, url, "read")
                tag = tag or resp.get("ETag")
                body = resp["Body"]
            try:
                got, stalled = fill_some(body, view[done:])
            except FlexibleChecksumError as e:
                translate_error(e, url, "read")
            done += got
            body = None
            if done == len(view):
                return
        raise TransferError(url, _cut_short(done, len(view), stalled))

    def read_into(
        self, loc: Location, start: int, view: memoryview, tag: str | None = None
    ) -> None:
        if len(view):
            self._fill_range(loc, start, view, tag)

    def read_chunks(
        self, loc: Location, start: int, length: int, tag: str | None = None, body: Any = None
    ) -> Iterator[Blob]:
        """Streams ``length`` bytes of the object from ``start`` (see :class:`Backend`).

        ``body``, if given, is a response for that range already under way; a dropped
        connection is resumed as in :meth:`_fill_range`.
        """
        if not length:
            return
        url = str(loc)
        done = 0  # bytes handed over; a dropped connection resumes after them
        stalled = False  # whether the last response was cut short by a stall

        def closed(got: int) -> Exception:
            return http.client.IncompleteRead(b"")  # a short body: resumed below

        for attempt in range(max(1, self._options.max_attempts)):
            if attempt:
                time.sleep(backoff(attempt))
            if body is None:
                try:
                    resp = self._get_range(loc, start + done, length - done, tag)
                except (ClientError, BotoCoreError) as e:
                    translate_error(e, url, "read")
                tag = tag or resp.get("ETag")
                body = resp["Body"]
            try:
                for chunk in readinto_chunks(_readinto(body), length - done, closed):
                    yield chunk
                    done += len(chunk)
                _check_end(body)
            except FlexibleChecksumError as e:
                translate_error(e, url, "read")
            except _DROPPED as e:
                stalled = _stalled(e)
                continue
            finally:
                body.close()
                body = None
            return
        raise TransferError(url, _cut_short(done, length, stalled))

    def size(self, loc: Location) -> int:
        try:
            resp = self._options.s3_client().head_object(
                Bucket=loc.bucket, Key=loc.key, **self._args("head")
            )
        except (ClientError, BotoCoreError) as e:
            return explain_head(self, loc, partial(translate_error, e, str(loc), "head"))
        if resp.get("ContentLength") is None:
            raise TransferError(
                str(loc), "the server's answer to a HEAD gave no Content-Length", operation="head"
            )
        return int(resp["ContentLength"])

    def list_objects(self, loc: Location) -> Iterator[tuple[str, dt.datetime]]:
        """The key and last-modified time of every object whose key starts with ``loc.key``.

        ListObjectsV2, 1,000 keys per request (botocore decodes the keys it asks S3 to
        URL-encode, so any key comes back as it is).
        """
        try:
            paginator = self._options.s3_client().get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=loc.bucket, Prefix=loc.key, **self._args("list"))
            for page in pages:
                for item in page.get("Contents", ()):
                    yield item["Key"], item["LastModified"]
        except (ClientError, BotoCoreError) as e:
            translate_error(e, str(loc), "list")

    def write(self, src: Path, loc: Location) -> None:
        # Read whole first (at most multipart_threshold bytes), checked to be one version
        # of the file, as the obstore transport does.
        data = read_source(src)
        try:
            self._options.s3_client().put_object(
                Bucket=loc.bucket, Key=loc.key, Body=data, **self._args("put")
            )
        except (ClientError, BotoCoreError) as e:
            translate_error(e, str(loc), "write")

    def multipart_start(self, loc: Location) -> str:
        for attempt in range(1, self._options.max_attempts + 1):
            try:
                resp = self._options.s3_client().create_multipart_upload(
                    Bucket=loc.bucket, Key=loc.key, **self._args("create")
                )
            except (ClientError, BotoCoreError) as e:
                translate_error(e, str(loc), "write")
            if resp.get("UploadId"):
                return str(resp["UploadId"])
            # An answer cut short (http.client took the end of the connection for the
            # end of its headers): asked again, as botocore does for a dropped one.
            if attempt < self._options.max_attempts:
                time.sleep(backoff(attempt))
        raise TransferError(
            str(loc),
            "the server's answer to CreateMultipartUpload gave no UploadId",
            operation="write",
        )

    def multipart_part(
        self, loc: Location, upload_id: str, number: int, src: Path, start: int, length: int
    ) -> Part:
        # The part is streamed from the file (s3transfer's ReadFileChunk, as boto3's own
        # upload_file does) rather than read into an 8 MiB buffer first.
        try:
            size = os.stat(src).st_size
            body = _PartBody.from_filename(str(src), start, length, enable_callbacks=False)
        except OSError as e:  # removed (or made unreadable) since the upload began
            raise source_error(e, str(src)) from e
        if size < start + length:
            body.close()
            raise TransferError(str(src), SOURCE_CHANGED, operation="read")
        # Stopped, the call cuts the request at the body's next read: CallStopped is
        # no error of this part (caught below it would be one), it just ends the
        # call, and the upload's job then aborts the upload from the driving thread.
        try:
            resp = self._options.s3_client().upload_part(
                Bucket=loc.bucket,
                Key=loc.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,  # type: ignore[arg-type]
                **self._args("part"),
            )
        except (ClientError, BotoCoreError, _SourceShrank) as e:
            if body.shrank:
                raise TransferError(str(src), SOURCE_CHANGED, operation="read") from None
            translate_error(e, str(loc), "write")
        finally:
            body.close()
        if not resp.get("ETag"):
            raise TransferError(
                str(loc), f"the server's answer to part {number} gave no ETag", operation="write"
            )
        part = {"ETag": str(resp["ETag"])}
        # Listed at completion only for an upload that declared CRC32 when it started
        # (a server may send one unasked, which S3 would take for a mismatch there).
        if resp.get("ChecksumCRC32") and self._sends_checksums():
            part["ChecksumCRC32"] = str(resp["ChecksumCRC32"])
        return part

    def multipart_complete(self, loc: Location, upload_id: str, parts: list[Part]) -> None:
        numbered = [{**part, "PartNumber": i} for i, part in enumerate(parts, start=1)]
        try:
            self._options.s3_client().complete_multipart_upload(
                Bucket=loc.bucket,
                Key=loc.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": numbered},  # type: ignore[typeddict-item]
                **self._args("complete"),
            )
        except (ClientError, BotoCoreError) as e:
            if _completion_unheard(e) and self._completed(loc, upload_id, parts, e):
                return
            translate_error(e, str(loc), "write")

    def _completed(
        self, loc: Location, upload_id: str, parts: list[Part], error: Exception
    ) -> bool:
        """Whether the object at ``loc`` is the one that these parts make.

        Asked when CompleteMultipartUpload's answer was lost (a dropped connection, a
        read timeout) or when botocore's retry of it was answered ``NoSuchUpload``:
        the first request may have completed the upload. After a lost answer, the
        upload is looked for first (ListParts): one still open was not completed
        (the request never arrived), and the call fails as before, aborting it. Then
        S3 gives a multipart object the ETag ``md5(the parts' MD5s)-<count>``, so a
        HEAD tells whether this upload (or one of the very same parts) made the
        object. Anything else (another ETag, an ETag that is no MD5, a request that
        fails, or one cut short by a stop of the call) is no proof, and the call
        reports the completion's own error (a written file then counts as one that
        may be written).
        """
        expected = _multipart_etag(parts)
        if expected is None:
            return False
        client = self._options.s3_client()
        try:
            if not _no_such_upload(error):
                client.list_parts(
                    Bucket=loc.bucket,
                    Key=loc.key,
                    UploadId=upload_id,
                    MaxParts=1,
                    **self._args("list"),
                )
                return False  # still open: the completion never arrived
        except ClientError as gone:
            if not _no_such_upload(gone):
                return False
        except (BotoCoreError, CallStopped):
            return False
        try:
            resp = client.head_object(Bucket=loc.bucket, Key=loc.key, **self._args("head"))
        except (ClientError, BotoCoreError, CallStopped):
            return False
        return str(resp.get("ETag") or "").strip('"') == expected

    def multipart_abort(self, loc: Location, upload_id: str) -> None:
        try:
            self._options.s3_client().abort_multipart_upload(
                Bucket=loc.bucket, Key=loc.key, UploadId=upload_id, **self._args("abort")
            )
        except (ClientError, BotoCoreError) as e:
            translate_error(e, str(loc), "write")
