"""`mftasks server stop` / `worker stop` stop only the process they started (issue 11, case 4).

A pid file records pid + start time (/proc/PID/stat field 22) + command line.  When the recorded process
is gone and its pid now belongs to some other process (here a real, unrelated `setsid sleep`), the stop
commands leave that process alone and say so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mftasks import pidfile, process

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bystander():
    """A real process in its own session that mftasks did not start."""
    proc = subprocess.Popen(["setsid", "sleep", "300"], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/cmdline").read_bytes() != b"sleep\x00300\x00" and time.monotonic() < deadline:
        time.sleep(0.05)  # until setsid has exec'd sleep
    yield proc
    proc.kill()
    proc.wait()


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MFTASKS_PREFECT_HOME": str(home), "MFTASKS_PREFECT_PORT": "1"}  # no server needed
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120, stdin=subprocess.DEVNULL)


def _stale_record(pid: int) -> dict:
    """What mftasks wrote for a server that has since died, its pid now reused by someone else."""
    return {"pid": pid, "start_time": 12345, "cmdline": ["/venv/bin/python", "/venv/bin/prefect", "server", "start"]}


@pytest.mark.parametrize("form", ["record", "bare-pid"])
def test_server_stop_leaves_an_unrelated_process_alone(tmp_path, bystander, form):
    """`bare-pid` is the pid file of older versions: nothing proves who the pid is, so it is left alone too."""
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(json.dumps(_stale_record(bystander.pid)) if form == "record" else str(bystander.pid))
    r = _cli(tmp_path, "server", "stop")
    time.sleep(0.5)
    assert bystander.poll() is None and process.alive(bystander.pid), "an unrelated process was killed"
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"server not stopped: pid {bystander.pid} "), r.stdout
    assert "left it alone" in r.stdout and "sleep 300" in r.stdout, r.stdout


def test_worker_stop_leaves_an_unrelated_process_alone(tmp_path, bystander):
    (tmp_path / "worker-default.pid").write_text(json.dumps(_stale_record(bystander.pid)))
    r = _cli(tmp_path, "worker", "stop")
    time.sleep(0.5)
    assert bystander.poll() is None, "an unrelated process was killed"
    assert r.returncode == 0 and r.stdout.strip() == "stopped: none", r.stdout + r.stderr
    assert f"worker-default not stopped: pid {bystander.pid} is now another process (`sleep 300`" in r.stderr
    assert "left it alone and removed the stale pid file" in r.stderr
    assert not (tmp_path / "worker-default.pid").exists()


def test_stop_stops_the_process_it_recorded(tmp_path):
    """The same code path stops what it started: the record matches, the process group goes."""
    proc = subprocess.Popen(["setsid", "sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        pidfile.write(tmp_path / "worker-x.pid", proc.pid)
        record = json.loads((tmp_path / "worker-x.pid").read_text())
        assert record["pid"] == proc.pid and record["cmdline"] == ["sleep", "300"] and record["start_time"] > 0
        assert pidfile.stop(tmp_path / "worker-x.pid", grace=5) == pidfile.STOPPED
        assert proc.wait(timeout=10) is not None
    finally:
        proc.kill()
        proc.wait()
