"""The gang launcher, with fake rank scripts (tests/fixtures/ranks/) standing in for training ranks."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mftasks.errors import ConfigError, MftasksError
from mftasks.launcher import (FailureClass, LaunchResult, LaunchSpec, LaunchSpecError, PreflightError,
                              add_commands, classify, launch, parse_device_range)
from mftasks.launcher.env import rank_vars, scheduler_vars
from mftasks.launcher.gang import Gang
from mftasks.process import alive

from conftest import free_port

RANKS = Path(__file__).parent / "fixtures" / "ranks"
OWNED = {"MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID", "RANK_ID", "RANK_SIZE",
         "LOCAL_RANK", "DEVICE_ID", "RANK_TABLE_FILE"}


def prog(script: str, *args) -> list[str]:
    return ["python", str(RANKS / script), *map(str, args)]


def spec(tmp_path, program, n=2, **kw) -> LaunchSpec:
    kw.setdefault("log_dir", str(tmp_path / "log"))
    kw.setdefault("master_port", free_port())
    kw.setdefault("stop_grace", 1.0)
    return LaunchSpec(program=program, nproc_per_node=n, **kw)


def write_table(path: Path, servers: list[list[int]]) -> Path:
    """A valid HCCL rank table (version 1.0, every value a string)."""
    rank, server_list = 0, []
    for s, devices in enumerate(servers):
        devs = []
        for d in devices:
            devs.append({"device_id": str(d), "device_ip": f"192.{d + 1}.{s + 10}.6", "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": f"10.0.0.{s + 1}", "device": devs, "host_nic_ip": "reserve"})
    path.write_text(json.dumps({"version": "1.0", "server_count": str(len(servers)), "server_list": server_list,
                                "status": "completed"}, indent=4))
    return path


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def read_json_files(folder: Path, n: int) -> dict[str, dict]:
    def ready():
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        return files if len(files) >= n else None
    return {p.stem: json.loads(p.read_text()) for p in wait_for(ready)}


# -- spec, device ranges, environment -----------------------------------------------------------------

def test_spec_collects_every_problem_at_once():
    with pytest.raises(LaunchSpecError) as err:
        LaunchSpec(program="python train.py", nproc_per_node=0, mode="mpirun", nnodes=1, node_rank=1,
                   device_range="0-4", env={"RANK_ID": "3"}, hang_timeout=5)
    text = str(err.value)
    for part in ("argv list", "nproc_per_node=0", "mode='mpirun'", "node_rank=1 must be < nnodes=1",
                 "device_range '0-4'", "env sets RANK_ID", "hang_timeout is set but heartbeat_dir"):
        assert part in text, part
    assert isinstance(err.value, ConfigError) and len(err.value.problems) == 7


def test_world_size_must_match_layout():
    LaunchSpec(["python", "x.py"], 4, layout=(2, 2, 1))
    with pytest.raises(LaunchSpecError, match=r"world size 4 .* != data_parallel 2 x model_parallel 1 x "
                                              r"pipeline_stage 1 = 2"):
        LaunchSpec(["python", "x.py"], 4, layout=(2, 1, 1))


def test_device_ranges_and_numbering():
    assert parse_device_range("[0,4)") == parse_device_range("[0,4]") == parse_device_range(" 0, 4 ") == (0, 4)
    for bad in ("[4,2)", "0-4", "[a,b)", "[1,1)"):
        with pytest.raises(ValueError):
            parse_device_range(bad)
    with pytest.raises(LaunchSpecError, match=r"holds 3 devices but nproc_per_node=2"):
        LaunchSpec(["p"], 2, device_range="[0,3)")
    # run_distribute_single_node.sh: DEVICE_ID=i, RANK_ID=i-start
    single = LaunchSpec(["p"], 2, mode="rank-table", rank_table="t.json", device_range="[4,6)")
    assert [(lr.rank, lr.device_id) for lr in single.local_ranks()] == [(0, 4), (1, 5)]
    # run_distribute_multi_node.sh: the range is in global ranks; RANK_ID=i, DEVICE_ID=i-start
    multi = LaunchSpec(["p"], 2, mode="rank-table", rank_table="t.json", nnodes=2, node_rank=1, device_range="[2,4)")
    assert [(lr.rank, lr.device_id) for lr in multi.local_ranks()] == [(2, 0), (3, 1)]
    assert [(lr.rank, lr.device_id) for lr in multi.replace(device_range=None).local_ranks()] == [(2, 0), (3, 1)]
    dyn = LaunchSpec(["p"], 2, nnodes=2, node_rank=1)
    assert [(lr.rank, lr.local_rank, lr.device_id) for lr in dyn.local_ranks()] == [(2, 0, 0), (3, 1, 1)]
    assert not dyn.runs_scheduler and LaunchSpec(["p"], 2).runs_scheduler


def test_env_vars_per_mode():
    dyn = LaunchSpec(["p"], 2, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=9000)
    assert rank_vars(dyn, dyn.local_ranks()[1]) == {
        "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "10.0.0.1", "MS_SCHED_PORT": "9000", "MS_WORKER_NUM": "4",
        "MS_NODE_ID": "3", "RANK_ID": "3", "RANK_SIZE": "4", "LOCAL_RANK": "1", "DEVICE_ID": "1"}
    assert scheduler_vars(LaunchSpec(["p"], 2)) == {"MS_ROLE": "MS_SCHED", "MS_SCHED_HOST": "127.0.0.1",
                                                    "MS_SCHED_PORT": "8118", "MS_WORKER_NUM": "2",
                                                    "RANK_ID": "0", "RANK_SIZE": "2"}
    rt = LaunchSpec(["p"], 2, mode="rank-table", rank_table="/t/hccl.json", device_range="[2,4)")
    assert rank_vars(rt, rt.local_ranks()[1]) == {"RANK_TABLE_FILE": "/t/hccl.json", "RANK_SIZE": "2",
                                                  "DEVICE_ID": "3", "RANK_ID": "1"}


def test_classify():
    # without an error record: from how the process ended
    assert classify(-9, ["step 3"]) is FailureClass.KILLED
    assert classify(-9, ["Out of memory: killed process"]) is FailureClass.OOM
    assert classify(1, ["Traceback (most recent call last):", "MemoryError"]) is FailureClass.OOM
    assert classify(2, ["usage: train.py [-h]"]) is FailureClass.USER_ERROR
    assert classify(1, ["mftasks.errors.DataError: shard 3 is corrupt"]) is FailureClass.USER_ERROR
    assert classify(1, ["Traceback (most recent call last):", '  File "train.py", line 3, in <module>',
                        "ValueError: lr must be > 0"]) is FailureClass.USER_ERROR  # was crash, retried twice
    assert classify(1, ["RuntimeError: HCCL allreduce timed out after 1836 s"]) is FailureClass.COMM_TIMEOUT
    assert classify(1, ["OSError: [Errno 28] No space left on device: 'x.ckpt'"]) is FailureClass.DISK_FULL
    assert classify(1, ["[WARNING] Topology build timed out, retry(1/50)", "RuntimeError: boom"]) \
        is FailureClass.USER_ERROR
    assert classify(1, ["rank 1 exiting with 1"]) is FailureClass.CRASH  # no traceback: not an exception
    assert classify(1, ["/venv/bin/python: No module named mftasks.__main__; 'mftasks' is a package and cannot "
                        "be directly executed"]) is FailureClass.USER_ERROR
    assert classify(139, []) is FailureClass.CRASH
    # with one: the rank's own verdict (a signal still wins: the record cannot tell that story)
    user = {"exception_type": "builtins.ValueError", "message": "x", "retryable": False, "kind": "user"}
    marked = {**user, "retryable": True, "kind": "marked"}
    assert classify(2, [], user) is FailureClass.USER_ERROR
    assert classify(1, ["RuntimeError: HCCL allreduce timed out"], user) is FailureClass.USER_ERROR
    assert classify(2, ["usage: x"], marked) is FailureClass.CRASH
    assert classify(1, [], {**marked, "kind": "disk_full"}) is FailureClass.DISK_FULL
    assert classify(-9, [], user) is FailureClass.KILLED
    assert not FailureClass.USER_ERROR.retryable and all(
        fc.retryable for fc in FailureClass if fc is not FailureClass.USER_ERROR)


def test_derived_hang_timeout(tmp_path):
    gang = Gang(spec(tmp_path, ["p"], heartbeat_dir=str(tmp_path), hang_floor=5.0, hang_factor=10.0))
    assert gang.hang_limit() == 5.0  # nothing observed yet: the floor
    from mftasks.launcher.state import RankState
    gang.workers = [RankState(0, 0, ("p",), {}, "x", intervals=[2.0, 0.4, 0.5]),
                    RankState(1, 1, ("p",), {}, "y", intervals=[0.6])]
    assert gang.hang_limit() == pytest.approx(10.0 * 0.55)
    assert Gang(spec(tmp_path, ["p"], heartbeat_dir=str(tmp_path), hang_timeout=3.0)).hang_limit() == 3.0


# -- preflight ----------------------------------------------------------------------------------------

def test_preflight_lists_every_problem(tmp_path):
    table = write_table(tmp_path / "hccl.json", [[0, 1]])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = spec(tmp_path, ["no-such-program-for-mftasks", "x"], rank_table=str(table), device_range="[1,3)",
                 master_port=port)
        with pytest.raises(PreflightError) as err:
            launch(s)
    text = str(err.value)
    assert "'no-such-program-for-mftasks' was not found on PATH" in text
    assert f"master_port {port} is in use" in text
    assert "do not cover DEVICE_ID [2]" in text
    assert len(err.value.problems) == 3 and isinstance(err.value, MftasksError)
    assert not (tmp_path / "log").exists()  # nothing started, not even an empty log folder


def test_preflight_missing_script_world_size_and_unwritable_log(tmp_path):
    table = write_table(tmp_path / "hccl.json", [[0, 1, 2, 3]])
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        s = spec(tmp_path, prog("missing.py"), mode="rank-table", rank_table=str(table), log_dir=str(ro / "log"))
        with pytest.raises(PreflightError) as err:
            launch(s)
    finally:
        ro.chmod(0o700)
    text = str(err.value)
    assert "missing.py' (argv[1] of program) does not exist" in text
    assert "lists 4 devices on 1 server(s), but the world size is 2" in text
    if os.geteuid() != 0:
        assert "is not writable" in text


# -- running gangs ------------------------------------------------------------------------------------

def test_success_dynamic_cluster_env_and_on_line(tmp_path):
    lines = []
    out = tmp_path / "env"
    s = spec(tmp_path, prog("env_dump.py", out), env={"MY_FLAG": "1"})
    result = launch(s, on_line=lambda rank, line: lines.append((rank, line)))
    assert result.ok and not result.retryable and result.root_cause is None
    assert sorted(result.ranks) == [0, 1]
    assert all(o.exitcode == 0 and o.state == "succeeded" for o in result.ranks.values())
    assert result.scheduler is not None and result.scheduler.exitcode == 0
    envs = read_json_files(out, 3)
    bindir = os.path.dirname(sys.executable)
    for r in (0, 1):
        e = envs[f"rank_{r}"]
        assert {k: e[k] for k in OWNED if k in e} == {
            "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": str(s.master_port),
            "MS_WORKER_NUM": "2", "MS_NODE_ID": str(r), "RANK_ID": str(r), "RANK_SIZE": "2",
            "LOCAL_RANK": str(r), "DEVICE_ID": str(r)}
        assert e["PATH"].split(os.pathsep)[0] == bindir and e["MY_FLAG"] == "1"
    assert envs["scheduler"]["MS_ROLE"] == "MS_SCHED" and "MS_NODE_ID" not in envs["scheduler"]
    # logs at MindFormers' paths; stderr goes there too; on_line got every line with its rank
    log0 = (tmp_path / "log" / "rank_0" / "mindformer.log").read_text()
    assert "hello 2 from rank_0" in log0 and "to stderr" in log0
    assert (tmp_path / "log" / "scheduler.log").read_text().startswith("hello 0 from scheduler")
    assert (0, "hello 1 from rank_0") in lines and (1, "hello 2 from rank_1") in lines
    assert (None, "hello 0 from scheduler") in lines and (1, "to stderr") in lines
    assert not [ln for r, ln in lines if r == 0 and "rank_1" in ln]


def test_success_rank_table_env(tmp_path):
    table = write_table(tmp_path / "hccl.json", [[2, 3]])
    out = tmp_path / "env"
    result = launch(spec(tmp_path, prog("env_dump.py", out), mode="rank-table", rank_table=str(table),
                         device_range="[2,4)"))
    assert result.ok and result.scheduler is None
    envs = read_json_files(out, 2)
    assert set(envs) == {"rank_0", "rank_1"}
    for r in (0, 1):
        assert {k: envs[f"rank_{r}"][k] for k in OWNED if k in envs[f"rank_{r}"]} == {
            "RANK_TABLE_FILE": str(table), "RANK_SIZE": "2", "DEVICE_ID": str(2 + r), "RANK_ID": str(r)}


def test_rank_table_multi_node_numbering(tmp_path):
    table = write_table(tmp_path / "hccl.json", [[0, 1], [0, 1]])
    out = tmp_path / "env"
    result = launch(spec(tmp_path, prog("env_dump.py", out), mode="rank-table", rank_table=str(table), nnodes=2,
                         node_rank=1, device_range="[2,4)"))
    assert result.ok and sorted(result.ranks) == [2, 3]
    envs = read_json_files(out, 2)
    assert [(envs[f"rank_{r}"]["RANK_ID"], envs[f"rank_{r}"]["DEVICE_ID"], envs[f"rank_{r}"]["RANK_SIZE"])
            for r in (2, 3)] == [("2", "0", "4"), ("3", "1", "4")]
    assert (tmp_path / "log" / "rank_3" / "mindformer.log").exists()


def test_rank_exits_at_start_stops_the_others(tmp_path):
    t0 = time.monotonic()
    result = launch(spec(tmp_path, prog("exit_code.py", 1, 1), n=3))
    assert time.monotonic() - t0 < 3.0
    assert not result.ok
    rc = result.root_cause
    assert (rc.rank, rc.exitcode, rc.signal, rc.failure_class) == (1, 1, None, FailureClass.CRASH)
    assert result.retryable and "rank 1 exiting with 1" in rc.error_lines
    assert result.ranks[1].state == "failed"
    assert {result.ranks[r].state for r in (0, 2)} == {"stopped"}
    assert {result.ranks[r].signal for r in (0, 2)} == {"SIGTERM"}


def test_scheduler_failure_is_the_root_cause(tmp_path):
    result = launch(spec(tmp_path, prog("sleep.py"), env={"FAKE_SCHED_SLEEP": "0.3", "FAKE_SCHED_EXIT": "1"}))
    rc = result.root_cause
    assert (rc.role, rc.rank, rc.exitcode) == ("scheduler", None, 1)
    assert rc.describe().startswith("scheduler exited with code 1")
    assert {o.state for o in result.ranks.values()} == {"stopped"}


@pytest.mark.parametrize("kind, fc, retry, text", [
    ("module", FailureClass.USER_ERROR, False, "ModuleNotFoundError: No module named"),
    ("config", FailureClass.USER_ERROR, False, "ConfigError: invalid configuration in run.yaml"),
    ("runtime", FailureClass.USER_ERROR, False, "RuntimeError: something broke in a kernel"),
    ("hccl", FailureClass.COMM_TIMEOUT, True, "RuntimeError: [ERROR] HCCL"),
    ("oom", FailureClass.OOM, True, None),
])
def test_failure_classes(tmp_path, kind, fc, retry, text):
    result = launch(spec(tmp_path, prog("raise_error.py", kind, 0)))
    rc = result.root_cause
    assert (rc.rank, rc.failure_class, result.retryable) == (0, fc, retry)
    if text:
        assert rc.exception.startswith(text) and text in result.summary()
    else:
        assert rc.signal == "SIGKILL"


def test_usage_exit_code_2_is_user_error(tmp_path):
    result = launch(spec(tmp_path, prog("exit_code.py", 2, 0), mode="rank-table",
                         rank_table=str(write_table(tmp_path / "t.json", [[0, 1]]))))
    assert result.failure_class is FailureClass.USER_ERROR and not result.retryable


def test_sigkilled_rank_takes_down_every_process_and_grandchild(tmp_path):
    pids = tmp_path / "pids"
    s = spec(tmp_path, prog("grandchild.py", pids), env={"FAKE_SCHED_SLEEP": "60"}, stop_grace=2.0)
    # the fake scheduler sleeps, so it must be stopped too; it runs grandchild.py as well
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(launch, s)
        procs = read_json_files(pids, 3)
        everyone = [p[k] for p in procs.values() for k in ("pid", "child")]
        assert all(alive(pid) for pid in everyone)
        killed_at = time.monotonic()
        os.kill(procs["rank_1"]["pid"], signal.SIGKILL)
        result: LaunchResult = future.result(timeout=10)
    gone_after = time.monotonic() - killed_at
    assert gone_after < 3.0, gone_after
    assert not [pid for pid in everyone if alive(pid)]
    rc = result.root_cause
    assert (rc.rank, rc.signal, rc.failure_class, result.retryable) == (1, "SIGKILL", FailureClass.KILLED, True)
    assert result.ranks[0].state == "stopped" and result.scheduler.state == "stopped"


def test_hang_detected_from_heartbeats_with_stack_dump(tmp_path):
    hb = tmp_path / "out" / "log"
    s = spec(tmp_path, prog("heartbeat.py", hb, 400, 0.05, 1, 3), heartbeat_dir=str(hb), hang_timeout=1.0,
             stack_dump_wait=0.5)
    t0 = time.monotonic()
    result = launch(s)
    assert time.monotonic() - t0 < 8
    rc = result.root_cause
    assert (rc.failure_class, rc.rank, result.stalled_ranks) == (FailureClass.HANG, 1, (1,))
    assert result.retryable and "no heartbeat progress" in rc.message
    assert result.ranks[1].last_step == 3 and result.ranks[0].last_step > 3
    log1 = (tmp_path / "log" / "rank_1" / "mindformer.log").read_text()
    assert "hang detected" in log1 and "stuck_in_collective" in log1  # faulthandler's dump of the stack
    assert "most recent call first" in (tmp_path / "log" / "rank_0" / "mindformer.log").read_text()


def test_hang_detected_from_the_log_lines_of_a_program_without_heartbeat(tmp_path):
    """A MindFormers job writes no heartbeat: its own loss lines are its progress."""
    from mftasks.mfjob.progress import LOSS_LINE

    s = spec(tmp_path, prog("heartbeat.py", "-", 400, 0.05, 1, 3), progress_pattern=LOSS_LINE.pattern,
             hang_timeout=1.0, stack_dump_wait=0.5)
    result = launch(s)
    rc = result.root_cause
    assert (rc.failure_class, rc.rank, result.stalled_ranks) == (FailureClass.HANG, 1, (1,)), result.summary()
    assert "printed no new progress line for" in rc.message and "last step 3" in rc.message
    assert result.ranks[1].last_step == 3 and result.ranks[0].last_step > 3
    assert "stuck_in_collective" in (tmp_path / "log" / "rank_1" / "mindformer.log").read_text()
    with pytest.raises(LaunchSpecError) as err:
        spec(tmp_path, prog("sleep.py"), progress_pattern="step:[(", heartbeat_dir=str(tmp_path))
    assert "progress_pattern and heartbeat_dir are both set" in str(err.value)
    assert "progress_pattern='step:[(': not a regular expression" in str(err.value)


def test_hang_of_a_stopped_process(tmp_path):
    hb = tmp_path / "hb"
    s = spec(tmp_path, prog("heartbeat.py", hb, 400, 0.05), heartbeat_dir=str(hb), hang_timeout=0.8,
             stack_dump_wait=0.3)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(launch, s)
        wait_for(lambda: (hb / "rank_0" / "heartbeat.json").exists())
        pid = json.loads((hb / "rank_0" / "heartbeat.json").read_text())["pid"]
        os.kill(pid, signal.SIGSTOP)
        result = future.result(timeout=10)
    assert result.failure_class is FailureClass.HANG and result.stalled_ranks == (0,)
    assert not alive(pid) and not alive(result.ranks[1].pid)


def test_startup_timeout_ignores_stale_heartbeats(tmp_path):
    hb = tmp_path / "hb"
    (hb / "rank_0").mkdir(parents=True)
    (hb / "rank_0" / "heartbeat.json").write_text(json.dumps({"step": 9, "time": time.time() - 3600, "pid": 1}))
    result = launch(spec(tmp_path, prog("sleep.py"), heartbeat_dir=str(hb), startup_timeout=0.5,
                         stack_dump_wait=0.2))
    rc = result.root_cause
    assert rc.failure_class is FailureClass.HANG and "startup timeout of 0.5 s" in rc.message
    assert result.stalled_ranks == (0, 1) and result.ranks[0].last_step is None


def test_overall_timeout_stops_the_ranks(tmp_path):
    t0 = time.monotonic()
    result = launch(spec(tmp_path, prog("sleep.py"), timeout=0.8, stack_dump_wait=0.2))
    assert 0.8 <= time.monotonic() - t0 < 3.0
    rc = result.root_cause
    assert rc.failure_class is FailureClass.TIMEOUT and rc.rank is None and rc.ranks == (0, 1)
    assert result.retryable and not any(alive(o.pid) for o in result.ranks.values())
    assert "launch timeout of 0.8 s reached" in (tmp_path / "log" / "rank_0" / "mindformer.log").read_text()


def test_launcher_sigterm_stops_the_gang(tmp_path):
    s = spec(tmp_path, prog("sleep.py"))
    before = signal.getsignal(signal.SIGTERM)
    log1 = tmp_path / "log" / "rank_1" / "mindformer.log"

    def terminate_when_ready():
        wait_for(lambda: log1.exists() and "ready" in log1.read_text())
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's handler is installed before any rank starts
    threading.Thread(target=terminate_when_ready, daemon=True).start()
    result = launch(s)
    assert result.failure_class is FailureClass.KILLED and "received SIGTERM" in result.root_cause.message
    assert signal.getsignal(signal.SIGTERM) == before  # the launcher's handler is removed again
    assert not any(alive(o.pid) for o in result.ranks.values())


def test_sigkilled_launcher_is_followed_by_its_gang_within_the_stop_grace(tmp_path):
    """Fault: the launcher itself (e.g. the flow-run process) dies by SIGKILL and cannot stop its ranks,
    which run in their own sessions; its guard sees the pipe close and stops every group, grandchildren too."""
    import subprocess
    pids = tmp_path / "pids"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "mftasks.cli", "launch", "--nproc-per-node", "2", "--log-dir", str(tmp_path / "log"),
         "--master-port", str(free_port()), "--", *prog("grandchild.py", pids)],
        env=dict(os.environ, FAKE_SCHED_SLEEP="60"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        procs = read_json_files(pids, 3)
        everyone = [p[k] for p in procs.values() for k in ("pid", "child")]
        assert all(alive(pid) for pid in everyone)
        launcher.kill()
        launcher.wait()
        killed_at = time.monotonic()
        wait_for(lambda: not [pid for pid in everyone if alive(pid)], timeout=5.0)
        assert time.monotonic() - killed_at < 3.0
    finally:
        launcher.kill()
        for p in procs.values() if "procs" in locals() else []:
            for k in ("pid", "child"):
                try:
                    os.kill(p[k], signal.SIGKILL)
                except ProcessLookupError:
                    pass
    guard_log = (tmp_path / "log" / "guard.log").read_text()
    assert f"the launcher (pid {launcher.pid}) is gone without stopping its gang" in guard_log


def test_guard_leaves_a_finished_gang_alone(tmp_path):
    result = launch(spec(tmp_path, prog("exit_code.py", 0)))
    assert result.ok
    assert (tmp_path / "log" / "guard.log").read_text() == ""  # dismissed: it said and did nothing


def test_log_paths_per_attempt(tmp_path):
    first = launch(spec(tmp_path, prog("exit_code.py", 0)))
    second = launch(spec(tmp_path, prog("exit_code.py", 0), attempt=1))
    assert first.ranks[1].log_path == str(tmp_path / "log" / "rank_1" / "mindformer.log")
    assert second.ranks[1].log_path == str(tmp_path / "log" / "attempt_1" / "rank_1" / "mindformer.log")
    assert second.scheduler.log_path == str(tmp_path / "log" / "attempt_1" / "scheduler.log")
    assert "rank 1 exiting with 0" in Path(first.ranks[1].log_path).read_text()  # not overwritten
    assert Path(second.ranks[1].log_path).exists() and second.log_dir.endswith("attempt_1")


# -- command line -------------------------------------------------------------------------------------

def run_cli(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_commands(sub)
    args = p.parse_args(argv)
    return args.func(args)


def test_cli_exit_codes(tmp_path, capsys):
    common = ["launch", "--nproc-per-node", "2", "--log-dir", str(tmp_path / "log"), "--master-port"]
    assert run_cli(common + [str(free_port()), "--", *prog("exit_code.py", 0)]) == 0
    out = capsys.readouterr().out
    assert "ok: 2 ranks succeeded" in out and "rank_1/mindformer.log" in out
    assert run_cli(common + [str(free_port()), "--", *prog("raise_error.py", "module", 1)]) == 1
    out = capsys.readouterr().out
    assert "root cause: rank 1 exited with code 1" in out and "user_error, not retryable" in out
    assert run_cli(common + [str(free_port()), "--timeout", "0.5", "--", *prog("sleep.py")]) == 3
    assert "[timeout, retryable]" in capsys.readouterr().out
    with pytest.raises(LaunchSpecError, match="no program given"):
        run_cli(common + [str(free_port())])


def test_an_msrun_command_line_runs_with_msrun_flags_and_log_names(tmp_path, capsys):
    """`msrun` changed to `mftasks launch`: msrun's flags, a bare script run with Python, msrun's log names."""
    log, out = tmp_path / "msrun_log", tmp_path / "env"
    (log).mkdir()
    (log / "worker_1.log").write_text("msrun's own log\n")  # not ours: left alone
    argv = ["launch", "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", "--node_rank=0", f"--log_dir={log}", "--join=False",
            "--cluster_time_out=300", str(RANKS / "env_dump.py"), str(out)]
    assert run_cli(argv) == 0
    captured = capsys.readouterr()
    assert "warning: --join False: mftasks launch always waits for its ranks" in captured.err
    envs = read_json_files(out, 3)
    assert all(envs[name]["MS_TOPO_TIMEOUT"] == "300" for name in ("rank_0", "rank_1", "scheduler"))
    assert envs["rank_1"]["RANK_SIZE"] == "2"
    assert os.readlink(log / "worker_0.log") == os.path.join("rank_0", "mindformer.log")
    assert "hello 2 from rank_0" in (log / "worker_0.log").read_text()
    assert (log / "worker_1.log").read_text() == "msrun's own log\n"
    assert "worker_1.log exists and is not this launcher's link; left alone" in \
        (log / "rank_1" / "mindformer.log").read_text()
    assert (log / "scheduler.log").read_text().startswith("hello 0 from scheduler")


def test_msrun_flags_that_disagree_are_listed_together(tmp_path):
    with pytest.raises(LaunchSpecError) as err:
        run_cli(["launch", "--worker_num=3", "--local_worker_num=2", "--cluster_time_out=5",
                 "--env", "MS_TOPO_TIMEOUT=9", "train.py"])
    msg = str(err.value)
    assert "--worker_num 3 is not a multiple of --local_worker_num 2" in msg
    assert "--cluster_time_out and --env MS_TOPO_TIMEOUT=... both set the cluster-building timeout" in msg
    with pytest.raises(LaunchSpecError, match=r"--nproc-per-node \(msrun: --local_worker_num\) is required"):
        run_cli(["launch", "--worker_num=2", "train.py"])


# -- a real MindSpore dynamic cluster -----------------------------------------------------------------

@pytest.mark.slow
def test_real_dynamic_cluster_allreduce(tmp_path):
    """Scheduler + 2 CPU workers: init() joins the cluster and AllReduce sums to the world size."""
    lines = []
    result = launch(spec(tmp_path, prog("allreduce.py"), env={"GLOG_v": "3"}, timeout=240),
                    on_line=lambda rank, line: lines.append((rank, line)))
    assert result.ok, result.summary()
    assert result.scheduler.exitcode == 0
    for r in (0, 1):
        assert any(rank == r and line.startswith(f"allreduce rank {r} of 2: 2.0") for rank, line in lines), lines


@pytest.mark.slow
def test_real_dynamic_cluster_rank_failure_stops_the_rest(tmp_path):
    """One real worker dies after init(); the survivor (blocked in AllReduce) and the scheduler are
    stopped by the launcher within seconds instead of MindSpore's own ~28-45 s."""
    result = launch(spec(tmp_path, prog("allreduce.py"), env={"GLOG_v": "3", "FAIL_RANK": "1"}, timeout=240,
                         stop_grace=2.0))
    rc = result.root_cause
    assert (rc.rank, rc.exitcode) == (1, 7), result.summary()
    assert result.ranks[0].state == "stopped" and result.scheduler.state in ("stopped", "succeeded")
    stopped_after = result.duration - rc.elapsed
    assert stopped_after < 3.0, stopped_after
    assert not any(alive(o.pid) for o in [*result.ranks.values(), result.scheduler])
