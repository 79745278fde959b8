"""HCCL rank tables: the JSON file HCCL reads from RANK_TABLE_FILE on Ascend.

Generate one for this host (like MindFormers' `hccl_tools.py`), merge per-host tables into a cluster
table (like `merge_hccl.py`), validate any table and show it as text.  Output is byte-for-byte what
those two scripts write: `json.dump(table, indent=4)`, keys in their order, every value a string:

    {"version": "1.0", "server_count": "1",
     "server_list": [{"server_id": "10.0.0.1",
                      "device": [{"device_id": "0", "device_ip": "192.1.27.6", "rank_id": "0"}, ...],
                      "host_nic_ip": "reserve"}],
     "status": "completed"}

Version "1.2" tables (Atlas A3 SuperPoD) are read, validated and written too.  What is checked of
them is what Ascend's documentation shows: a device may carry `super_device_id` (a decimal string),
and a top-level `super_pod_list` of `{"super_pod_id": ..., "server_list": [{"server_id": ...}]}`
whose server ids must name servers of `server_list`, each at most once.  Neither is required (not
confirmed either way); other keys (`host_ip`, `device_port`, ...) are kept as read and only checked
to be strings.

Choices: device ids are 0..15 (an Ascend server has at most 16 devices, an A3 server 8 NPUs of
2 dies); device IPs may be IPv4 or IPv6 (HCCL accepts both) and must be unique across the table;
server ids that look like IPv4 addresses must be valid ones, other names (`node_0`) are fine.
hccl_tools.py's rule that a range may not cross the 4-device group boundary (e.g. `[3,6)`) is a
910A board restriction and is not enforced here.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mftasks.errors import ConfigError, MftasksError, OutputExistsError
from mftasks.files import atomic_write_bytes

__all__ = [
    "DEFAULT_HCCN_CONF", "MAX_DEVICES_PER_SERVER", "VERSIONS", "Device", "RankTable", "RankTableError",
    "Server", "ServerSpec", "SuperPod", "add_commands", "devices_of", "generate", "generate_cluster", "load",
    "merge", "parse_device_range", "read_hccn_conf", "show", "validate", "world_size", "write",
]

MAX_DEVICES_PER_SERVER = 16
"""Device ids on one server are 0..15."""
VERSIONS = ("1.0", "1.2")
DEFAULT_HCCN_CONF = "/etc/hccn.conf"
_MAX_SERVER_ID_LEN = 63  # HCCL: "server_id: string, shorter than 64 characters"


class RankTableError(MftasksError, ValueError):
    """A rank table (file, JSON value or merge result) is malformed or inconsistent."""

    def __init__(self, problems: list[str] | str, where: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.where = where
        head = f"rank table {where}" if where else "rank table"
        if len(self.problems) == 1:
            msg = f"{head}: {self.problems[0]}"
        else:
            msg = f"{head} has {len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

@dataclass
class Device:
    """One device (one rank) of a server."""

    device_id: int
    """Physical device number on its server, 0..15."""
    device_ip: str
    """The device's NIC address (from /etc/hccn.conf `address_<id>=`)."""
    rank_id: int
    """Global rank, 0..world_size-1."""
    super_device_id: str | None = None
    """Version 1.2 only: the device's id inside its SuperPoD."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other keys as read (e.g. `device_port`), written back after the known ones."""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"device_id": str(self.device_id), "device_ip": self.device_ip,
                             "rank_id": str(self.rank_id)}
        if self.super_device_id is not None:
            d["super_device_id"] = self.super_device_id
        d.update(self.extra)
        return d


@dataclass
class Server:
    """One host and its devices, in rank order as listed."""

    server_id: str
    """The host's IP (what hccl_tools.py writes) or a unique name such as `node_0`."""
    devices: list[Device]
    host_nic_ip: str | None = "reserve"
    """Always "reserve" in MindFormers' tables; None omits the key."""
    pod_ip: str | None = None
    """The host's pod IP; MindSpore's dynamic-cluster scheduler needs it on every server."""
    container_ip: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"server_id": self.server_id}
        if self.pod_ip is not None:
            d["pod_ip"] = self.pod_ip
        if self.container_ip is not None:
            d["container_ip"] = self.container_ip
        d["device"] = [dev.to_json() for dev in self.devices]
        if self.host_nic_ip is not None:
            d["host_nic_ip"] = self.host_nic_ip
        d.update(self.extra)
        return d


@dataclass
class SuperPod:
    """Version 1.2: the servers of one SuperPoD."""

    super_pod_id: str
    server_ids: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"super_pod_id": self.super_pod_id, "server_list": [{"server_id": s} for s in self.server_ids]}


@dataclass
class RankTable:
    """A whole rank table; `to_json()` gives exactly the JSON value MindFormers' tools write."""

    version: str
    servers: list[Server]
    status: str = "completed"
    super_pods: list[SuperPod] | None = None
    """Version 1.2 `super_pod_list`; None omits the key."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": self.version, "server_count": str(len(self.servers)),
                             "server_list": [s.to_json() for s in self.servers]}
        if self.super_pods is not None:
            d["super_pod_list"] = [p.to_json() for p in self.super_pods]
        d["status"] = self.status
        d.update(self.extra)
        return d

    def to_text(self) -> str:
        """The file's text, as `json.dump(..., indent=4)` in hccl_tools.py / merge_hccl.py writes it."""
        return json.dumps(self.to_json(), indent=4)

    @classmethod
    def from_json(cls, data: Any, where: str | None = None) -> RankTable:
        """Build from a parsed JSON value; raise one RankTableError listing every problem."""
        problems = validate(data)
        if problems:
            raise RankTableError(problems, where)
        servers = [_server_from_json(s) for s in data["server_list"]]
        pods = None
        if "super_pod_list" in data:
            pods = [SuperPod(p["super_pod_id"], [s["server_id"] for s in p["server_list"]])
                    for p in data["super_pod_list"]]
        extra = {k: v for k, v in data.items() if k not in _TOP_KEYS}
        return cls(data["version"], servers, data["status"], pods, extra)

    def ranks(self) -> Iterator[tuple[int, Server, Device]]:
        """(server index, server, device) for every device, in rank order."""
        rows = [(d.rank_id, i, s, d) for i, s in enumerate(self.servers) for d in s.devices]
        rows.sort(key=lambda r: r[0])
        return ((i, s, d) for _, i, s, d in rows)


_TOP_KEYS = {"version", "server_count", "server_list", "super_pod_list", "status"}
_SERVER_KEYS = {"server_id", "device", "host_nic_ip", "pod_ip", "container_ip"}
_DEVICE_KEYS = {"device_id", "device_ip", "rank_id", "super_device_id"}


def _server_from_json(s: dict[str, Any]) -> Server:
    devices = [Device(int(d["device_id"]), d["device_ip"], int(d["rank_id"]), d.get("super_device_id"),
                      {k: v for k, v in d.items() if k not in _DEVICE_KEYS}) for d in s["device"]]
    return Server(s["server_id"], devices, s.get("host_nic_ip"), s.get("pod_ip"), s.get("container_ip"),
                  {k: v for k, v in s.items() if k not in _SERVER_KEYS})


def world_size(table: RankTable) -> int:
    """Number of ranks (devices) in the table."""
    return sum(len(s.devices) for s in table.servers)


def devices_of(table: RankTable, server_index: int) -> list[Device]:
    """The devices of server number `server_index` (0-based, in table order)."""
    n = len(table.servers)
    if not 0 <= server_index < n:
        raise RankTableError(f"server index {server_index} is out of range; the table has {n} "
                             f"server{'s' if n != 1 else ''} (indexes 0..{n - 1})")
    return table.servers[server_index].devices


def show(table: RankTable) -> str:
    """A small text table, one line per rank: rank, server, device, device ip."""
    rows = [("rank", "server", "device", "device_ip")]
    rows += [(str(d.rank_id), s.server_id, str(d.device_id), d.device_ip) for _, s, d in table.ranks()]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    head = (f"rank table version {table.version}: {len(table.servers)} server"
            f"{'s' if len(table.servers) != 1 else ''}, {world_size(table)} ranks")
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([head, *lines])


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
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror}); pass the device IPs explicitly "
                          f"(--device-ips) or point --hccn-conf at the host's hccn.conf", where=str(path)) from None
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
class ServerSpec:
    """One server of an explicit cluster description."""

    server_id: str
    """Host IP (or unique name) written as `server_id`."""
    device_ids: list[int]
    device_ips: list[str]
    """One IP per device id, same order."""
    pod_ip: str | None = None
    container_ip: str | None = None


def generate_cluster(spec: Sequence[ServerSpec | Mapping[str, Any]]) -> RankTable:
    """A cluster table from an explicit spec; ranks numbered 0.. in server order, then device order.

    Each item is a ServerSpec or a dict with the same keys.  Every problem (bad IPs, duplicate
    servers or device IPs, ids out of range, lengths that differ) is raised at once in a ConfigError.
    """
    where = "cluster spec"
    problems: list[str] = []
    specs: list[ServerSpec] = []
    names = {f.name for f in dataclasses.fields(ServerSpec)}
    for i, item in enumerate(spec):
        if isinstance(item, Mapping):
            unknown = sorted(set(item) - names)
            if unknown:
                problems.append(f"spec[{i}]: unknown key{'s' if len(unknown) > 1 else ''} {unknown}; "
                                f"valid keys are {sorted(names)}")
                continue
            try:
                item = ServerSpec(**item)
            except TypeError as exc:
                problems.append(f"spec[{i}]: {exc}; give server_id, device_ids and device_ips")
                continue
        id_problems = _device_id_problems(item.device_ids, f"spec[{i}].device_ids")
        problems += id_problems
        if not id_problems and len(item.device_ips) != len(item.device_ids):
            problems.append(f"spec[{i}]: {len(item.device_ips)} device_ips for {len(item.device_ids)} device_ids; "
                            f"give one IP per device, in the same order")
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
# Validate
# ---------------------------------------------------------------------------------------------

_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_IPV4_OCTET}(?:\.{_IPV4_OCTET}){{3}}")
_DOTTED = re.compile(r"[0-9.]+")


def _ip_problem(value: Any) -> str | None:
    """None if value is an IPv4 (or IPv6) address, else what is wrong with it."""
    if not isinstance(value, str):
        return f"{json.dumps(value)} is not a JSON string holding an IP address"
    if _IPV4.fullmatch(value):
        return None
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
            return None
        except ValueError:
            return f"{value!r} is not a valid IPv6 address"
    return f"{value!r} is not a valid IPv4 address (like 192.168.1.8)"


def _compact(nums: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, nums[:limit]))
    return shown if len(nums) <= limit else f"{shown}, ... ({len(nums)} in all)"


class _Checker:
    """Collects problems over one raw JSON table, each prefixed with its JSON path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    def string(self, obj: dict, key: str, path: str, example: str, required: bool = True) -> str | None:
        """obj[key] if it is a JSON string; report it missing or of the wrong type."""
        if key not in obj:
            if required:
                self.add(f"{path}{key}", f'missing; add "{key}": "{example}"')
            return None
        v = obj[key]
        if isinstance(v, str):
            return v
        self.add(f"{path}{key}", f'must be a JSON string like "{example}", not {json.dumps(v)}')
        return None

    def number(self, obj: dict, key: str, path: str, example: str) -> int | None:
        """obj[key] as a non-negative integer written as a decimal string ("3").

        A bare JSON number is reported but its value is still returned, so one slip does not also
        show up as a gap in the rank ids."""
        if key not in obj:
            self.add(f"{path}{key}", f'missing; add "{key}": "{example}"')
            return None
        v = obj[key]
        if isinstance(v, int) and not isinstance(v, bool):
            self.add(f"{path}{key}", f'must be a JSON string ("{v}"), not the number {v}; '
                                     f"HCCL reads every value of a rank table as a string")
            return v if v >= 0 else None
        if isinstance(v, str) and v.isascii() and v.isdigit():
            return int(v)
        self.add(f"{path}{key}", f'{json.dumps(v)} is not a non-negative integer in a string, like "{example}"')
        return None

    def ip(self, obj: dict, key: str, path: str, required: bool = True) -> str | None:
        if key not in obj:
            if required:
                self.add(f"{path}{key}", f'missing; add "{key}": "<IPv4 address>"')
            return None
        problem = _ip_problem(obj[key])
        if problem:
            self.add(f"{path}{key}", problem)
            return None
        return obj[key]

    def scalars_are_strings(self, obj: dict, known: set[str], path: str) -> None:
        for k, v in obj.items():
            if k not in known and not isinstance(v, (str, list, dict)):
                self.add(f"{path}{k}", f"must be a JSON string, not {json.dumps(v)}")


def validate(data: Any, *, for_dynamic_cluster: bool = False) -> list[str]:
    """Every problem of a raw (parsed JSON) rank table, each naming its JSON path; [] if it is fine.

    Checks: shape; version "1.0"/"1.2"; status "completed"; every value a string; server_count ==
    len(server_list); unique server ids; device ids 0..15, unique per server; device IPs valid and
    unique; rank ids exactly 0..N-1, once each; IPv4 server ids and pod/container IPs valid; the
    version 1.2 fields described in the module docstring.  `for_dynamic_cluster=True` adds what
    MindSpore's dynamic-cluster scheduler needs before it uses the table at all (it ignores one
    without them, silently): a valid `pod_ip` on every server (rank ids as strings is checked always).
    """
    c = _Checker()
    if not isinstance(data, dict):
        return [f"top level: expected a JSON object with version, server_count, server_list and status, "
                f"got {type(data).__name__}"]
    version = c.string(data, "version", "", "1.0")
    if version is not None and version not in VERSIONS:
        c.add("version", f'{version!r} is not supported; use "1.0" (or "1.2" for Atlas A3 SuperPoD tables)')
    servers = data.get("server_list")
    servers = servers if isinstance(servers, list) else None
    count = c.number(data, "server_count", "", str(len(servers)) if servers else "1")
    if servers is not None and count is not None and count != len(servers):
        c.add("server_count", f'"{data["server_count"]}" but server_list has {len(servers)} server'
                              f'{"s" if len(servers) != 1 else ""}; set it to "{len(servers)}"')
    if "server_list" not in data:
        c.add("server_list", "missing; add the list of servers")
    elif servers is None:
        c.add("server_list", f"must be a list of servers, not {type(data['server_list']).__name__}")
    elif not servers:
        c.add("server_list", "empty; a rank table needs at least one server")
    server_ids: dict[str, str] = {}
    if servers:
        _check_servers(c, servers, server_ids, for_dynamic_cluster)
    if "super_pod_list" in data:
        if version == "1.0":
            c.add("super_pod_list", 'is a version 1.2 field; set "version": "1.2" or remove it')
        _check_super_pods(c, data["super_pod_list"], server_ids)
    status = c.string(data, "status", "", "completed")
    if status is not None and status != "completed":
        c.add("status", f'{status!r}: HCCL only uses a table whose status is "completed"; '
                        f"finish the table and set it")
    c.scalars_are_strings(data, _TOP_KEYS, "")
    return c.problems


def _check_servers(c: _Checker, servers: list, server_ids: dict[str, str], dynamic: bool) -> None:
    device_ips: dict[str, str] = {}  # ip -> path of its first use
    ranks: dict[int, str] = {}       # rank -> path of its first use
    n_devices = 0
    for i, server in enumerate(servers):
        sp = f"server_list[{i}]"
        if not isinstance(server, dict):
            c.add(sp, f"must be an object with server_id and device, not {type(server).__name__}")
            continue
        sid = c.string(server, "server_id", sp + ".", "10.0.0.1")
        repeated = sid is not None and sid in server_ids  # its device IPs then repeat too: say it once
        if sid is not None:
            if repeated:
                c.add(sp + ".server_id", f"{sid!r} is also {server_ids[sid]}; each server must appear once "
                                         f"(was the same table merged twice?)")
            else:
                server_ids[sid] = sp
            if not sid:
                c.add(sp + ".server_id", "is empty; give the host IP or a unique name")
            elif len(sid) > _MAX_SERVER_ID_LEN:
                c.add(sp + ".server_id", f"is {len(sid)} characters; HCCL allows at most {_MAX_SERVER_ID_LEN}")
            elif _DOTTED.fullmatch(sid) and _ip_problem(sid):
                c.add(sp + ".server_id", _ip_problem(sid))
        c.string(server, "host_nic_ip", sp + ".", "reserve", required=False)
        if dynamic and "pod_ip" not in server:
            c.add(sp + ".pod_ip", "missing; MindSpore's dynamic-cluster scheduler ignores a rank table unless "
                                  'every server has one: add "pod_ip": "<host IP>" (generate with --pod-ip)')
        else:
            c.ip(server, "pod_ip", sp + ".", required=False)
        for key in ("container_ip", "host_ip", "server_ip"):
            c.ip(server, key, sp + ".", required=False)
        c.scalars_are_strings(server, _SERVER_KEYS, sp + ".")
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            what = "missing" if "device" not in server else (
                "empty" if devices == [] else f"a {type(devices).__name__}, not a list")
            c.add(sp + ".device", f"{what}; give the server's devices as a list of "
                                  f'{{"device_id", "device_ip", "rank_id"}} objects')
            continue
        ids_here: dict[int, str] = {}
        for j, dev in enumerate(devices):
            dp = f"{sp}.device[{j}]"
            n_devices += 1
            if not isinstance(dev, dict):
                c.add(dp, f"must be an object with device_id, device_ip and rank_id, not {type(dev).__name__}")
                continue
            did = c.number(dev, "device_id", dp + ".", str(j))
            if did is not None:
                if did >= MAX_DEVICES_PER_SERVER:
                    c.add(dp + ".device_id", f"{did} is out of range; device ids are "
                                             f"0..{MAX_DEVICES_PER_SERVER - 1} (a server has at most "
                                             f"{MAX_DEVICES_PER_SERVER} devices)")
                elif did in ids_here:
                    c.add(dp + ".device_id", f"device {did} is also {ids_here[did]} on this server; "
                                             f"list each device once")
                else:
                    ids_here[did] = dp
            ip = c.ip(dev, "device_ip", dp + ".")
            if ip is not None:
                if ip in device_ips and not repeated:
                    c.add(dp + ".device_ip", f"{ip!r} is also {device_ips[ip]}; every device needs its own "
                                             f"IP (see address_<id> in that host's /etc/hccn.conf)")
                elif ip not in device_ips:
                    device_ips[ip] = dp + ".device_ip"
            rank = c.number(dev, "rank_id", dp + ".", "0")
            if rank is not None:
                if rank in ranks:
                    c.add(dp + ".rank_id", f"rank {rank} is also {ranks[rank]}; every rank id must appear once")
                else:
                    ranks[rank] = dp + ".rank_id"
            if "super_device_id" in dev:
                c.number(dev, "super_device_id", dp + ".", "0")
            c.scalars_are_strings(dev, _DEVICE_KEYS, dp + ".")
    outside = sorted(r for r in ranks if r >= n_devices)
    for r in outside:
        c.add(ranks[r], f"rank {r} is out of range: with {n_devices} devices the rank ids must be "
                        f"0..{n_devices - 1}")
    missing = [r for r in range(n_devices) if r not in ranks]
    if missing:
        c.add("server_list", f"rank id{'s' if len(missing) > 1 else ''} {_compact(missing)} missing: "
                             f"the {n_devices} devices must have rank ids 0..{n_devices - 1}, each once "
                             f"(number them in server order, then device order)")


def _check_super_pods(c: _Checker, pods: Any, server_ids: dict[str, str]) -> None:
    if not isinstance(pods, list):
        c.add("super_pod_list", f"must be a list, not {type(pods).__name__}")
        return
    placed: dict[str, str] = {}
    for i, pod in enumerate(pods):
        pp = f"super_pod_list[{i}]"
        if not isinstance(pod, dict):
            c.add(pp, f"must be an object with super_pod_id and server_list, not {type(pod).__name__}")
            continue
        c.string(pod, "super_pod_id", pp + ".", str(i))
        members = pod.get("server_list")
        if not isinstance(members, list):
            c.add(pp + ".server_list", 'must be a list of {"server_id": ...} objects')
            continue
        for j, m in enumerate(members):
            mp = f"{pp}.server_list[{j}]"
            sid = c.string(m, "server_id", mp + ".", "10.0.0.1") if isinstance(m, dict) else None
            if not isinstance(m, dict):
                c.add(mp, 'must be an object {"server_id": ...}')
            elif sid is None:
                continue
            elif sid not in server_ids:
                c.add(mp + ".server_id", f"{sid!r} is not a server of server_list")
            elif sid in placed:
                c.add(mp + ".server_id", f"{sid!r} is also in {placed[sid]}; a server belongs to one SuperPoD")
            else:
                placed[sid] = pp


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


def load(path: str | Path) -> RankTable:
    """Read and validate a rank table file; one RankTableError lists every problem (with the file)."""
    return RankTable.from_json(_read_json(path), where=str(path))


def write(table: RankTable, path: str | Path, force: bool = False) -> bool:
    """Write the table atomically; True if written, False if the file already held this table.

    A file holding a different table is left alone (OutputExistsError) unless force=True.
    Written with `atomic_write_bytes` rather than `atomic_write_json`: the latter sorts keys, and
    this file must match MindFormers' key order and 4-space indent byte for byte.
    """
    path = Path(path)
    text = table.to_text()
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name for the rank table, e.g. {path}/hccl.json")
    if path.exists():
        old = path.read_bytes()
        if old == text.encode("utf-8"):
            return False
        if not force:
            try:
                same = json.loads(old) == table.to_json()
            except (ValueError, UnicodeDecodeError):
                same = False
            detail = "the same table, formatted differently" if same else "a different rank table"
            raise OutputExistsError(f"{path} already exists and holds {detail}; pass --force (force=True) "
                                    f"to replace it, or choose another output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    return True


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


# ---------------------------------------------------------------------------------------------
# Command line: `mftasks ranktable ...`
# ---------------------------------------------------------------------------------------------

def add_commands(subparsers: Any) -> None:
    """Register `ranktable` (generate | validate | merge | show) on an argparse subparsers object."""
    rt = subparsers.add_parser("ranktable", help="generate, validate, merge and show HCCL rank tables")
    rt.set_defaults(func=lambda args: (rt.print_help(), 2)[1])
    sub = rt.add_subparsers(title="ranktable commands")

    p = sub.add_parser("generate", help="a rank table for this host (like MindFormers' hccl_tools.py)")
    p.add_argument("--device-range", default="[0,8)",
                   help='devices to use: "[a,b)" is a..b-1 (default "[0,8)"; "[a,b]" means the same)')
    p.add_argument("--server-ip", required=True, help="this host's IP, written as server_id")
    p.add_argument("--device-ips", metavar="IP,IP,...", help="device NIC IPs in device order (default: hccn.conf)")
    p.add_argument("--hccn-conf", default=DEFAULT_HCCN_CONF, metavar="PATH",
                   help=f"read device IPs from its address_<id>= lines (default {DEFAULT_HCCN_CONF})")
    p.add_argument("--pod-ip", metavar="IP", help="add pod_ip (needed by MindSpore's dynamic-cluster scheduler)")
    p.add_argument("--output", required=True, metavar="FILE", help="rank table file to write")
    p.add_argument("--force", action="store_true", help="replace an output file holding a different table")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("validate", help="check rank table files; exit 1 if any has problems")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--dynamic-cluster", action="store_true",
                   help="also require what MindSpore's dynamic-cluster scheduler needs (pod_ip on every server)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("merge", help="merge per-host tables into one (like MindFormers' merge_hccl.py)")
    p.add_argument("files", nargs="+", metavar="FILE", help="tables in server order")
    p.add_argument("--output", required=True, metavar="FILE")
    p.add_argument("--force", action="store_true", help="replace an output file holding a different table")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("show", help="print a table: rank, server, device, device ip")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_cmd_show)


def _summary(table: RankTable) -> str:
    n = len(table.servers)
    return f"{n} server{'s' if n != 1 else ''}, {world_size(table)} ranks (version {table.version})"


def _report_write(path: str, table: RankTable, written: bool) -> None:
    print(f"{'wrote' if written else 'up to date'}: {path}: {_summary(table)}")


def _cmd_generate(args: argparse.Namespace) -> int:
    ids = parse_device_range(args.device_range, where="--device-range")
    ips = [s.strip() for s in args.device_ips.split(",")] if args.device_ips else None
    table = generate(args.server_ip, ids, device_ips=ips, hccn_conf=args.hccn_conf, pod_ip=args.pod_ip)
    _report_write(args.output, table, write(table, args.output, force=args.force))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for f in args.files:
        try:
            data = _read_json(f)
        except RankTableError as exc:
            problems = exc.problems
        else:
            problems = validate(data, for_dynamic_cluster=args.dynamic_cluster)
        if problems:
            bad += 1
            print(f"{f}: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"{f}: ok, {_summary(RankTable.from_json(data))}")
    return 1 if bad else 0


def _cmd_merge(args: argparse.Namespace) -> int:
    table = merge([load(f) for f in args.files])
    _report_write(args.output, table, write(table, args.output, force=args.force))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    print(show(load(args.file)))
    return 0
