"""The gang's guard: a small process that stops the ranks when their launcher dies without stopping them.

Ranks run in their own sessions, so that a terminal's Ctrl-C or a flow cancellation reaches the launcher,
which then stops them in order. A launcher killed with SIGKILL (the flow-run process killed by the OOM
killer, by an operator, by a worker's escalation) cannot do that, and the ranks would train on, burn the
node and write checkpoints until someone noticed. The guard closes that hole:

    launcher                         guard (own session)
    os.pipe(); start guard  ───────► stdin = the pipe's read end
    start a rank; "pgid N\\n" ──────► remembers N
    ...                              blocks on read
    gang over; "done\\n", close ───► exits 0, touches nothing
    (launcher dies: the kernel closes the write end)
                              EOF ─► process.stop_groups: SIGTERM (+SIGCONT), `grace` s, SIGKILL; exits 3

Only the launcher holds the write end (os.pipe's fds are close-on-exec, so the ranks never inherit it), so
EOF without "done" means exactly "the launcher is gone". No polling, no pid-reuse race.

The guard is this file run by path (`python .../guard.py GRACE LAUNCHER_PID`, its output appended to
`<attempt dir>/guard.log`); it imports only the standard library and `mftasks.process`, never MindSpore,
so it starts in milliseconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

if __name__ == "__main__":  # run by path: make the package importable (its __init__ loads nothing heavy)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from mftasks.process import live_groups, stop_groups  # noqa: E402


class Guard:
    """The launcher's end: start the guard, tell it each process group, dismiss it at the end."""

    def __init__(self, grace: float, log_path: str):
        read_fd, self._write_fd = os.pipe()
        try:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            with open(log_path, "ab") as log:
                argv = [sys.executable, os.path.abspath(__file__), str(grace), str(os.getpid())]
                self.proc = subprocess.Popen(argv, stdin=read_fd, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, close_fds=True)
        except BaseException:
            os.close(self._write_fd)
            raise
        finally:
            os.close(read_fd)
        self._closed = False

    def watch(self, pgid: int) -> None:
        self._send(f"pgid {pgid}\n")

    def dismiss(self) -> None:
        """The gang is over (stopped or finished): let the guard exit without touching anything."""
        if self._closed:
            return
        try:
            self._send("done\n")
        finally:
            self._closed = True
            os.close(self._write_fd)
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _send(self, line: str) -> None:
        try:
            os.write(self._write_fd, line.encode())
        except BrokenPipeError:  # the guard died; the gang is still stopped by the launcher itself
            pass


# -- the guard process ---------------------------------------------------------------------------------

def _say(message: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S ") + f"[mftasks guard {os.getpid()}] {message}", flush=True)


def main(argv: list[str]) -> int:
    grace, launcher = float(argv[1]), int(argv[2])
    pgids: list[int] = []
    buf = b""
    while True:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line == b"done":
                return 0
            if line.startswith(b"pgid "):
                pgids.append(int(line[5:]))
    _say(f"the launcher (pid {launcher}) is gone without stopping its gang; stopping process groups "
         f"{live_groups(pgids)} (SIGTERM, then SIGKILL after {grace:g} s)")
    still = stop_groups(pgids, grace)
    if still:
        _say(f"process groups {still} survived SIGKILL")
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
