"""LaunchResult.rank_rows: the per-rank table a stage returns and the Prefect layer shows."""
from mftasks.launcher import FailureClass, LaunchResult, RankFailure, RankOutcome


def _outcome(rank, pid, state, exitcode=None, signal=None, last_step=None):
    return RankOutcome(rank, pid, state, exitcode, signal, f"log/rank_{rank}/stdout.log", last_step)


def test_rank_rows_of_a_success_are_sorted_by_rank_with_no_failure_class():
    result = LaunchResult(ranks={1: _outcome(1, 202, "succeeded", 0, last_step=12),
                                 0: _outcome(0, 201, "succeeded", 0, last_step=12)}, root_cause=None)
    assert result.rank_rows(host="node-a") == [
        {"rank": 0, "host": "node-a", "pid": 201, "exit": "0", "last_step": 12, "log": "log/rank_0/stdout.log",
         "failure_class": "-"},
        {"rank": 1, "host": "node-a", "pid": 202, "exit": "0", "last_step": 12, "log": "log/rank_1/stdout.log",
         "failure_class": "-"},
    ]


def test_rank_rows_mark_the_root_cause_rank_only():
    cause = RankFailure(FailureClass.KILLED, rank=1, signal="SIGKILL", message="killed by SIGKILL", ranks=(1,))
    result = LaunchResult(ranks={0: _outcome(0, 301, "stopped", signal="SIGTERM", last_step=4),
                                 1: _outcome(1, 302, "failed", signal="SIGKILL")}, root_cause=cause)
    rows = result.rank_rows(host="h")
    assert [(r["rank"], r["exit"], r["last_step"], r["failure_class"]) for r in rows] == [
        (0, "SIGTERM", 4, "-"), (1, "SIGKILL", None, "killed")]


def test_rank_rows_of_a_gang_wide_verdict_name_no_rank():
    cause = RankFailure(FailureClass.TIMEOUT, rank=None, message="timed out", ranks=(0,))
    result = LaunchResult(ranks={0: _outcome(0, 5, "stopped", exitcode=None)}, root_cause=cause)
    assert result.rank_rows(host="h")[0]["exit"] == "-"
    assert result.rank_rows(host="h")[0]["failure_class"] == "-"


def test_rank_rows_default_to_this_host():
    import os

    result = LaunchResult(ranks={0: _outcome(0, 7, "succeeded", 0)}, root_cause=None)
    assert result.rank_rows()[0]["host"] == os.uname().nodename
