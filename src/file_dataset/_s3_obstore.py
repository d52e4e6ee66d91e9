"""S3 through obstore (Rust ``object_store``): far less client CPU per request than boto3.

Configured from what :class:`~file_dataset.Options` resolves through boto3 (the
endpoint, region and addressing style of the calling thread's client, and the
session's credentials, refreshed when they are temporary), so the same ``Options``
reach the same server with the same identity. Reads and single-request writes go
through obstore; multipart writes (large objects, bandwidth-bound) keep using boto3,
because obstore exposes no part-level API with ETags. Keys that obstore's ``Path``
would change or refuse never reach this module (see
:func:`file_dataset._backend.obstore_addresses`).

Used by ``transport="auto"`` (the default) when obstore is installed and can serve the
options, and by ``transport="obstore"`` (see :func:`file_dataset._backend.backend_for`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import html
import http
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast
from xml.etree import ElementTree

import obstore
from botocore import UNSIGNED
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from obstore.exceptions import (
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from file_dataset._backend import (
    BODY_STALLED,
    CHANGED,
    STREAM_BYTES,
    Blob,
    Part,
    Sink,
    answered_after,
    check_same_version,
    copy_into,
    credentials_failed,
    explain_head,
    is_weak,
    not_found_reason,
    read_source,
    remember,
    retried,
    store_writer,
    write_chunks,
)
from file_dataset._errors import (
    ObjectAccessDeniedError,
    ObjectNotFoundError,
    TransferError,
    forget_unmasked,
    found,
    mask_secrets,
    masked_cause,
    masked_cut,
    no_descriptor_left,
    remember_secrets,
)
from file_dataset._options import Options, detachable
from file_dataset._s3 import _DENIED, _NOT_FOUND, ARCHIVED, S3Backend, denied_reason
from file_dataset._s3 import translate_error as translate_boto_error
from file_dataset._s3_signed import read_into as signed_read_into
from file_dataset._urls import Location

# A streamed body (a large object's first response or a ranged part) is handed over in
# chunks of at least this many bytes. Each chunk is a fresh buffer held until it is
# copied out, so with 64 transfers in flight the chunk size sets the transient memory:
# 8 x 64 MiB into blobs peaked at 744-748 MiB RSS with 256 KiB chunks against 787-794 MiB
# with 1 MiB (2 x 1 GiB: 2,340 against 2,408 MiB), at speeds within the run-to-run
# spread; 64 KiB was slower.
_STREAM_CHUNK_BYTES = 256 * 1024
T = TypeVar("T")
_STORES_LOCK = threading.Lock()
_STORES_KEPT = 256  # per options' runtime: the buckets used last
# Buckets that S3 said live in another region than their options' client, by
# (pid, options value, bucket): the region their stores are made for (see _relocate).
_REGIONS: dict[tuple[Any, ...], str] = {}
_RELOCATE_LOCK = threading.Lock()
# What obstore's error says when a request went to the wrong region: S3 answers
# 301 PermanentRedirect without a Location (object_store: "Received redirect without
# LOCATION, this normally indicates an incorrectly configured region"), or 400 when
# the signature names another region.
_WRONG_REGION_WORDS = (
    "redirect",
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
)


def _s3_code(text: str, url: str) -> tuple[str, str]:
    """The S3 error code and message of the XML error body quoted in an obstore error.

    obstore quotes the key of ``url`` as it is, where S3's answer escapes it: a key
    holding ``<Code>ExpiredToken</Code>`` is left out of the search. The first error
    body is parsed as XML (a ``<Code>`` inside the message's CDATA is not the code;
    older obstore versions quote the body a second time, escaped), or searched when
    it is not well-formed.
    """
    key = url.partition("://")[2].partition("/")[2]
    if "<" in key:
        text = text.replace(key, "")
    start = text.find("<Error>")
    end = text.find("</Error>", start)
    if 0 <= start < end:
        with contextlib.suppress(ElementTree.ParseError):
            # S3's own answer, as botocore parses it for the boto3 transport
            error = ElementTree.fromstring(text[start : end + len("</Error>")])  # noqa: S314
            return (error.findtext("Code") or "").strip(), (error.findtext("Message") or "").strip()
    return _xml_text("Code", text), _xml_text("Message", text)


def _xml_text(tag: str, text: str) -> str:
    """The text of the first ``<tag>`` element in ``text``, as an XML parser reads it.

    Entities are decoded and the text stripped (servers that indent their XML put line
    breaks around it); a CDATA section (moto 5.1 and other S3-compatible servers wrap
    messages in one) gives its content.
    """
    found = re.search(rf"<{tag}>\s*(?:<!\[CDATA\[(.*?)\]\]>|([^<]*))\s*</{tag}>", text, re.S)
    if found is None:
        return ""
    cdata, plain = found.groups()
    return (cdata if cdata is not None else html.unescape(plain)).strip()


# obstore's words for answers that boto3 reads and it refuses: a body sent chunked or
# ended by closing the connection, a Range answered with the whole object, a
# Last-Modified in an older HTTP date format (RFC 850, asctime).
_NEEDS_BOTO3 = (
    "Content-Length Header missing",
    "non-partial response when range requested",
    "Invalid last modified",
)

# How obstore names an error raised by the credential provider (_Credentials).
_PROVIDER_FAILED = "External AWS credential provider: "


def translate_error(error: Exception, url: str, operation: str) -> NoReturn:
    """Raises the file_dataset error that matches an obstore error, chained to it.

    A :class:`TransferError` (raised by our own checks inside the same ``try``) is
    raised as it is.
    """
    if isinstance(error, TransferError):
        try:
            raise error
        finally:
            del error  # (kept in this frame, which its traceback holds: a cycle)
    text = mask_secrets(str(error))  # obstore quotes the endpoint (password and all), bodies
    code, message = _s3_code(text, url)
    try:
        _translate(error, text, url, operation, code, message)
    except TransferError as failure:
        status = re.search(r"non-2xx status code: (\d{3})", text)
        if status:  # S3 answered
            failure.status = int(status.group(1))
        failure.credentials_failed = credentials_failed(error, code) or (
            isinstance(error, UnauthenticatedError) and _PROVIDER_FAILED in text
        )
        forget_unmasked(failure, error)
        raise


def _connect_detail(text: str) -> str:
    """What obstore's debug text says of a failed connection, as boto3 says it.

    Its first line says only "error sending request"; the cause (a name that does not
    resolve, a refused connection, TLS spoken to a plain-HTTP port) is deep in its
    debug text: ``ConnectError("dns error", Custom { error: "failed to lookup ..." })``.
    """
    kind = re.search(r'ConnectError\(\s*"([^"]*)"', text)
    said = re.findall(r'(?:error|message): "([^"]*)"', text)
    detail = ": ".join(part for part in (kind and kind.group(1), said and said[-1]) if part)
    return (
        f"error sending request: {masked_cut(detail, 300)}" if detail else "error sending request"
    )


def _translate(
    error: Exception, text: str, url: str, operation: str, code: str, message: str
) -> NoReturn:
    cause = masked_cause(error)
    status = re.search(r"status(?: code)?:? (\d{3})", text)
    status_code = status.group(1) if status else ""
    first_line = text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__
    reason = f"{code}: {message}" if code and message else (code or first_line)
    # the request ("GET http://...") and its retries, as obstore's first line says them
    sent = re.search(r"performing (\w+ \S+)(?:.*?after (\d+) retries)?", first_line)
    retries = int(sent.group(2)) if sent and sent.group(2) else 0
    if not code and status_code:  # an answer without S3's error body (a HEAD's, say)
        # said as boto3 says it, "503: Service Unavailable", not as obstore's long line
        with contextlib.suppress(ValueError):
            reason = f"{status_code}: {http.HTTPStatus(int(status_code)).phrase}"
        reason += answered_after(None, retries)
    unreachable = False
    if isinstance(error, PreconditionError) or code == "PreconditionFailed":  # If-Match
        raise TransferError(url, CHANGED, operation=operation) from cause
    if "body error" in first_line and "kind: Timeout" in text:  # stalled, not dropped
        reason = f"{BODY_STALLED}; obstore said: {first_line}"
    elif "body error" in first_line:  # object_store's own resumes of a body gave up
        reason = (
            "the response body could not be read whole, even after resuming it up to "
            "max_attempts times (connections dropped, or the object changed meanwhile); "
            f"obstore said: {first_line}"
        )
    elif any(words in first_line for words in _NEEDS_BOTO3):
        reason = (
            f"{reason} (obstore refuses such an answer, which some S3-compatible servers "
            'and proxies give; Options(transport="boto3") reads from them)'
        )
    elif "error sending request" in text:  # no answer came
        unreachable = True
        shortage = no_descriptor_left(error, text)
        if shortage is not None:  # no socket could be made for the request
            raise found(
                TransferError(url, shortage, operation=operation), errno=errno.EMFILE
            ) from cause
        retried = f", after {retries} retries" if retries else ""
        where = f"{sent.group(1)}{retried}; " if sent else ""
        if _closed_after_connecting(text):
            # The endpoint was reached: a proxy or server that drops this request (a
            # reset) is not a wrong endpoint, and a Pipeline drops the row, as it does
            # for boto3's ConnectionClosedError.
            unreachable = False
            said = re.search(r'message: "([^"]*)"', text)
            reason = (
                "the connection was closed before an answer came "
                f"({where}{said.group(1) if said else 'error sending request'})"
            )
        elif "kind: Timeout" in text:
            reason = (
                f"the endpoint did not answer in time ({where}the limits are "
                "connect_timeout and read_timeout of the Options' Config)"
            )
        elif "InvalidCertificate" in text:  # rustls, deep in its debug text
            reason = (
                f"could not connect to the endpoint ({where}TLS: the server's certificate "
                "is not trusted; obstore trusts the system's CAs only: for a private CA, "
                "name it in AWS_CA_BUNDLE, the profile's ca_bundle or s3_client_kwargs "
                'verify, which transport "auto" then serves through boto3)'
            )
        else:
            reason = f"could not connect to the endpoint ({where}{_connect_detail(text)})"
    if isinstance(error, NotFoundError | FileNotFoundError) or code in _NOT_FOUND:
        reason = not_found_reason(url, code, reason, bare_head=operation == "head" and not code)
        raise ObjectNotFoundError(url, reason, operation=operation) from cause
    if code == "InvalidObjectState":
        raise TransferError(url, f"{ARCHIVED} ({reason})", operation=operation) from cause
    provider = text.partition(_PROVIDER_FAILED)[2].partition("\nDebug source:")[0].strip()
    if isinstance(error, UnauthenticatedError) and provider:
        # No request was sent: botocore could not get credentials (a credential_process
        # or SSO login that fails, say). Said as the boto3 transport says it.
        raise TransferError(url, provider, operation=operation) from cause
    if (
        isinstance(error, PermissionDeniedError | UnauthenticatedError | PermissionError)
        or code in _DENIED
        or status_code == "403"
    ):
        reason = denied_reason(code or status_code or "forbidden", message, operation)
        raise ObjectAccessDeniedError(url, reason, operation=operation) from cause
    if code and status_code.startswith("5"):  # a server's failure, retried
        reason += answered_after(status_code, retries)
    # unreachable: no connection, or no answer in time
    raise found(TransferError(url, reason, operation=operation), unreachable=unreachable) from cause


def _closed_after_connecting(text: str) -> bool:
    """Whether obstore's "error sending request" came after a connection was made.

    object_store names the kind of HTTP error (``HttpError { kind: Connect, ...``); a
    connection reset or closed while the request was sent or its answer awaited is
    ``Interrupted`` (hyper's ``SendRequest``). Connect errors and timeouts are an
    endpoint that gave no answer. Without the kind, hyper's own words decide.
    """
    kind = re.search(r"HttpError \{\s*kind: (\w+)", text)
    if kind is not None:
        return kind.group(1) not in ("Connect", "Timeout")
    return "SendRequest" in text and "ConnectError" not in text


def _body_error(error: Exception) -> bool:
    """Whether obstore gave up reading an answer's body (which it does not retry)."""
    lines = str(error).strip().splitlines()
    return isinstance(error, BaseError) and bool(lines) and "body error" in lines[0]


class _Credentials:
    """obstore credential provider over botocore credentials (refreshes temporary ones)."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    def __call__(self) -> dict[str, Any]:
        frozen = self._credentials.get_frozen_credentials()
        remember_secrets(
            frozen.access_key, frozen.secret_key, frozen.token, source=id(self._credentials)
        )
        expiry = getattr(self._credentials, "_expiry_time", None)
        if isinstance(expiry, dt.datetime):
            # obstore takes only datetime.timezone.utc; botocore gives tzlocal() (or tzutc(),
            # or none at all), and every refreshable credential failed as "access denied".
            expiry = (
                expiry.replace(tzinfo=dt.UTC)
                if expiry.tzinfo is None
                else expiry.astimezone(dt.UTC)
            )
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": expiry if isinstance(expiry, dt.datetime) else None,
        }


# Client settings obstore is configured from; any other one (a CA bundle in ``verify``,
# ``use_ssl``, proxies, ...) keeps the boto3 transport, which honours it.
_CLIENT_KWARGS = frozenset({"endpoint_url", "region_name", "config"})
_CONFIG_KEYS = frozenset(
    {
        "retries",
        "max_pool_connections",
        "tcp_keepalive",
        "connect_timeout",
        "read_timeout",
        "region_name",
        "s3",
    }
)
# Config settings that obstore honours with one value only: it sends no checksum
# header and checks none, which is boto3's "when_required" (for servers that answer
# 501 to checksum headers).
_CONFIG_VALUES = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
}
# Environment variables with which obstore would do what boto3 does not (encrypt,
# add checksums, use S3 Express sessions), and which no setting here can undo: with
# one of them set, "auto" goes through boto3.
_ENV_ONLY_OBSTORE = frozenset(
    {
        "AWS_SERVER_SIDE_ENCRYPTION",
        "AWS_SSE_KMS_KEY_ID",
        "AWS_SSE_BUCKET_KEY_ENABLED",
        "AWS_SSE_CUSTOMER_KEY_BASE64",
        "AWS_CHECKSUM_ALGORITHM",
        "AWS_S3_EXPRESS",
    }
)
_ENV_TOKENS = frozenset({"AWS_SESSION_TOKEN", "AWS_TOKEN"})


_SERVES: dict[int, tuple[Options, bool]] = {}  # by id(options): checked once


def can_serve(options: Options) -> bool:
    """Whether obstore can honour every setting of ``options`` (else boto3 is used)."""
    known = _SERVES.get(id(options))
    if known is not None and known[0] is options:
        return known[1]
    result = _can_serve(options)
    remember(_SERVES, id(options), (options, result))
    return result


def _can_serve(options: Options) -> bool:
    if set(options.s3_client_kwargs) - _CLIENT_KWARGS:
        return False
    config = options.s3_client_kwargs.get("config")
    if config is not None:
        provided = getattr(config, "_user_provided_options", None)
        if not isinstance(provided, dict):
            return False
        for key, value in provided.items():
            if value is None:
                if key in ("connect_timeout", "read_timeout"):
                    return False  # no timeout at all, for botocore: boto3 keeps that
                continue  # botocore's default, as if not given
            if key not in _CONFIG_KEYS and _CONFIG_VALUES.get(key) != str(value).lower():
                return False
        if set(provided.get("s3") or {}) - {"addressing_style"}:
            return False
    if any(os.environ.get(name) for name in _ENV_ONLY_OBSTORE):
        return False
    # FIPS and dual-stack hosts come from boto3's endpoint rules (virtual-hosted, per
    # region), which obstore's settings do not reproduce: such requests go by boto3.
    # The client's resolved config has them from the environment, the profile in the
    # AWS config file or a Config alike.
    try:
        resolved = options.s3_client().meta.config
    except Exception:  # no such profile, a bad region: the request says so, translated
        return True
    if getattr(resolved, "use_fips_endpoint", None) or getattr(
        resolved, "use_dualstack_endpoint", None
    ):
        return False
    # a private CA (AWS_CA_BUNDLE, the profile's ca_bundle) that obstore would not trust
    return options._private_ca_bundle() is None


# The process in which obstore was first used (its runtime started), if any.
_USED_IN_PID: int | None = None


def _fresh_locks_after_fork() -> None:
    """New locks in a forked child: another parent thread may have held one at the fork."""
    global _STORES_LOCK, _RELOCATE_LOCK
    _STORES_LOCK, _RELOCATE_LOCK = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_fresh_locks_after_fork)


def forked_after_obstore() -> bool:
    """Whether this process was forked from one that had already used obstore."""
    return _USED_IN_PID is not None and os.getpid() != _USED_IN_PID


def _attempts(config: Any, options: Options) -> int:
    """How many times a request is tried, as the client's resolved ``Config`` says.

    It is ``max_attempts`` of the options unless their ``Config`` sets ``retries``
    (botocore turns an older ``max_attempts`` there into ``total_max_attempts``).
    """
    retries = getattr(config, "retries", None) or {}
    return max(1, int(retries.get("total_max_attempts", options.max_attempts)))


# Buckets that boto3 addresses as <bucket>.s3.<region>.amazonaws.com on AWS: DNS labels
# without dots (a dotted name would not match the wildcard certificate).
_VIRTUAL_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


def _bucket_endpoint(
    client: Any, bucket: str, region: str, endpoint: str, custom: bool, addressing: str
) -> tuple[str, bool]:
    """The endpoint obstore is given for ``bucket``, and whether it names the bucket.

    The addressing is boto3's: on AWS, virtual-hosted for a bucket that can be a
    host name, unless the options say ``"path"``; on another endpoint, whatever boto3
    would send (a presigned URL shows it without a request: virtual-hosted only when
    asked for, and not for an IP address). obstore, told to address a bucket
    virtually, takes its endpoint to be the bucket's own host: given the plain
    endpoint, it sent the bucket's requests to the endpoint's path-style root, where
    the key's first segment was taken as the bucket (another bucket read or written).
    """
    if not custom:
        # For AWS itself, the endpoint obstore would use anyway (an endpoint variable
        # that boto3 ignored, under AWS_IGNORE_CONFIGURED_ENDPOINT_URLS, must not win).
        if addressing != "path" and _VIRTUAL_BUCKET.fullmatch(bucket):
            return f"https://{bucket}.s3.{region}.amazonaws.com", True
        return f"https://s3.{region}.amazonaws.com", False
    if addressing != "virtual":
        return endpoint, False
    signed = urllib.parse.urlsplit(
        client.generate_presigned_url(
            "head_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60
        )
    )
    if (signed.hostname or "").startswith(f"{bucket}.") and signed.path.endswith("/k"):
        return f"{signed.scheme}://{signed.netloc}{signed.path[: -len('/k')]}", True
    return endpoint, False


def _timeout(config: Any, name: str) -> dt.timedelta:
    """The timeout ``name`` of botocore (60 s unless set); ``None``, no timeout, is a day."""
    value = getattr(config, name, 60)
    return dt.timedelta(days=1) if value is None else dt.timedelta(seconds=float(value))


def _new_store(options: Options, bucket: str) -> S3Store:
    global _USED_IN_PID
    if _USED_IN_PID is None:
        _USED_IN_PID = os.getpid()
    client = options.s3_client()
    meta = client.meta
    endpoint = str(meta.endpoint_url)
    custom = "endpoint_url" in options.s3_client_kwargs or not endpoint.endswith(".amazonaws.com")
    region = _REGIONS.get((os.getpid(), options, bucket)) or meta.region_name or "us-east-1"
    # obstore also reads AWS_* environment variables, and its AWS_ENDPOINT_URL_S3
    # even wins over "endpoint": every setting such a variable could change is stated
    # here, as boto3 resolved it from the options.
    config: dict[str, Any] = {"region": region, "request_payer": options.request_payer}
    s3_config = getattr(meta.config, "s3", None) or {}
    addressing = s3_config.get("addressing_style", "auto")
    url, virtual = _bucket_endpoint(client, bucket, region, endpoint, custom, addressing)
    config["endpoint"] = config["aws_endpoint_url_s3"] = url
    config["virtual_hosted_style_request"] = virtual
    client_options: dict[str, Any] = {
        "allow_http": endpoint.lower().startswith("http://"),
        "pool_max_idle_per_host": str(options.max_concurrency),
        "timeout": "300s",
        # botocore's own (60 s each unless the options' Config says otherwise): a read
        # timeout also ends the wait for a server that accepts and never answers
        "connect_timeout": _timeout(meta.config, "connect_timeout"),
        "read_timeout": _timeout(meta.config, "read_timeout"),
    }
    kwargs: dict[str, Any] = {}
    credentials = client._request_signer._credentials  # type: ignore[attr-defined]
    if credentials is None:
        if getattr(meta.config, "signature_version", None) is not UNSIGNED:
            raise NoCredentialsError()  # what boto3 itself would raise for this request
        config["skip_signature"] = True
    else:
        config["skip_signature"] = False
        frozen = credentials.get_frozen_credentials()
        refreshes = hasattr(credentials, "_expiry_time") and getattr(
            credentials, "_refresh_using", None
        )
        if refreshes or (not frozen.token and _ENV_TOKENS & os.environ.keys()):
            # A provider's answer is the whole identity: an AWS_SESSION_TOKEN of the
            # environment is not added to keys that have no token.
            kwargs["credential_provider"] = _Credentials(credentials)
        else:
            config["access_key_id"] = frozen.access_key
            config["secret_access_key"] = frozen.secret_key
            if frozen.token:
                config["token"] = frozen.token
    retry = {
        "max_retries": _attempts(meta.config, options) - 1,
        "retry_timeout": dt.timedelta(minutes=3),
        "backoff": _BACKOFF,
    }
    return S3Store(
        bucket,
        config=cast(Any, config),
        client_options=cast(Any, client_options),
        retry_config=cast(Any, retry),
        **kwargs,
    )


# Waits between obstore's attempts, as long as boto3's. object_store draws each wait
# at random between init_backoff and base times the previous one: the mean grows by
# base / 2 per retry. With base 2 it hardly grew (100 ms, 150 ms, 200 ms, ...: a helper
# saw 8 attempts against a throttling server end in 1.2-2.7 s where boto3's took 32 s,
# so obstore failed rows that boto3 rides out). With these the mean waits double from
# 200 ms up to boto3's cap of 20 s: about 33 s in all over the default 7 retries.
_BACKOFF = {
    "init_backoff": dt.timedelta(milliseconds=200),
    "max_backoff": dt.timedelta(seconds=20),
    "base": 4,
}


def store_for(options: Options, bucket: str) -> S3Store:
    """The process's obstore store for ``bucket`` under ``options`` (created once).

    Stores live with the options' runtime (``_Runtime``), as clients do: equal options
    share them, unless the later ones were first used after the environment changed,
    and a runtime that the process forgets (it keeps the most recently used few) lets
    go of its stores, and so of their connections (kept by options value instead, up
    to 256 values' pools of connections stayed open: a service that made new options
    as credentials rotated ran out of file descriptors). A runtime keeps the stores of
    the :data:`_STORES_KEPT` buckets it used last (a service reading URLs of any bucket
    its users name kept one store, ~100 KB and an idle connection, per bucket name,
    missing ones included); a transfer under way keeps its own store. A store found
    takes no lock (a lock on every request, and 64 kept, made a job that cycled through
    70 buckets build a store per request and stall every other options' requests).
    """
    stores = options._live().stores
    kept = stores.get(bucket)
    if kept is None:
        with _STORES_LOCK:
            kept = stores.get(bucket)
            if kept is None:
                if len(stores) >= _STORES_KEPT:  # the least recently used goes
                    oldest = min(stores, key=lambda name: stores[name].used)
                    del stores[oldest]  # its connections close once unused
                kept = stores[bucket] = _KeptStore(_new_store(options, bucket))
    kept.used = time.monotonic()  # no lock: a plain attribute, set by the last user
    return kept.store


class _KeptStore:
    """A bucket's store in its runtime, and when it was last asked for."""

    __slots__ = ("store", "used")

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.used = time.monotonic()


def _bucket_region(options: Options, bucket: str) -> str | None:
    """The region S3 names for ``bucket`` (``x-amz-bucket-region``), asked through boto3.

    S3 names it in the answer to a HEAD of the bucket even when that answer is an
    error (a redirect, or a 403 without ``s3:ListBucket``).
    """
    try:
        response = options.s3_client().head_bucket(Bucket=bucket)
        headers = response["ResponseMetadata"]["HTTPHeaders"]
    except ClientError as e:
        headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    except Exception:  # no answer: nothing learnt
        return None
    region = headers.get("x-amz-bucket-region")
    return str(region) if region else None


def _relocate(options: Options, bucket: str, failed: S3Store) -> bool:
    """Makes ``bucket``'s next store for its own region, after S3 redirected a request.

    ``failed`` is the store whose request S3 sent to another region. boto3 follows a
    bucket into its region by itself (its redirector), but obstore signs for, and
    sends to, the one region it was given. The region is asked for only then, so
    buckets in the client's own region cost no extra request.

    Returns:
        Whether a request is worth retrying: a store for the right region now exists
        (made here, or by another thread meanwhile).
    """
    key = (os.getpid(), options, bucket)
    failed_region = failed.config.get("region")
    with _RELOCATE_LOCK:
        region = _REGIONS.get(key)
        if region is None or region == failed_region:  # not learnt yet by another thread
            region = _bucket_region(options, bucket)
            if region is None or region == failed_region:
                return False  # nothing better to try
            _REGIONS[key] = region
        with _STORES_LOCK:
            stores = options._live().stores
            kept = stores.get(bucket)
            if kept is not None and kept.store is failed:
                del stores[bucket]
        return True


# (endpoint, bucket) of this process that refused a PUT without a checksum: buckets
# with Object Lock.
_CHECKSUM_BUCKETS: set[tuple[Any, str]] = set()


def _wants_checksum(error: BaseException) -> bool:
    """Whether S3 refused a PUT for want of a checksum (an Object Lock bucket)."""
    text = str(error)
    return "MissingUploadObjectWithObjectLockHeaders" in text or (
        "Content-MD5" in text and "Object Lock" in text
    )


def _wrong_region(error: BaseException) -> bool:
    text = str(error)
    return any(word in text for word in _WRONG_REGION_WORDS)


# One DEBUG line per obstore request (boto3's requests show in botocore's own DEBUG
# logs; obstore's Rust side logs nothing to Python).
_log = logging.getLogger("file_dataset.obstore")
_METHODS = {"read": "GET", "head": "HEAD", "write": "PUT"}


def _logged(call: Callable[[S3Store], T], store: S3Store, loc: Location, operation: str) -> T:
    """:func:`_unpanicked`, with the request, its outcome and its time logged at DEBUG."""
    if not _log.isEnabledFor(logging.DEBUG):
        return _unpanicked(call, store, loc, operation)
    start = time.perf_counter()
    outcome = "answered"
    try:
        return _unpanicked(call, store, loc, operation)
    except BaseException as e:
        outcome = f"failed ({type(e).__name__})"
        raise
    finally:
        _log.debug(
            "obstore %s %s: %s in %.1f ms",
            _METHODS.get(operation, operation),
            mask_secrets(str(loc)),  # a key may hold a signed URL's query
            outcome,
            (time.perf_counter() - start) * 1000,
        )


def _unpanicked(call: Callable[[S3Store], T], store: S3Store, loc: Location, operation: str) -> T:
    """``call(store)``, with a panic in obstore's Rust code made a :class:`TransferError`.

    pyo3 raises a panic as ``PanicException``, a ``BaseException``: ``except
    Exception`` (and a Pipeline's row handling) would not catch it, and no row id or
    column would be named. A 64 KiB key did it (the URL is too long for the ``http``
    crate); such keys now go through boto3, and this catches what else may.
    """
    try:
        return call(store)
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        shortage = no_descriptor_left(e, str(e))  # no runtime or socket could be made
        raise found(
            TransferError(
                str(loc),
                shortage or f"obstore failed inside ({e}); transport='boto3' may read it",
                operation=operation,
            ),
            errno=errno.EMFILE if shortage else None,
        ) from e


class ObstoreS3Backend:
    """Reads and writes S3 objects with obstore; multipart writes through boto3."""

    supports_multipart = True

    def __init__(self, options: Options) -> None:
        self._options = options
        self._boto3 = S3Backend(options)

    def _store(self, loc: Location, operation: str) -> S3Store:
        try:
            return store_for(self._options, loc.bucket)
        except BotoCoreError as e:  # no credentials, no such profile, ...
            translate_boto_error(e, str(loc), operation)

    def _request(self, loc: Location, call: Callable[[S3Store], T], operation: str = "read") -> T:
        """``call(store)``; made once more if S3 says the bucket is in another region.

        The second time goes through a store for the bucket's own region (see
        :func:`_relocate`).
        """
        store = self._store(loc, operation)
        try:
            return _logged(call, store, loc, operation)
        except BaseError as e:
            if not _wrong_region(e) or not _relocate(self._options, loc.bucket, store):
                raise
        return _logged(call, self._store(loc, operation), loc, operation)

    def read_first(
        self, loc: Location, length: int, sink: Sink | None = None
    ) -> tuple[Blob | None, int, str | None]:
        url = str(loc)
        try:
            # obstore's waits for the answer and a small body: given up if the call is
            # stopped meanwhile (one section: nothing of the job's is touched in it)
            with detachable():
                result = self._get_first(loc, length)
                total = int(result.meta["size"])
                tag = result.meta.get("e_tag")
                expected = min(total, length)
                streamed = sink is not None and (expected >= STREAM_BYTES or total > length)
                data = b"" if streamed else result.bytes()
            if streamed and sink is not None:
                store = store_writer(sink(total, tag))
                write_chunks(store, 0, self._chunks(result, url, expected))
                return None, total, tag
        except (BaseError, OSError) as e:
            translate_error(e, url, "read")
        if len(data) != expected:
            raise TransferError(url, f"got {len(data)} bytes, expected {expected}")
        # A read-only view of obstore's own buffer: no copy (Arrow and pwrite take views).
        return memoryview(data), total, tag

    def _get_first(self, loc: Location, length: int) -> obstore.GetResult:
        """The answer to a GET of the first ``length`` bytes (of the whole, if empty).

        An error answer whose body is cut short (a connection dropped while the 416 of
        an empty object arrives) is a "body error" that obstore does not retry: the GET
        is made again, up to ``max_attempts`` times.
        """

        def get() -> obstore.GetResult:
            try:
                return self._request(
                    loc, lambda store: obstore.get(store, loc.key, options={"range": (0, length)})
                )
            except BaseError as e:
                # an empty object: no range is satisfiable (the answer's status only:
                # the text also quotes the key, times and request ids)
                if not re.search(r"non-2xx status code: 416\b|InvalidRange", str(e)):
                    raise
                return self._request(loc, lambda store: obstore.get(store, loc.key))

        return retried(get, _body_error, self._options.max_attempts)

    @staticmethod
    def _chunks(result: obstore.GetResult, url: str, length: int) -> Iterator[memoryview]:
        """A response's body in chunks of about 256 KiB, checked to be ``length`` bytes.

        A transfer in flight then holds one chunk, not the whole body, and the small
        buffers are reused by the allocator instead of touching fresh pages.
        """
        done = 0
        stream = result.stream(min_chunk_size=_STREAM_CHUNK_BYTES)
        while True:
            with detachable():  # (the next chunk awaited: see read_first)
                chunk = next(stream, None)
            if chunk is None:
                break
            view = memoryview(chunk)
            if done + len(view) > length:
                raise TransferError(url, f"got more than the {length} bytes asked for")
            done += len(view)
            yield view
        if done != length:
            raise TransferError(url, f"got {done} of {length} bytes")

    def read_chunks(
        self, loc: Location, start: int, length: int, tag: str | None = None
    ) -> Iterator[Blob]:
        if not length:
            return
        url = str(loc)
        get_options: dict[str, Any] = {"range": (start, start + length)}
        if tag and not is_weak(tag):  # a weak ETag never matches If-Match
            get_options["if_match"] = tag
        try:
            with detachable():  # (see read_first)
                result = self._request(
                    loc, lambda store: obstore.get(store, loc.key, options=cast(Any, get_options))
                )
            check_same_version(url, tag, result.meta.get("e_tag"))
            yield from self._chunks(result, url, length)
        except (BaseError, OSError) as e:
            translate_error(e, url, "read")

    def read_into(
        self, loc: Location, start: int, view: memoryview, tag: str | None = None
    ) -> None:
        # A presigned GET read straight into place when it can, the rest (all of it,
        # when that GET is not made or not answered as asked) by obstore.
        done = signed_read_into(self._options, self._store(loc, "read"), loc, start, view, tag)
        rest = view[done:]
        write_chunks(
            partial(copy_into, rest), 0, self.read_chunks(loc, start + done, len(rest), tag)
        )

    def size(self, loc: Location) -> int:
        try:
            with detachable():  # (see read_first)
                head = self._request(loc, lambda store: obstore.head(store, loc.key), "head")
            return int(head["size"])
        except (BaseError, OSError) as e:
            return explain_head(self, loc, partial(translate_error, e, str(loc), "head"))

    def write(self, src: Path, loc: Location) -> None:
        where = (self._options.s3_client_kwargs.get("endpoint_url"), loc.bucket)
        if self._options.upload_args or where in _CHECKSUM_BUCKETS:
            self._boto3.write(src, loc)  # boto3 takes every upload argument as is
            return
        data = read_source(src)
        try:
            self._request(
                loc, lambda store: obstore.put(store, loc.key, data, use_multipart=False), "write"
            )
            return
        except (BaseError, OSError) as e:
            if _s3_code(str(e), str(loc))[0] == "RequestTimeout" and self._retried():
                # S3 stopped waiting for the body (400 RequestTimeout): botocore retries
                # that answer and obstore does not, so boto3 makes the PUT again, with
                # its own retries (not when the caller asked for one attempt).
                self._boto3.write(src, loc)
                return
            if not _wants_checksum(e):
                translate_error(e, str(loc), "write")
        # A bucket with Object Lock takes a PUT only with a checksum (or Content-MD5),
        # which obstore does not send and boto3 does: this bucket's writes go by boto3.
        _CHECKSUM_BUCKETS.add(where)
        self._boto3.write(src, loc)

    def _retried(self) -> bool:
        """Whether these options allow a request more than one attempt.

        That is their Config's ``retries`` over ``max_attempts``, as the client resolves
        them.
        """
        return _attempts(self._options.s3_client().meta.config, self._options) > 1

    def multipart_start(self, loc: Location) -> str:
        return self._boto3.multipart_start(loc)

    def multipart_part(
        self,
        loc: Location,
        upload_id: str,
        number: int,
        src: Path,
        start: int,
        length: int,
    ) -> Part:
        return self._boto3.multipart_part(loc, upload_id, number, src, start, length)

    def multipart_complete(self, loc: Location, upload_id: str, parts: list[Part]) -> None:
        self._boto3.multipart_complete(loc, upload_id, parts)

    def multipart_abort(self, loc: Location, upload_id: str) -> None:
        self._boto3.multipart_abort(loc, upload_id)
