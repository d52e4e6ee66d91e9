"""Later parts of large objects as GETs of a presigned URL, read straight into place.

The obstore transport reads a large object's first part itself (it gives the size and
ETag); its later parts come this way when they can. obstore presigns a URL for the
part (~10 us, for the store that would have sent the GET: its endpoint, region and
credentials), which goes over the connection pool of the options' first boto3 client
(boto3's TLS verification, proxies from the environment and timeouts) and is read from
the socket into the object's buffer by http.client's ``readinto``: no copy but the
kernel's. Through obstore, each 256 KiB chunk arrives in a buffer of its own and is
copied into ours, which cost a third more CPU per byte and kept large reads over
loopback behind a plain boto3 thread pool (benchmarks/findings.md, twenty-third and
twenty-fourth rounds).

Whatever is unexpected goes back to the transport: :func:`read_into` fills as much as
one GET gave, and the transport reads the rest with its own retries, checks and
errors. No error of this path is kept or raised, since its text (urllib3's, botocore's)
holds the presigned URL, and so the access key id and any session token.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any, cast

import obstore
from botocore.awsrequest import AWSPreparedRequest
from botocore.response import StreamingBody
from obstore.store import S3Store

from file_dataset._backend import is_weak
from file_dataset._errors import drop_foreign_frames, mask_secrets
from file_dataset._options import Options, stop_if_stopped
from file_dataset._s3 import fill_some
from file_dataset._urls import Location

_log = logging.getLogger("file_dataset.signed")

# How long a presigned URL is valid: it is used at once, for one request; the margin
# is for a clock that runs behind.
_EXPIRES = dt.timedelta(minutes=15)

# (endpoint, bucket) pairs whose answers to a presigned GET say that the way does not
# work there: a bucket policy that refuses presigned URLs (403), a redirect, a server
# that ignores Range (200) or mangles it. Their later parts go by the transport for the
# rest of the process (one wasted request each, not one per part). Other answers (404,
# 412, a 400 such as RequestTimeout) say something of the object or of the request:
# that part goes by the transport, which says what it is in its own words.
_REFUSED: set[tuple[object, str]] = set()
_REFUSING = frozenset({200, 206, 401, 403, 405, 501})

# (endpoint, bucket) -> until when (time.monotonic()) their later parts go by the
# transport alone: a server that is throttling (429, 503 SlowDown) or failing (5xx)
# gets no second request per part while obstore's retries back off.
_COOLING: dict[tuple[object, str], float] = {}
_COOLING_SECONDS = 10.0


def read_into(
    options: Options,
    store: S3Store,
    loc: Location,
    start: int,
    view: memoryview,
    tag: str | None,
) -> int:
    """Reads ``len(view)`` bytes of the object from ``start`` into ``view``, if it can.

    Args:
        options: The options the read is made with.
        store: obstore's store for the object's bucket: it signs the URL, as it would
            sign its own request (its endpoint, region and credentials).
        loc: The object.
        start: The first byte wanted.
        view: Where the bytes go.
        tag: The object's ETag, from its first part: the GET carries ``If-Match`` and
            its answer must carry the same ETag. Without one (or with a weak one),
            nothing is read.

    Returns:
        How many bytes of ``view`` were filled, from its start: all of them, fewer if
        the connection dropped part-way, none if the request was not made or not
        answered with those bytes. The caller reads the rest.
    """
    where = (options.s3_client_kwargs.get("endpoint_url"), loc.bucket)
    if not view or not tag or is_weak(tag) or options.request_payer or where in _REFUSED:
        return 0
    if _COOLING and _COOLING.get(where, 0.0) > time.monotonic():
        return 0
    if str(store.config.get("skip_signature", "")).lower() == "true":
        # Anonymous (UNSIGNED) options: obstore would look for credentials to sign
        # with, asking the instance metadata service for them on every part.
        return 0
    stop_if_stopped()
    end = start + len(view) - 1
    began = time.perf_counter()
    response = None
    try:
        client: Any = options._shared_s3_client()
        if client.meta.config.read_timeout is None:  # none at all for urllib3: obstore's
            return 0
        url = obstore.sign(store, "GET", loc.key, _EXPIRES)
        headers = {"Range": f"bytes={start}-{end}", "If-Match": tag}
        request = AWSPreparedRequest("GET", url, cast(Any, headers), None, True)
        response = client._endpoint.http_session.send(request)
    except Exception as e:  # not kept: its text holds the presigned URL
        # (no credentials, a connection refused: the transport says so) urllib3 keeps
        # it in a frame of its own, a cycle that would hold ``view`` until a collection
        drop_foreign_frames(e)
    if response is None:
        _logged(loc, start, end, "not answered", began)
        return 0
    status = response.status_code
    answered = response.headers
    as_asked = (
        status == 206
        and str(answered.get("Content-Range", "")).startswith(f"bytes {start}-{end}/")
        and answered.get("Content-Length") == str(len(view))
    )
    # (another version: a server that ignores If-Match; obstore's GET then says so)
    same = str(answered.get("ETag", "")).strip('"') == tag.strip('"')
    if not (as_asked and same):
        response.raw.close()
        if status == 429 or (status >= 500 and status not in _REFUSING):
            _COOLING[where] = time.monotonic() + _COOLING_SECONDS
        elif not as_asked and (status in _REFUSING or 300 <= status < 400):
            _REFUSED.add(where)
        _logged(loc, start, end, f"answered {status}", began)
        return 0
    got, _ = fill_some(StreamingBody(response.raw, len(view)), view)
    _logged(loc, start, end, f"{got} of {len(view)} bytes", began)
    return got


def _logged(loc: Location, start: int, end: int, outcome: str, began: float) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "signed GET %s bytes %d-%d: %s in %.1f ms",
            mask_secrets(str(loc)),  # a key may hold a signed URL's query
            start,
            end,
            outcome,
            (time.perf_counter() - began) * 1000,
        )
