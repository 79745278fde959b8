"""Benchmark: build, validate and round-trip a large HCCL rank table.

Run: .venv/bin/python bench/ranktable.py [--servers 1024] [--devices 16] [--repeat 3]
Times, for a cluster of --servers hosts with --devices devices each (16,384 ranks by default):
`generate_cluster` (which validates what it built), `to_text` (the file's JSON), `json.loads` and
`RankTable.from_json` (which validates again), and checks the round trip gives the same table.
Prints the best of --repeat runs against the goal (< 1 s).
"""
from __future__ import annotations

import argparse
import json
import time

from mftasks.ranktable import RankTable, ServerSpec, generate_cluster, world_size

GOAL_S = 1.0


def cluster_spec(servers: int, devices: int) -> list[ServerSpec]:
    """Server k at 10.<k/256>.<k%256>.1; its device d at 192.<d>.<k/256>.<k%256> (all distinct)."""
    return [ServerSpec(server_id=f"10.{k // 256}.{k % 256}.1", device_ids=list(range(devices)),
                       device_ips=[f"192.{d}.{k // 256}.{k % 256}" for d in range(devices)])
            for k in range(servers)]


def run_once(spec: list[ServerSpec]) -> tuple[float, RankTable, int]:
    t = time.perf_counter()
    table = generate_cluster(spec)
    text = table.to_text()
    again = RankTable.from_json(json.loads(text))
    seconds = time.perf_counter() - t
    assert again == table, "round trip changed the table"
    return seconds, table, len(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=1024)
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    spec = cluster_spec(args.servers, args.devices)
    runs = [run_once(spec) for _ in range(args.repeat)]
    best, table, size = min(runs, key=lambda r: r[0])
    print(f"generate+validate+JSON round trip {args.servers}x{args.devices} ({world_size(table)} ranks, "
          f"{size / 1e6:.1f} MB): {best:.2f}s (goal < {GOAL_S:g} s; {best / GOAL_S:.2f} of the goal)")
    return 0 if best < GOAL_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
