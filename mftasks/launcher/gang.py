"""Start a gang of ranks, watch it, stop all of it: `launch(spec, on_line) -> LaunchResult`.

The monitor loop, as the state diagram in `state.py` reads:

    start (scheduler first on node 0, then every worker; each in its own session / process group,
           stdout+stderr appended to its log file, a waiter thread per process reporting its exit time)
    loop:
        a process exited non-zero by itself  -> failure (the first by time is the root cause)
        every worker exited 0                -> success (the scheduler gets scheduler_grace to finish)
        the launcher got SIGTERM             -> failure "killed" (Prefect cancellation...)
        the overall timeout passed           -> stack dump, failure "timeout"
        a rank made no heartbeat progress    -> stack dump, failure "hang"
    stop (always, also on an exception): SIGTERM (+SIGCONT) to every process group still holding a live
        process, one shared deadline of stop_grace seconds, then SIGKILL; grandchildren in the group go too.

Logs go straight from the process to its file (the kernel writes them; a slow `on_line` can never block a
rank, and the file is complete when the process exits).  msrun's names stand beside them: `scheduler.log`
is the scheduler's own log, and `worker_N.log` is a link to `rank_N/mindformer.log` (a `worker_N.log` that
is not such a link, say from msrun itself, is left alone and the rank's log says so). With `on_line`, a reader thread per process
follows its file and passes each line on as `on_line(rank, line)` (rank None for the scheduler).

A launcher killed with SIGKILL cannot stop its ranks itself (they run in their own sessions on purpose, so
that a terminal's Ctrl-C or a flow cancellation reaches the launcher, which then stops them); its guard
process (`guard.py`, started before the first rank) sees the launcher's end of a pipe close and stops every
group within stop_grace. Its output goes to `<attempt dir>/guard.log`.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable

from ..process import live_groups, signal_groups
from .env import base_env, rank_env, scheduler_env
from .errors import RankStartError
from .guard import Guard
from .preflight import preflight
from .record import read_record
from .result import (FailureClass, LaunchResult, RankFailure, RankOutcome, classify, final_exception,
                     record_exception, tail_lines)
from .spec import LaunchSpec
from .state import Phase, RankState

OnLine = Callable[[int | None, str], None]

POLL_S = 0.05           # exit events are waited for in slices of this length
HEARTBEAT_EVERY_S = 0.25  # heartbeat files are read this often
ERROR_LINES = 20


def launch(spec: LaunchSpec, on_line: OnLine | None = None,
           on_start: Callable[[list[int]], None] | None = None) -> LaunchResult:
    """Run `spec.program` once per local rank and return when all succeeded or the gang was stopped.

    Raises PreflightError (nothing started) or RankStartError (a process could not be executed; those
    already started were stopped). A failed rank is reported in the result, not raised.
    `on_start(pids)` is called after each process starts, with the pids (= process group ids) started so
    far, so a caller can record them (e.g. to prove a gang gone before a retry if this process dies).
    """
    preflight(spec)
    return Gang(spec, on_line, on_start).run()


class Gang:
    """The processes of one launch on this node and the loop that watches them."""

    def __init__(self, spec: LaunchSpec, on_line: OnLine | None = None,
                 on_start: Callable[[list[int]], None] | None = None):
        self.spec = spec
        self.on_line = on_line
        self.on_start = on_start
        self.workers: list[RankState] = []
        self.scheduler: RankState | None = None
        self.failures: list[RankFailure] = []
        self._exits: queue.Queue[tuple[RankState, float]] = queue.Queue()
        self._waiters: list[threading.Thread] = []
        self._tails: list[threading.Thread] = []
        self._tail_stop = threading.Event()
        self._stop_started: float | None = None
        self._interrupted: int | None = None
        self.guard: Guard | None = None
        self.t0 = 0.0
        self.wall0 = 0.0

    @property
    def procs(self) -> list[RankState]:
        return ([self.scheduler] if self.scheduler else []) + self.workers

    # -- run -----------------------------------------------------------------------------------------

    def run(self) -> LaunchResult:
        self.t0, self.wall0 = time.monotonic(), time.time()
        restore = self._catch_sigterm()
        try:
            self._start_all()
            self._watch()
        finally:
            try:
                self.stop()
            finally:
                if self.guard is not None:
                    self.guard.dismiss()
                restore()
                self._tail_stop.set()
                for t in self._tails:
                    t.join(timeout=5.0)
        return self._result()

    def _catch_sigterm(self) -> Callable[[], None]:
        """In the main thread, turn SIGTERM into a clean stop of the gang (children have their own
        sessions, so a signal to the launcher's group does not reach them)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            self._interrupted = signum
        old = signal.signal(signal.SIGTERM, handler)
        return lambda: signal.signal(signal.SIGTERM, old)

    # -- start ---------------------------------------------------------------------------------------

    def _start_all(self) -> None:
        spec = self.spec
        base = base_env(spec)
        argv = tuple(spec.program)
        self.guard = Guard(spec.stop_grace, os.path.join(spec.attempt_dir, "guard.log"))
        if spec.runs_scheduler:
            self.scheduler = RankState(None, None, argv, scheduler_env(spec, base), spec.scheduler_log(),
                                       error_path=spec.error_file(None))
            self._start(self.scheduler)
            self._started()
        for lr in spec.local_ranks():
            st = RankState(lr.rank, lr.local_rank, argv, rank_env(spec, lr, base), spec.rank_log(lr.rank),
                           spec.heartbeat_path(lr.rank), spec.error_file(lr.rank),
                           progress_re=re.compile(spec.progress_pattern) if spec.progress_pattern else None)
            self.workers.append(st)
            self._start(st)
            self._started()

    def _started(self) -> None:
        if self.on_start is not None:
            self.on_start([st.pid for st in self.procs if st.pid is not None])

    def _start(self, st: RankState) -> None:
        os.makedirs(os.path.dirname(st.log_path), exist_ok=True)
        open(st.log_path, "wb").close()  # truncate, then append: other writers (the Trainer's own
        log = open(st.log_path, "ab")    # FileHandler on the same file) interleave instead of clobbering
        _remove(st.error_path)           # an earlier launch's record in the same folder is not this one's
        if st.rank is not None:
            _link_msrun_name(st.log_path, os.path.join(self.spec.attempt_dir, f"worker_{st.rank}.log"))
        try:
            st.started_mono, st.started_wall = time.monotonic(), time.time()
            st.proc = subprocess.Popen(list(st.argv), env=st.env, cwd=self.spec.cwd, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       close_fds=True)
        except OSError as exc:
            raise RankStartError(f"cannot start {st.name} ({' '.join(st.argv)}): {exc}") from exc
        finally:
            log.close()
        self.guard.watch(st.proc.pid)
        waiter = threading.Thread(target=self._wait, args=(st,), name=f"wait-{st.name}", daemon=True)
        waiter.start()
        self._waiters.append(waiter)
        if self.on_line is not None:
            tail = threading.Thread(target=self._tail, args=(st,), name=f"tail-{st.name}", daemon=True)
            tail.start()
            self._tails.append(tail)

    def _wait(self, st: RankState) -> None:
        st.proc.wait()
        self._exits.put((st, time.monotonic()))

    def _tail(self, st: RankState) -> None:
        """Follow the log file and pass complete lines to on_line; drain to the end once stopped."""
        try:
            f = open(st.log_path, "rb")
        except OSError:
            return
        broken = False
        with f:
            buf = b""
            while True:
                chunk = f.read(65536)
                if not chunk:
                    if self._tail_stop.is_set():
                        break
                    time.sleep(0.05)
                    continue
                *lines, buf = (buf + chunk).split(b"\n")
                for raw in lines:
                    broken = self._emit(st, raw, broken)
            if buf:
                self._emit(st, buf, broken)

    def _emit(self, st: RankState, raw: bytes, broken: bool) -> bool:
        if broken:
            return True
        try:
            self.on_line(st.rank, raw.decode("utf-8", errors="replace").rstrip("\r"))
        except Exception as exc:  # a faulty callback must not take the launch down
            logging.getLogger("mftasks").warning("on_line raised %r; no more lines of %s are forwarded",
                                                 exc, st.name)
            return True
        return False

    # -- watch ---------------------------------------------------------------------------------------

    def _watch(self) -> None:
        spec = self.spec
        next_beat = 0.0
        while True:
            self._drain_exits(POLL_S)
            if self.failures:
                return
            if all(st.phase is Phase.SUCCEEDED for st in self.workers):
                self._await_scheduler()
                return
            now = time.monotonic()
            if self._interrupted is not None:
                name = signal.Signals(self._interrupted).name
                self._gang_failure(FailureClass.KILLED, f"was stopped: the launcher received {name}", now)
                return
            if spec.timeout is not None and now - self.t0 >= spec.timeout:
                running = self._running_workers()
                self._dump_stacks(f"launch timeout of {spec.timeout:g} s reached")
                self._gang_failure(FailureClass.TIMEOUT, f"reached the launch timeout of {spec.timeout:g} s", now,
                                   running)
                return
            if spec.watches_progress and now >= next_beat:
                next_beat = now + HEARTBEAT_EVERY_S
                if self._check_hang(now):
                    return

    def _drain_exits(self, wait: float) -> None:
        """Handle exit events, oldest first; wait up to `wait` seconds for the first one."""
        batch = []
        try:
            batch.append(self._exits.get(timeout=wait) if wait > 0 else self._exits.get_nowait())
            while True:
                batch.append(self._exits.get_nowait())
        except queue.Empty:
            pass
        for st, when in sorted(batch, key=lambda item: item[1]):
            self._on_exit(st, when)

    def _on_exit(self, st: RankState, when: float) -> None:
        st.returncode, st.exit_mono = st.proc.returncode, when
        if st.returncode == 0:
            st.phase = Phase.SUCCEEDED
        elif self._stop_started is not None and when >= self._stop_started:
            st.phase = Phase.STOPPED
        else:
            st.phase = Phase.FAILED
            if st.is_scheduler and all(w.phase is Phase.SUCCEEDED for w in self.workers):
                return  # the work is done; a scheduler's late complaint does not undo it (shown in the table)
            self.failures.append(self._exit_failure(st, when))

    def _exit_failure(self, st: RankState, when: float) -> RankFailure:
        """A process failed by itself: classed from its own error record if it wrote one, else from its exit."""
        lines = tail_lines(st.log_path, 60)
        rc = st.returncode
        record = read_record(st.error_path)
        message = f"was killed by {st.signal_name}" if rc < 0 else f"exited with code {rc}"
        return RankFailure(
            classify(rc, lines, record), st.rank, exitcode=st.exitcode, signal=st.signal_name, message=message,
            exception=record_exception(record) if record else final_exception(lines),
            error_lines=tuple(lines[-ERROR_LINES:]), log_path=st.log_path, elapsed=when - self.t0,
            ranks=(st.rank,) if st.rank is not None else (), role="scheduler" if st.is_scheduler else "worker",
            record_path=st.error_path if record else None)

    def _await_scheduler(self) -> None:
        """Every worker succeeded: let the scheduler finish on its own (MindSpore's exits ~5 s later)."""
        deadline = time.monotonic() + self.spec.scheduler_grace
        while self.scheduler is not None and not self.scheduler.exited and time.monotonic() < deadline:
            self._drain_exits(min(POLL_S, max(0.0, deadline - time.monotonic())))

    def _running_workers(self) -> list[RankState]:
        return [st for st in self.workers if not st.exited]

    def _gang_failure(self, fc: FailureClass, message: str, now: float, ranks: list[RankState] | None = None,
                      log_of: RankState | None = None) -> None:
        ranks = self._running_workers() if ranks is None else ranks
        lines = tail_lines(log_of.log_path, 60) if log_of else []
        self.failures.append(RankFailure(
            fc, log_of.rank if log_of else None, message=message, exception=final_exception(lines),
            error_lines=tuple(lines[-ERROR_LINES:]), log_path=log_of.log_path if log_of else None,
            elapsed=now - self.t0, ranks=tuple(st.rank for st in ranks)))

    # -- hang detection ------------------------------------------------------------------------------

    def hang_limit(self) -> float:
        """Given hang_timeout, else max(hang_floor, hang_factor x median interval between heartbeat updates)."""
        if self.spec.hang_timeout is not None:
            return self.spec.hang_timeout
        intervals = [i for st in self.workers for i in st.intervals]
        if not intervals:
            return self.spec.hang_floor
        return max(self.spec.hang_floor, self.spec.hang_factor * statistics.median(intervals))

    def _check_hang(self, now: float) -> bool:
        running = self._running_workers()
        for st in running:
            st.observe_progress(now)
        limit = self.hang_limit()
        never = [st for st in running if st.last_progress is None and now - st.started_mono > self.spec.startup_timeout]
        stalled = [st for st in running if st.last_progress is not None and now - st.last_progress > limit]
        if not (never or stalled):
            return False
        heartbeat = self.spec.progress_pattern is None
        if stalled:
            first = min(stalled, key=lambda st: st.last_progress)
            message = (f"{'made no heartbeat progress' if heartbeat else 'printed no new progress line'} for "
                       f"{now - first.last_progress:.1f} s (hang timeout {limit:.1f} s; last step {first.last_step})")
        else:
            first = never[0]
            message = (f"{'wrote no heartbeat' if heartbeat else 'printed no progress line'} within the startup "
                       f"timeout of {self.spec.startup_timeout:g} s")
        culprits = sorted(stalled + never, key=lambda st: st.rank)
        self._dump_stacks(f"hang detected ({', '.join(st.name for st in culprits)}: {message})")
        self._gang_failure(FailureClass.HANG, message, now, culprits, log_of=first)
        return True

    def _dump_stacks(self, why: str) -> None:
        """SIGUSR1 (+SIGCONT, for a stopped process) to every running rank, whose faulthandler writes all
        thread stacks to its log; wait until the dumps are there (at most stack_dump_wait). A rank without
        the handler dies of SIGUSR1, which is fine: the gang is being stopped anyway."""
        self._stop_started = time.monotonic()
        targets = self._running_workers()
        offsets = {}
        for st in targets:
            _append_note(st.log_path, f"[mftasks launcher] {why}; SIGUSR1 sent for a stack dump")
            offsets[st.pid] = _size(st.log_path)
            for sig in (signal.SIGUSR1, signal.SIGCONT):
                try:
                    os.kill(st.pid, sig)
                except ProcessLookupError:
                    pass
        # A stopped rank runs again from its SIGCONT until the gang is stopped: wait only until every dump is
        # in its log (or the rank exited, or stack_dump_wait passed), so that the gang hardly moves meanwhile.
        pending = list(targets)
        if pending and self.spec.stack_dump_wait > 0:
            deadline = time.monotonic() + self.spec.stack_dump_wait
            while pending and time.monotonic() < deadline:
                self._drain_exits(min(0.01, max(0.0, deadline - time.monotonic())))
                pending = [st for st in pending if not st.exited and not _dumped(st.log_path, offsets[st.pid])]
            self._drain_exits(0.05)  # the rest of each dump

    # -- stop ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process group that still holds a live process: SIGTERM (+SIGCONT), one shared
        deadline (stop_grace), then SIGKILL; reap everything."""
        if self._stop_started is None:
            self._stop_started = time.monotonic()
        started = [st for st in self.procs if st.proc is not None]
        live = live_groups([st.pgid for st in started])
        if live:
            signal_groups(live, signal.SIGTERM)
            signal_groups(live, signal.SIGCONT)
            deadline = time.monotonic() + self.spec.stop_grace
            while live and time.monotonic() < deadline:
                self._drain_exits(0.02)
                live = live_groups(live)
            if live:
                signal_groups(live, signal.SIGKILL)
                end = time.monotonic() + 1.0
                while live and time.monotonic() < end:
                    self._drain_exits(0.01)
                    live = live_groups(live)
        for t in self._waiters:
            t.join(timeout=2.0)
        self._drain_exits(0)
        for st in started:
            if not st.exited:  # not reaped (stuck in the kernel?): report it as stopped without a code
                st.phase = Phase.STOPPED

    # -- result --------------------------------------------------------------------------------------

    def _result(self) -> LaunchResult:
        now = time.monotonic()
        if self.spec.watches_progress:
            for st in self.workers:
                st.observe_progress(now)

        def outcome(st: RankState) -> RankOutcome:
            end = st.exit_mono if st.exit_mono is not None else now
            return RankOutcome(st.rank, st.pid, st.phase.value, st.exitcode, st.signal_name, st.log_path,
                               st.last_step, end - st.started_mono)

        failures = sorted(self.failures, key=lambda f: f.elapsed)
        return LaunchResult(
            ranks={st.rank: outcome(st) for st in self.workers},
            root_cause=failures[0] if failures else None,
            scheduler=outcome(self.scheduler) if self.scheduler else None,
            failures=failures, started_at=self.wall0, duration=now - self.t0, attempt=self.spec.attempt,
            log_dir=self.spec.attempt_dir,
            hang_timeout_used=self.hang_limit() if self.spec.watches_progress else None)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _dumped(path: str, offset: int) -> bool:
    """faulthandler's dump has started in the log after offset (it writes the whole dump from its C signal
    handler in one go, so the rest follows within microseconds; the caller waits a little more)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return b"(most recent call first):" in f.read()
    except OSError:
        return False


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:  # none there (or not removable: then the rank cannot write one either)
            pass


def _append_note(path: str, text: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError:
        pass


def _link_msrun_name(log_path: str, name: str) -> None:
    """`name` (msrun's worker_N.log) as a relative link to the rank's log; an earlier launch's link is
    replaced, anything else there is left alone with a note in the rank's log."""
    target = os.path.relpath(log_path, os.path.dirname(name))
    if os.path.islink(name):
        if os.readlink(name) == target:
            return
        os.unlink(name)
    elif os.path.lexists(name):
        _append_note(log_path, f"[mftasks launcher] {name} exists and is not this launcher's link; left alone")
        return
    try:
        os.symlink(target, name)
    except OSError as exc:
        _append_note(log_path, f"[mftasks launcher] cannot link {name} to this log: {exc}")
