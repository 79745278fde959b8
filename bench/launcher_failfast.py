"""Benchmark: how fast the gang launcher stops everything when one rank dies or hangs.

Run: .venv/bin/python bench/launcher_failfast.py [--ranks 4] [--repeat 5] [--hang-timeout 2]
Prints:
  - fail-fast: N fake ranks (each with a grandchild in its process group) plus the scheduler; one
    rank is SIGKILLed; time until every one of those processes is gone (median and max of --repeat);
    goal <= 3 s; anchor: HCCL's default timeout of 1836 s, which is how long MindFormers' shell loop
    leaves the survivors hanging (msrun: ~45 s);
  - the same with ranks that ignore SIGTERM (the bound: stop_grace, then SIGKILL);
  - hang detection: a rank stops heartbeating; time from its last heartbeat to detection, against the
    configured hang timeout, and until the gang is gone (includes the stack-dump wait).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from mftasks.launcher import LaunchSpec, launch

RANKS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ranks"
PORT = [18200]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] not in (b"Z", b"X")


def next_port() -> int:
    PORT[0] += 1
    return PORT[0]


def failfast_once(work: Path, n: int, env: dict[str, str]) -> float:
    """Seconds from SIGKILL of one rank until every process of the gang (grandchildren too) is gone."""
    pids_dir = work / f"pids-{time.monotonic_ns()}"
    spec = LaunchSpec(["python", str(RANKS / "grandchild.py"), str(pids_dir)], n, log_dir=str(work / "log"),
                      master_port=next_port(), env=env, stop_grace=2.0)
    box = {}
    runner = threading.Thread(target=lambda: box.setdefault("result", launch(spec)))
    runner.start()
    deadline = time.monotonic() + 30
    while len(list(pids_dir.glob("*.json"))) < n + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # let every rank settle into its sleep
    procs = [json.loads(p.read_text()) for p in pids_dir.glob("*.json")]
    everyone = [p[k] for p in procs for k in ("pid", "child")]
    victim = json.loads((pids_dir / "rank_1.json").read_text())["pid"]
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while any(alive(pid) for pid in everyone):
        time.sleep(0.002)
    gone = time.monotonic() - t0
    runner.join()
    rc = box["result"].root_cause
    assert rc is not None and rc.rank == 1 and rc.signal == "SIGKILL", box["result"].summary()
    return gone


def hang_once(work: Path, n: int, hang_timeout: float) -> tuple[float, float]:
    """(detection latency after the stalled rank's last heartbeat, seconds until the gang is gone)."""
    hb = work / f"hb-{time.monotonic_ns()}"
    spec = LaunchSpec(["python", str(RANKS / "heartbeat.py"), str(hb), "100000", "0.05", "1", "5"], n,
                      log_dir=str(work / "log"), master_port=next_port(), heartbeat_dir=str(hb),
                      hang_timeout=hang_timeout)
    result = launch(spec)
    rc = result.root_cause
    assert rc is not None and rc.failure_class.value == "hang" and rc.rank == 1, result.summary()
    last_beat = json.loads((hb / "rank_1" / "heartbeat.json").read_text())["time"]
    detected = result.started_at + rc.elapsed
    return detected - last_beat, result.duration - rc.elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hang-timeout", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as tmp:
        run(Path(tmp), args)
    return 0


def run(work: Path, args: argparse.Namespace) -> None:
    n = args.ranks

    times = [failfast_once(work, n, {"FAKE_SCHED_SLEEP": "60"}) for _ in range(args.repeat)]
    print(f"fail-fast: all {n} ranks (+ grandchildren, scheduler) gone {statistics.median(times):.2f} s after "
          f"one was killed (median of {len(times)}, max {max(times):.2f} s; goal <= 3 s; "
          f"anchor: HCCL default 1836 s, msrun ~45 s)")

    stubborn = [failfast_once(work, n, {"FAKE_SCHED_SLEEP": "60", "FAKE_IGNORE_SIGTERM": "1"})
                for _ in range(max(1, args.repeat // 2))]
    print(f"fail-fast, ranks ignoring SIGTERM: gone {statistics.median(stubborn):.2f} s after one was killed "
          f"(stop_grace 2 s, then SIGKILL; goal <= 3 s)")

    hangs = [hang_once(work, n, args.hang_timeout) for _ in range(max(1, args.repeat // 2))]
    lat = statistics.median(h[0] for h in hangs)
    gone = statistics.median(h[1] for h in hangs)
    print(f"hang detection: hang_timeout {args.hang_timeout:g} s -> detected {lat:.2f} s after the stalled "
          f"rank's last heartbeat (median of {len(hangs)}); gang gone {gone:.2f} s after detection "
          f"(1 s stack-dump wait + stop)")


if __name__ == "__main__":
    sys.exit(main())
