"""Build rank tables: from a device range and hccn.conf (like MindFormers' `hccl_tools.py`), from an
explicit cluster spec, by merging per-host tables (like `merge_hccl.py`); read and write the file.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mftasks.errors import ConfigError, OutputExistsError
from mftasks.files import atomic_write_bytes
from mftasks.typed_config import Checks, TypedConfig

from .table import Device, RankTable, RankTableError, Server, SuperPod
from .validation import MAX_DEVICES_PER_SERVER, _compact, _ip_problem, validate

__all__ = ["DEFAULT_HCCN_CONF", "ServerSpec", "check_output", "generate", "generate_cluster", "load", "merge",
           "parse_device_range", "read_hccn_conf", "write"]

DEFAULT_HCCN_CONF = "/etc/hccn.conf"


# ---------------------------------------------------------------------------------------------
# Inputs: device range, hccn.conf
# ---------------------------------------------------------------------------------------------

_RANGE = re.compile(r"\[\s*([0-9]+)\s*,\s*([0-9]+)\s*([\])])")


def parse_device_range(text: str, where: str = "device range") -> list[int]:
    """Device ids of a MindFormers device range: "[a,b)" is a, a+1, ..., b-1.

    "[a,b]" means the same a..b-1: MindFormers' run_distribute.sh strips both brackets and loops
    `i < END`, so its documented "[0,8]" starts devices 0..7; we follow it rather than guess.
    Ids must lie in 0..15 and the range must not be empty.  Multi-digit bounds ("[8,16)") work.
    """
    form = ('write "[a,b)" for devices a..b-1, e.g. "[0,8)" for devices 0-7 or "[8,16)" for 8-15')
    m = _RANGE.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(f"{text!r} is not a device range; {form}", where=where)
    start, end = int(m.group(1)), int(m.group(2))
    problems = []
    if end > MAX_DEVICES_PER_SERVER:
        problems.append(f"{text!r} ends at {end}, past the last device: a server has at most "
                        f"{MAX_DEVICES_PER_SERVER} devices (ids 0..{MAX_DEVICES_PER_SERVER - 1}), "
                        f"so the end may be at most {MAX_DEVICES_PER_SERVER}")
    if start >= end:
        problems.append(f"{text!r} holds no device: the start ({start}) must be below the end ({end}), "
                        f"which is exclusive; {form}")
    ConfigError.raise_if(problems, where)
    return list(range(start, end))


def read_hccn_conf(path: str | Path = DEFAULT_HCCN_CONF) -> dict[int, str]:
    """Device id -> device IP from the `address_<id>=<ip>` lines of an hccn.conf (others ignored)."""
    path = Path(path)
    fix = "pass the device IPs explicitly (--device-ips) or point --hccn-conf at the host's hccn.conf"
    try:
        if not path.is_dir() and path.exists() and not path.is_file():
            raise ConfigError(f"not a regular file; {fix}", where=str(path))
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot be read ({exc.strerror}); {fix}", where=str(path)) from None
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a text file (byte {exc.start} is {data[exc.start:exc.start + 1]!r}), so not an "
                          f"hccn.conf, which holds address_<device id>=<ip> lines; {fix}", where=str(path)) from None
    ips: dict[int, str] = {}
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        key, sep, value = line.strip().partition("=")
        if not key.startswith("address_"):
            continue
        where = f"{path}:{lineno}"
        num = key[len("address_"):].strip()
        value = value.strip()
        if not sep or not (num.isascii() and num.isdigit()):
            problems.append(f"{where}: {line.strip()!r} is not of the form address_<device id>=<ip>")
            continue
        dev = int(num)
        if dev in ips:
            problems.append(f"{where}: address_{dev} is given twice; keep one line per device")
        elif _ip_problem(value):
            problems.append(f"{where}: address_{dev}: {_ip_problem(value)}")
        else:
            ips[dev] = value
    ConfigError.raise_if(problems, str(path))
    return ips


# ---------------------------------------------------------------------------------------------
# Generate
# ---------------------------------------------------------------------------------------------

def generate(server_ip: str, device_ids: Sequence[int], device_ips: Sequence[str] | Mapping[int, str] | None = None,
             hccn_conf: str | Path | None = DEFAULT_HCCN_CONF, server_id: str | None = None,
             pod_ip: str | None = None) -> RankTable:
    """A one-server table for this host, ranks 0..n-1 in `device_ids` order (as hccl_tools.py does).

    Device IPs come from `device_ips` (a list parallel to `device_ids`, or a mapping id -> ip), else
    from `hccn_conf` if that file exists.  `server_id` defaults to `server_ip`.  `pod_ip` adds the
    key MindSpore's dynamic-cluster scheduler looks for.
    """
    where = "rank table generate"
    problems = _device_id_problems(device_ids, "device ids")
    for name, value in (("server ip", server_ip), ("pod ip", pod_ip)):
        if value is not None and _ip_problem(value):
            problems.append(f"{name}: {_ip_problem(value)}")
    ids = list(device_ids) if not problems else []
    ips: dict[int, str] = {}
    if device_ips is not None:
        if isinstance(device_ips, Mapping):
            ips = dict(device_ips)
        elif len(device_ips) != len(ids) and ids:
            problems.append(f"device ips: {len(device_ips)} given for {len(ids)} devices {ids}; "
                            f"give one IP per device, in the same order")
        else:
            ips = dict(zip(ids, device_ips))
        source = "the device ips given"
    elif hccn_conf is not None and Path(hccn_conf).exists():
        ips = read_hccn_conf(hccn_conf)
        source = str(hccn_conf)
    else:
        looked = f"{hccn_conf} does not exist" if hccn_conf is not None else "no hccn.conf was given"
        problems.append(f"no device IPs: none were given and {looked}; pass them (--device-ips ip0,ip1,...) "
                        f"or an hccn.conf (--hccn-conf); on the Ascend host they are the address_<id> lines "
                        f"of /etc/hccn.conf, or run `hccn_tool -i <id> -ip -g` for each device")
        source = ""
    if source:
        missing = [i for i in ids if i not in ips]
        if missing:
            problems.append(f"no IP for device{'s' if len(missing) > 1 else ''} {_compact(missing)} in {source}")
        for i in ids:
            if i in ips and _ip_problem(ips[i]):
                problems.append(f"device {i} ip: {_ip_problem(ips[i])}")
    ConfigError.raise_if(problems, where)
    devices = [Device(dev, ips[dev], rank) for rank, dev in enumerate(ids)]
    server = Server(server_id if server_id is not None else server_ip, devices, pod_ip=pod_ip)
    table = RankTable("1.0", [server])
    ConfigError.raise_if(validate(table.to_json()), where)
    return table


@dataclass
class ServerSpec(TypedConfig):
    """One server of an explicit cluster description."""

    server_id: str
    """Host IP (or unique name) written as `server_id`."""
    device_ids: list[int]
    """Physical device numbers, 0..15."""
    device_ips: list[str]
    """One IP per device id, same order."""
    pod_ip: str | None = None
    container_ip: str | None = None

    HAND_CHECKED: ClassVar[tuple[str, ...]] = ("device_ids",)  # its message names the valid range

    def _check(self, c: Checks) -> None:
        id_problems = _device_id_problems(self.device_ids, "device_ids")
        c.extend(id_problems)
        if not id_problems and c.ok("device_ips") and len(self.device_ips) != len(self.device_ids):
            c.problem(f"device_ips={self.device_ips!r}: {len(self.device_ips)} IPs for {len(self.device_ids)} "
                      "device ids; give one IP per device, in the same order")


def generate_cluster(spec: Sequence[ServerSpec | Mapping[str, Any]]) -> RankTable:
    """A cluster table from an explicit spec; ranks numbered 0.. in server order, then device order.

    Each item is a ServerSpec or a dict with the same keys.  Every problem (bad IPs, duplicate
    servers or device IPs, ids out of range, lengths that differ) is raised at once in a ConfigError.
    """
    where = "cluster spec"
    problems: list[str] = []
    specs: list[ServerSpec] = []
    for i, item in enumerate(spec):
        if not isinstance(item, ServerSpec):  # a dict: unknown, missing and bad keys all named, at spec[i]
            item, found = ServerSpec.build(item, where=where, path=f"spec[{i}]")
            problems += found
        if item is not None:
            specs.append(item)
    if not specs and not problems:
        problems.append("no servers; give at least one")
    ConfigError.raise_if(problems, where)
    servers, rank = [], 0
    for s in specs:
        devices = []
        for dev, ip in zip(s.device_ids, s.device_ips):
            devices.append(Device(dev, ip, rank))
            rank += 1
        servers.append(Server(s.server_id, devices, pod_ip=s.pod_ip, container_ip=s.container_ip))
    table = RankTable("1.0", servers)
    ConfigError.raise_if(validate(table.to_json()), where)
    return table


def _device_id_problems(device_ids: Any, where: str) -> list[str]:
    if isinstance(device_ids, (str, bytes)) or not isinstance(device_ids, Sequence) or not device_ids:
        return [f"{where}: {device_ids!r} must be a non-empty list of device ids (0..{MAX_DEVICES_PER_SERVER - 1})"]
    problems, seen = [], set()
    for d in device_ids:
        if not isinstance(d, int) or isinstance(d, bool):
            problems.append(f"{where}: {d!r} is not an integer device id")
        elif not 0 <= d < MAX_DEVICES_PER_SERVER:
            problems.append(f"{where}: device id {d} is out of range; device ids are 0..{MAX_DEVICES_PER_SERVER - 1}")
        elif d in seen:
            problems.append(f"{where}: device {d} is listed twice; list each device once")
        seen.add(d)
    return problems


# ---------------------------------------------------------------------------------------------
# Files, merge
# ---------------------------------------------------------------------------------------------

def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RankTableError("no such file; create one with `mftasks ranktable generate`", str(path)) from None
    except UnicodeDecodeError:
        raise RankTableError("is not UTF-8 text; is this really a rank table (JSON)?", str(path)) from None
    except OSError as exc:
        raise RankTableError(f"cannot be read: {exc.strerror}", str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RankTableError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; "
                             f"fix the file or generate it again", str(path)) from None
    except RecursionError:
        raise RankTableError("nests lists or objects too deeply to be read (a rank table is four levels deep); "
                             "is this really a rank table? Generate it again", str(path)) from None


def load(path: str | Path) -> RankTable:
    """Read and validate a rank table file; one RankTableError lists every problem (with the file)."""
    return RankTable.from_json(_read_json(path), where=str(path))


def write(table: RankTable, path: str | Path, force: bool = False, inputs: Sequence[str | Path | None] = (),
          flag: str = "--output") -> bool:
    """Write the table atomically; True if written, False if the file already held this table.

    Never destroys what mftasks did not make, whatever `force` says: an output that is one of `inputs`
    (the tables merged, the hccn.conf read) is refused, and so is an existing file that is not a valid rank
    table (OutputExistsError). A valid rank table that differs is replaced only with force=True.
    Written with `atomic_write_bytes` rather than `atomic_write_json`: the latter sorts keys, and
    this file must match MindFormers' key order and 4-space indent byte for byte.
    """
    path = Path(path)
    text = table.to_text()
    check_output(path, inputs, flag)
    if path.exists():
        old = path.read_bytes()
        if old == text.encode("utf-8"):
            return False
        if not force:
            same = json.loads(old) == table.to_json()
            detail = "the same table, formatted differently" if same else "a different rank table"
            raise OutputExistsError(f"{path} already exists and holds {detail}; pass --force (force=True) "
                                    f"to replace it, or choose another output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    return True


def check_output(path: str | Path, inputs: Sequence[str | Path | None] = (), flag: str = "--output") -> None:
    """OutputExistsError when `path` may not be written whatever the flags: it is one of `inputs`, a folder,
    or an existing file that is not a valid rank table."""
    path = Path(path)
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise OutputExistsError(f"{flag} {path} is the input {given}; mftasks never writes over its input "
                                    f"(--force included): choose another output file")
    if path.is_dir():
        raise OutputExistsError(f"{flag} {path} is a folder; give a file name for the rank table, "
                                f"e.g. {path}/hccl.json")
    if path.exists() or path.is_symlink():
        not_a_table = _not_a_rank_table(path)
        if not_a_table:
            raise OutputExistsError(f"{flag} {path} already exists and {not_a_table}; mftasks replaces only a rank "
                                    f"table (--force included): move that file away or choose another output file")


_MAX_TABLE_BYTES = 64 << 20  # far above any real cluster's table (~300 bytes a device)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.expanduser().resolve() == b.expanduser().resolve()


def _not_a_rank_table(path: Path) -> str | None:
    """None if the file at `path` is a valid rank table, else what it is instead (for a message)."""
    if not path.is_file():
        return "is not a regular file" if path.exists() else "is a link to nothing"
    if path.stat().st_size > _MAX_TABLE_BYTES:
        return f"is {path.stat().st_size} bytes, far too big to be a rank table"
    try:
        data = _read_json(path)
    except RankTableError as exc:
        return f"is not a rank table ({exc.problems[0].split(';')[0]})"
    problems = validate(data)
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        return f"is not a valid rank table ({problems[0]}{more})"
    return None


def merge(tables: Sequence[RankTable]) -> RankTable:
    """One cluster table: servers in the given order, ranks renumbered 0.. across them (merge_hccl.py).

    Within a server devices keep their listed order.  Version 1.2 SuperPoD lists are concatenated
    (entries with the same super_pod_id are joined).  A server appearing twice, a device IP used
    twice or mixed versions raise one RankTableError.
    """
    if not tables:
        raise ConfigError("nothing to merge; give at least one rank table", where="ranktable merge")
    versions = sorted({t.version for t in tables})
    if len(versions) > 1:
        raise RankTableError(f"cannot merge tables of versions {', '.join(versions)}; convert them to one version",
                             where="merge")
    servers, rank = [], 0
    pods: dict[str, list[str]] | None = None
    for t in tables:
        for s in t.servers:
            devices = []
            for d in s.devices:
                devices.append(dataclasses.replace(d, rank_id=rank, extra=dict(d.extra)))
                rank += 1
            servers.append(dataclasses.replace(s, devices=devices, extra=dict(s.extra)))
        if t.super_pods is not None:
            pods = {} if pods is None else pods
            for p in t.super_pods:
                pods.setdefault(p.super_pod_id, []).extend(p.server_ids)
    merged = RankTable(versions[0], servers,
                       super_pods=None if pods is None else [SuperPod(k, v) for k, v in pods.items()])
    problems = validate(merged.to_json())
    if problems:
        raise RankTableError(problems, where=f"merged from {len(tables)} tables")
    return merged
