"""Durable file operations: write to a temporary name, fsync, rename; hash what was written.

A file that matters (dataset shard, manifest, checkpoint) only ever appears under its final name
complete.  Readers trust what a manifest vouches for (size + sha256), nothing else.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError
from .process import alive

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hex sha256 of a JSON value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under root, root included."""
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str | None = None) -> None:
    """Write data to path via a temporary file in the same folder, fsynced, then renamed; a full disk is a
    DiskFullError naming `what` (default: the file's name) and the path, with no temporary left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with disk_full_as_error(path, what or path.name, len(data)):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_json(path: str | os.PathLike, obj, what: str | None = None) -> None:
    """Write obj as indented JSON (sorted keys) atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), what)


def copy_durable(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a file's bytes to dst (temporary name, fsync, rename)."""
    atomic_write_bytes(dst, Path(src).read_bytes())


def staging_dir(final: Path, tag: str = "tmp") -> Path:
    """A fresh hidden folder beside `final`, named after it and this process, for building into."""
    path = final.parent / f".{final.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


# The names this module gives its temporaries: ".<final name>.<tag>-<pid>-<8 hex>" (files and folders).
_TEMPORARY = re.compile(r"^\.(?P<final>.+)\.(?P<tag>[a-z]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def remove_stale_temporaries(folder: str | os.PathLike, final: str | None = None) -> list[Path]:
    """Remove the temporaries (files or folders) this module named in `folder` whose writer process no
    longer exists, only those of `final` when given; return what was removed.

    Only names of the exact form written by atomic_write_bytes / staging_dir / publish_dir match, so a
    user's own dot-files are never touched; a live writer's temporary is left alone."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMPORARY.match(p.name)
        if m is None or (final is not None and m["final"] != final) or alive(int(m["pid"])):
            continue
        if m["tag"] == "old" and not (folder / m["final"]).exists():
            continue  # publish_dir died between its renames: this is the only complete copy left
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def remove_stale_staging(final: Path) -> list[Path]:
    """Remove temporaries of `final` (staging folders, temp files) left by processes that no longer exist."""
    return remove_stale_temporaries(final.parent, final.name)


# --- outputs: what a command may replace -------------------------------------------------------------

def overlap_problems(output: str | os.PathLike, inputs, flag: str = "--output") -> list[str]:
    """Problems when `output` is one of `inputs`, lies inside one, or is an ancestor of one.

    Such an output is refused whatever the flags (--force included): replacing it would delete input."""
    out = Path(output).expanduser().resolve()
    problems = []
    for given in inputs:
        if given is None:
            continue
        src = Path(given).expanduser().resolve()
        if out == src:
            problems.append(f"{flag} {output} is the input {given}; write the output to a new folder")
        elif src in out.parents:
            problems.append(f"{flag} {output} lies inside the input {given}; write the output outside it")
        elif out in src.parents:
            problems.append(f"{flag} {output} contains the input {given} (replacing it would delete the input); "
                            "choose a folder that holds no input")
    return problems


def replace_problems(output: str | os.PathLike, owned: bool, force: bool, what: str,
                     flag: str = "--output") -> list[str]:
    """Problems with writing `output` over what is there.

    Nothing / an empty folder: fine.  A previous output of the same command (`owned`, i.e. its manifest
    says so): fine only with --force (the caller decides whether an up-to-date one is kept instead).
    Anything else (a user's files, a file where a folder goes): refused whatever the flags."""
    out = Path(output).expanduser()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return [f"{flag} {output} is a file, not a folder; choose another path"]
    if not out.exists() or not any(out.iterdir()):
        return []
    if not owned:
        return [f"{flag} {output} holds files that are not {what}; mftasks never replaces what it did not "
                "create (--force included): choose an empty or new folder"]
    if not force:
        return [f"{flag} {output} already holds {what}; pass --force to replace it, or choose a new folder"]
    return []


# --- disk full ----------------------------------------------------------------------------------------

def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free to this user on the filesystem that holds `path` (or its nearest existing ancestor)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def require_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """DiskFullError (before writing anything) when the filesystem of `path` has less than `needed` bytes."""
    free = free_bytes(path)
    if free < needed:
        raise DiskFullError(f"not enough space to write {what} at {path}: needs about {_mb(needed)}, "
                            f"{_mb(free)} free; free some space or choose another folder")


def is_disk_full(exc: BaseException, path: str | os.PathLike | None = None, needed: int = 0) -> bool:
    """True for ENOSPC/EDQUOT, or any write error while `path`'s filesystem has less than `needed` bytes
    free (MindSpore's writers report a full disk as a RuntimeError with no errno)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(exc) or "os error 28" in str(exc):
        return True  # writers with their own error types (safetensors' SafetensorError: "... (os error 28)")
    if path is not None and isinstance(exc, (OSError, RuntimeError)):
        try:
            return free_bytes(path) < max(needed, 1 << 16)
        except OSError:
            return False
    return False


@contextmanager
def disk_full_as_error(path: str | os.PathLike, what: str, needed: int = 0):
    """Turn a disk-full failure inside the block into a DiskFullError naming `path`, the space needed and
    free.  The caller removes its partial files (a `finally` or an except around this)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if not is_disk_full(exc, path, needed):
            raise
        try:
            free = _mb(free_bytes(path))
        except OSError:
            free = "unknown"
        need = f"about {_mb(needed)}" if needed else "more space than is free"
        raise DiskFullError(f"disk full while writing {what} at {path}: needs {need}, {free} free; "
                            "nothing partial was kept; free some space or choose another folder") from None


def publish_dir(staged: Path, final: Path) -> None:
    """Move a fully written, fsynced folder to its final name, replacing what was there.

    The old folder is renamed aside first and deleted only after the new one is in place, so at
    every instant `final` is either the old complete folder or the new complete one (or, between
    two renames, absent: readers then see "no dataset", never a partial one).
    """
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(staged, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
