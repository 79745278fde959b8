"""Proving processes gone: zombies count as gone; process groups stop, stubborn ones are killed."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from mftasks import process
from mftasks.stage import ensure_previous_gang_gone
from mftasks.files import atomic_write_json


def test_zombie_counts_as_gone_and_group_stops():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    assert process.alive(p.pid)
    assert process.stop_groups([p.pid], grace=2) == []
    assert not process.alive(p.pid)


def test_process_ignoring_sigterm_is_killed():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    t = time.monotonic()
    assert process.stop_groups([p.pid], grace=1) == []
    assert time.monotonic() - t < 3


def test_survivors_of_an_earlier_attempt_are_stopped_before_a_new_gang(tmp_path):
    marker = str(tmp_path / "run.yaml")
    p = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(30)", marker], start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        atomic_write_json(tmp_path / "pids.json", {"pids": [p.pid, other.pid], "marker": marker})
        assert ensure_previous_gang_gone(tmp_path / "pids.json") == [p.pid]
        assert not process.alive(p.pid)
        assert process.alive(other.pid)  # not ours (its command line lacks the marker): left alone
        assert not (tmp_path / "pids.json").exists()
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
