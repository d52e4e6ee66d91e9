"""Picklable boto3 configuration shared by every read and write."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import functools
import itertools
import logging
import math
import operator
import os
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypedDict, Unpack, get_args

import numpy as np

from file_dataset._errors import (
    USERINFO,
    InvalidInputError,
    InvalidTypeError,
    listed,
    mask_secrets,
    mask_userinfo,
    masked_cause,
    quoted,
    remember_secrets,
)

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_s3 import S3Client
else:  # the stubs are a development dependency: at run time (typing.get_type_hints)
    S3Client = Any  # the client is any boto3 S3 client

__all__ = ["Options", "resolve_options"]

_MiB = 1024 * 1024
_5_GiB = 5 * 1024 * _MiB  # S3's largest part and largest single PUT
_SECRET_KEYS = frozenset({"aws_secret_access_key", "aws_session_token", "aws_access_key_id"})
# boto3.Session() and Session.client() are not thread-safe.
_CREATE_LOCK = threading.Lock()
_LOADER: Any = None
# botocore logs signing details and request headers (with the session token) at DEBUG.
# The libraries under boto3 whose DEBUG logs quote requests (headers, endpoint URLs).
_LOGGED_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")


class _RedactSecrets(logging.Filter):
    """Replaces the secrets of every client made here with ``***`` in botocore's logs.

    A logger's filter sees only that logger's own records, not its children's, so it
    is put on every logger of those libraries (``botocore.regions`` quotes the endpoint
    URL, ``botocore.auth`` the access key id), also on those made since the last client.
    """

    def __init__(self) -> None:
        super().__init__("file_dataset")
        self._filtered: set[str] = set()

    def add(self, *secrets: str | None, source: int | None = None, owner: Any = None) -> None:
        # Kept where errors are masked too (obstore quotes S3's bodies).
        if remember_secrets(*secrets, source=source, owner=owner):
            self._install()

    def _install(self) -> None:
        names = [
            name
            for name in list(logging.root.manager.loggerDict)
            if name not in self._filtered and name.split(".", 1)[0] in _LOGGED_LIBRARIES
        ]
        for name in names:
            logger = logging.root.manager.loggerDict[name]
            if isinstance(logger, logging.Logger):  # not a placeholder for children
                logger.addFilter(self)
                self._filtered.add(name)

    def _redact(self, text: str) -> str:
        # The secrets themselves, and the fields of S3's answers that quote them in
        # other forms (a bad signature's body gives the canonical request as hex bytes).
        return mask_secrets(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        # A record's traceback is formatted later, by the handler: botocore logs the
        # connection errors that quote the endpoint URL (and its password) that way.
        if record.exc_info and not record.exc_text:
            text = _TRACEBACKS.formatException(record.exc_info)
            redacted = self._redact(text)
            if redacted != text:
                record.exc_text = redacted  # what formatters print when it is set
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


_REDACTOR = _RedactSecrets()
_TRACEBACKS = logging.Formatter()
_MAX_RUNTIMES = 8


def _environment_key() -> int:
    """A hash of what boto3 resolves settings from besides the options.

    ``AWS_*`` variables and the AWS config files (by their stat); only the hash is
    kept, no credential.
    """
    for _ in range(100):
        try:
            variables = sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))
            break
        except (KeyError, RuntimeError):  # another thread changed the environment meanwhile
            continue
    else:
        variables = []  # changing all along: share with the options of such a process
    files: list[tuple[int, int, int] | None] = []
    for variable, default in (
        ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        ("AWS_CONFIG_FILE", "~/.aws/config"),
    ):
        try:
            stat = os.stat(os.path.expanduser(os.environ.get(variable, default)))
            files.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        except OSError:
            files.append(None)
    return hash((tuple(variables), tuple(files)))


class _Runtime:
    """The live objects of one ``Options`` value in one process: pool and clients.

    Keyed by the value and by the environment when it was first needed: options made
    after ``AWS_*`` variables or the AWS config files changed resolve their
    credentials, region and endpoint afresh, while options already in use keep
    theirs.
    """

    _registry: ClassVar[dict[tuple[Any, ...], _Runtime]] = {}
    _registry_pid = os.getpid()
    _registry_lock = threading.Lock()

    def __init__(self, max_workers: int, environment: int) -> None:
        self.pid = os.getpid()
        self.environment = environment
        self.local = threading.local()
        self._max_workers = max_workers
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._workers: _Workers | None = None
        self._lock = threading.Lock()
        self.retired = False  # forgotten by the registry (see retire)
        self.endpoint: str | None = None  # the S3 client's endpoint URL, once asked for
        # obstore's store per bucket (see _s3_obstore.store_for): each holds its own
        # connections, which end with it, so they live and go with this runtime.
        self.stores: dict[str, Any] = {}
        self.ca_bundle: str | None = None  # a private CA its sessions trust (see below)
        self.shared_client: Any = None  # the first client made (_shared_s3_client)

    @classmethod
    def for_options(cls, options: Options) -> _Runtime:
        environment = _environment_key()
        key = (options._key(), environment)
        with cls._registry_lock:
            if cls._registry_pid != os.getpid():  # forked: the parent's threads are gone
                cls._registry, cls._registry_pid = {}, os.getpid()
            runtime = cls._registry.pop(key, None)
            if runtime is None:
                if len(cls._registry) >= _MAX_RUNTIMES:
                    # Forget the least recently used. Options that already hold it keep
                    # using it, but its idle threads end at once instead of lingering.
                    cls._registry.pop(next(iter(cls._registry))).retire()
                runtime = cls(options.max_concurrency, environment)
            cls._registry[key] = runtime  # now the most recently used
            return runtime

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        # A pool shut down by a caller (a ``with`` block, say) is replaced.
        executor = self._executor
        if executor is None or executor._shutdown:
            with self._lock:
                executor = self._executor
                if executor is None or executor._shutdown:
                    executor = self._executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self._max_workers, thread_name_prefix="file_dataset"
                    )
        return executor

    def workers(self) -> _Workers:
        if self._workers is None:
            with self._lock:
                if self._workers is None:
                    self._workers = _Workers(self._max_workers)
        return self._workers

    def retire(self) -> None:
        """Lets the threads end as soon as they are idle (they still serve new calls)."""
        self.retired = True
        if self._workers is not None:
            self._workers.retire()
        # Not shut down (a caller may still hold it): its threads end once it is
        # collected, and options that still hold this runtime get a new one.
        self._executor = None
        # Transfers under way keep their store; its connections close when they end,
        # not when the options object that held this runtime is collected.
        self.stores = {}


# What a worker of _Workers reports: (tag, result, error).
Reply = tuple[Any, Any, BaseException | None]


class ReplyTo(Protocol):
    """Where a worker of :class:`_Workers` puts a call's :data:`Reply` (a queue, say)."""

    def put(self, item: Reply, /) -> None:
        """Takes a reply; called on the worker's thread."""


# How long a transfer thread waits for work before it ends (its S3 client and
# connections go with it): long enough to span the gaps between the calls of a batch
# job or between a Ray worker's tasks, short enough that the threads of options no
# longer used (say, before credentials were rotated) do not pile up.
_LINGER_SECONDS = 60.0
_RETIRED_LINGER_SECONDS = 0.5
_WAKE_SECONDS = 1.0
_POOL_NUMBERS = itertools.count(1)


def _fresh_locks_after_fork() -> None:
    """Gives a forked child new locks, and forgets the parent's runtimes.

    Only the forking thread lives on in a child: a lock that another parent thread held
    at the fork (making a client, say) would stay held for ever, and the child's first
    transfer would wait on it for ever.
    """
    global _CREATE_LOCK
    _CREATE_LOCK = threading.Lock()
    _Runtime._registry_lock = threading.Lock()
    _Runtime._registry, _Runtime._registry_pid = {}, os.getpid()


os.register_at_fork(after_in_child=_fresh_locks_after_fork)


def _default_threshold(part_size: int) -> int:
    """``multipart_threshold`` when none is given: 8 MiB, or ``part_size`` if larger."""
    return max(8 * _MiB, part_size)


class RunState:
    """What the workers and the thread driving one run of calls share.

    Each call belongs to a job, numbered in the run's order. :meth:`stop_from` (a job's
    failure: see :class:`_Workers` and ``run_jobs``) stops that job and every later
    one: their calls not yet started are not made, and the bodies they are reading or
    sending stop at their next chunk (see :func:`stop_if_stopped`). Earlier jobs go on:
    one of them may fail too, and its failure is the one raised, as it would be with
    one call at a time. :meth:`abandon` (an interrupt) stops every job;
    :meth:`wait_idle` then waits for the calls already under way. Both sides decide
    under one lock, so the wait never depends on how many replies the driving thread
    has consumed (an interrupt between taking a reply and counting it cannot make it
    wait for ever).

    A body that stalls would hold its call until the read timeout (a minute by
    default) before the next chunk is reached: so a call reading a body from a socket
    says so (:func:`watch_socket`), and stopping its job shuts that socket (both ways),
    which wakes the blocked read at once. So do requests awaiting their answer, and
    multipart parts being sent, where giving them up is safe (see
    ``_s3.watch_answers``).

    A wait that nothing can end early (a read inside obstore's Rust code, whose
    socket this process cannot reach: see :func:`detachable`) is given up instead:
    stopping its job gives the job its :class:`CallStopped` reply at once and no
    longer counts the call as under way, and the thread, once its wait ends by
    itself, raises :class:`CallDetached` before it touches anything of the job's.
    """

    __slots__ = ("_blocked", "_cond", "_detached", "_executing", "_sockets", "_stopped_from")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._stopped_from: float = math.inf  # the first job stopped
        self._executing = 0
        # thread id -> (job, socket) of each body being read by a call of the run
        self._sockets: dict[int, tuple[int, socket.socket, int]] = {}
        # thread id -> (reply, tag, pool) of each call in a wait that cannot be ended
        # early
        self._blocked: dict[int, tuple[ReplyTo, tuple[int, int], _Workers]] = {}
        self._detached: set[int] = set()  # the threads of the calls given up

    def start_call(self, job: int) -> bool:
        """Called by a worker before a call of ``job``: ``False`` if it must be skipped."""
        with self._cond:
            if job >= self._stopped_from:
                return False
            self._executing += 1
            return True

    def end_call(self) -> None:
        """Called by a worker after a call that :meth:`start_call` let run."""
        with self._cond:
            me = threading.get_ident()
            self._sockets.pop(me, None)
            if me in self._detached:  # (counted out, and answered, when given up)
                self._detached.discard(me)
                return
            self._executing -= 1
            if not self._executing:
                self._cond.notify_all()

    def watch(self, job: int, sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
        """Notes that the calling thread waits on ``sock`` for ``job`` (a body, say).

        Stopping the job shuts the socket (``how``: both ways by default, or only
        for sending, ``SHUT_WR``; see :meth:`unwatch`); if it is
        stopped already, that happens now. Until the thread watches another socket,
        calls :meth:`unwatch` or ends its call.
        """
        with self._cond:
            self._sockets[threading.get_ident()] = (job, sock, how)
            if job >= self._stopped_from:
                _shut(sock, how)

    def unwatch(self) -> bool:
        """Ends the calling thread's watch; whether its socket is still whole.

        Called before a connection goes back to its pool: from then on, a stop no
        longer shuts it. A socket that was shut (``False``) must not go back.
        """
        with self._cond:
            watched = self._sockets.pop(threading.get_ident(), None)
            return watched is None or watched[0] < self._stopped_from

    # block and unblock take no lock (they come twice per small object): each thread
    # adds and removes its own entry of ``_blocked``, and a stop (under the lock) gives
    # up a call by removing its entry. Removing is atomic, so whichever of the two
    # removes an entry first decides whether the call was given up.

    def block(self, tag: tuple[int, int], reply: ReplyTo, pool: _Workers) -> None:
        """Notes that the calling thread's call (``tag``) enters an unstoppable wait.

        Raises :class:`CallStopped` if its job is stopped already. ``pool`` is the
        thread's, which counts it out if the call is given up.
        """
        me = threading.get_ident()
        self._blocked[me] = (reply, tag, pool)
        if tag[0] >= self._stopped_from:  # stopped already, or as it was noted
            if self._blocked.pop(me, None) is None:
                raise CallDetached  # (given up by that stop: its job has its reply)
            raise CallStopped

    def unblock(self) -> bool:
        """Ends the calling thread's :meth:`block`: whether its call was given up."""
        return self._blocked.pop(threading.get_ident(), None) is None

    def _stopped(self, stopped_from: float) -> None:
        # (under self._cond)
        self._stopped_from = min(self._stopped_from, stopped_from)
        for job, sock, how in self._sockets.values():
            if job >= self._stopped_from:
                _shut(sock, how)
        for thread, (reply, tag, pool) in list(self._blocked.items()):
            if tag[0] >= self._stopped_from and self._blocked.pop(thread, None) is not None:
                # Given up: answered now, counted out (of the run, and of its pool: a
                # new thread may take its place), its thread left to its wait.
                self._sockets.pop(thread, None)
                self._detached.add(thread)
                reply.put((tag, None, CallStopped()))
                self._executing -= 1
                pool.count_out()
        if not self._executing:
            self._cond.notify_all()

    def stop_from(self, job: int) -> None:
        """Stops ``job`` and every later job of the run."""
        with self._cond:
            self._stopped(job)

    def abandon(self) -> None:
        """Stops every job of the run."""
        with self._cond:
            self._stopped(-math.inf)

    def stops(self, job: int) -> bool:
        """Whether ``job`` was stopped.

        Read without the lock: it is checked between the reads of a body, and a read
        that just misses the change only takes one more chunk.
        """
        return job >= self._stopped_from

    @property
    def stopping(self) -> bool:
        """Whether some job of the run was stopped."""
        return self._stopped_from != math.inf

    def wait_idle(self) -> None:
        """Waits until no call of the run is under way."""
        with self._cond:
            self._cond.wait_for(lambda: not self._executing)


def _shut(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    """Shuts ``sock`` (both ways by default), so that what is blocked on it returns.

    A read gets no bytes, a send fails (``EPIPE``). The plain socket's ``shutdown``
    also for a TLS socket, whose own would drop its TLS state under the thread still
    using it. A socket closed meanwhile is left.
    """
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, how)


class CallStopped(BaseException):
    """The call that raised it was stopped part-way, or not made (see :class:`RunState`).

    Raised between the chunks of a body (one being read, or a multipart part being
    sent) once the call's job is stopped, after a failure or an interrupt; the run
    then takes it for no failure of its own. A ``BaseException``, as
    ``KeyboardInterrupt`` and asyncio's ``CancelledError`` are: botocore turns an
    ``Exception`` raised while it sends a body into an ``HTTPClientError``, which its
    standard and adaptive retries take for a dropped connection and send again. This
    one passes through botocore untouched (no retry, no error made of it), and urllib3
    closes the connection on its way out.
    """


class CallDetached(CallStopped):
    """Raised by a call given up while it waited (see :class:`RunState`).

    Its job has had its ``CallStopped`` reply already, and may have cleaned up (its
    temporary file closed and removed): the call must not touch anything of the job's
    (a buffer, a file descriptor whose number may be another file's by then). The
    worker that carries it sends no reply.
    """


# The run, reply queue and tag of the call that each transfer thread is carrying.
_CARRYING = threading.local()


def call_stopped() -> bool:
    """Whether the calling thread's call for :class:`_Workers` was stopped.

    See :class:`RunState`; ``False`` outside a worker's call.
    """
    run: RunState | None = getattr(_CARRYING, "run", None)
    return run is not None and run.stops(_CARRYING.tag[0])


def stop_if_stopped() -> None:
    """Raises :class:`CallStopped` if the calling thread's call was stopped.

    Checked between the chunks of a body, before a buffer or file is made for one,
    and between the chunks of a local copy.
    """
    if call_stopped():
        raise CallStopped


class _Detachable:
    """See :func:`detachable` (a class: cheaper than a generator's context manager)."""

    __slots__ = ()

    def __enter__(self) -> None:
        run: RunState | None = getattr(_CARRYING, "run", None)
        if run is not None:
            run.block(_CARRYING.tag, _CARRYING.reply, _CARRYING.pool)

    def __exit__(self, *exc: object) -> None:
        run: RunState | None = getattr(_CARRYING, "run", None)
        if run is not None and run.unblock():
            raise CallDetached


_DETACHABLE = _Detachable()


def detachable() -> _Detachable:
    """Marks a wait of the calling thread's call that nothing can end early.

    A read inside obstore's Rust code (waiting for an answer, a body, a chunk of
    one) cannot be stopped from another thread, and its socket is out of reach. If
    the call's job is stopped meanwhile, the call is given up (see
    :class:`RunState`): its job goes on at once, and when the wait ends by itself (an
    answer, an error, obstore's timeout) :class:`CallDetached` is raised here, in
    place of what it gave. Raises :class:`CallStopped` at once if the job is stopped
    already. Does nothing outside a worker's call. Used as ``with detachable():``.
    """
    return _DETACHABLE


def watch_socket(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    """Notes that the calling thread's call waits on ``sock`` (a body, an answer).

    See :meth:`RunState.watch`; nothing is noted outside a worker's call.
    """
    run: RunState | None = getattr(_CARRYING, "run", None)
    if run is not None:
        run.watch(_CARRYING.tag[0], sock, how)


def unwatch_socket() -> bool:
    """Ends the calling thread's watch: whether the socket may go back to its pool.

    See :meth:`RunState.unwatch`; ``True`` outside a worker's call.
    """
    run: RunState | None = getattr(_CARRYING, "run", None)
    return run is None or run.unwatch()


class MoreCalls:
    """A reply that is not a call's result: calls to add to the caller's job's batch."""

    __slots__ = ("calls",)

    def __init__(self, calls: list[Callable[[], Any]]) -> None:
        self.calls = calls


def add_calls(calls: list[Callable[[], Any]]) -> bool:
    """Adds ``calls`` to the batch of the job whose call the calling thread carries.

    The calls run on the pool alongside the one that adds them, and the job receives
    their results (after that call's) once every call of its batch is done: a large
    object's first GET asks for its later parts as soon as its headers are in, then
    reads its own body on its own thread, connection and concurrency slot. Returns
    ``False`` (nothing added) outside a worker's call.
    """
    reply = getattr(_CARRYING, "reply", None)
    if reply is None:
        return False
    reply.put((_CARRYING.tag, MoreCalls(calls), None))
    return True


class _Parked:
    """An idle worker of :class:`_Workers`: its own lock, and the call handed to it."""

    __slots__ = ("item", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()  # released by the submitter that hands it a call
        self.item: _Call | None = None


# A call for _Workers: the callable, the queue its reply goes to, its tag and its run.
_Call = tuple[Callable[[], Any], ReplyTo, Any, RunState]


class _Workers:
    """The threads that carry the transfer engine's I/O calls.

    Up to ``size`` daemon threads, started only when no worker is idle (as
    ``ThreadPoolExecutor`` does). A call goes straight to the worker that went idle
    last, which waits on a lock of its own; with no idle worker it waits in a queue
    that busy workers empty before they go idle. Per call that is a few lock
    operations, where ``ThreadPoolExecutor`` also makes a future, locks it and runs its
    callbacks; at thousands of small objects per second that shows.

    Each call comes with the queue its reply goes to, its tag (its job's number in the
    run and its slot) and its run's :class:`RunState`: a call of a stopped job is not
    made (its reply is a :class:`CallStopped`), a call under way can see whether its
    job was stopped (:func:`call_stopped`), and a call that fails stops its job and the
    later ones. A thread that has waited
    ``linger`` seconds for a call ends; new calls start new threads. The last worker to
    go idle is the first to get work, so under a light load the others end.

    Idle workers do not wait on one shared ``queue.SimpleQueue`` with a timeout: on
    Python 3.11 (at least) such a wait can last until the next ``put`` when another
    thread takes the item that woke it after its deadline has passed (the remaining
    time comes out negative, which the lock takes as "no timeout").
    """

    def __init__(self, size: int, linger: float = _LINGER_SECONDS) -> None:
        self._queued: collections.deque[_Call] = collections.deque()
        self._parked: list[_Parked] = []  # idle workers, the last to go idle at the end
        self._size = size
        self._linger = linger
        self._threads = 0
        self._name = f"file_dataset-io{next(_POOL_NUMBERS)}-"
        self._lock = threading.Lock()

    def submit(
        self,
        call: Callable[[], Any],
        reply: ReplyTo,
        tag: tuple[int, int],
        run: RunState,
    ) -> None:
        """Runs ``call`` on a worker; ``(tag, result, error)`` is put on ``reply``."""
        # All under the lock, the thread's start too (it does not need the lock to
        # start): a KeyboardInterrupt between two steps (a signal handler runs between
        # any two) must not leave the count of threads wrong.
        with self._lock:
            if self._parked:
                worker = self._parked.pop()
                worker.item = (call, reply, tag, run)
                worker.wake.release()
                return
            self._queued.append((call, reply, tag, run))
            if self._threads >= self._size:
                return  # a busy worker takes it when its call ends
            began = threading.Lock()  # taken by the thread as it begins, or by us if not
            thread = threading.Thread(
                target=self._work, args=(began,), name=f"{self._name}{self._threads + 1}"
            )
            thread.daemon = True
            self._threads += 1
            try:
                thread.start()
            except BaseException:
                # Interrupted while it started (or it could not): count it out unless it
                # began; if it begins later it ends at once. The call stays queued.
                if began.acquire(blocking=False):
                    self._threads -= 1
                raise

    def count_out(self) -> None:
        """Counts out a thread whose call was given up (see :class:`RunState`).

        The thread may wait in obstore until its ``read_timeout``: a new thread may
        start in its place meanwhile. Once its call ends it comes back if there is
        room (see :meth:`_back`), else it ends.
        """
        with self._lock:
            self._threads -= 1

    def _back(self) -> bool:
        """Counts in again a thread counted out, if the pool has room for it."""
        with self._lock:
            if self._threads >= self._size:
                return False
            self._threads += 1
            return True

    def running_threads(self) -> list[threading.Thread]:
        """This pool's threads that are alive."""
        return [t for t in threading.enumerate() if t.name.startswith(self._name)]

    def retire(self) -> None:
        """Makes the workers end after a short wait for work instead of a long one."""
        self._linger = _RETIRED_LINGER_SECONDS

    def _next_call(self, me: _Parked) -> _Call | None:
        """The next call for the worker ``me``; ``None`` once it has lingered enough."""
        waiting_since = time.monotonic()
        while True:
            with self._lock:
                if self._queued:
                    return self._queued.popleft()
                self._parked.append(me)
            while True:
                # Wakes now and then: the linger may shorten meanwhile (retire).
                if me.wake.acquire(timeout=min(self._linger, _WAKE_SECONDS)):
                    item, me.item = me.item, None
                    if item is None:  # (never: a submitter sets it before it releases)
                        break
                    return item
                if time.monotonic() - waiting_since < self._linger:
                    continue
                with self._lock:
                    if me in self._parked:
                        self._parked.remove(me)
                        self._threads -= 1
                        return None
                    # A submitter took this worker off the list: it handed it a call
                    # and released its lock (both under self._lock), unless it was
                    # interrupted in between. Then this worker looks for work again.
                    if me.wake.acquire(blocking=False):
                        item, me.item = me.item, None
                        if item is not None:
                            return item
                break

    def _work(self, began: threading.Lock) -> None:
        if not began.acquire(blocking=False):
            return  # its submitter was interrupted and counted it out (see submit)
        carrying = _CARRYING
        carrying.pool = self  # (see detachable)
        me = _Parked()
        while True:
            item = self._next_call(me)
            if item is None:
                return
            call, reply, tag, run = item
            if not run.start_call(tag[0]):
                reply.put((tag, None, CallStopped()))
            else:
                # Attributes set and reset per call (no lock): what call_stopped reads,
                # and where add_calls sends.
                carrying.run, carrying.reply, carrying.tag = run, reply, tag
                try:
                    reply.put((tag, call(), None))
                except CallDetached:
                    # Given up: its job has its reply, and this thread was counted out
                    # of the pool (see RunState). It comes back if there is room (its
                    # clients with it), else ends.
                    if not self._back():
                        return
                except BaseException as e:
                    if not isinstance(e, CallStopped):
                        # A failed call fails its job (no job recovers from one): its
                        # job and the later ones stop here, before another call of
                        # theirs can start on this thread.
                        run.stop_from(tag[0])
                    reply.put((tag, None, e))
                finally:
                    carrying.run = carrying.reply = carrying.tag = None
                    run.end_call()
            # Drop the references now: an idle worker must not keep buffers alive.
            item = call = reply = tag = run = None  # type: ignore[assignment]


def _freeze(value: Any) -> Any:
    """Turns nested configuration into something hashable and comparable."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, set | frozenset):
        return tuple(sorted(map(repr, value)))
    provided = getattr(value, "_user_provided_options", None)  # botocore.config.Config
    if isinstance(provided, dict):
        return (type(value).__name__, _freeze(provided))
    return value


# Upload arguments (boto3's ExtraArgs) that make sense for every object of a call.
# Excluded: per-object values (full-object checksums, sizes), checksum settings (a
# multipart completion would need every part's checksum), and customer-provided
# encryption keys (SSE-C), since objects written with them could not be read back here.
_UNSUPPORTED_UPLOAD_ARGS = frozenset(
    {"MpuObjectSize", "SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5"}
)


def _check_upload_args(upload_args: Mapping[str, Any]) -> dict[str, Any]:
    if not upload_args:
        return {}
    from s3transfer.manager import TransferManager

    allowed = sorted(
        name
        for name in TransferManager.ALLOWED_UPLOAD_ARGS
        if name not in _UNSUPPORTED_UPLOAD_ARGS and not name.startswith("Checksum")
    )
    unknown = sorted(set(upload_args) - set(allowed))
    if unknown:
        raise InvalidInputError(
            f"upload_args does not take {unknown}; it takes boto3 upload_file's "
            f"ExtraArgs that apply to every object: {allowed}"
        )
    # Values as botocore checks them at each request (a dict for Tagging, say): else
    # every write failed, each row of a Pipeline only after its download and fn.
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(
        {"Bucket": "bucket", "Key": "key", **upload_args}, _put_object_shape()
    )
    if report.has_errors():
        problems = report.generate_report().replace("\n", "; ")
        raise InvalidInputError(f"upload_args: {problems}")
    _check_header_values(upload_args)
    return dict(upload_args)


def _check_header_values(upload_args: Mapping[str, Any]) -> None:
    """Refuses values that botocore or http.client would refuse at every request.

    They travel as HTTP headers: ``Metadata`` must be ASCII (botocore's own check,
    made on the client before a request) and no value may hold a line break (an
    invalid header value).
    """
    values = [(name, value) for name, value in upload_args.items() if isinstance(value, str)]
    for key, value in (upload_args.get("Metadata") or {}).items():
        if not (key.isascii() and value.isascii()):
            raise InvalidInputError(
                f"upload_args: Metadata {key!r}: {value!r} is not ASCII; S3 metadata "
                "travels as HTTP headers and takes ASCII only (percent-encode the rest)"
            )
        values += [(f"Metadata key {key!r}", key), (f"Metadata {key!r}", value)]
    for name, value in values:
        if "\r" in value or "\n" in value:
            raise InvalidInputError(
                f"upload_args: {name} holds a line break ({value!r}), which no HTTP "
                "header can carry"
            )


@functools.cache
def _put_object_shape() -> Any:
    """The input shape of S3's PutObject (botocore's model; no session, no profile)."""
    from botocore.loaders import create_loader
    from botocore.model import ServiceModel

    data = create_loader().load_service_model("s3", "service-2")
    return ServiceModel(data, "s3").operation_model("PutObject").input_shape


def _not_a_credential(value: str | None) -> bool:
    """Whether a key id, secret key or token holds white space or a control character.

    A line break read from a file, say: no credential has one, and no HTTP header may
    carry it.
    """
    return isinstance(value, str) and any(c.isspace() or not c.isprintable() for c in value)


_SPACED_CREDENTIALS = (
    "the credentials found hold white space or a control character (a line break read "
    "from a file into AWS_SESSION_TOKEN, say): credentials have none; strip it"
)


@contextlib.contextmanager
def _credential_loading() -> Iterator[None]:
    """Makes an error of botocore's credential loading its ``CredentialRetrievalError``.

    botocore parses a ``credential_process``'s output with ``json.loads`` unguarded: a
    process that prints a banner ("Token expired, run: corp-login") and exits 0 raised
    a bare ``JSONDecodeError``, which named no URL and was not taken for failed
    credentials (a Pipeline dropped every row instead of stopping).
    """
    from botocore.exceptions import BotoCoreError, ClientError, CredentialRetrievalError

    try:
        yield
    except BotoCoreError as e:  # a process's output may quote what it got
        from file_dataset._backend import CREDENTIALS_MISSING  # (imports this module)

        if not isinstance(e, CREDENTIALS_MISSING) and _raised_in_credentials(e):
            # a role's config botocore refuses (a source_profile not there:
            # InvalidConfigError; a malformed role_arn: ParamValidationError), STS not
            # reached: not what every other botocore error of that type means
            said = f"{type(e).__name__}: {mask_secrets(str(e))}"
            raise CredentialRetrievalError(provider=_provider_of(e), error_msg=said) from None
        masked = masked_cause(e)
        if masked is e:
            raise
        try:
            raise masked from None
        finally:
            del masked  # (kept in this frame, which its traceback holds: a cycle)
    except ClientError as e:  # STS or SSO refusing to give credentials (AssumeRole, say)
        if not _raised_in_credentials(e):
            raise
        provider = e.operation_name or "botocore"
        raise CredentialRetrievalError(provider=provider, error_msg=mask_secrets(str(e))) from None
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, OSError) as e:
        frames = _raised_in_credentials(e)
        if not frames:
            raise
        said = f"{type(e).__name__}: {mask_secrets(str(e))}"
        if any(frame.name == "_retrieve_credentials_using" for frame in frames):
            provider = "custom-process"  # botocore's name for credential_process
            if isinstance(e, OSError):  # its program is missing or may not be run
                reason = f"its command cannot be run ({said})"
            else:
                reason = f"its output is not the JSON of credentials ({said})"
        elif isinstance(e, RuntimeError | OSError):
            # "the refreshed credentials are still expired"; a web identity token file
            # (EKS) that is not there
            provider, reason = _provider_of(e), said
        else:
            provider, reason = _provider_of(e), f"{said} (not the credentials expected)"
        raise CredentialRetrievalError(provider=provider, error_msg=reason) from None


def _guard_refreshes(credentials: Any) -> None:
    """Makes botocore's refreshes of temporary ``credentials`` fail as credentials do.

    A ``credential_process`` (or a role) whose credentials expire is run again when
    they come within minutes of their end, inside the signing of a request or
    obstore's credential provider: its banner, missing program or stale answer raised
    a bare ``JSONDecodeError``, ``FileNotFoundError`` or ``RuntimeError`` part-way
    through a job, which a Pipeline took for a row's failure and obstore for a missing
    object. The refreshed secrets are remembered for masking too.
    """
    refresh = getattr(credentials, "_protected_refresh", None)
    if refresh is None or getattr(refresh, "file_dataset_guarded", False):
        return

    def guarded(is_mandatory: bool) -> None:
        with _credential_loading():
            refresh(is_mandatory)
        _REDACTOR.add(
            getattr(credentials, "_access_key", None),
            getattr(credentials, "_secret_key", None),
            getattr(credentials, "_token", None),
            source=id(credentials),
        )

    guarded.file_dataset_guarded = True  # type: ignore[attr-defined]
    credentials._protected_refresh = guarded


_CREDENTIALS_MODULE = os.path.join("botocore", "credentials.py")


def _raised_in_credentials(error: BaseException) -> list[traceback.FrameSummary]:
    """The frames of ``error``'s traceback if it passed through botocore's providers.

    None otherwise: then it is not an error of loading credentials.
    """
    frames = traceback.extract_tb(error.__traceback__)
    if any(frame.filename.endswith(_CREDENTIALS_MODULE) for frame in frames):
        return list(frames)
    return []


def _provider_of(error: BaseException) -> str:
    """The name botocore gives the provider whose loading raised ``error``.

    The innermost provider (its ``METHOD``, such as ``assume-role``) or refreshable
    credentials (their ``method``) the traceback passed through in botocore's
    ``credentials.py``; ``"botocore"`` when none is found.
    """
    name = "botocore"
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if not frame.f_code.co_filename.endswith(_CREDENTIALS_MODULE):
            continue
        owner = frame.f_locals.get("self")
        method = getattr(owner, "METHOD", None) or getattr(owner, "method", None)
        if isinstance(method, str) and method:
            name = method
    return name


def _new_session(session_kwargs: Mapping[str, Any]) -> boto3.Session:
    """A boto3 session; the caller holds ``_CREATE_LOCK``.

    Every session shares one loader of botocore's (read-only) service models: a client
    then costs milliseconds instead of ~60 ms of JSON parsing.
    """
    import boto3
    import botocore.session

    global _LOADER
    core = botocore.session.Session()
    if _LOADER is None:
        _LOADER = core.get_component("data_loader")
    else:
        core.register_component("data_loader", _LOADER)
    return boto3.Session(botocore_session=core, **session_kwargs)


def _system_ca_bundles() -> frozenset[str]:
    """The public CA bundles: a setting that names one trusts what the default trusts.

    That is the system's, and certifi's (botocore's default where it is installed).
    """
    paths = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    try:
        import certifi

        paths.append(certifi.where())
    except ImportError:
        pass
    return frozenset(os.path.realpath(p) for p in paths)


_SYSTEM_CA_BUNDLES = _system_ca_bundles()


def _private_ca_bundle(session: boto3.Session) -> str | None:
    """The private CA bundle a session trusts, if any.

    That is the one its configuration names (``AWS_CA_BUNDLE`` or the profile's
    ``ca_bundle``), unless it is one of the system's.
    """
    core = getattr(session, "_session", None)  # boto3 exposes no public accessor
    bundle = core.get_config_variable("ca_bundle") if core is not None else None
    if not bundle or os.path.realpath(bundle) in _SYSTEM_CA_BUNDLES:
        return None
    return str(bundle)


def _configured_endpoint(session: boto3.Session, region_name: str | None) -> str | None:
    """The S3 endpoint that a session's configuration sets (environment or profile)."""
    from botocore.config import Config

    with _CREATE_LOCK:
        configured = session.client("s3", region_name=region_name).meta.endpoint_url
        plain = session.client(
            "s3",
            region_name=region_name,
            config=Config(ignore_configured_endpoint_urls=True),  # type: ignore[call-arg]
        ).meta.endpoint_url
    return str(configured) if configured != plain else None


def _masked(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    def mask(key: str, value: Any) -> Any:
        if key in _SECRET_KEYS and value is not None:
            return "***"
        return _shown(value)

    return {k: mask(k, v) for k, v in kwargs.items()}


class _Shown:
    """A value whose repr is given: a botocore ``Config`` shown by its settings."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(value: Any) -> Any:
    """``value`` for a repr: URLs' ``user:password@`` hidden, also in a ``Config``.

    A botocore ``Config`` is shown as the settings it was given
    (``Config(connect_timeout=5)``), not as ``<botocore.config.Config object at 0x...>``,
    which said nothing and differed between equal options.
    """
    if isinstance(value, str):
        return mask_userinfo(value)
    if isinstance(value, Mapping):
        return {k: _shown(v) for k, v in value.items()}
    given = getattr(value, "_user_provided_options", None)
    if type(value).__name__ == "Config" and isinstance(given, dict):
        settings = ", ".join(f"{k}={_shown(v)!r}" for k, v in given.items())
        return _Shown(f"Config({settings})")
    return value


@functools.cache
def _accepted_kwargs(what: str) -> frozenset[str]:
    """The keyword arguments that ``boto3.Session()`` or ``Session.client()`` take."""
    import inspect

    import boto3

    function = boto3.Session.__init__ if what == "session" else boto3.Session.client
    names = inspect.signature(function).parameters
    return frozenset(names) - {"self", "service_name"}


def _check_mapping(value: Any, name: str) -> None:
    """Refuses a setting that should be a dict of keyword arguments but is not.

    Only the type is named: a list of pairs may hold a secret key, which a message
    quoting the value would print.
    """
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(value).__name__}")


def _check_kwargs(kwargs: Mapping[str, Any], what: str) -> None:
    """Refuses arguments that boto3 would refuse only at the first transfer."""
    if not kwargs:
        return
    argument, call = (
        ("session_kwargs", "boto3.Session()")
        if what == "session"
        else ("s3_client_kwargs", 'session.client("s3")')
    )
    accepted = _accepted_kwargs(what)
    unknown = sorted(str(k) for k in kwargs if k not in accepted)
    if unknown:
        raise InvalidInputError(
            f"{argument} has {unknown}, which {call} does not take; it takes {sorted(accepted)}"
        )
    if what == "session" and "botocore_session" in kwargs:
        raise InvalidInputError(
            "session_kwargs cannot hold a botocore_session: Options make a session per "
            "thread and process from plain settings (a live session does not pickle)"
        )
    for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        value = kwargs.get(name)
        if value is None:
            continue
        if not isinstance(value, str):  # (the value is a secret: not shown)
            raise TypeError(f"{argument}[{name!r}] must be a str, got {type(value).__name__}")
        if (value.strip() or name == "aws_session_token") and _not_a_credential(value):
            # a line break read from a file, say: an HTTP header cannot carry it, and the
            # error that says so would quote the value
            raise InvalidInputError(
                f"{argument}[{name!r}] holds white space or a control character (a line "
                "break read from a file?): credentials have none; strip it"
            )
        if not value.strip() and name != "aws_session_token":  # (an empty token is none)
            # boto3 would take an empty key for none, and sign as whoever the
            # environment, a profile or the machine's role says.
            raise InvalidInputError(
                f"{argument}[{name!r}] is empty: give it, or leave the credentials out "
                "to use those that boto3 finds (environment, profile, instance role)"
            )
    key_id, secret = kwargs.get("aws_access_key_id"), kwargs.get("aws_secret_access_key")
    if (key_id is None) != (secret is None):
        given, missing = (
            ("aws_access_key_id", "aws_secret_access_key")
            if secret is None
            else ("aws_secret_access_key", "aws_access_key_id")
        )
        raise InvalidInputError(f"{argument} has {given} but not {missing}: give both, or neither")
    if key_id is None and kwargs.get("aws_session_token"):
        raise InvalidInputError(
            f"{argument} has aws_session_token but no aws_access_key_id and "
            "aws_secret_access_key: a session token goes with its key pair"
        )
    region = kwargs.get("region_name")
    if region is not None:
        from botocore.exceptions import InvalidRegionError
        from botocore.utils import validate_region_name

        try:
            validate_region_name(region if isinstance(region, str) else str(region))
        except InvalidRegionError:
            raise InvalidInputError(
                f"{argument}['region_name'] must be a region name such as 'us-east-1', "
                f"got {quoted(region)}"
            ) from None
    config = kwargs.get("config")
    if what == "client" and config is not None:
        from botocore.config import Config

        if not isinstance(config, Config):
            raise TypeError(
                f"s3_client_kwargs['config'] must be a botocore.config.Config, got "
                f"{type(config).__name__} (write Config(connect_timeout=5, ...))"
            )
        for name in ("connect_timeout", "read_timeout"):
            _check_timeout(name, getattr(config, name, None))
    profile = kwargs.get("profile_name")
    if what == "session" and profile is not None:
        _check_profile(profile)
    endpoint = kwargs.get("endpoint_url")
    if endpoint is None:
        return
    if not (isinstance(endpoint, str) and endpoint.lower().startswith(("http://", "https://"))):
        raise InvalidInputError(
            f"endpoint_url must be an http:// or https:// URL, got {_endpoint_shown(endpoint)!r}"
        )
    import urllib.parse

    parts = urllib.parse.urlsplit(endpoint)
    if parts.query or parts.fragment or endpoint.rstrip("?#") != endpoint:
        raise InvalidInputError(
            f"endpoint_url {_endpoint_shown(endpoint)!r} has a query or fragment ('?' or "
            "'#'); an endpoint is a scheme, host, port and optional path"
        )
    try:
        _ = parts.port  # a port that is not a number raises
        # "http://user:pass/word@host": an unencoded "/" ends the host part early (an
        # "@" after it is then in the path), and obstore panicked on the "port" it saw
        valid = "@" not in endpoint.partition("://")[2].replace(parts.netloc, "", 1)
        valid = valid and bool(parts.hostname)  # "http://", "http://:9000": no host
    except ValueError:
        valid = False
    if not valid:  # raised outside the except: urllib's error quotes the password
        hint = " (percent-encode a '/', '@' or ':' in a user name or password)"
        raise InvalidInputError(
            f"endpoint_url {_endpoint_shown(endpoint)!r} has no valid host and port"
            + (hint if "@" in endpoint else "")
        )


def _check_timeout(name: str, value: Any) -> None:
    """Refuses a ``Config`` timeout that a socket or obstore would refuse.

    They refused it at the first transfer, with an error that a Pipeline took for
    each row's failure: ``socket.settimeout`` takes an int or a float only (not a
    ``Decimal`` or ``np.float32``), neither takes 0 or less, and past about 10**9
    seconds the system's time or obstore's duration overflows.
    """
    if value is None:  # no timeout
        return
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer):
        raise InvalidTypeError(
            f"s3_client_kwargs['config'].{name} must be an int or a float of seconds (or "
            f"None for none), got {type(value).__name__} (pass float(...))"
        )
    if not 0 < value <= _TIMEOUT_MAX:  # (NaN compares false)
        raise InvalidInputError(
            f"s3_client_kwargs['config'].{name} must be a number of seconds above 0 and "
            f"at most {_TIMEOUT_MAX:,} (or None for none), got {value}"
        )


_TIMEOUT_MAX = 10**9  # 31 years


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _endpoint_shown(endpoint: Any) -> Any:
    """A refused endpoint as its message shows it: all before its last "@" masked.

    Stricter than :func:`mask_userinfo`, which must leave keys alone: an endpoint that
    is refused may hold a password written in any way.
    """
    if not isinstance(endpoint, str):
        return endpoint
    if "@" in endpoint:
        scheme = _SCHEME.match(endpoint)
        endpoint = f"{scheme.group() if scheme else ''}***@{endpoint.rpartition('@')[2]}"
    return mask_secrets(endpoint)  # a query may hold a token or signature


def _over_our_retries(user_config: Any, ours: dict[str, Any]) -> Any:
    """A copy of the caller's ``Config`` whose ``retries`` are merged key by key over ours.

    botocore's ``Config.merge`` replaces the whole ``retries`` dict, so
    ``Config(retries={"total_max_attempts": 3})`` alone would also drop the retry
    mode, which botocore then takes to be ``"legacy"``. The copy also keeps botocore
    from rewriting the dict held by the options. A setting of ours that the caller's
    ``Config`` gives as ``None`` (botocore's default) keeps ours: merged as it is, a
    ``None`` pool size broke every boto3 request and ``retries=None`` dropped the
    adaptive retries.
    """
    user_config = copy.deepcopy(user_config)
    provided = user_config._user_provided_options
    for key in ("retries", "max_pool_connections", "tcp_keepalive"):
        if key in provided and provided[key] is None:
            del provided[key]
    retries = user_config.retries
    if retries:
        merged = dict(retries)
        merged.setdefault("mode", ours["mode"])
        if "max_attempts" not in merged and "total_max_attempts" not in merged:
            merged["total_max_attempts"] = ours["total_max_attempts"]
        user_config.retries = merged
        user_config._user_provided_options["retries"] = merged
    return user_config


def _whole_number(value: Any, name: str) -> int:
    """``value`` as an ``int``; a bool, float or string is refused (``"8"``, ``2.5``)."""
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def _check_profile(profile: Any, what: str = "session_kwargs has profile_name=") -> None:
    """Refuses a profile that the AWS config files here do not have.

    Without this, the mistake would surface as ``ProfileNotFound`` at the first transfer
    (in a Pipeline: as every row dropped).
    """
    import botocore.session

    core = botocore.session.Session()
    profiles = core.available_profiles
    if profile not in profiles and profile != "default":  # botocore accepts a missing default
        files = [core.get_config_variable(name) for name in ("config_file", "credentials_file")]
        raise InvalidInputError(
            f"{what}{profile!r}, which is not in the AWS config "
            f"files {files}; they have {listed(sorted(profiles), 20)}"
        )


RetryMode = Literal["adaptive", "standard", "legacy"]
Transport = Literal["auto", "obstore", "boto3"]


class OptionsArgs(TypedDict, total=False):
    """The arguments of :class:`Options`, for ``Options.default(**...)`` and ``replace``."""

    session_kwargs: Mapping[str, Any] | None
    s3_client_kwargs: Mapping[str, Any] | None
    max_concurrency: int
    part_size: int
    multipart_threshold: int | None
    retry_mode: RetryMode
    max_attempts: int
    transport: Transport
    upload_args: Mapping[str, Any] | None
    request_payer: bool


class Options:
    """How file_dataset talks to S3: boto3 session and client settings plus concurrency.

    Options are plain values: they compare and hash by value and pickle (also with
    cloudpickle) by their constructor arguments only. Live objects (boto3 sessions,
    S3 clients, the thread pool) are created lazily on first use in each process: one
    boto3 session and S3 client per thread, reused across calls, each client with a
    connection pool sized to ``max_concurrency``. Instances are read-only (what they
    resolve is filed under their value): :meth:`replace` makes a changed copy.

    ``repr()`` masks credentials, and no message of this library contains them.

    Args:
        session_kwargs: Keyword arguments for ``boto3.Session()`` (for example
            ``region_name``, ``profile_name`` or explicit keys).
        s3_client_kwargs: Keyword arguments for ``session.client("s3")`` (for example
            ``endpoint_url``). A ``config`` (``botocore.config.Config``) given here is
            merged over the retry and pool settings below.
        max_concurrency: The most objects or parts transferred at once by one call.
            Raising it (to 128, say) helps many small objects over a slow link and
            costs threads and connections (and one boto3 client per thread where
            boto3 carries the bytes).
        part_size: The size of each multipart-upload part, and of each ranged GET
            after a large object's first (which reads ``multipart_threshold`` bytes);
            from 5 MiB to 5 GiB (S3's smallest and largest parts). A tail under an
            eighth of a part goes with the part before it.
        multipart_threshold: Objects larger than this are read with parallel ranged
            GETs and written with multipart uploads; smaller ones take one request
            (an empty object's read takes two).
            At least ``part_size`` and at most 5 GiB (S3's largest single PUT); by
            default 8 MiB (as s3transfer's), or ``part_size`` if larger.
        retry_mode: botocore retry mode: ``"adaptive"`` (default), ``"standard"`` or
            ``"legacy"``.
        max_attempts: botocore's total attempts per request, including the first;
            also how many responses one body may take when a connection drops
            part-way (each resumes where the last stopped).
        transport: What carries the bytes of S3 requests. ``"auto"`` (default):
            obstore (Rust, a fraction of boto3's CPU per request) when it is installed
            and can honour every setting of these options (README, "transport", lists
            those that make it boto3), else boto3. ``"obstore"`` or ``"boto3"`` force
            one. The ``FILE_DATASET_TRANSPORT`` environment variable overrides it in
            every ``Options`` of the process. Either way the
            endpoint, region, credentials and retry budget are the ones these options
            resolve through boto3; multipart uploads always go through boto3.
        request_payer: Whether every request says that the caller pays for it
            (``x-amz-request-payer: requester``), as requester-pays buckets demand
            for reads and writes alike.
        upload_args: Extra arguments for every object written to S3, as boto3's
            ``upload_file(ExtraArgs=...)`` takes them: for example
            ``{"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "..."}`` where a
            bucket policy demands them, ``ContentType``, ``Metadata``, ``StorageClass``,
            ``ACL`` or ``Tagging``. Writes that have them go through boto3 (reads
            keep the transport). Ignored for local destinations.

    Raises:
        ValueError: A setting is out of range or unknown (``max_concurrency`` or
            ``max_attempts`` below 1, ``part_size`` outside 5 MiB to 5 GiB, a
            threshold below ``part_size`` or above 5 GiB, an unknown ``retry_mode``,
            ``transport`` or argument of boto3, a ``botocore_session`` in
            ``session_kwargs``, half a key pair, a profile missing from the AWS config
            files, an endpoint that is not an ``http(s)://`` URL, ``upload_args`` that
            botocore would refuse, such as non-ASCII ``Metadata``): an
            :class:`InvalidInputError`.
        TypeError: A setting has the wrong type (``"8"`` or ``True`` for an int, a
            dict for ``config``, a list of pairs where a dict is expected).

    Examples:
        >>> options = Options(s3_client_kwargs={"endpoint_url": "http://127.0.0.1:9000"})
        >>> import pickle
        >>> pickle.loads(pickle.dumps(options)) == options
        True
    """

    __slots__ = (
        "_runtime",
        "_threshold_given",
        "max_attempts",
        "max_concurrency",
        "multipart_threshold",
        "part_size",
        "request_payer",
        "retry_mode",
        "s3_client_kwargs",
        "session_kwargs",
        "transport",
        "upload_args",
    )

    session_kwargs: Mapping[str, Any]
    s3_client_kwargs: Mapping[str, Any]
    max_concurrency: int
    part_size: int
    multipart_threshold: int
    retry_mode: RetryMode
    max_attempts: int
    transport: Transport
    upload_args: Mapping[str, Any]
    request_payer: bool
    _threshold_given: bool

    def __init__(
        self,
        session_kwargs: Mapping[str, Any] | None = None,
        s3_client_kwargs: Mapping[str, Any] | None = None,
        *,
        max_concurrency: int = 64,
        part_size: int = 8 * _MiB,
        multipart_threshold: int | None = None,
        retry_mode: RetryMode = "adaptive",
        max_attempts: int = 8,
        transport: Transport = "auto",
        upload_args: Mapping[str, Any] | None = None,
        request_payer: bool = False,
    ) -> None:
        max_concurrency = _whole_number(max_concurrency, "max_concurrency")
        part_size = _whole_number(part_size, "part_size")
        threshold_given = multipart_threshold is not None
        if multipart_threshold is None:
            multipart_threshold = _default_threshold(part_size)
        multipart_threshold = _whole_number(multipart_threshold, "multipart_threshold")
        max_attempts = _whole_number(max_attempts, "max_attempts")
        if not isinstance(request_payer, bool | np.bool_):
            raise TypeError(f"request_payer must be True or False, got {request_payer!r}")
        if max_concurrency < 1:
            raise InvalidInputError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if part_size < 5 * _MiB:
            raise InvalidInputError(
                f"part_size must be at least 5 MiB (S3's minimum), got {part_size}"
            )
        if part_size > _5_GiB:
            raise InvalidInputError(
                f"part_size must be at most 5 GiB (S3's maximum), got {part_size}"
            )
        if multipart_threshold < part_size:
            raise InvalidInputError(
                f"multipart_threshold must be at least part_size, got {multipart_threshold} "
                f"and {part_size}"
            )
        if multipart_threshold > _5_GiB:
            # S3 takes at most 5 GiB in one PUT (and obstore no range past 2**64)
            raise InvalidInputError(
                "multipart_threshold must be at most 5 GiB (S3's largest single PUT), got "
                f"{multipart_threshold}"
            )
        if retry_mode not in get_args(RetryMode):
            raise InvalidInputError(f"unknown retry_mode {retry_mode!r}")
        if max_attempts < 1:
            raise InvalidInputError(f"max_attempts must be at least 1, got {max_attempts}")
        for name, given in (
            ("session_kwargs", session_kwargs),
            ("s3_client_kwargs", s3_client_kwargs),
            ("upload_args", upload_args),
        ):
            _check_mapping(given, name)
        _check_kwargs(session_kwargs or {}, "session")
        _check_kwargs(s3_client_kwargs or {}, "client")
        _set = object.__setattr__  # Options are read-only (see __setattr__)
        _set(self, "session_kwargs", MappingProxyType(dict(session_kwargs or {})))
        client_kwargs = dict(s3_client_kwargs or {})
        if client_kwargs.get("config") is not None:
            # Our own copy: botocore rewrites a Config's retries in place when it makes
            # a client, and the caller may change theirs later; either would change
            # this value (and its hash) after the fact.
            client_kwargs["config"] = copy.deepcopy(client_kwargs["config"])
        _set(self, "s3_client_kwargs", MappingProxyType(client_kwargs))
        _set(self, "max_concurrency", max_concurrency)
        _set(self, "part_size", part_size)
        _set(self, "multipart_threshold", multipart_threshold)
        # Not part of the value (equality, hash): whether replace() and pickles keep the
        # threshold as given, or let it follow part_size as the default does.
        _set(self, "_threshold_given", threshold_given)
        _set(self, "retry_mode", retry_mode)
        _set(self, "max_attempts", max_attempts)
        if transport not in get_args(Transport):
            raise InvalidInputError(
                f"transport must be 'auto', 'obstore' or 'boto3', got {transport!r}"
            )
        _set(self, "transport", transport)
        _set(self, "upload_args", MappingProxyType(_check_upload_args(upload_args or {})))
        _set(self, "request_payer", bool(request_payer))
        self._reset_runtime()

    @classmethod
    def default(cls, *, freeze_credentials: bool = True, **kwargs: Unpack[OptionsArgs]) -> Options:
        """Options with the default credentials frozen in (and adaptive retries, as always).

        The credentials that the default boto3 session resolves here (environment,
        profile, instance role, …) are frozen into ``session_kwargs``, together with
        its region, so that Ray workers started elsewhere use the same identity. An
        S3 endpoint configured outside the arguments (``AWS_ENDPOINT_URL_S3``,
        ``AWS_ENDPOINT_URL``, or ``endpoint_url`` in the profile) is put into
        ``s3_client_kwargs``, with or without ``freeze_credentials``, so that workers
        reach the same server without the driver's environment; so is a private CA
        bundle (``AWS_CA_BUNDLE`` or the profile's ``ca_bundle``), as ``verify`` (its
        path: the file must be there on the workers too). Frozen temporary
        credentials expire; pass ``freeze_credentials=False`` to let every worker
        resolve its own.

        Args:
            freeze_credentials: Whether to capture the default session's credentials
                and region (the endpoint is captured either way).
            **kwargs: Any other ``Options`` argument.

        Returns:
            The options.

        Raises:
            ValueError: As :class:`Options` does, or ``AWS_PROFILE`` names a profile
                missing from the AWS config files.
            TypeError: As :class:`Options` does.
        """
        from botocore.exceptions import ProfileNotFound

        arguments: dict[str, Any] = dict(kwargs)
        session_kwargs = dict(arguments.pop("session_kwargs", None) or {})
        try:
            with _credential_loading():
                cls._resolve_defaults(session_kwargs, arguments, freeze_credentials)
        except ProfileNotFound as e:  # a profile named by AWS_PROFILE, say
            _check_profile(
                e.kwargs.get("profile"), "Options.default() uses the profile (AWS_PROFILE?) "
            )
            raise
        return cls(session_kwargs=session_kwargs, **arguments)

    @staticmethod
    def _resolve_defaults(
        session_kwargs: dict[str, Any], kwargs: dict[str, Any], freeze_credentials: bool
    ) -> None:
        """Fills in what :meth:`default` captures from the default session."""
        with _CREATE_LOCK:
            session = _new_session(session_kwargs)
        # The endpoint first, with the session as given (a profile may set it).
        client_kwargs = dict(kwargs.get("s3_client_kwargs") or {})
        if "endpoint_url" not in client_kwargs:
            endpoint = _configured_endpoint(session, client_kwargs.get("region_name"))
            if endpoint is not None:
                client_kwargs["endpoint_url"] = endpoint
        if "verify" not in client_kwargs:  # a private CA, which workers would not know
            bundle = _private_ca_bundle(session)
            if bundle is not None and os.path.isfile(bundle):
                client_kwargs["verify"] = bundle
        if client_kwargs:
            kwargs["s3_client_kwargs"] = client_kwargs
        if freeze_credentials:
            credentials = session.get_credentials()
            frozen = None if credentials is None else credentials.get_frozen_credentials()
            if frozen is not None and any(map(_not_a_credential, frozen)):
                raise InvalidInputError(
                    f"Options.default(): {_SPACED_CREDENTIALS} (they came from "
                    f"{credentials.method})"  # type: ignore[union-attr]
                )
            if frozen is not None and frozen.access_key and frozen.secret_key:
                session_kwargs.update(
                    aws_access_key_id=frozen.access_key,
                    aws_secret_access_key=frozen.secret_key,
                    aws_session_token=frozen.token or None,  # AWS_SESSION_TOKEN="" is none
                )
                session_kwargs.pop("profile_name", None)
            if session.region_name and "region_name" not in session_kwargs:
                session_kwargs["region_name"] = session.region_name

    # --- live objects -------------------------------------------------------------

    def _reset_runtime(self) -> None:
        self._runtime: _Runtime | None = None

    def _live(self) -> _Runtime:
        runtime = self._runtime
        if runtime is None or runtime.retired or runtime.pid != os.getpid():
            # A retired runtime's threads end when idle: options still in use move to
            # the registry's current one (which makes them the most recently used).
            runtime = self._runtime = _Runtime.for_options(self)
        return runtime

    def _endpoint(self) -> str:
        """The endpoint URL that these options' S3 client resolves to.

        Asked of a client once per runtime, not once per thread: a thread that would
        not make a client of its own otherwise does not make one for this.
        """
        runtime = self._live()
        if runtime.endpoint is None:
            runtime.endpoint = str(self.s3_client().meta.endpoint_url)
        return runtime.endpoint

    def s3_client(self) -> S3Client:
        """The S3 client of the calling thread, created on first use.

        Equal options share their clients: each thread of a process has one boto3
        session and S3 client per distinct ``Options`` value, reused across calls and
        across unpickled copies (so a Ray worker builds its clients once, not per task).

        Returns:
            A boto3 S3 client configured from these options.
        """
        runtime = self._live()
        client: S3Client | None = getattr(runtime.local, "client", None)
        if client is None:
            client = runtime.local.client = self._make_client()
            if runtime.shared_client is None:  # (a race makes either one the shared one)
                runtime.shared_client = client
        return client

    def _shared_s3_client(self) -> S3Client:
        """A client of these options that any thread may use: the first one made.

        botocore's clients are thread-safe; each thread has its own only so that
        requests do not wait for one another's connections. This one's connection pool
        (``max_concurrency`` connections) carries the presigned GETs of large objects'
        later parts (see ``_s3_signed``) on the obstore transport, whose threads need
        no client otherwise (the one that resolved obstore's settings is this one).
        """
        runtime = self._live()
        client: S3Client | None = runtime.shared_client
        return client if client is not None else self.s3_client()

    def _make_client(self) -> S3Client:
        from botocore.config import Config

        retries = {"mode": self.retry_mode, "total_max_attempts": self.max_attempts}
        config = Config(
            retries=retries,  # type: ignore[arg-type]
            max_pool_connections=self.max_concurrency,
            tcp_keepalive=True,
        )
        client_kwargs = dict(self.s3_client_kwargs)
        user_config = client_kwargs.pop("config", None)
        if user_config is not None:
            config = config.merge(_over_our_retries(user_config, retries))
        with _CREATE_LOCK, _credential_loading():
            session = _new_session(self.session_kwargs)
            client = session.client("s3", config=config, **client_kwargs)
        from file_dataset._s3 import watch_answers

        watch_answers(client)
        self._live().ca_bundle = _private_ca_bundle(session)
        with _credential_loading():
            credentials = session.get_credentials()
            if credentials is not None:
                _guard_refreshes(credentials)
                frozen = credentials.get_frozen_credentials()
        if credentials is not None:
            _REDACTOR.add(frozen.access_key, frozen.secret_key, frozen.token, owner=self._live())
            if any(map(_not_a_credential, frozen)):  # the request's error would quote it
                from botocore.exceptions import CredentialRetrievalError

                raise CredentialRetrievalError(
                    provider=credentials.method, error_msg=_SPACED_CREDENTIALS
                )
        # Keys given to the client itself, and a password in the endpoint URL.
        _REDACTOR.add(
            client_kwargs.get("aws_access_key_id"),
            client_kwargs.get("aws_secret_access_key"),
            client_kwargs.get("aws_session_token"),
            *USERINFO.findall(str(client_kwargs.get("endpoint_url") or "")),
            owner=self._live(),
        )
        return client

    def _private_ca_bundle(self) -> str | None:
        """The private CA bundle of these options' environment or profile, if any.

        Noted when the thread's client is made (a session costs ~20 ms to make). A
        ``verify`` in ``s3_client_kwargs`` is not looked at here.
        """
        self.s3_client()
        return self._live().ca_bundle

    def _transfer_workers(self) -> _Workers:
        """The ``max_concurrency`` threads that carry this process's transfers."""
        return self._live().workers()

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """A bounded thread pool for work of your own alongside these options' transfers.

        Returns:
            A pool of ``max_concurrency`` threads, created on first use and shared by
            equal options in this process. Shutting it down (``with options.executor()
            as pool:`` does, at the end of the block) ends it for everyone holding it;
            the next call makes a new one.
        """
        return self._live().executor()

    # --- value semantics ----------------------------------------------------------

    def _key(self) -> tuple[Any, ...]:
        return (
            _freeze(self.session_kwargs),
            _freeze(self.s3_client_kwargs),
            self.max_concurrency,
            self.part_size,
            self.multipart_threshold,
            self.retry_mode,
            self.max_attempts,
            self.transport,
            _freeze(self.upload_args),
            self.request_payer,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Options):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            raise AttributeError(
                f"Options are read-only (they are compared, hashed and shared by value): "
                f"use options.replace({name}=...) for a copy with another {name}"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Options are read-only: {name!r} cannot be deleted")

    def replace(self, **changes: Unpack[OptionsArgs]) -> Options:
        """A copy of these options with some constructor arguments changed.

        Args:
            **changes: Constructor arguments, for example ``max_concurrency=128``.

        Returns:
            New options, checked as the constructor checks them.

        Raises:
            ValueError: As :class:`Options` does.
            TypeError: An argument :class:`Options` does not take, or of the wrong type.

        Examples:
            >>> Options(max_concurrency=8).replace(max_concurrency=16).max_concurrency
            16
        """
        return Options(**{**self.__getstate__(), **changes})

    def __getstate__(self) -> dict[str, Any]:
        state = {
            "session_kwargs": dict(self.session_kwargs),
            "s3_client_kwargs": dict(self.s3_client_kwargs),
            "max_concurrency": self.max_concurrency,
            "part_size": self.part_size,
            "multipart_threshold": self.multipart_threshold,
            "retry_mode": self.retry_mode,
            "max_attempts": self.max_attempts,
            "transport": self.transport,
            "upload_args": dict(self.upload_args),
            "request_payer": self.request_payer,
        }
        if not self._threshold_given:  # the default, which follows part_size
            del state["multipart_threshold"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # pickles made before these settings existed
        state = {"transport": "auto", "upload_args": {}, "request_payer": False, **state}
        object.__setattr__(self, "_threshold_given", "multipart_threshold" in state)
        state.setdefault("multipart_threshold", _default_threshold(state["part_size"]))
        for name, value in state.items():
            if isinstance(value, dict):
                value = MappingProxyType(value)
            object.__setattr__(self, name, value)
        self._reset_runtime()

    def __repr__(self) -> str:
        return (
            f"Options(session_kwargs={_masked(self.session_kwargs)!r}, "
            f"s3_client_kwargs={_masked(self.s3_client_kwargs)!r}, "
            f"max_concurrency={self.max_concurrency}, part_size={self.part_size}, "
            f"multipart_threshold={self.multipart_threshold}, "
            f"retry_mode={self.retry_mode!r}, max_attempts={self.max_attempts}, "
            f"transport={self.transport!r}, upload_args={dict(self.upload_args)!r}, "
            f"request_payer={self.request_payer!r})"
        )


def resolve_options(
    options: Any, where: str, default: Callable[[], Options] | None = None
) -> Options:
    """``options`` itself if it is an :class:`Options`; the default when it is ``None``.

    Args:
        options: What the caller passed.
        where: The argument, named in the error (for example ``"reader(options=...)"``).
        default: Makes the options used when ``options`` is ``None`` (``Options``).

    Raises:
        TypeError: ``options`` is something else (a dict of settings, say), caught here
            rather than as an ``AttributeError`` in the middle of a transfer.
    """
    if options is None:
        return (default or Options)()
    if not isinstance(options, Options):
        hint = (
            " (build one: Options(session_kwargs=..., s3_client_kwargs=...))"
            if isinstance(options, Mapping)
            else ""
        )
        raise TypeError(
            f"{where} must be a file_dataset.Options, got {type(options).__name__}{hint}"
        )
    return options
