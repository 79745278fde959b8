"""A rank reports its own failure: `record` writes an uncaught exception to the rank's error file.

Like torch elastic's `@record` (torch/distributed/elastic/multiprocessing/errors): the launcher gives
each process an environment variable naming its own error file, one per attempt and rank, beside its log:

    MFTASKS_ERROR_FILE=LOG_DIR[/attempt_K]/rank_N/error.json   (scheduler: .../scheduler_error.json)

Wrap the program's entry point, as a decorator or a context manager:

    from mftasks.launcher.record import record

    @record                                   # or @record(retryable=(ConnectionResetError,))
    def main(): ...

    with record(retryable=(StorageBusy,)):
        main()

On an uncaught `Exception` it writes, atomically, one JSON object

    {"version": 1, "exception_type": "builtins.ValueError", "message": "...", "traceback": "...",
     "user_error": true, "retryable": false, "kind": "user", "time": 1718000000.1, "pid": 1234, "rank": "0"}

and re-raises, so the traceback still reaches the log and the exit status is unchanged. Without
MFTASKS_ERROR_FILE (not started by the launcher) it writes nothing. SystemExit and KeyboardInterrupt
pass through unrecorded (an exit status / a signal says enough).

Which failures are retried. The rule: **a plain exception in user code is a user error**
(`user_error: true, retryable: false`): a retry would fail the same way. It is retryable when

- the exception says so: a `retryable` attribute, on its class or the instance, that is true
  (`class StorageBusy(Exception): retryable = True`, or `err.retryable = True; raise err`); a false
  attribute makes it a user error whatever the rest says;
- or it is an instance of a class given in `record(retryable=(...))`, or a callable given there returns
  true for it (`record(retryable=(ConnectionError, lambda e: "try again" in str(e)))`);
- or it is an infrastructure failure recognised here (`infrastructure_kind`): MemoryError or a device
  allocator's "out of memory" ("oom"), an OSError with errno ENOSPC / EDQUOT, "No space left on device"
  or mftasks' DiskFullError ("disk_full": space can be freed, and the next run removes its own stale
  temporaries), a collective-communication timeout such as HCCL's ("comm_timeout").

The launcher reads the record of a failed rank and classes the failure from it (`result.classify`);
only without a record does it fall back to the exit status. This module uses the standard library only,
so any program can import it without MindSpore or Prefect.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

ERROR_FILE_ENV = "MFTASKS_ERROR_FILE"
RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20  # the launcher reads at most this much of a record

# Collective-communication timeouts (HCCL / NCCL / MindSpore cluster), as raised by the framework.
COMM_TIMEOUT = re.compile(
    r"\b(?:hccl|nccl|mccl|lccl|gloo|collective|communicat\w*|allreduce|allgather|broadcast|watchdog)\b"
    r".*\btime[ds]?[ _-]?out"
    r"|\btime[ds]?[ _-]?out\b.*\b(?:hccl|nccl|collective|communicat\w*)\b"
    r"|\bEI000[26]\b"                        # Ascend HCCL notify-wait / socket-build timeouts
    r"|\bheartbeat\b.*\btimed? ?out|\bnode\b.*\bis timed? ?out", re.I)
OOM = re.compile(r"out of memory|\bMemoryError\b|bad_alloc|cannot allocate memory|oom-kill", re.I)
DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|\[Errno (?:28|122)\]|\bDiskFullError\b")
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", 122)}

Retryable = type | Callable[[BaseException], bool]


def infrastructure_kind(exc: BaseException) -> str | None:
    """"oom", "disk_full" or "comm_timeout" for a failure of the machine rather than the program, else None.

    By type (MemoryError; OSError with errno ENOSPC / EDQUOT) or by what it says ("out of memory" from a
    device allocator, "No space left on device", mftasks' DiskFullError, an HCCL / collective timeout)."""
    if isinstance(exc, MemoryError):
        return "oom"
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return "disk_full"
    text = f"{type(exc).__name__}: {exc}"
    for kind, pattern in (("disk_full", DISK_FULL), ("oom", OOM), ("comm_timeout", COMM_TIMEOUT)):
        if pattern.search(text):
            return kind
    return None


def verdict(exc: BaseException, retryable: Iterable[Retryable] = ()) -> tuple[bool, str]:
    """(retryable, kind) for an exception, by the rule in the module docstring."""
    marked = getattr(exc, "retryable", None)
    if isinstance(marked, bool):
        if not marked:
            return False, "user"
        return True, infrastructure_kind(exc) or "marked"
    kind = infrastructure_kind(exc)
    if kind is not None:
        return True, kind
    for item in retryable:
        if isinstance(item, type) and issubclass(item, BaseException):
            if isinstance(exc, item):
                return True, "marked"
        elif _holds(item, exc):
            return True, "marked"
    return False, "user"


def _holds(predicate: Callable[[BaseException], bool], exc: BaseException) -> bool:
    try:
        return bool(predicate(exc))
    except Exception:  # a faulty predicate must not hide the program's exception
        return False


def failure_record(exc: BaseException, retryable: Iterable[Retryable] = ()) -> dict[str, Any]:
    """The JSON-ready record of `exc` (see the module docstring)."""
    is_retryable, kind = verdict(exc, retryable)
    cls = type(exc)
    return {
        "version": RECORD_VERSION,
        "exception_type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
        "user_error": not is_retryable,
        "retryable": is_retryable,
        "kind": kind,
        "time": time.time(),
        "pid": os.getpid(),
        "rank": os.environ.get("RANK_ID"),
    }


def write_record(path: str, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_record(path: str | None) -> dict[str, Any] | None:
    """The record at `path`, or None when there is none or it is not a record (never raises)."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_RECORD_BYTES).decode("utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("exception_type"), str)
            and isinstance(data.get("message"), str) and isinstance(data.get("retryable"), bool)):
        return None
    return data


class _Recorder:
    """What `record(...)` returns: a decorator and a context manager."""

    def __init__(self, retryable: Iterable[Retryable]):
        items = (retryable,) if isinstance(retryable, type) or callable(retryable) else tuple(retryable)
        for item in items:
            if isinstance(item, type) and not issubclass(item, BaseException) or not callable(item):
                raise TypeError(f"record(retryable=...) takes exception classes or callables, not {item!r}")
        self.retryable = items

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)
        return wrapper

    def __enter__(self) -> "_Recorder":
        return self

    def __exit__(self, cls, exc, tb) -> bool:
        if exc is not None and isinstance(exc, Exception):
            self.write(exc)
        return False  # re-raise

    def write(self, exc: BaseException) -> None:
        """Write the record of `exc` to MFTASKS_ERROR_FILE; a failed write is reported, never raised
        (it must not hide the program's own exception)."""
        path = os.environ.get(ERROR_FILE_ENV)
        if not path:
            return
        try:
            write_record(path, failure_record(exc, self.retryable))
        except Exception as err:  # e.g. the disk is full: the log and the exit status still tell
            print(f"[mftasks record] could not write the error record {path}: {err}", file=sys.stderr, flush=True)


def record(fn: Callable | None = None, *, retryable: Iterable[Retryable] | Retryable = ()):
    """`@record`, `@record(retryable=...)` or `with record(...):` (see the module docstring)."""
    recorder = _Recorder(retryable)
    return recorder(fn) if fn is not None else recorder
