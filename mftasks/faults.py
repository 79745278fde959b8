"""Fault injection points for the resilience tests; inert unless MFTASKS_FAULTS is set.

    MFTASKS_FAULTS="ckpt_write:step=4,rank=0,once=/tmp/marker"

A point fires when every key given matches the caller's context; `once=PATH` makes it fire a single
time (the marker file records that it did), so a retried run gets past it.  Points:
- ckpt_write: raise OSError(ENOSPC) after a checkpoint's bytes are written, before it is committed.
"""
from __future__ import annotations

import errno
import os

ENV = "MFTASKS_FAULTS"


def _rules() -> list[tuple[str, dict[str, str]]]:
    rules = []
    for part in os.environ.get(ENV, "").split(";"):
        point, _, args = part.strip().partition(":")
        if point:
            rules.append((point, dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)))
    return rules


def fires(point: str, **context) -> bool:
    """True (once, if so configured) when an injected fault matches this point and context."""
    for name, rule in _rules():
        if name != point:
            continue
        if any(str(context.get(k)) != v for k, v in rule.items() if k != "once"):
            continue
        marker = rule.get("once")
        if marker:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.close(fd)
        return True
    return False


def inject(point: str, **context) -> None:
    if point == "ckpt_write" and fires(point, **context):
        raise OSError(errno.ENOSPC, f"No space left on device (injected fault {point} at {context})")
