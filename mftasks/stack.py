"""The local Prefect stack: server, workers, deployments, runs — driven as processes and over HTTP.

The library never imports Prefect: the server and workers are `prefect` processes we start (own
session: a worker started from a non-interactive shell ignores SIGINT, and in its own session one
SIGTERM stops it), and runs are created and watched through the
server's REST API with httpx.

    mftasks server start|stop|status      server on 127.0.0.1:4200, SQLite under .prefect/ in the project
    mftasks worker start [--queue Q]      a process worker on the project's pool
    mftasks deploy                        prefect deploy --all --prefect-file deployments/prefect.yaml
    mftasks deployment run NAME [-p k=v] [--watch]
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import process
from .errors import ConfigError, MftasksError

TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
CRASH_SETTLE_S = 20.0
"""How long `watch` waits for a Crashed run to stay Crashed (Prefect's runner and worker both report a
killed flow-run process, 5-15 s apart)."""


class StackError(MftasksError):
    """The Prefect server or worker could not be started, reached or used."""


@dataclass(frozen=True)
class Stack:
    """Where the project's Prefect lives."""

    project: Path
    """Repo root: deployments are made from here (flows/ importable)."""
    host: str = "127.0.0.1"
    port: int = 4200
    pool: str = "mftasks"
    auth: str | None = None
    """"user:password" for Prefect's basic auth (PREFECT_API_AUTH_STRING), for a shared server."""

    @classmethod
    def from_env(cls, project: str | Path | None = None) -> Stack:
        root = Path(project or os.environ.get("MFTASKS_PROJECT", Path.cwd())).resolve()
        port = int(os.environ.get("MFTASKS_PREFECT_PORT", "4200"))
        host = os.environ.get("MFTASKS_PREFECT_HOST", "127.0.0.1")
        return cls(project=root, host=host, port=port, pool=os.environ.get("MFTASKS_POOL", "mftasks"),
                   auth=os.environ.get("PREFECT_API_AUTH_STRING") or None)

    @property
    def home(self) -> Path:
        return Path(os.environ.get("MFTASKS_PREFECT_HOME", self.project / ".prefect"))

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for every prefect process of this project (server, worker, flows, CLI)."""
        env = dict(os.environ)
        venv_bin = str(Path(sys.executable).parent)
        env.update({
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": self.host,
            "PREFECT_SERVER_API_PORT": str(self.port),  # else the UI keeps calling the API on port 4200
            "PREFECT_UI_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "GLOG_v": env.get("GLOG_v", "3"),
        })
        if self.auth:  # the server demands it, every client sends it
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth
            env["PREFECT_API_AUTH_STRING"] = self.auth
        return env

    def http(self):
        """An httpx client for the API (basic auth when configured)."""
        import httpx

        auth = tuple(self.auth.split(":", 1)) if self.auth else None
        return httpx.Client(base_url=self.api_url, auth=auth, timeout=30)

    def prefect(self) -> str:
        return str(Path(sys.executable).parent / "prefect")


# ---------------------------------------------------------------------------------------------- server
def healthy(stack: Stack, timeout: float = 2.0) -> bool:
    import httpx

    try:
        with stack.http() as c:
            return c.get("/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def start_server(stack: Stack, wait: float = 120.0) -> str:
    """Start the server in the background unless one answers already; return a one-line status."""
    if healthy(stack):
        return f"server already running at {stack.ui_url}"
    _check_port_free(stack.host, stack.port)
    stack.home.mkdir(parents=True, exist_ok=True)
    log = open(stack.home / "server.log", "ab")
    proc = subprocess.Popen([stack.prefect(), "server", "start", "--host", stack.host, "--port", str(stack.port)],
                            env=stack.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=stack.project)
    _write_pid_file(stack.home / "server.pid", proc.pid)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if healthy(stack):
            return f"server started at {stack.ui_url} (pid {proc.pid}, log {stack.home / 'server.log'})"
        if proc.poll() is not None:
            raise StackError(f"prefect server exited with code {proc.returncode}; see {stack.home / 'server.log'}")
        time.sleep(0.5)
    _stop_pid_file(stack.home / "server.pid")
    raise StackError(f"prefect server did not answer at {stack.api_url} within {wait:.0f}s; "
                     f"see {stack.home / 'server.log'}")


def stop_server(stack: Stack) -> str:
    outcome = _stop_pid_file(stack.home / "server.pid")
    if outcome == STOPPED:
        return "server stopped"
    if outcome == NOT_RUNNING:
        return "no server of this project was running"
    return f"server not stopped: {outcome}"


def status(stack: Stack) -> str:
    lines = [f"server  {'up' if healthy(stack) else 'down'}  {stack.ui_url}  (PREFECT_HOME {stack.home})"]
    for pid_file in sorted(stack.home.glob("worker-*.pid")) if stack.home.is_dir() else []:
        record = _read_pid_file(pid_file)
        pid = record and record["pid"]
        up = bool(record) and _identity_problem(record) is None
        lines.append(f"worker  {'up' if up else 'down'}  {pid_file.stem}  pid {pid}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- worker
LOCKED_JOB_TEMPLATE = {
    # No placeholder and no `env`, `command` or `working_dir` key: the worker starts every flow run with
    # Prefect's own command (`python -m prefect.engine`), its own environment and a fresh temporary folder
    # (the deployment's pull step then enters the project).  A key absent here is one a run's job
    # variables cannot reach: Prefect merges job variables only into placeholders, and `env` only into an
    # `env` dict of this template (prefect.workers.base.BaseJobConfiguration.from_template_and_values).
    "job_configuration": {"stream_output": True},
    # Nothing to set: the server rejects any job variable of a deployment or of a flow run created for
    # one (HTTP 422, "Additional properties are not allowed"), see docs/SECURITY.md.
    "variables": {"type": "object", "properties": {}, "additionalProperties": False},
}
"""The work pool's base job template: a flow run cannot change the command, environment or folder."""


def ensure_pool(stack: Stack) -> str:
    """The project's process work pool with LOCKED_JOB_TEMPLATE: created, or an older pool's template
    (Prefect's default, which lets job variables set command, env and working_dir) replaced."""
    with stack.http() as c:
        r = c.get(f"/work_pools/{stack.pool}")
        if r.status_code == 200:
            pool = r.json()
            if pool.get("type") != "process":
                raise StackError(f"work pool {stack.pool!r} is of type {pool.get('type')!r}, not 'process'; "
                                 "delete it or set MFTASKS_POOL to another name")
            if pool.get("base_job_template") == LOCKED_JOB_TEMPLATE:
                return "unchanged"
            r = c.patch(f"/work_pools/{stack.pool}", json={"base_job_template": LOCKED_JOB_TEMPLATE})
            action = "lock the base job template of"
        elif r.status_code == 401:
            _raise_for_status(r)
        else:
            r = c.post("/work_pools/", json={"name": stack.pool, "type": "process",
                                             "base_job_template": LOCKED_JOB_TEMPLATE})
            action = "create"
    if r.status_code == 401:
        _raise_for_status(r)
    if r.status_code == 409:  # created meanwhile by another process: check it as above
        return ensure_pool(stack)
    if r.status_code >= 400:
        raise StackError(f"could not {action} work pool {stack.pool!r}: HTTP {r.status_code} {r.text[:200]}")
    return "locked" if action.startswith("lock") else "created"


def ensure_device_limit(stack: Stack, node: str, devices: int) -> None:
    """The global concurrency limit `devices-<node>`, counted in devices (set to `devices`)."""
    name = f"devices-{node}"
    with stack.http() as c:
        r = c.post("/v2/concurrency_limits/", json={"name": name, "limit": devices})
        if r.status_code == 409 or (r.status_code >= 400 and "already exists" in r.text):
            r = c.patch(f"/v2/concurrency_limits/{name}", json={"limit": devices})
    if r.status_code == 401:
        _raise_for_status(r)
    if r.status_code >= 400:
        raise StackError(f"could not set concurrency limit {name!r}: HTTP {r.status_code} {r.text[:200]}")


def start_worker(stack: Stack, queue: str | None = None, name: str | None = None, devices: int | None = None) -> str:
    """A process worker on the project's pool (optionally one work queue = one node), in its own session.

    The node (the queue name, or "local") gets a device limit `devices-<node>` of `devices` slots
    (default: this machine's CPU count) that launches on it occupy, one slot per rank."""
    if not healthy(stack):
        raise StackError(f"no Prefect server at {stack.api_url}; run `mftasks server start` first")
    ensure_pool(stack)
    node = queue or "local"
    ensure_device_limit(stack, node, devices or os.cpu_count() or 1)
    label = name or f"worker-{queue or 'default'}"
    pid_file = stack.home / f"{label}.pid"
    record = _read_pid_file(pid_file)
    if record and _identity_problem(record) is None:
        return f"{label} already running (pid {record['pid']})"
    template = stack.home / "pool-template.json"  # used only if the worker has to create the pool itself
    template.write_text(json.dumps(LOCKED_JOB_TEMPLATE))
    argv = [stack.prefect(), "worker", "start", "--pool", stack.pool, "--type", "process",
            "--base-job-template", str(template), "--name", f"{label}-{os.getpid()}"]
    if queue:
        argv += ["--work-queue", queue]
    log = open(stack.home / f"{label}.log", "ab")
    proc = subprocess.Popen(argv, env={**stack.env(), "MFTASKS_NODE": node}, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=stack.project)
    _write_pid_file(pid_file, proc.pid)
    return f"{label} started (pid {proc.pid}, pool {stack.pool}{', queue ' + queue if queue else ''})"


def stop_workers(stack: Stack, warn=None) -> list[str]:
    """Stop the workers this project started; return their names.  A pid file whose pid is now another
    process is left alone: warn(message) (default: printed on stderr) says so."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    stopped = []
    for p in sorted(stack.home.glob("worker-*.pid")) if stack.home.is_dir() else []:
        outcome = _stop_pid_file(p)
        if outcome == STOPPED:
            stopped.append(p.stem)
        elif outcome != NOT_RUNNING:
            warn(f"{p.stem} not stopped: {outcome}")
    return stopped


# ---------------------------------------------------------------------------------------------- deploy / run
def deploy(stack: Stack, prefect_file: str = "deployments/prefect.yaml") -> str:
    """`prefect deploy --all` from the repo root (deploying from deployments/ breaks `import flows`)."""
    if not healthy(stack):
        raise StackError(f"no Prefect server at {stack.api_url}; run `mftasks server start` first")
    ensure_pool(stack)
    r = subprocess.run([stack.prefect(), "--no-prompt", "deploy", "--all", "--prefect-file", prefect_file],
                       env=stack.env(), cwd=stack.project, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise StackError(f"prefect deploy failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout


def find_deployment(stack: Stack, name: str) -> dict:
    """Resolve 'flow/deployment' or a bare deployment name through the API (listing choices when unsure)."""
    flow_name, _, dep_name = name.rpartition("/")
    with stack.http() as c:
        r = c.post("/deployments/filter", json={"deployments": {"name": {"any_": [dep_name]}}})
    _raise_for_status(r)
    found = r.json()
    flows = {f["id"]: f["name"] for f in _flows(stack, {d["flow_id"] for d in found})}
    if flow_name:
        found = [d for d in found if flows.get(d["flow_id"]) == flow_name]
    if len(found) == 1:
        found[0]["flow_name"] = flows.get(found[0]["flow_id"])
        return found[0]
    if not found:
        with stack.http() as c:
            every = c.post("/deployments/filter", json={}).json()
        names = {f["id"]: f["name"] for f in _flows(stack, {d["flow_id"] for d in every})}
        listing = ", ".join(sorted(f"{names.get(d['flow_id'])}/{d['name']}" for d in every)) or "(none)"
        raise ConfigError(f"no deployment named {name!r}; deployments on {stack.api_url}: {listing}. "
                          "Deploy with `mftasks deploy`", where="mftasks deployment run")
    choices = ", ".join(sorted(f"{flows.get(d['flow_id'])}/{d['name']}" for d in found))
    raise ConfigError(f"deployment name {name!r} is ambiguous: {choices}; use FLOW/NAME",
                      where="mftasks deployment run")


def _flows(stack: Stack, ids: set[str]) -> list[dict]:
    if not ids:
        return []
    with stack.http() as c:
        r = c.post("/flows/filter", json={"flows": {"id": {"any_": sorted(ids)}}})
    _raise_for_status(r)
    return r.json()


def _raise_for_status(r) -> None:
    if r.status_code == 401:
        if os.environ.get("PREFECT_API_AUTH_STRING"):
            raise StackError("the Prefect server rejected the credentials in PREFECT_API_AUTH_STRING (HTTP 401); "
                             "check user and password")
        raise StackError("the Prefect server asks for credentials (HTTP 401): set PREFECT_API_AUTH_STRING=user:password")
    r.raise_for_status()


def parse_params(pairs: list[str]) -> dict:
    """-p key=value pairs; values parsed as JSON when they are JSON, else kept as strings (as Prefect's CLI)."""
    params, problems = {}, []
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(f"-p {pair!r}: expected KEY=VALUE")
            continue
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    ConfigError.raise_if(problems, where="mftasks deployment run")
    return params


def run_deployment(stack: Stack, name: str, params: dict | None = None) -> dict:
    """Create a flow run of a deployment; the server validates the parameters against its schema."""
    dep = find_deployment(stack, name)
    ConfigError.raise_if(parameter_problems(dep.get("parameter_openapi_schema") or {}, params or {}),
                         where=f"parameters of {dep['flow_name']}/{dep['name']}")
    with stack.http() as c:
        r = _retry_busy(lambda: c.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": params or {}}))
    if r.status_code >= 400:
        detail = r.json().get("detail", r.text) if r.headers.get("content-type", "").startswith("application/json") \
            else r.text
        raise ConfigError(f"the server rejected the parameters of {dep['flow_name']}/{dep['name']}: {detail}",
                          where="mftasks deployment run")
    run = r.json()
    run["deployment"] = f"{dep['flow_name']}/{dep['name']}"
    return run


def parameter_problems(schema: dict, params: dict) -> list[str]:
    """Every problem with params against a deployment's parameter schema, each naming the parameter."""
    import jsonschema

    def pattern(validator, regex, instance, schema):
        """JSON Schema's `$` ends the string (ECMA-262); Python's also matches before a final newline."""
        if validator.is_type(instance, "string") and not re.search(re.sub(r"(?<!\\)\$$", r"\\Z", regex), instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {regex!r}")

    props = schema.get("properties", {})
    problems = [f"unknown parameter {k!r}; valid: {', '.join(sorted(props))}" for k in params if k not in props]
    known = {k: v for k, v in params.items() if k in props}
    strict = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": pattern})
    validator = strict({**schema, "required": []})
    for err in sorted(validator.iter_errors(known), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in err.path) or "(parameters)"
        problems.append(f"{where}: {err.message}")
    return problems


def watch(stack: Stack, flow_run_id: str, timeout: float | None = None, on_state=None,
          crash_settle: float = CRASH_SETTLE_S) -> dict:
    """Poll a flow run until it ends; call on_state(name) at each state change; return the run.

    Crashed counts as the end only once it has held for `crash_settle` seconds: when a crashed run is
    retried (`prefect flow-run retry`), the worker's own, later report of the old process's exit can flip
    the retried run to Crashed for a moment before it runs on (docs/RELIABILITY.md)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    crashed_since = None
    while True:
        with stack.http() as c:
            r = _retry_busy(lambda: c.get(f"/flow_runs/{flow_run_id}"))
        _raise_for_status(r)
        run = r.json()
        state = (run.get("state") or {}).get("type")
        if state != last and on_state:
            on_state((run.get("state") or {}).get("name", state))
        if state == "CRASHED":
            crashed_since = crashed_since if last == "CRASHED" else time.monotonic()
            if time.monotonic() - crashed_since >= crash_settle:
                return run
        elif state in TERMINAL:
            return run
        last = state
        if deadline is not None and time.monotonic() > deadline:
            if state == "CRASHED":
                return run
            raise StackError(f"flow run {flow_run_id} still {state} after {timeout:.0f}s")
        time.sleep(1.0)


def _retry_busy(send, attempts: int = 10):
    """send() again, a second apart, while the server answers 503 (a busy SQLite server does now and then)."""
    for _ in range(attempts - 1):
        r = send()
        if r.status_code != 503:
            return r
        time.sleep(1.0)
    return send()


def flow_run_url(stack: Stack, flow_run_id: str) -> str:
    return f"{stack.ui_url}/runs/flow-run/{flow_run_id}"


# ---------------------------------------------------------------------------------------------- processes
def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise StackError(f"port {port} on {host} is in use by something that is not a Prefect server; "
                             "set MFTASKS_PREFECT_PORT to another port") from None


STOPPED = "stopped"
NOT_RUNNING = "not running"


def _proc_identity(pid: int) -> dict | None:
    """What identifies a live process: its start time (clock ticks after boot, /proc/PID/stat field 22,
    never the same for a later process that reuses the pid) and its command line; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name in (...) may hold spaces: split after it
    return {"pid": pid, "start_time": int(fields[19]),
            "cmdline": [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]}


def _write_pid_file(path: Path, pid: int) -> None:
    """pid + start time + command line of the process just started (Popen returns after its exec)."""
    record = _proc_identity(pid) or {"pid": pid, "start_time": None, "cmdline": []}
    path.write_text(json.dumps(record) + "\n")


def _read_pid_file(path: Path) -> dict | None:
    """The record of a pid file; an older file holding only a pid gives {"pid": N} (unproven identity)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if isinstance(record, int) and not isinstance(record, bool):
        record = {"pid": record}
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int) or record["pid"] <= 1:
        return None
    return record


def _identity_problem(record: dict) -> str | None:
    """None when the recorded pid is still the process that was started; else why it is not (or is gone)."""
    pid = record["pid"]
    now = _proc_identity(pid)
    if now is None or not process.alive(pid):
        return NOT_RUNNING
    cmd = " ".join(now["cmdline"])[:200]
    if record.get("start_time") is None or not record.get("cmdline"):
        return (f"pid {pid} is running `{cmd}`, but its pid file records no start time and command line to "
                "prove it is the process mftasks started; left it alone (stop it yourself if it is)")
    if now["start_time"] != record["start_time"] or now["cmdline"] != record["cmdline"]:
        return (f"pid {pid} is now another process (`{cmd}`, started at tick {now['start_time']}), not the "
                f"one mftasks started (`{' '.join(record['cmdline'])[:200]}`, tick {record['start_time']}); "
                "left it alone and removed the stale pid file")
    return None


def _stop_pid_file(path: Path, grace: float = 10.0) -> str:
    """Stop the process group recorded in a pid file if, and only if, its process is still the one that
    was started (start time and command line match): STOPPED, NOT_RUNNING, or why it was left alone."""
    record = _read_pid_file(path)
    if record is None:
        path.unlink(missing_ok=True)
        return NOT_RUNNING
    problem = _identity_problem(record)
    if problem is not None and "records no start time" in problem:
        return problem  # keep the file: the process may be ours, started by an older mftasks
    path.unlink(missing_ok=True)
    if problem is not None:
        return problem
    process.stop_groups([record["pid"]], grace)
    return STOPPED
