"""Benchmark: how a real finetune-gpt2 deployment run recovers from six faults (recovery breakdown).

Run: .venv/bin/python bench/faults.py [--parallel] [--report FILE]
     .venv/bin/python bench/faults.py --from-report FILE      (only print the table of an earlier run)

Runs the fault tests (tests/faults/, a Prefect server + worker of their own, gpt2_tiny, 2 ranks) one flow
run at a time (--parallel: all four at once, as the test suite does), collects the timestamps each test
records, and prints a markdown table per fault:

  detect     fault -> the launcher (or Prefect) noticed it
  teardown   noticed -> every process of the failed gang gone
  restart    gone -> the retry's gang started (Prefect's retry delay, task start, run.yaml, spawn)
  first step started -> the retry's first metrics.jsonl line (MindSpore import, cluster init, compile,
             checkpoint restore, data skip)

Times come from the run folder (pids.json, metrics.jsonl, marker files), the server's API (states, the
launcher's verdict in the flow logs) and the test's own clock when it injected the fault; all on one host.
Anchor: MindFormers' run_distribute_*.sh never looks at a rank again, so survivors of a dead rank wait
for HCCL's default timeout of 1836 s before anything notices (msrun: ~45 s).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HCCL_DEFAULT_S = 1836
COLUMNS = ("detect", "teardown", "restart", "first_step", "total")


def run_tests(report: Path, parallel: bool) -> tuple[int, str, float]:
    env = dict(os.environ, MFTASKS_FAULTS_REPORT=str(report))
    if not parallel:
        env["MFTASKS_FAULTS_SERIAL"] = "1"
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/faults", "-m", "slow", "-q", "-p", "no:cacheprovider",
                        "-rxXfE"], cwd=REPO, env=env, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr, time.monotonic() - started


def table(rows: list[dict]) -> str:
    def cell(v):
        return "-" if v is None else f"{v:.2f}"

    out = ["| fault | stage | detected by | detect (s) | teardown (s) | restart (s) | first step (s) | total (s) |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['fault']} | {r['stage']} | {r['detected_by']} | "
                   + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |")
    out.append(f"| anchor: MindFormers shell launch, a rank dies | train | HCCL timeout | {HCCL_DEFAULT_S} | "
               "- | manual | - | - |")
    notes = [f"- {r['fault']}: {n}" for r in rows for n in r.get("notes", [])]
    return "\n".join(out + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parallel", action="store_true", help="all flow runs at once (the test suite's setting)")
    p.add_argument("--report", type=Path, help="keep the JSON report here")
    p.add_argument("--from-report", type=Path, help="print the table of an existing report; run nothing")
    args = p.parse_args(argv)
    if args.from_report:
        print(table(json.loads(args.from_report.read_text())))
        return 0
    report = args.report or Path(tempfile.mkdtemp(prefix="mftasks-faults-")) / "report.json"
    code, output, seconds = run_tests(report, args.parallel)
    summary = [line for line in output.splitlines() if line.strip()][-1:] or ["(no pytest output)"]
    print(f"tests/faults: {summary[0]} ({seconds:.0f} s wall, {'all' if args.parallel else 'one'} flow run(s) "
          f"at a time, {os.cpu_count()} cores)")
    if not report.is_file():
        print(output[-5000:])
        return code or 1
    print(table(json.loads(report.read_text())))
    print(f"\nreport: {report}")
    if code:
        print(output[-5000:])
    return code


if __name__ == "__main__":
    sys.exit(main())
