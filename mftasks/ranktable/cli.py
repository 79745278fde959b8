"""Command line: `mftasks ranktable generate | validate | merge | show`."""
from __future__ import annotations

import argparse
from typing import Any

from .build import DEFAULT_HCCN_CONF, _read_json, check_output, generate, load, merge, parse_device_range, write
from .table import RankTable, RankTableError, show, world_size
from .validation import validate

__all__ = ["add_commands"]


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
    p.add_argument("--force", action="store_true",
                   help="replace an output file holding a different rank table (never anything else)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("validate", help="check rank table files; exit 1 if any has problems")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--dynamic-cluster", action="store_true",
                   help="also require what MindSpore's dynamic-cluster scheduler needs (pod_ip on every server)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("merge", help="merge per-host tables into one (like MindFormers' merge_hccl.py)")
    p.add_argument("files", nargs="+", metavar="FILE", help="tables in server order")
    p.add_argument("--output", required=True, metavar="FILE")
    p.add_argument("--force", action="store_true",
                   help="replace an output file holding a different rank table (never an input, never anything else)")
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
    conf = None if ips else args.hccn_conf
    check_output(args.output, [conf])  # before reading anything
    table = generate(args.server_ip, ids, device_ips=ips, hccn_conf=args.hccn_conf, pod_ip=args.pod_ip)
    _report_write(args.output, table, write(table, args.output, force=args.force, inputs=[conf]))
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
    check_output(args.output, args.files)  # before reading anything
    table = merge([load(f) for f in args.files])
    _report_write(args.output, table, write(table, args.output, force=args.force, inputs=args.files))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    print(show(load(args.file)))
    return 0
