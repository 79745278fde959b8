"""Validate a raw (parsed JSON) rank table: every problem at once, each naming its JSON path.

Also the facts of the format the other modules share: supported versions, the device id limit,
the known keys at each level, and what counts as a valid IP address.  The rules for version 1.2
(SuperPoD) tables and the choices made are in the package docstring (`mftasks.ranktable`).
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import re
from typing import Any

MAX_DEVICES_PER_SERVER = 16
"""Device ids on one server are 0..15."""
VERSIONS = ("1.0", "1.2")
_MAX_SERVER_ID_LEN = 63  # HCCL: "server_id: string, shorter than 64 characters"

# Keys the dataclasses model (table.py); the other known keys are kept as read in `.extra`.
_TOP_KEYS = {"version", "server_count", "server_list", "super_pod_list", "status"}
_SERVER_KEYS = {"server_id", "device", "host_nic_ip", "pod_ip", "container_ip"}
_DEVICE_KEYS = {"device_id", "device_ip", "rank_id", "super_device_id"}
# Every key a rank table may hold: what MindFormers' hccl_tools.py / merge_hccl.py write, what HCCL's
# rank table documentation lists (versions 1.0 and 1.2: host_ip, device_port, backup_device_ip,
# backup_device_port, host_port), what MindSpore's dynamic cluster reads (pod_ip) and what MindCluster's
# Ascend Operator writes in hccl.json (container_ip, server_ip, hardware_type, device_logical_id).
# Any other key is reported: a misspelt key would otherwise be ignored by HCCL without a word.
KNOWN_TOP_KEYS = _TOP_KEYS
KNOWN_SERVER_KEYS = _SERVER_KEYS | {"host_ip", "server_ip", "hardware_type"}
KNOWN_DEVICE_KEYS = _DEVICE_KEYS | {"device_port", "backup_device_ip", "backup_device_port", "host_port",
                                    "device_logical_id"}

_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_IPV4_OCTET}(?:\.{_IPV4_OCTET}){{3}}")
_DOTTED = re.compile(r"[0-9.]+")


def _show(value: Any) -> str:
    """A JSON value for a message: scalars as JSON, containers by kind (they may be huge or deep)."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON list"
    return json.dumps(value)


def _ip_problem(value: Any) -> str | None:
    """None if value is an IPv4 (or IPv6) address, else what is wrong with it."""
    if not isinstance(value, str):
        return f"{_show(value)} is not a JSON string holding an IP address"
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
        self.add(f"{path}{key}", f'must be a JSON string like "{example}", not {_show(v)}')
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
        self.add(f"{path}{key}", f'{_show(v)} is not a non-negative integer in a string, like "{example}"')
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

    def known_keys(self, obj: dict, checked: set[str], known: set[str], path: str) -> None:
        """Report every key not in `known`; a known key not in `checked` (checked elsewhere) must hold a string."""
        for k, v in obj.items():
            if k not in known:
                close = difflib.get_close_matches(k, sorted(known), n=1)
                hint = f'did you mean "{close[0]}"? ' if close else ""
                self.add(f"{path}{k}", f"unknown key; {hint}known keys here: {', '.join(sorted(known))} "
                                       f"(HCCL ignores any other key: fix the spelling or remove it)")
            elif k not in checked and not isinstance(v, str):
                self.add(f"{path}{k}", f"must be a JSON string, not {_show(v)}")


def validate(data: Any, *, for_dynamic_cluster: bool = False) -> list[str]:
    """Every problem of a raw (parsed JSON) rank table, each naming its JSON path; [] if it is fine.

    Checks: shape; no unknown keys (see KNOWN_*_KEYS); version "1.0"/"1.2"; status "completed"; every
    value a string; server_count ==
    len(server_list); unique server ids; device ids 0..15, unique per server; device IPs valid and
    unique; rank ids exactly 0..N-1, once each; IPv4 server ids and pod/container IPs valid; the
    version 1.2 fields described in the package docstring.  `for_dynamic_cluster=True` adds what
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
    c.known_keys(data, _TOP_KEYS, KNOWN_TOP_KEYS, "")
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
        c.known_keys(server, _SERVER_KEYS | {"host_ip", "server_ip"}, KNOWN_SERVER_KEYS, sp + ".")
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
            for key in ("super_device_id", "device_port", "backup_device_port", "host_port", "device_logical_id"):
                if key in dev:
                    c.number(dev, key, dp + ".", "0" if key.endswith("id") else "16666")
            c.ip(dev, "backup_device_ip", dp + ".", required=False)
            c.known_keys(dev, KNOWN_DEVICE_KEYS, KNOWN_DEVICE_KEYS, dp + ".")
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
        c.known_keys(pod, {"super_pod_id", "server_list"}, {"super_pod_id", "server_list"}, pp + ".")
        members = pod.get("server_list")
        if not isinstance(members, list):
            c.add(pp + ".server_list", 'must be a list of {"server_id": ...} objects')
            continue
        for j, m in enumerate(members):
            mp = f"{pp}.server_list[{j}]"
            if not isinstance(m, dict):
                c.add(mp, 'must be an object {"server_id": ...}')
                continue
            c.known_keys(m, {"server_id"}, {"server_id"}, mp + ".")
            sid = c.string(m, "server_id", mp + ".", "10.0.0.1")
            if sid is None:
                continue
            if sid not in server_ids:
                c.add(mp + ".server_id", f"{sid!r} is not a server of server_list")
            elif sid in placed:
                c.add(mp + ".server_id", f"{sid!r} is also in {placed[sid]}; a server belongs to one SuperPoD")
            else:
                placed[sid] = pp
