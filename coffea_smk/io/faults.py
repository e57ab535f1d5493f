"""Exception chains, for the error policy: what went wrong underneath.

A storage error reaches coffea_smk wrapped, often several times over: fsspec
and aiohttp wrap the socket's error, coffea_smk wraps it in an
``InputFileError`` (opening) or a ``BasketReadError`` and ``BufferReadError``
(reading), awkward, coffea or the processor may wrap it again, and a failing
``process()`` is wrapped in a ``ChunkError``. The error policy therefore looks
at the whole chain (:func:`causes`), never at the outer type alone.
"""

from __future__ import annotations

import errno
import io
import re
import ssl
import traceback
from collections.abc import Iterable
from enum import Enum


class IOFault(Enum):
    """What kind of I/O error an exception is."""

    TRANSIENT = "transient"
    """The storage may deliver on the next try (reset, timeout, overload)."""
    PERMANENT = "permanent"
    """Trying again does not help (no such file, no permission, bad certificate)."""


def causes(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions under it, outermost first, each once.

    Follows ``__cause__`` (``raise ... from``), else ``__context__`` (raised
    while handling another) unless that was suppressed (``from None``).
    """
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        else:
            current = None if current.__suppress_context__ else current.__context__
    return out


def type_names(err: BaseException) -> set[str]:
    """The names an exception answers to: ``OSError``, ``builtins.OSError``, ``pkg.mod.Error``, ...

    Every class of its MRO, by bare name and by ``module.qualname``.
    """
    names: set[str] = set()
    # stand-ins for a storage error (lost_by_uproot, closed_by_xrootd) answer as an OSError too
    classes = type(err).__mro__ + (OSError.__mro__ if lost_by_uproot(err) or closed_by_xrootd(err) else ())
    for cls in classes:
        names.update((cls.__name__, f"{cls.__module__}.{cls.__qualname__}"))
    return names


def matches(err: BaseException, names: Iterable[str], skip: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether an exception of the chain (those of the ``skip`` types aside) is of a type in ``names``."""
    wanted = set(names)
    return any(not isinstance(e, skip) and wanted & type_names(e) for e in causes(err))


def transient(err: BaseException) -> bool:
    """Whether trying again may help: the I/O error nearest the root cause is transient.

    The chain is read from its root: the first exception that is an I/O
    error decides. So a connection reset under a ``FileNotFoundError`` (what
    fsspec makes of a failed HTTP ``HEAD``) is transient, an ``OSError``
    raised because of a ``PermissionError`` is not, and neither is a failure
    that is no I/O error at all (a processor bug, a basket that does not
    decompress), even when wrapped in an ``OSError``: an ``OSError`` raised
    *from* an exception that is no I/O error only carries it.

    An exception of the chain that knows better says so itself, in a boolean
    ``transient`` attribute (coffea_smk's ``InputFileError`` for a truncated
    local file, which uproot reports as a short read); the outermost such wins.
    """
    chain = causes(err)
    for e in chain:
        verdict = getattr(e, "transient", None)
        if isinstance(verdict, bool):
            return verdict
    below: BaseException | None = None  # the exception under this one, no I/O error
    for e in reversed(chain):
        fault = io_fault(e)
        carrier = below is not None and e.__cause__ is below and not type_names(e) & _TRANSIENT_NAMES
        if fault is IOFault.TRANSIENT and carrier:
            fault = None  # an OSError that only carries a failure that is no I/O error
        if fault is not None:
            return fault is IOFault.TRANSIENT
        below = e
    return False


_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    FileExistsError,
    io.UnsupportedOperation,
    ssl.SSLCertVerificationError,
)
_PERMANENT_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EROFS,
    errno.EINVAL,
    errno.ENOSPC,
    errno.EBADF,
}
# Transport errors that are no OSError (matched by name: their packages are optional).
_TRANSIENT_NAMES = {
    "aiohttp.client_exceptions.ClientConnectionError",  # server disconnected, timeouts, resets
    "aiohttp.client_exceptions.ClientPayloadError",  # the body ended early
    "http.client.IncompleteRead",
    "asyncio.exceptions.TimeoutError",  # not yet the builtin TimeoutError in Python 3.10
    "concurrent.futures._base.TimeoutError",
}
_PERMANENT_NAMES = {"aiohttp.client_exceptions.ClientConnectorCertificateError"}
# HTTP error responses, judged by their status
_HTTP_ERRORS = {
    "aiohttp.client_exceptions.ClientResponseError",
    "requests.exceptions.HTTPError",
    "urllib.error.HTTPError",
}
# HTTP statuses worth another try: timeout, too early, too many requests, server-side trouble
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def io_fault(err: BaseException) -> IOFault | None:
    """Whether ``err`` on its own is an I/O error, and which kind (None: no I/O error).

    An ``OSError`` is transient unless its type, errno or XRootD error code says
    otherwise (``FileNotFoundError``, ``PermissionError``, ``EACCES``, XRootD's
    ``[3011]`` no such file, ``[3010]`` not authorized, ...). Transport
    errors of aiohttp and http.client that are no ``OSError`` count as
    transient; an HTTP error status counts by its value (503 transient, 403 not).
    """
    names = type_names(err)
    if names & _PERMANENT_NAMES or isinstance(err, _PERMANENT_TYPES):
        return IOFault.PERMANENT
    if names & _HTTP_ERRORS:
        status = getattr(err, "status", None)  # aiohttp, urllib
        if status is None:
            status = getattr(getattr(err, "response", None), "status_code", None)  # requests
        if isinstance(status, int):
            return IOFault.TRANSIENT if status in _TRANSIENT_STATUS else IOFault.PERMANENT
    if names & _TRANSIENT_NAMES or lost_by_uproot(err) or closed_by_xrootd(err):
        return IOFault.TRANSIENT
    if not isinstance(err, OSError):
        return None
    if err.errno is None:
        code = xrootd_error_code(str(err))
        if code is not None:
            return IOFault.TRANSIENT if code in _XROOTD_TRANSIENT else IOFault.PERMANENT
    return IOFault.PERMANENT if err.errno in _PERMANENT_ERRNOS else IOFault.TRANSIENT


# XRootD's answers, as fsspec-xrootd and the bindings word them: an OSError without errno
# whose message holds the status ("[ERROR] Server responded with an error: [3011] Unable to
# open /x.root; no such file or directory"). The server's error codes (XProtocol.hh, kXR_*)
# say whether another try may help; the client's own errors ("[FATAL] Connection error",
# "[ERROR] Operation expired") carry no code and count as transient, like any OSError.
XROOTD_NOT_FOUND = 3011
"""``kXR_NotFound``: no such file."""
_XROOTD_SERVER_ERROR = re.compile(r"Server responded with an error: \[(30\d\d)\]")
_XROOTD_TRANSIENT = {
    3003,  # kXR_FileLocked
    3005,  # kXR_FSError
    3007,  # kXR_IOError
    3008,  # kXR_NoMemory
    3012,  # kXR_ServerError
    3014,  # kXR_noserver
    3017,  # kXR_Cancelled
    3020,  # kXR_inProgress
    3024,  # kXR_Overloaded
    3029,  # kXR_noReplicas (its disk servers may be down)
    3033,  # kXR_TooManyErrs
    3034,  # kXR_ReqTimedOut
    3035,  # kXR_TimerExpired
}


def not_found(err: BaseException) -> bool:
    """Whether an exception of the chain says the file does not exist (also XRootD's ``[3011]``)."""
    return any(
        isinstance(e, FileNotFoundError)
        or (isinstance(e, OSError) and e.errno is None and xrootd_error_code(str(e)) == XROOTD_NOT_FOUND)
        for e in causes(err)
    )


def xrootd_error_code(message: str) -> int | None:
    """The XRootD server's error code (``kXR_*``, 3000-3099) in an error message, if any."""
    match = _XROOTD_SERVER_ERROR.search(message)
    return int(match.group(1)) if match else None


def closed_by_xrootd(err: BaseException) -> bool:
    """Whether ``err`` is a read through an XRootD file handle that lost its connection.

    After the XRootD client gives up on a server, fsspec-xrootd's handles of its
    files are closed, and a read raises ``ValueError("I/O operation on closed
    file")`` from the bindings, with the connection's error gone. It counts as a
    transient I/O error (and as an ``OSError`` for ``continue_on``): the file
    opens again once the server answers (see :func:`coffea_smk.io.remote.drop_broken_handles`).
    """
    if not isinstance(err, ValueError) or "I/O operation on closed file" not in str(err):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    return any("XRootD" in f.filename or "fsspec_xrootd" in f.filename for f in frames[-3:])


_NOT_SUBSCRIPTABLE = re.compile(r"'\w+' object is not subscriptable")


def lost_by_uproot(err: BaseException) -> bool:
    """Whether ``err`` is how uproot's fsspec source reports a failed range request.

    fsspec hands the failed request's exception back as data (``cat_ranges``
    with ``on_error="return"``) and uproot slices it: a ``TypeError``
    "'ClientOSError' object is not subscriptable" raised in
    ``uproot/source/coalesce.py``, with the storage's error gone
    (scikit-hep/uproot5#1450). Reads through uproot (coffea's events, branches
    coffea_smk does not read itself) meet it when the storage fails. It counts
    as a transient I/O error, and ``continue_on: [OSError]`` covers it.
    """
    if not isinstance(err, TypeError) or not _NOT_SUBSCRIPTABLE.fullmatch(str(err)):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and frames[-1].filename.replace("\\", "/").endswith("uproot/source/coalesce.py")
