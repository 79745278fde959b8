"""A rank reports its own failure (launcher/record.py); the launcher classes a failed rank from that record.

Real child processes (tests/fixtures/ranks/record_error.py) fail in each way; nothing is mocked.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mftasks.errors import CheckpointError, ConfigError, DataError, DeviceError, DiskFullError, OutputExistsError
from mftasks.launcher import FailureClass, LaunchSpec, launch
from mftasks.launcher.record import ERROR_FILE_ENV, failure_record, read_record, record, verdict

from conftest import free_port

RANKS = Path(__file__).parent / "fixtures" / "ranks"


def run_gang(tmp_path, kind, who=1, n=2, **kw):
    s = LaunchSpec(program=["python", str(RANKS / "record_error.py"), kind, str(who)], nproc_per_node=n,
                   log_dir=str(tmp_path / "log"), master_port=free_port(), stop_grace=1.0, **kw)
    return launch(s)


# -- through the launcher, with real ranks ------------------------------------------------------------

def test_value_error_under_record_is_a_user_error_with_its_message(tmp_path):
    result = run_gang(tmp_path, "recorded")
    rc = result.root_cause
    assert (rc.rank, rc.exitcode, rc.failure_class, result.retryable) == (1, 1, FailureClass.USER_ERROR, False)
    assert rc.record_path == str(tmp_path / "log" / "rank_1" / "error.json")
    rec = json.loads(Path(rc.record_path).read_text())
    assert rec["exception_type"] == "builtins.ValueError" and rec["user_error"] and not rec["retryable"]
    assert rec["message"] == "bad learning rate -1 in rank 1's program" and "Traceback" in rec["traceback"]
    assert rec["pid"] == result.ranks[1].pid and rec["rank"] == "1"
    summary = result.summary()
    assert ("root cause: rank 1 exited with code 1 after" in summary
            and "[user_error, not retryable]: ValueError: bad learning rate -1 in rank 1's program" in summary)
    assert f"\nerror record {rc.record_path}\n" in summary
    assert not (tmp_path / "log" / "rank_0" / "error.json").exists()  # the stopped rank wrote none


def test_value_error_without_record_is_a_user_error(tmp_path):
    result = run_gang(tmp_path, "bare")
    rc = result.root_cause
    assert (rc.rank, rc.exitcode, rc.failure_class, result.retryable) == (1, 1, FailureClass.USER_ERROR, False)
    assert rc.record_path is None and rc.exception == "ValueError: bad learning rate -1 in rank 1's program"


@pytest.mark.parametrize("kind, text", [
    ("marked", "StorageBusy: the object store answered 503"),       # retryable = True on the class
    ("listed", "ConnectionResetError: peer reset the connection"),  # record(retryable=(ConnectionError,))
])
def test_error_the_program_marks_retryable_is_retryable(tmp_path, kind, text):
    result = run_gang(tmp_path, kind)
    rc = result.root_cause
    assert (rc.rank, rc.failure_class, result.retryable) == (1, FailureClass.CRASH, True)
    assert rc.record_path and rc.exception == text and f"[crash, retryable]: {text}" in result.summary()


def test_unmarked_connection_error_is_a_user_error(tmp_path):
    result = run_gang(tmp_path, "unmarked")
    assert result.failure_class is FailureClass.USER_ERROR and not result.retryable


def test_sigkilled_rank_is_a_retryable_crash(tmp_path):
    result = run_gang(tmp_path, "killed")
    rc = result.root_cause
    assert (rc.rank, rc.signal, rc.failure_class, result.retryable) == (1, "SIGKILL", FailureClass.KILLED, True)
    assert rc.record_path is None


def test_record_wins_over_the_exit_status(tmp_path):
    """`mftasks run` style: the record is written, the CLI catches the error and exits 2; the record's
    (multi-line) message is what the summary shows."""
    result = run_gang(tmp_path, "recorded-exit2", who=0)
    rc = result.root_cause
    assert (rc.rank, rc.exitcode, rc.failure_class, result.retryable) == (0, 2, FailureClass.USER_ERROR, False)
    assert rc.describe().endswith("ConfigError: invalid configuration in run.yaml (2 problems): (+2 more lines)")
    assert f"error record {rc.record_path} (the whole message):\n" in result.summary()
    assert "  |   - training.epochs=-1 must be >= 1" in result.summary()


def test_a_previous_launchs_record_is_not_read(tmp_path):
    stale = tmp_path / "log" / "rank_1" / "error.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps(failure_record(ValueError("old"))))
    result = run_gang(tmp_path, "killed")
    assert result.failure_class is FailureClass.KILLED and not stale.exists()


def test_error_file_env_is_per_rank_and_attempt(tmp_path):
    from mftasks.launcher.env import rank_env, scheduler_env
    s = LaunchSpec(["p"], 2, log_dir=str(tmp_path / "log"), attempt=2, env={})
    assert rank_env(s, s.local_ranks()[1], {})[ERROR_FILE_ENV] == str(tmp_path / "log/attempt_2/rank_1/error.json")
    assert scheduler_env(s, {})[ERROR_FILE_ENV] == str(tmp_path / "log/attempt_2/scheduler_error.json")
    with pytest.raises(Exception, match=f"env sets {ERROR_FILE_ENV}"):
        LaunchSpec(["p"], 2, env={ERROR_FILE_ENV: "/tmp/x"})


# -- record itself ------------------------------------------------------------------------------------

def _child(tmp_path, body: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    path = tmp_path / "error.json"
    code = "from mftasks.launcher.record import record\n" + body
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, ERROR_FILE_ENV: str(path)},
                          capture_output=True, text=True, timeout=60)
    return proc, read_record(str(path))


def test_record_as_context_manager_reraises_and_writes(tmp_path):
    proc, rec = _child(tmp_path, "with record():\n    raise KeyError('tokenizer.model')\n")
    assert proc.returncode == 1 and "KeyError: 'tokenizer.model'" in proc.stderr  # re-raised
    assert rec["exception_type"] == "builtins.KeyError" and rec["user_error"] and rec["kind"] == "user"
    assert not [p for p in tmp_path.iterdir() if p.name != "error.json"]  # no temporary file left


def test_record_writes_nothing_for_exit_or_success(tmp_path):
    proc, rec = _child(tmp_path, "import sys\n@record\ndef main():\n    sys.exit(3)\nmain()\n")
    assert proc.returncode == 3 and rec is None
    proc, rec = _child(tmp_path, "@record\ndef main():\n    return 0\nmain()\n")
    assert proc.returncode == 0 and rec is None


def test_record_without_env_var_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(ERROR_FILE_ENV, raising=False)
    with pytest.raises(ValueError):
        with record():
            raise ValueError("x")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_error_file_keeps_the_programs_exception(tmp_path, monkeypatch, capsys):
    target = tmp_path / "file"
    target.write_text("")
    monkeypatch.setenv(ERROR_FILE_ENV, str(target / "error.json"))  # its folder is a file
    with pytest.raises(ValueError, match="the real one"):
        with record():
            raise ValueError("the real one")
    assert "[mftasks record] could not write the error record" in capsys.readouterr().err


class _Marked(RuntimeError):
    retryable = True


class _Unmarked(MemoryError):
    retryable = False


def test_verdicts():
    assert verdict(ValueError("x")) == (False, "user")
    assert verdict(_Marked("x")) == (True, "marked")
    bad = RuntimeError("x")
    bad.retryable = True
    assert verdict(bad) == (True, "marked")
    assert verdict(_Unmarked()) == (False, "user")  # the exception's own word wins
    assert verdict(MemoryError()) == (True, "oom")
    assert verdict(OSError(errno.ENOSPC, "No space left on device")) == (True, "disk_full")
    assert verdict(OSError(errno.EACCES, "Permission denied")) == (False, "user")
    assert verdict(RuntimeError("HCCL allreduce timed out after 1836 s")) == (True, "comm_timeout")
    assert verdict(RuntimeError("Out of Memory!!! Request memory size: 2048M")) == (True, "oom")
    assert verdict(DiskFullError("not enough space to write checkpoint at /x: needs about 5.0 MB")) == \
        (True, "disk_full")
    for own in (ConfigError("bad", "run.yaml"), DataError("x"), CheckpointError("x"), OutputExistsError("x"),
                DeviceError("x")):
        assert verdict(own) == (False, "user"), own
    assert verdict(ConnectionResetError(), (ConnectionError,)) == (True, "marked")
    assert verdict(ValueError("try again"), (lambda e: "again" in str(e),)) == (True, "marked")
    assert verdict(ValueError("x"), (lambda e: 1 / 0,)) == (False, "user")  # a faulty predicate is ignored
    with pytest.raises(TypeError, match="exception classes or callables"):
        record(retryable=(int,))
    with pytest.raises(TypeError, match="exception classes or callables"):
        record(retryable=("ConnectionError",))


def test_read_record_ignores_what_is_not_a_record(tmp_path):
    p = tmp_path / "e.json"
    for text in ("", "not json", "[]", '{"message": "x"}', "[" * 100000):
        p.write_text(text)
        assert read_record(str(p)) is None, text
    assert read_record(str(tmp_path / "missing.json")) is None
