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
confirmed either way); the other documented keys (`host_ip`, `device_port`, `backup_device_ip`, ...,
listed in `validation.KNOWN_*_KEYS`) are kept as read and checked to be strings; any other key is
reported as a problem, since HCCL ignores it without a word (a misspelt `devcie_ip`).

Writing (`write`, `generate --output`, `merge --output`) never destroys what mftasks did not make: an
output that is one of the command's inputs (a table being merged, the --hccn-conf) is refused, and an
existing output file is replaced, with --force, only when it is itself a valid rank table; anything
else there (not JSON, not a rank table, a folder, a device) is refused whatever the flags.

Choices: device ids are 0..15 (an Ascend server has at most 16 devices, an A3 server 8 NPUs of
2 dies); device IPs may be IPv4 or IPv6 (HCCL accepts both) and must be unique across the table;
server ids that look like IPv4 addresses must be valid ones, other names (`node_0`) are fine.
hccl_tools.py's rule that a range may not cross the 4-device group boundary (e.g. `[3,6)`) is a
910A board restriction and is not enforced here.

Layout: `table` (the dataclasses, JSON in and out, `show`), `validation` (`validate`, the format's
limits and known keys), `build` (device ranges, hccn.conf, `generate`, `generate_cluster`, `merge`,
`load`, `write`), `cli` (`add_commands`).
"""
from __future__ import annotations

from .build import (
    DEFAULT_HCCN_CONF, ServerSpec, generate, generate_cluster, load, merge, parse_device_range, read_hccn_conf,
    write,
)
from .cli import add_commands
from .table import Device, RankTable, RankTableError, Server, SuperPod, devices_of, show, world_size
from .validation import MAX_DEVICES_PER_SERVER, VERSIONS, validate

__all__ = [
    "DEFAULT_HCCN_CONF", "MAX_DEVICES_PER_SERVER", "VERSIONS", "Device", "RankTable", "RankTableError",
    "Server", "ServerSpec", "SuperPod", "add_commands", "devices_of", "generate", "generate_cluster", "load",
    "merge", "parse_device_range", "read_hccn_conf", "show", "validate", "world_size", "write",
]
