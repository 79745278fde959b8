"""Checks of the machine before any process starts; every problem is collected and raised once.

(The spec's own fields, layout vs world size and device-range syntax included, are checked when the
`LaunchSpec` is built.) Here: the program exists, the log folder is writable, the scheduler port is free
on master_addr (node 0 of a dynamic-cluster launch; other nodes: that master_addr resolves), the rank
table is valid and covers this node's devices, the working directory exists.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile

from .env import base_env
from .errors import PreflightError
from .spec import LaunchSpec

_PYTHON = re.compile(r"^python[\d.]*$")


def preflight(spec: LaunchSpec) -> None:
    """Raise PreflightError listing every problem found; return None when the launch can start."""
    problems = check(spec)
    if problems:
        raise PreflightError(problems)


def check(spec: LaunchSpec) -> list[str]:
    problems: list[str] = []
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        problems.append(f"cwd {spec.cwd!r} is not a folder")
    problems += _program_problems(spec)
    problems += _log_dir_problems(spec)
    if spec.runs_scheduler:
        problems += port_problems(spec.master_addr, spec.master_port)
    elif spec.mode == "dynamic-cluster":
        try:
            socket.getaddrinfo(spec.master_addr, spec.master_port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            problems.append(f"master_addr {spec.master_addr!r} (node 0, the scheduler) cannot be resolved "
                            f"({exc.strerror})")
    if spec.rank_table is not None:
        problems += _rank_table_problems(spec)
    if spec.heartbeat_dir is not None and os.path.exists(spec.heartbeat_dir) and not os.path.isdir(spec.heartbeat_dir):
        problems.append(f"heartbeat_dir {spec.heartbeat_dir!r} exists and is not a folder")
    return problems


def resolve_program(spec: LaunchSpec) -> str | None:
    """argv[0] as the ranks will run it: a path as given, else found on the ranks' PATH (venv first)."""
    prog = spec.program[0]
    if os.sep in prog or (os.altsep and os.altsep in prog):
        path = prog if os.path.isabs(prog) or spec.cwd is None else os.path.join(spec.cwd, prog)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(prog, path=base_env(spec)["PATH"])


def _program_problems(spec: LaunchSpec) -> list[str]:
    prog = spec.program[0]
    resolved = resolve_program(spec)
    if resolved is None:
        if os.sep in prog and os.path.isfile(prog):
            return [f"program {prog!r} is not executable; make it executable or run it with an "
                    f"interpreter, e.g. ['python', {prog!r}, ...]"]
        if os.sep in prog:
            return [f"program {prog!r} does not exist"]
        return [f"program {prog!r} was not found on PATH (searched {base_env(spec)['PATH']!r}); "
                "give a path or install it"]
    # `python script.py`: a missing script would fail in every rank; say so now
    if _PYTHON.match(os.path.basename(prog)) and len(spec.program) > 1:
        script = spec.program[1]
        if script.endswith(".py"):
            path = script if os.path.isabs(script) or spec.cwd is None else os.path.join(spec.cwd, script)
            if not os.path.isfile(path):
                return [f"script {script!r} (argv[1] of program) does not exist"]
    return []


def _log_dir_problems(spec: LaunchSpec) -> list[str]:
    """The attempt's log folder can be written, or created: checked without creating anything, so that a
    refused launch leaves no empty folders behind."""
    folder = os.path.abspath(spec.attempt_dir)
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return [f"log_dir {spec.attempt_dir!r} cannot be created: {existing!r} is a file; choose another --log-dir"]
    if existing != folder:
        if not os.access(existing, os.W_OK | os.X_OK):
            return [f"log_dir {spec.attempt_dir!r} cannot be created: {existing!r} is not writable; "
                    "choose another --log-dir"]
        return []
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        return [f"log_dir {folder!r} is not writable ({exc.strerror or exc}); choose another --log-dir"]
    return []


def port_problems(addr: str, port: int) -> list[str]:
    """[] when a TCP socket can be bound to addr:port (SO_REUSEADDR, as a server would)."""
    try:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return [f"master_addr {addr!r} cannot be resolved ({exc.strerror})"]
    family, _, _, _, sockaddr = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return [f"master_port {port} is in use on {addr} (another job's scheduler?); "
                    "pick a free one with --master-port"]
        if exc.errno == errno.EADDRNOTAVAIL:
            return [f"master_addr {addr!r} is not an address of this machine, but node_rank 0 runs the "
                    "scheduler there; use this node's address"]
        return [f"cannot bind the scheduler port {addr}:{port}: {exc.strerror or exc}"]
    return []


def _device_ids_by_server(path: str) -> tuple[list[list[int]], list[str]]:
    """[[device ids of server 0], [...], ...] and problems. Uses mftasks.ranktable's full validation
    when that module is there, else a minimal read of server_list[].device[].device_id."""
    try:
        from mftasks import ranktable
    except ImportError:
        ranktable = None
    if ranktable is not None:
        try:
            table = ranktable.load(path)
        except ranktable.RankTableError as exc:
            return [], [str(exc)]
        return [[d.device_id for d in s.devices] for s in table.servers], []
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return [[int(d["device_id"]) for d in s["device"]] for s in data["server_list"]], []
    except OSError as exc:
        return [], [f"rank table {path!r} cannot be read ({exc.strerror or exc})"]
    except (ValueError, KeyError, TypeError) as exc:
        return [], [f"rank table {path!r} is not a rank table (need server_list[].device[].device_id): {exc}"]


def _rank_table_problems(spec: LaunchSpec) -> list[str]:
    path = spec.rank_table
    if not os.path.isfile(path):
        return [f"rank table {path!r} is not a file"]
    servers, problems = _device_ids_by_server(path)
    if problems:
        return problems
    total = sum(len(s) for s in servers)
    if total != spec.world_size:
        problems.append(f"rank table {path!r} lists {total} devices on {len(servers)} server(s), but the world "
                        f"size is {spec.world_size} (nnodes {spec.nnodes} x nproc_per_node {spec.nproc_per_node})")
    if len(servers) != spec.nnodes:
        problems.append(f"rank table {path!r} describes {len(servers)} server(s), but nnodes={spec.nnodes}")
    if spec.node_rank < len(servers):
        listed = set(servers[spec.node_rank])
        wanted = [lr.device_id for lr in spec.local_ranks()]
        missing = [d for d in wanted if d not in listed]
        if missing:
            rng = f" (device_range {spec.device_range})" if spec.device_range else ""
            problems.append(f"rank table {path!r} server {spec.node_rank} lists devices {sorted(listed)}, which do "
                            f"not cover DEVICE_ID {missing}{rng}")
    return problems
