"""The rank table as dataclasses (RankTable > Server > Device, SuperPod) and its JSON in and out.

`RankTable.to_json()` gives exactly the JSON value MindFormers' tools write; `from_json` validates
first and raises one RankTableError listing every problem.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mftasks.errors import ProblemsError

from .validation import _DEVICE_KEYS, _SERVER_KEYS, _TOP_KEYS, validate

__all__ = ["Device", "RankTable", "RankTableError", "Server", "SuperPod", "devices_of", "show", "world_size"]


class RankTableError(ProblemsError):
    """A rank table (file, JSON value or merge result) is malformed or inconsistent."""

    HEAD = ("rank table", "rank table {where}")
    MANY = " has {n} problems"


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
        return _json(("device_id", str(self.device_id)), ("device_ip", self.device_ip), ("rank_id", str(self.rank_id)),
                     ("super_device_id", self.super_device_id), extra=self.extra)


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
        return _json(("server_id", self.server_id), ("pod_ip", self.pod_ip), ("container_ip", self.container_ip),
                     ("device", [dev.to_json() for dev in self.devices]), ("host_nic_ip", self.host_nic_ip),
                     extra=self.extra)


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
        pods = None if self.super_pods is None else [p.to_json() for p in self.super_pods]
        return _json(("version", self.version), ("server_count", str(len(self.servers))),
                     ("server_list", [s.to_json() for s in self.servers]), ("super_pod_list", pods),
                     ("status", self.status), extra=self.extra)

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


def _json(*pairs: tuple[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The (key, value) pairs in order, leaving out optional keys whose value is None, then `extra` (the keys
    read but not modelled, written back after the known ones)."""
    return {**{k: v for k, v in pairs if v is not None}, **extra}


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
