"""`mftasks launch`: the command-line face of `launch()`.

    mftasks launch --nproc-per-node 2 -- python train.py --config run.yaml
    mftasks launch --nproc-per-node 4 --mode rank-table --rank-table hccl_4p.json --device-range "[0,4)" \
        -- python run_mindformer.py --config ...
    mftasks launch --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=msrun_log --join=True \
        run_mindformer.py --config ...              (an msrun command line, `msrun` changed to `mftasks launch`)

msrun's spellings are accepted (MSRUN_FLAGS): --local_worker_num (= --nproc-per-node), --worker_num (the world
size: nnodes = worker_num / local_worker_num), --master_addr, --master_port, --node_rank, --log_dir,
--rank_table_file (exported as RANK_TABLE_FILE, as msrun does), --cluster_time_out S (exported as
MS_TOPO_TIMEOUT, as msrun does) and --join (mftasks launch always waits for its ranks: fail-fast needs it,
so --join False is named in a warning; the job's result is the same).  As msrun does, a program whose first
word ends in `.py` runs with Python (this interpreter); the `--` before the program is optional.

Prints a per-rank table and the root cause. Exit status: 0 success, 1 a rank failed for a reason a
retry will not fix (user error), 3 a retryable infrastructure failure (killed, oom, disk full, comm
timeout, hang, timeout, crash). A bad flag or failed preflight raises MftasksError (the mftasks CLI exits 2).
"""
from __future__ import annotations

import argparse
import sys

from .errors import LaunchSpecError
from .gang import launch
from .spec import MODES, LaunchSpec

EXIT_OK, EXIT_FAILED, EXIT_RETRYABLE = 0, 1, 3
MSRUN_FLAGS = ("--worker_num", "--local_worker_num", "--master_addr", "--master_port", "--node_rank", "--log_dir",
               "--join", "--cluster_time_out", "--rank_table_file")
"""msrun's own flags that `mftasks launch` takes as msrun means them (see the module docstring)."""


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "launch", help="start one process per rank, watch them, stop them all when one fails",
        description="Start one process per rank, watch them, stop them all when one fails. Everything after "
                    "-- is the program's argv (no shell).",
        epilog="exit status: 0 success, 1 a rank failed (user error: fix and rerun), 3 retryable failure "
               "(killed, oom, disk_full, comm_timeout, hang, timeout, crash). Each rank gets MFTASKS_ERROR_FILE; "
               "a program wrapped in mftasks.launcher.record.record reports its own failure there")
    p.add_argument("--nproc-per-node", "--local_worker_num", dest="nproc_per_node", type=int,
                   help="processes (ranks) on this node (required)")
    p.add_argument("--worker_num", type=int, metavar="N", help="msrun's world size: sets nnodes = N / nproc-per-node")
    p.add_argument("--mode", choices=MODES, default="dynamic-cluster",
                   help="dynamic-cluster (MindSpore scheduler + workers, like msrun; default) or rank-table")
    p.add_argument("--rank-table", "--rank_table_file", dest="rank_table", metavar="FILE",
                   help="HCCL rank table JSON (RANK_TABLE_FILE)")
    p.add_argument("--device-range", metavar="RANGE",
                   help='devices as the MindFormers scripts take them, "[0,4)"')
    p.add_argument("--nnodes", type=int)
    p.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int, default=0)
    p.add_argument("--master-addr", "--master_addr", dest="master_addr", default="127.0.0.1",
                   help="scheduler host (MS_SCHED_HOST)")
    p.add_argument("--master-port", "--master_port", dest="master_port", type=int, default=8118,
                   help="scheduler port (MS_SCHED_PORT)")
    p.add_argument("--log-dir", "--log_dir", dest="log_dir", default="output/log",
                   help="LOG_DIR[/attempt_K]/rank_N/mindformer.log, plus msrun's LOG_DIR/worker_N.log and scheduler.log")
    p.add_argument("--join", choices=("True", "False"),
                   help="msrun's flag; mftasks launch always waits for its ranks (False is named in a warning)")
    p.add_argument("--cluster_time_out", type=int, metavar="S",
                   help="msrun's cluster-building timeout, exported as MS_TOPO_TIMEOUT")
    p.add_argument("--heartbeat-dir", metavar="DIR",
                   help="folder of rank_N/heartbeat.json (enables hang detection)")
    p.add_argument("--progress-pattern", metavar="REGEX",
                   help="for a program without heartbeats: log lines matching REGEX are its progress (enables "
                        "hang detection; a `step` group names the step), e.g. MindFormers' loss line")
    p.add_argument("--hang-timeout", type=float, metavar="S", help="seconds without heartbeat progress = hang")
    p.add_argument("--hang-floor", type=float, default=60.0, metavar="S",
                   help="lower bound of the derived hang timeout")
    p.add_argument("--startup-timeout", type=float, default=600.0, metavar="S", help="seconds to the first heartbeat")
    p.add_argument("--timeout", type=float, metavar="S", help="stop the gang after this many seconds")
    p.add_argument("--attempt", type=int, default=0, help="retry number (> 0: logs under LOG_DIR/attempt_K)")
    p.add_argument("--layout", metavar="DP,MP,PP",
                   help="check world size = data_parallel x model_parallel x pipeline_stage")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment (repeat)")
    p.add_argument("--follow", action="store_true", help="also print every rank's output, prefixed with its rank")
    p.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    p.set_defaults(func=run_command)


def spec_from_args(args: argparse.Namespace) -> LaunchSpec:
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if program and program[0].endswith(".py"):  # msrun's rule: a script runs with Python
        program = [sys.executable, *program]
    problems = []
    if not program:
        problems.append("no program given; put it after --, e.g. mftasks launch --nproc-per-node 2 -- python train.py")
    if args.nproc_per_node is None:
        problems.append("--nproc-per-node (msrun: --local_worker_num) is required: the ranks to start on this node")
    nnodes = args.nnodes
    if args.worker_num is not None and args.nproc_per_node:
        if args.worker_num % args.nproc_per_node:
            problems.append(f"--worker_num {args.worker_num} is not a multiple of --local_worker_num "
                            f"{args.nproc_per_node}: every node runs the same number of ranks here")
        elif nnodes is not None and nnodes != args.worker_num // args.nproc_per_node:
            problems.append(f"--nnodes {nnodes} disagrees with --worker_num {args.worker_num} / --local_worker_num "
                            f"{args.nproc_per_node}; give one of them")
        else:
            nnodes = args.worker_num // args.nproc_per_node
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"--env {item!r} must be KEY=VALUE")
        env[key] = value
    if args.cluster_time_out is not None:
        if "MS_TOPO_TIMEOUT" in env:
            problems.append("--cluster_time_out and --env MS_TOPO_TIMEOUT=... both set the cluster-building "
                            "timeout; give one")
        env["MS_TOPO_TIMEOUT"] = str(args.cluster_time_out)
    layout = None
    if args.layout:
        try:
            layout = tuple(int(v) for v in args.layout.split(","))
        except ValueError:
            problems.append(f"--layout {args.layout!r} must be three integers DP,MP,PP, e.g. 2,1,1")
    if problems:
        raise LaunchSpecError(problems, where="mftasks launch")
    return LaunchSpec(program=program, nproc_per_node=args.nproc_per_node, mode=args.mode, nnodes=nnodes or 1,
                      node_rank=args.node_rank, master_addr=args.master_addr, master_port=args.master_port,
                      rank_table=args.rank_table, device_range=args.device_range, log_dir=args.log_dir,
                      heartbeat_dir=args.heartbeat_dir, progress_pattern=args.progress_pattern,
                      hang_timeout=args.hang_timeout, hang_floor=args.hang_floor,
                      startup_timeout=args.startup_timeout, timeout=args.timeout, env=env, attempt=args.attempt,
                      layout=layout)


def run_command(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.join == "False":
        print("warning: --join False: mftasks launch always waits for its ranks and stops them all when one fails "
              "(the job's result is the same as msrun's)", file=sys.stderr, flush=True)
    where = f"{spec.master_addr}:{spec.master_port}" if spec.mode == "dynamic-cluster" else spec.rank_table
    print(f"launching {spec.nproc_per_node} rank(s) on node {spec.node_rank} of {spec.nnodes} (world size "
          f"{spec.world_size}, mode {spec.mode}, {where}); logs in {spec.attempt_dir}/rank_N/mindformer.log",
          flush=True)

    def follow(rank, line):
        print(f"[{'sched' if rank is None else f'rank {rank}'}] {line}", flush=True)

    result = launch(spec, on_line=follow if args.follow else None)
    print(result.summary(), flush=True)
    if result.ok:
        return EXIT_OK
    return EXIT_RETRYABLE if result.retryable else EXIT_FAILED
