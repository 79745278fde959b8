"""Fault tests: one Prefect server + worker for the fault module, and the helpers that watch a real
finetune-gpt2 deployment run, inject a fault into it and time the recovery.

Everything is observed from outside, as an operator would: the run folder (pids.json, heartbeats,
metrics.jsonl, checkpoints, rank logs) and the server's API through Prefect's client (flows.stack: states,
task runs, logs, the launch task's verdict artifacts).  Faults come
from outside too (signals, a truncated file, a real full filesystem, a bad parameter): nothing is
injected through a run's environment, which the locked work-pool template does not let a run set
(docs/SECURITY.md, tests/test_security.py).

Set MFTASKS_FAULTS_REPORT=FILE to collect each test's recovery breakdown as JSON (bench/faults.py
does); MFTASKS_FAULTS_KEEP=1 keeps the work folder under build/ for a look afterwards.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import ArtifactFilterKey
from prefect.states import Scheduled

from flows import stack as st
from mftasks import checkpoint as ckpt
from mftasks.process import alive
from mftasks.progress import log_dir
from mftasks.report import read_metrics

from conftest import FlowRun, demo_work, free_port, running_stack

REPO = Path(__file__).resolve().parents[2]
NPROC = 2
# The run every fault test starts from: tiny, 2 ranks, a checkpoint every 4 steps, no dropout (so an
# interrupted and an uninterrupted run can be compared weight by weight), no predictions.
BASE_PARAMS = {"model_type": "gpt2_tiny", "vocab_size": 300, "nproc": NPROC, "train_steps": 16,
               "finetune_steps": 4, "batch_size": 4, "save_every": 4, "predict_count": 0, "dropout": 0.0}
RUN_TIMEOUT = 600.0
STARTED: list[str] = []
"""Ids of the flow runs the fault tests created (see kill_leftovers)."""


def free_master_port() -> int:
    """A free port below the ephemeral range (32768+ here), so that no outgoing connection of the ranks, the
    worker or the server can take it between now and the launches that bind it."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    """A fresh server (own PREFECT_HOME and port), one worker and the deployments, for all fault tests.

    The worker's node gets 12 device slots (2 per gang): four gangs run at once, and a flow-run process
    killed with SIGKILL (the flow-process fault, and the run the disk-full test aborts) cannot give back
    the 2 slots its launch holds; Prefect reclaims them only when the lease expires (60 s, see
    docs/RELIABILITY.md gap 3), and a retry must not wait for that here."""
    with running_stack(tmp_path_factory.mktemp("prefect-faults"), workers=[{"devices": 6 * NPROC}]) as stack:
        yield stack


@pytest.fixture(scope="module")
def fault_work():
    """Deployment parameters are project-relative paths: one work folder under build/ (git-ignored)
    shared by every fault run, so the datasets are prepared once and cached after."""
    with demo_work("faults", keep=bool(os.environ.get("MFTASKS_FAULTS_KEEP"))) as rel:
        yield rel


@pytest.fixture(scope="module")
def recovery_report():
    """Recovery breakdowns of the tests, written to $MFTASKS_FAULTS_REPORT (JSON) at the end."""
    rows: list[dict] = []
    yield rows
    path = os.environ.get("MFTASKS_FAULTS_REPORT")
    if path:
        Path(path).write_text(json.dumps(rows, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Run(FlowRun):
    """One flow run of finetune-gpt2 and the folder it writes."""

    work: Path
    """Project-relative work_dir of the run."""

    @classmethod
    def start(cls, stack: st.Stack, work: Path, start_in: float | None = None, **params) -> "Run":
        """Create a run of finetune-gpt2; with `start_in` (seconds), scheduled that far ahead, so that its
        folder can be prepared before its flow runs (Prefect holds it SCHEDULED/PENDING until then)."""
        params = {**BASE_PARAMS, "corpus_dir": str(work / "corpus"), "work_dir": str(work / "pipeline"),
                  "master_port": free_master_port(), **params}
        state = None if start_in is None else Scheduled(
            scheduled_time=datetime.now(timezone.utc) + timedelta(seconds=start_in))
        deployment = st.find_deployment(stack, "finetune-gpt2/finetune-gpt2")
        with stack.client() as c:
            run = c.create_flow_run_from_deployment(UUID(deployment["id"]), parameters=params, state=state)
        STARTED.append(str(run.id))
        return cls(stack, str(run.id), work / "pipeline")

    @property
    def dir(self) -> Path:
        return REPO / self.work / "runs" / self.id

    def out(self, stage: str) -> Path:
        """The Trainer's output folder of a training stage (train, lora)."""
        return self.dir / stage

    def stage(self, name: str) -> Path:
        return self.dir / "stages" / name

    # -- what the server says: FlowRun (tests/conftest.py)
    def verdicts(self) -> list[dict]:
        """The launcher's verdicts, oldest first, as the launch task publishes them: a table artifact
        `verdict-<stage>` of one row per failed attempt (stage, class, retryable, who, what, elapsed_s, attempt,
        message)."""
        return [row for a in self._artifacts(ArtifactFilterKey(like_="verdict-")) for row in a["data"]]

    def add_markdown_artifact(self, key: str, markdown: str, description: str) -> None:
        with self.stack.client() as c:
            c.create_artifact(ArtifactCreate(key=key, type="markdown", data=markdown, description=description,
                                             flow_run_id=UUID(self.id)))

    # -- what the folder says
    def pids(self, stage: str) -> dict | None:
        """stages/<stage>/pids.json once the whole gang (scheduler + ranks) has started."""
        try:
            rec = json.loads((self.stage(stage) / "pids.json").read_text())
        except (OSError, ValueError):
            return None
        return rec if len(rec.get("pids", [])) == NPROC + 1 else None

    def heartbeat(self, stage: str, rank: int) -> dict | None:
        try:
            return json.loads((log_dir(self.out(stage), rank) / "heartbeat.json").read_text())
        except (OSError, ValueError):
            return None

    def metrics(self, stage: str, rank: int = 0) -> list[dict]:
        """Rank `rank`'s metrics.jsonl rows, read as the report does (a line being written is skipped)."""
        return read_metrics(log_dir(self.out(stage), rank) / "metrics.jsonl")

    def checkpoint(self, stage: str, rank: int, step: int) -> ckpt.CheckpointInfo | None:
        """Rank `rank`'s committed checkpoint (its manifest written) of global step `step`, if any."""
        found = [i for i in ckpt.listing(ckpt.rank_dir(self.out(stage), rank)) if i.global_step == step]
        return found[-1] if found else None

    def rank_log(self, stage: str, rank: int, attempt: int = 0) -> str:
        folder = self.stage(stage) / "log"
        if attempt:
            folder = folder / f"attempt_{attempt}"
        try:
            return (folder / f"rank_{rank}" / "mindformer.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, what: str, fn, timeout: float = 300.0, poll: float = 0.05, ends=st.TERMINAL):
        """Poll fn() until it returns something truthy; fail early if the run reaches one of `ends`."""
        deadline, next_state = time.monotonic() + timeout, 0.0
        while True:
            value = fn()
            if value:
                return value
            now = time.monotonic()
            if ends and now >= next_state:
                next_state = now + 1.0
                state = self.state()
                if state in ends:
                    raise AssertionError(f"flow run {self.id} ended {state} while waiting for {what}")
            if now > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (run {self.id})")
            time.sleep(poll)


# ---------------------------------------------------------------------------------------------- processes
def kill(pid: int, sig: int) -> float:
    """Send sig and return the wall time it was sent."""
    t = time.time()
    os.kill(pid, sig)
    return t


def kill_leftovers(run_ids: list[str]) -> list[int]:
    """SIGKILL every process that belongs to one of these flow runs (the flow-run process and its ranks
    carry PREFECT__FLOW_RUN_ID), e.g. after a test failed halfway; return their pids."""
    wanted, killed = set(run_ids), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and flow_run_of(int(entry)) in wanted:
            try:
                os.kill(int(entry), 9)
                killed.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def flow_run_of(pid: int) -> str | None:
    """PREFECT__FLOW_RUN_ID of a process (the flow-run process and its ranks carry it)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"PREFECT__FLOW_RUN_ID="):
            return item.split(b"=", 1)[1].decode()
    return None


# ---------------------------------------------------------------------------------------------- a real full disk
def tmpfs_unavailable() -> str | None:
    """Why this process cannot mount a tmpfs (not root, no CAP_SYS_ADMIN, no mount), or None when it can."""
    probe = Path(tempfile.mkdtemp(prefix="mftasks-tmpfs-probe-"))
    try:
        reason = mount_tmpfs(probe, 1 << 20)
        if reason is None:
            unmount(probe)
        return reason
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


def mount_tmpfs(point: Path, size: int) -> str | None:
    """Mount a tmpfs of `size` bytes at `point` (created if missing); None, or why it could not be mounted."""
    point.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size)},mode=0755", "tmpfs", str(point)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run mount ({exc})"
    if r.returncode != 0:
        return f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip() or f'mount exited {r.returncode}'})"
    return None


def unmount(point: Path) -> None:
    """Lazy unmount: whatever still holds a file in it lets go later; the folder is empty at once."""
    subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30)


def fill_to(folder: Path, free: int, name: str = "filler.bin") -> Path:
    """Write a file of real bytes (zeros) into `folder` so that its filesystem has `free` bytes left (to the
    page); return the file.  Deleting it is how the test frees the space again, as an operator would."""
    excess = shutil.disk_usage(folder).free - free
    assert excess > 0, f"{folder}: {shutil.disk_usage(folder).free} bytes free, fewer than the {free} wanted"
    path, chunk = folder / name, bytes(1 << 20)
    with open(path, "wb") as f:
        while excess > 0:
            excess -= f.write(chunk[:min(excess, len(chunk))])
        f.flush()
        os.fsync(f.fileno())
    return path


# ---------------------------------------------------------------------------------------------- recovery timing
@dataclass
class Recovery:
    """Wall-clock times of one fault and its recovery (seconds since the epoch).

    detect = fault -> the launcher (or Prefect) noticed; teardown = noticed -> every process of the
    failed gang gone; restart = gone -> the retry's gang started; first step = started -> the first
    new metrics.jsonl line of rank 0."""

    fault: str
    stage: str
    t_fault: float
    t_detect: float | None = None
    t_gone: float | None = None
    t_start: float | None = None
    t_first: float | None = None
    detected_by: str = "launcher"
    last_step_before: int | None = None
    """Rank 0's last logged step before the fault's gang was gone."""
    resume_step: int | None = None
    """The step the new gang resumed from (its first logged step - 1)."""
    notes: list[str] = field(default_factory=list)

    def durations(self) -> dict[str, float | None]:
        def d(a, b):  # t_detect is estimated to ~0.05 s (see detect_time): never report a negative span
            return None if a is None or b is None else round(max(b - a, 0.0), 2)
        return {"detect": d(self.t_fault, self.t_detect), "teardown": d(self.t_detect, self.t_gone),
                "restart": d(self.t_gone, self.t_start), "first_step": d(self.t_start, self.t_first),
                "total": d(self.t_fault, self.t_first)}

    def to_dict(self) -> dict:
        return {**asdict(self), **self.durations()}

    def markdown(self) -> str:
        d = self.durations()
        cells = " | ".join("-" if d[k] is None else f"{d[k]:.2f}" for k in d)
        lines = [f"## Recovery from: {self.fault} ({self.stage})", "",
                 "| detect (s) | teardown (s) | restart (s) | first step (s) | total (s) |",
                 "|---:|---:|---:|---:|---:|", f"| {cells} |", "",
                 f"detected by: {self.detected_by}. Anchor: MindFormers' shell launch leaves survivors waiting "
                 "for HCCL's 1836 s timeout before a dead rank is noticed."]
        return "\n".join(lines + [f"- {n}" for n in self.notes])


def follow_recovery(run: Run, stage: str, old: dict, rec: Recovery, timeout: float = 300.0, ends=st.TERMINAL,
                    on_gone=None) -> dict:
    """After a fault in `stage`: wait until every process in the old pids.json record is gone, then for
    the next gang's pids.json, then for its first metrics line; fill in the times, rank 0's last step
    before and the step resumed from; return the new gang's pids.json record."""
    old_pids = old["pids"]
    rec.t_gone = run.wait_for(f"the old gang {old_pids} of {stage} to be gone",
                              lambda: None if any(alive(p) for p in old_pids) else time.time(), timeout, poll=0.02,
                              ends=ends)
    if on_gone is not None:
        on_gone()
    before = run.metrics(stage)
    new = run.wait_for(f"a new gang of {stage}",
                       lambda: (r := run.pids(stage)) and not set(r["pids"]) & set(old_pids) and r, timeout,
                       ends=ends)
    rec.t_start = new["time"]
    def first_step():
        if len(run.metrics(stage)) > len(before):
            return time.time()
        if not any(alive(p) for p in new["pids"]) and len(run.metrics(stage)) == len(before):
            raise AssertionError(f"the new {stage} gang {new['pids']} ended without a step (it resumed at the "
                                 f"last step: nothing left to do)")
        return None
    rec.t_first = run.wait_for(f"the first step of the new {stage} gang", first_step, timeout, ends=ends)
    rec.last_step_before = before[-1]["step"] if before else 0
    rec.resume_step = run.metrics(stage)[len(before)]["step"] - 1
    return new


def detect_time(verdicts: list[dict], stage: str, old: dict, index: int = 0) -> float | None:
    """When the launcher noticed the failure: the gang's start (pids.json time, written as its last
    process started) plus the elapsed seconds in the launcher's verdict (Run.verdicts)."""
    found = [v for v in verdicts if v["stage"] == stage]
    return old["time"] + found[index]["elapsed_s"] if len(found) > index else None


def steps_logged_twice(rows: list[dict]) -> list[int]:
    seen, twice = set(), []
    for r in rows:
        if r["step"] in seen:
            twice.append(r["step"])
        seen.add(r["step"])
    return twice


def load_weights(path: Path) -> dict:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


