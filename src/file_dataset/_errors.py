"""Exceptions raised by file_dataset.

Every exception also inherits the built-in exception that means the same thing, so
``except FileNotFoundError`` or ``except ValueError`` work as expected::

    FileDatasetError
    ├── InvalidInputError (ValueError)      bad URL, name, id or file DataFrame
    │   └── (a wrong type is also a TypeError)
    └── TransferError (OSError)             a read or write of one object failed
        ├── ObjectNotFoundError (FileNotFoundError)
        ├── ObjectAccessDeniedError (PermissionError)
        └── NotAFolderError (NotADirectoryError)   not exported: a local file stands
                                                   where a folder must be

Transfer errors carry the ``url``, and where known the ``row_id`` and ``column`` of the
object, as attributes and in their message. Messages never contain credentials. The
two subclasses also set ``errno`` (``ENOENT``, ``EACCES``), as the built-in ones do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "FileDatasetError",
    "InvalidInputError",
    "ObjectAccessDeniedError",
    "ObjectNotFoundError",
    "TransferError",
]


class FileDatasetError(Exception):
    """Base class of the errors file_dataset raises about data, settings and transfers.

    Its subclasses are also the built-in exceptions they refine (``ValueError``,
    ``OSError``, ``FileNotFoundError``, ``PermissionError``); an argument of the wrong
    type where a file DataFrame, row, URL or path, ``batch_size`` or ``on_error`` is
    expected is an ``InvalidInputError`` that is also a ``TypeError``. Not covered:
    other wrong argument types (``TypeError``: ``options`` given as a dict, say), an
    exception of ``fn`` in a Pipeline (raised as it is with ``on_error="raise"``), a
    missing ``into_temp_dir(dir=...)`` folder (the
    built-in ``FileNotFoundError``/``NotADirectoryError``) and interrupts.
    """


class InvalidInputError(FileDatasetError, ValueError):
    """An argument is not valid (a ``ValueError``).

    A URL, file name, row id, file DataFrame or setting (of ``Options``, ``reader``,
    ``read_file_dataset``), or a ``TempDir`` used after its removal.

    Attributes:
        row_id: The id of the row whose cell is refused, when the error is about one
            cell of a file DataFrame or row (else ``None``).
        column: The file column (file name) of that cell, or of a column of numbers,
            dates or bytes refused as a whole (``row_id`` is then its first such cell's
            row), else ``None`` (a bad column name is not one cell's).
    """

    row_id: str | None
    column: str | None

    def __init__(self, *args: object, row_id: str | None = None, column: str | None = None):
        super().__init__(*args)
        # kept by pickling (Ray ships errors between processes): BaseException's
        # __reduce__ carries the instance's __dict__
        self.row_id = row_id
        self.column = column


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument of the wrong type (a ``ValueError`` and a ``TypeError``).

    An :class:`InvalidInputError` that is also a ``TypeError``, so either ``except``
    catches it: ``reader(5)``, ``batch_size="4"``, ``into_path=None``, ``on_error=True``.
    """


# The longest value quoted whole in a message; longer ones are cut (a cell may hold a
# file's bytes, or a long string, and a message or log line must stay readable).
_QUOTE_LIMIT = 200


def quoted(value: Any) -> str:
    """``repr(value)``, cut to about :data:`_QUOTE_LIMIT` characters with its length.

    ``str``, ``bytes`` and the like are cut before ``repr``, so a cell holding a large
    file's bytes costs no more than a short one.
    """
    if isinstance(value, str | bytes | bytearray | memoryview) and len(value) > _QUOTE_LIMIT:
        unit = "characters" if isinstance(value, str) else "bytes"
        head = value[:_QUOTE_LIMIT]
        if isinstance(head, memoryview):
            head = head.tobytes()
        return f"{repr(head)[:_QUOTE_LIMIT]}... ({len(value)} {unit})"
    text = repr(value)
    if len(text) > _QUOTE_LIMIT:
        return f"{text[:_QUOTE_LIMIT]}... ({type(value).__name__}, cut)"
    return text


def listed(
    items: Any, limit: int = 10, show: Callable[[Any], str] = quoted, brackets: str = "[]"
) -> str:
    """The first ``limit`` of ``items``, each as ``show`` gives it, and how many more.

    ``['a', 'b'] and 3 more``: a frame of 10,000 columns gave messages of 130,000
    characters, which Ray repeats in every task's error.
    """
    items = list(items)
    shown = ", ".join(show(item) for item in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{brackets[0]}{shown}{brackets[1]}{more}"


def cut(text: str, limit: int = 1200) -> str:
    """``text`` itself, or its first ``limit`` characters and its length when longer.

    For URLs and paths in messages: every valid S3 URL (a 63-character bucket, a
    1,024-byte key) fits whole; a cell holding a file's text does not.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


# The ``user:password@`` part of a URL: up to the last "@" before the first "/" (a
# password with an unencoded "@"), or, after "user:", up to the first "@" even past a
# "/" (AWS secret keys hold "/", and are pasted unencoded) unless what follows the ":"
# is a port ("host:9000/a@b" is a host, a port and a key; "[::1]" an IPv6 host). That
# scan is bounded (no credential is longer), so many "://a:b" cost linear time.
USERINFO = re.compile(r"(?<=://)(?:[^/\s]*@|[^/@:\s\[]{0,256}:(?!\d+(?:[/?#]|$))[^@\s]{0,256}@)")


def mask_userinfo(value: str) -> str:
    """Hides a ``user:password@`` part so it never reaches a message or a repr."""
    return USERINFO.sub("***@", value)


# Credentials that answers and signed URLs quote: S3's answer to a bad signature holds
# the access key id and the canonical request, session token included (as text and as
# hex bytes); STS's answers, and the JSON of container, SSO and process credentials,
# hold whole credentials; a signed URL holds a key id and a signature in its query.
_CREDENTIAL_FIELDS = (
    # Each pattern with what any text holding its field contains (lowercased), so that
    # texts without one skip its search (botocore's DEBUG records pass through here).
    (
        ("keyid>", "provided>", "bytes>", "accesskey>", "token>", "token-"),
        re.compile(
            r"(?i)(<(?:AWSAccessKeyId|SignatureProvided|CanonicalRequestBytes|StringToSignBytes"
            r"|AccessKeyId|SecretAccessKey|SessionToken|Token-\d+)>)([^<]*)"
        ),
    ),
    # JSON, and the header dict that botocore's DEBUG log prints (values as bytes).
    (
        ('keyid"', "keyid'", 'accesskey"', "accesskey'", 'token"', "token'"),
        re.compile(
            r"(?i)([\"'](?:(?:AccessKeyId|SecretAccessKey|SessionToken|Token)[\"']\s*:"
            r"|X-Amz-Security-Token[\"']\s*[:,])\s*(?:bytearray\()?b?[\"'])([^\"']*)"
        ),
    ),
    # Key=value (a credential_process that prints what it got, a shell's env dump):
    # only at the start or after a space, "?", "&", ";" or ",", so that a key such as
    # "exports/session_token=2024-01/part-0.bin" is quoted as it is.
    # Also "SecretAccessKey: ..." and "AWS_SECRET_ACCESS_KEY: ..." (YAML; not a bare
    # "session_token:", which messages naming the field use, nor after a "(" or "{",
    # which keys such as "data/(session_token=abc)/x.bin" hold),
    # "aws_secret_access_key = ..." (INI, as in ~/.aws/credentials), and a shell's
    # quoted value (declare -x AWS_SECRET_ACCESS_KEY="...").
    (
        ("secretaccesskey", "sessiontoken", "secret_access_key", "session_token"),
        re.compile(
            r"((?:(?<=[?&;,\s])|^)(?:(?i:(?:aws_)?(?:secret_?access_?key|session_?token))"
            r"[ \t]*=[ \t]*|(?:SecretAccessKey|SessionToken"
            r"|(?i:aws_(?:secret_access_key|session_token))):[ \t]*)[\"']?)"
            r"([^\s,;'\"&<>{}()]+)"
        ),
    ),
    # Headers and query parameters: only where a header or a query puts them (after a
    # space, a line break, "?", "&", ";" or ","), so that a key such as
    # "runs/signature=v2/scan.mha" is quoted as it is.
    (
        # The access key id of a credential scope ("AKIA.../20251202/us-east-1/s3/..."):
        # the rest of the scope says nothing secret and helps to read the request.
        ("credential=",),
        re.compile(r"(?i)(?<=[?&;,\s])((?:x-amz-|x-goog-)?credential=)([^/<&\s\"',;()]+)"),
    ),
    # The same in a URL's percent-encoded form (obstore quotes a key holding a signed
    # URL's query so: "...%26X-Amz-Signature%3D<signature>%26...").
    (
        ("%3d",),
        re.compile(
            r"(?i)((?:%3F|%26)(?:x-amz-signature|x-goog-signature|x-amz-credential"
            r"|x-goog-credential|x-amz-security-token)%3D)"
            r"((?:[^%<&/\s\"',;()]|%(?!26)[0-9a-f]{2})+)"
        ),
    ),
    (
        ("signature=", "sig=", "keyid=", "security-token"),
        re.compile(
            r"(?i)((?:(?<=[?&;,\s])|^)x-amz-security-token[:=]\s*|(?<=[?&;,\s])(?:x-amz-"
            r"signature|x-goog-signature|signature|awsaccesskeyid|sig)=)([^<&\s\"',;()]+)"
        ),
    ),
)
# The credentials this process has used (added as clients and obstore stores get them):
# those given or found when a client is made, the latest _SECRETS_KEPT strings (a
# service that made Options with new credentials per request kept every one: masking
# an error then cost 10 ms at 100,000, helper-134), and of credentials that are
# refreshed, the latest two sets of each (a role of short sessions renews them at every
# request: a helper's job remembered 60,000 strings before this bound).
_known_secrets: frozenset[str] = frozenset()
_kept_secrets: dict[str, None] = {}  # the most recently remembered last
_SECRETS_KEPT = 4096
# The secrets of the owners (options' runtimes, whose clients may be in use) still
# alive: kept whatever the bound (helper-135: a client held while 2,100 other
# credentials were used came out unmasked).
_owned_secrets: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()
_refreshed_secrets: dict[int, tuple[frozenset[str], frozenset[str]]] = {}  # by source
_SOURCES_KEPT = 256  # credentials objects followed, the least recently refreshed let go
_SECRETS_LOCK = threading.Lock()


def remember_secrets(*secrets: str | None, source: int | None = None, owner: Any = None) -> bool:
    """Adds credentials to those :func:`mask_secrets` hides wherever they appear.

    Args:
        *secrets: Key ids, secret keys, session tokens (``None`` and short ones are
            left out).
        source: For refreshed credentials, what they are the latest of (the ``id`` of
            botocore's credentials object): of each source only the latest two sets are
            kept (the one before may still be in a request under way).
        owner: For given credentials, what uses them (an options' runtime): they are
            kept, beyond the bound, for as long as it lives.

    Returns:
        Whether any credential is known (these or earlier ones).
    """
    global _known_secrets
    new = {s for s in secrets if s and len(s) >= 8}
    # as a repr or bytes shows one holding a line break: b'...\\n' (a token read from a
    # file and not stripped, from the environment: botocore's error quotes the header)
    new |= {shown for s in new if (shown := repr(s)[1:-1]) != s}
    with _SECRETS_LOCK:
        if source is None:
            if owner is not None:
                owned = _owned_secrets.get(owner, frozenset())
                if not new <= owned:
                    _owned_secrets[owner] = owned | new
            fresh = not new <= _kept_secrets.keys()
            for secret in new:  # to the newest end, whether known or not
                _kept_secrets.pop(secret, None)
                _kept_secrets[secret] = None
            if not fresh:
                return bool(_known_secrets)
            while len(_kept_secrets) > _SECRETS_KEPT:
                del _kept_secrets[next(iter(_kept_secrets))]
        else:
            latest = frozenset(new)
            before = _refreshed_secrets.pop(source, (frozenset(), frozenset()))
            if latest == before[1]:  # unchanged: only moved to the newest end
                _refreshed_secrets[source] = before
                return bool(_known_secrets)
            _refreshed_secrets[source] = (before[1], latest)
            if len(_refreshed_secrets) > _SOURCES_KEPT:
                del _refreshed_secrets[next(iter(_refreshed_secrets))]
        _known_secrets = frozenset(_kept_secrets).union(
            *(a | b for a, b in _refreshed_secrets.values()), *_owned_secrets.values()
        )
    return bool(_known_secrets)


def mask_secrets(value: str) -> str:
    """Hides ``user:password@``, credentials quoted by S3 or a signed URL, and known keys.

    For every message and repr that may quote a URL, a cell or a transport's error.
    """
    text = mask_userinfo(value) if "@" in value else value
    lowered = text.lower()
    for hints, pattern in _CREDENTIAL_FIELDS:
        if any(hint in lowered for hint in hints):
            text = pattern.sub(_mask_field, text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def quoted_masked(value: str) -> str:
    """:func:`quoted` of :func:`mask_secrets`: a cell or URL as a message shows it."""
    return quoted(mask_secrets(value))


def _mask_field(match: re.Match[str]) -> str:
    return f"{match.group(1)}***"


def masked_cut(text: str, limit: int) -> str:
    """:func:`cut` of :func:`mask_secrets`, at a cost bounded by ``limit``.

    Only the start of a long text is masked (a secret straddling where it is cut is
    still masked whole), so a message of megabytes costs no more than a short one.
    """
    margin = limit + 8192  # longer than any credential
    if len(text) <= margin:
        return cut(mask_secrets(text), limit)
    head = mask_secrets(text[:margin])[:limit]
    return f"{head}... ({len(text)} characters)"


# The longest transport error chained whole: obstore quotes the server's answer in
# its message (twice), and a proxy's HTML error page would put hundreds of KB into
# every traceback and log line of the error chained to it.
_CAUSE_LIMIT = 4000


def masked_cause(error: BaseException) -> BaseException:
    """``error``, or a copy of it with credentials masked, to chain an error to.

    boto3, urllib3 and obstore quote the request's URL in their messages, so a password
    in ``endpoint_url`` would reach the traceback of an error chained to theirs; obstore
    also quotes S3's error body, which for a bad signature holds the access key id and
    session token. When one is anywhere in the chain, the copy (message masked, without
    the chain below it) is chained instead; so is one when a message in the chain is
    longer than :data:`_CAUSE_LIMIT` characters (a proxy's HTML error page, which
    obstore quotes twice), cut to that length.
    """
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain:  # the messages a traceback would show
        chain.append(link)
        link = link.__cause__ or link.__context__
    clean = all(
        len(text := str(link)) <= _CAUSE_LIMIT and mask_secrets(text) == text for link in chain
    )
    response = getattr(error, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        # botocore's ClientError keeps S3's parsed error body, which for a bad signature
        # holds the access key id, the session token and the canonical request: kept
        # as a ClientError (handlers look at .response), with those fields masked.
        masked = _masked_response(response)
        if clean and masked == response:
            return error
        with contextlib.suppress(Exception):  # else a subclass with other arguments
            return type(error)(masked, getattr(error, "operation_name", "") or "")
    elif clean:
        return error
    text = masked_cut(str(error), _CAUSE_LIMIT)
    with contextlib.suppress(Exception):  # else a type that takes other arguments
        return type(error)(text)
    with contextlib.suppress(Exception):
        # still of its type (botocore's take keywords only), for handlers that test
        # it: NoCredentialsError, say
        copy = type(error).__new__(type(error))
        BaseException.__init__(copy, text)
        kwargs = getattr(error, "kwargs", None)
        if isinstance(kwargs, dict):  # botocore's: what pickling rebuilds them from
            vars(copy)["kwargs"] = {k: masked_cut(str(v), _CAUSE_LIMIT) for k, v in kwargs.items()}
        if str(copy) == text:
            return copy
    return RuntimeError(f"{type(error).__name__}: {text}")


E = TypeVar("E", bound=BaseException)


def found(failure: E, **findings: Any) -> E:
    """``failure``, with ``findings`` (``errno``, ``unreachable``, ...) set on it.

    For raising an error in one expression, ``raise found(TransferError(...),
    errno=...) from cause``, instead of from a local variable: a raised error's
    traceback holds the frame that raised it, so a frame that also holds the error in
    a variable makes a reference cycle, and every frame the error passes through (a
    large object's buffer among their locals) stays until a garbage collection.
    """
    for name, value in findings.items():
        setattr(failure, name, value)
    return failure


# This package's folder: frames of its modules are kept in a trimmed traceback.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def drop_foreign_frames(error: BaseException) -> None:
    """Cuts the frames of other libraries from ``error``'s traceback and its causes'.

    urllib3 and botocore keep an error they raise in a variable of a frame it passed
    through (urllib3's ``urlopen`` its ``new_e``, botocore's ``_get_response`` its
    ``(None, error)`` reply): a reference cycle through the error's traceback, which
    (through each frame's caller) also holds this library's frames above it, with the
    buffer of the part being read among their variables. All of it stayed until a
    garbage collection. ``error``'s traceback keeps this library's frames, down to the
    first frame of another library; the errors it was raised from (all inside those
    libraries) keep no traceback. Types and messages stay as they were.
    """
    last, tb = None, error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        last, tb = tb, tb.tb_next
    if last is None:
        error.__traceback__ = None
    else:
        last.tb_next = None
    seen = {id(error)}
    pending = [error.__cause__, error.__context__]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += [current.__cause__, current.__context__]


def forget_unmasked(failure: BaseException, error: BaseException) -> None:
    """Drops ``error`` from ``failure``'s context when a masked copy is its cause.

    Raised while ``error`` was being handled, ``failure`` keeps it as ``__context__``:
    tracebacks do not show it (``from`` suppresses it), but the object still holds the
    unmasked original, password or token and all, for any handler that looks.
    """
    if failure.__context__ is error and failure.__cause__ is not error:
        failure.__context__ = None


# Fields of S3's error body that are credentials, or hold them (the canonical request
# quotes the session token's header, as text and as hex bytes).
_SECRET_ERROR_FIELDS = frozenset(
    {
        "AWSAccessKeyId",
        "AccessKeyId",
        "SignatureProvided",
        "StringToSign",
        "StringToSignBytes",
        "CanonicalRequest",
        "CanonicalRequestBytes",
        "SecretAccessKey",
        "SessionToken",
    }
)


def _masked_response(response: dict[str, Any]) -> dict[str, Any]:
    """A copy of botocore's parsed answer with credentials in its error masked."""
    error = {
        key: "***"
        if key in _SECRET_ERROR_FIELDS or key.startswith("Token-")
        else (masked_cut(value, _CAUSE_LIMIT) if isinstance(value, str) else value)
        for key, value in response["Error"].items()
    }
    return {**response, "Error": error}


# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: a
# newline in an S3 key (legal) must not split a message or log line in two, or let a
# cell forge a line of the log.
_UNPRINTABLE = {
    code: repr(chr(code))[1:-1] for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
}


def printable(text: str) -> str:
    r"""``text`` with control characters written as escapes (``\n``, ``\x1b``).

    So are lone surrogates (``\udcff``: a local path that is not UTF-8, as
    ``os.fsdecode`` gives it), which no UTF-8 log file or terminal can take: a
    logging handler dropped the whole line. Everything else (spaces, quotes, any other
    Unicode) is left as it is, so a URL or path reads as given.
    """
    text = text.translate(_UNPRINTABLE)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _describe(operation: str, url: str, row_id: str | None, column: str | None) -> str:
    where = []
    if row_id is not None:
        where.append(f"row id {quoted(row_id)}")
    if column is not None:
        where.append(f"column {quoted(column)}")
    suffix = f" ({', '.join(where)})" if where else ""
    shown = printable(masked_cut(url, 1200))
    if shown != shown.strip():  # a space at an end is the likely cause: make it seen
        shown = f"'{shown}'"
    return f"{operation} {shown}{suffix}"


class TransferError(FileDatasetError, OSError):
    """Reading or writing one object failed.

    Attributes:
        url: The object's URL or local path.
        row_id: The id of the row the object belongs to, when known.
        column: The file column (file name) of the object, when known.
        operation: What was being done: ``"read"``, ``"head"``, ``"write"`` or
            ``"list"`` (:func:`written_ids`).
        reason: A short description of the cause.
        errno: ``errno.ENOENT`` for :class:`ObjectNotFoundError`, ``errno.EACCES`` for
            :class:`ObjectAccessDeniedError`, a local failure's errno (``ENOSPC``, say),
            else ``None``.
        filename: The same as ``url``, as ``OSError`` handlers expect.
        strerror: The same as ``reason``.
        unreachable: Whether the endpoint gave no answer at all, after every attempt:
            no connection could be made, or it did not answer in time.
        status: The HTTP status of the server's answer (404, 403, 400, 503, ...)
            when the failure is one, else ``None``.
        credentials_failed: Whether the credentials themselves failed, whatever the
            object: none found, none could be loaded or refreshed (botocore's
            ``NoCredentialsError``, ``CredentialRetrievalError``, ...), or S3 refused
            them as expired or unknown (``ExpiredToken``, ``InvalidToken``,
            ``InvalidAccessKeyId``), or refused their signature's time
            (``RequestTimeTooSkewed``: this machine's clock is wrong). Every later
            request with them fails too.
    """

    _ERRNO: int | None = None
    filename: str
    strerror: str
    # Set on each instance, not on the class: Ray's RayTaskError(TransferError) takes
    # what its class lacks from the error it wraps, and a class default would hide it.
    unreachable: bool
    status: int | None
    credentials_failed: bool

    def __init__(
        self,
        url: str,
        reason: str,
        *,
        operation: str = "read",
        row_id: str | None = None,
        column: str | None = None,
    ) -> None:
        self.url = url
        self.reason = reason
        self.operation = operation
        self.row_id = row_id
        self.column = column
        self.unreachable = False
        self.status = None
        self.credentials_failed = False
        super().__init__(f"{_describe(f'cannot {operation}', url, row_id, column)}: {reason}")
        # Set after the fact: OSError(errno, strerror) would change the message's form
        # (and __str__ below keeps it when filename is set).
        self.errno = self._ERRNO
        self.filename = url
        self.strerror = reason

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive the default pickling of exceptions,
        # and Ray ships exceptions between processes.
        return (
            _rebuild_transfer_error,
            (
                type(self),
                self.url,
                self.reason,
                self.operation,
                self.row_id,
                self.column,
                self.errno,
            ),
            # notes (the Pipeline's "fn failed on row id ..."), other attributes set
            # on the error: kept across processes too
            {k: v for k, v in self.__dict__.items() if k not in _REBUILT},
        )

    def with_context(self, row_id: str | None, column: str | None) -> TransferError:
        """Returns a copy of this error that names the row id and column.

        Args:
            row_id: The row's id, or ``None``.
            column: The file column (file name), or ``None``.

        Returns:
            An error of the same class, URL, reason, operation and errno.
        """
        copy = type(self)(
            self.url, self.reason, operation=self.operation, row_id=row_id, column=column
        )
        copy._take_findings(self)
        for note in getattr(self, "__notes__", ()):  # an upload that could not be aborted
            copy.add_note(note)
        return copy

    def _take_findings(self, other: TransferError) -> None:
        """Takes what ``other`` found of its failure, for a copy that names it anew.

        That is ``errno`` (a local failure's, ENOSPC say, when set), ``unreachable``,
        ``status`` and ``credentials_failed``.
        """
        self.errno, self.unreachable, self.status = other.errno, other.unreachable, other.status
        self.credentials_failed = other.credentials_failed


# What _rebuild_transfer_error sets from its arguments.
_REBUILT = frozenset({"url", "reason", "operation", "row_id", "column"})


def _rebuild_transfer_error(
    cls: type[TransferError],
    url: str,
    reason: str,
    operation: str,
    row_id: str | None,
    column: str | None,
    code: int | None = None,  # absent from pickles of older versions
) -> TransferError:
    error = cls(url, reason, operation=operation, row_id=row_id, column=column)
    if code is not None:
        error.errno = code
    return error


class ObjectNotFoundError(TransferError, FileNotFoundError):
    """The object (or its bucket, or the local file) does not exist."""

    _ERRNO = errno.ENOENT


class ObjectAccessDeniedError(TransferError, PermissionError):
    """The credentials in use may not read or write the object."""

    _ERRNO = errno.EACCES


class NotAFolderError(TransferError, NotADirectoryError):
    """A local file stands where a folder must be (``ENOTDIR``).

    That is in the path of a destination, or of a file read.

    Not exported: caught as :class:`TransferError` or as the built-in
    ``NotADirectoryError``.
    """

    _ERRNO = errno.ENOTDIR


# How obstore's error text (its debug source) shows EMFILE; its message also quotes the
# request's key and the server's answer, which may hold the same words.
_OBSTORE_EMFILE = re.compile(
    r'code: 24,\s*kind: \w+,\s*message: "Too many open files"|Too many open files \(os error 24\)'
)


def no_descriptor_left(error: BaseException, text: str = "") -> str | None:
    """The reason to give when ``error`` comes from having no file descriptor left.

    The transports report EMFILE as a connection that could not be made, which sends
    the reader to the network instead of to ``ulimit -n`` and ``max_concurrency``.
    It shows in the chain of ``error`` (boto3), or only in obstore's ``text``.

    Returns:
        The reason (the error's ``errno`` is then EMFILE), or ``None`` when ``error``
        has another cause.
    """
    link: BaseException | None = error
    seen: list[BaseException] = []
    while link is not None and link not in seen:
        if isinstance(link, OSError) and link.errno == errno.EMFILE:
            return emfile_reason()
        seen.append(link)
        link = link.__cause__ or link.__context__
    return emfile_reason() if _OBSTORE_EMFILE.search(text) else None


def emfile_reason() -> str:
    """What to say of a failure for want of file descriptors (EMFILE), with the limit."""
    limit = ""
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        limit = f", now {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
    return (
        "too many open files: this process has no file descriptor left (its limit is "
        f"ulimit -n{limit}); lower Options(max_concurrency=...) or raise the limit"
    )


def source_error(error: OSError, path: str) -> TransferError:
    """The error for a local file that could not be opened or read to be sent or copied."""
    if isinstance(error, FileNotFoundError):
        return ObjectNotFoundError(path, "no such local file", operation="read")
    return translate_os_error(error, path, "read")


def translate_os_error(error: OSError, url: str, operation: str) -> TransferError:
    """Turns an ``OSError`` into the matching file_dataset error."""
    reason = error.strerror or str(error)
    if isinstance(error, FileNotFoundError) or error.errno == errno.ENOENT:
        reason = "no such file"
        if not os.path.isabs(url) and operation != "write":  # e.g. a label column
            reason += (
                f" (a relative path, looked up in {os.getcwd()}; every column of a file "
                "DataFrame except 'id' holds file URLs or paths)"
            )
        return ObjectNotFoundError(url, reason, operation=operation)
    if isinstance(error, PermissionError):
        return ObjectAccessDeniedError(url, "permission denied", operation=operation)
    if isinstance(error, NotADirectoryError):
        return NotAFolderError(url, reason, operation=operation)
    if error.errno == errno.EMFILE:
        reason = emfile_reason()
    failure = TransferError(url, reason, operation=operation)
    failure.errno = error.errno  # ENOSPC, EROFS, ...: kept for callers that test it
    return failure
