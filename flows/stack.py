"""The project's Prefect stack: server, workers, work pool, deployments and runs.

The server and workers are `prefect` processes started in their own session (a worker started from a
non-interactive shell ignores SIGINT; in its own session one SIGTERM stops it) with a pid file that
proves who it names (mftasks.pidfile).  Everything else goes through Prefect's typed client.

    mftasks server start|stop|status      server on 127.0.0.1:4200, SQLite under .prefect/ in the project
    mftasks worker start [--queue Q]      a process worker on the project's pool
    mftasks deploy                        prefect deploy --all --prefect-file deployments/prefect.yaml
    mftasks deployment run NAME [-p k=v] [--watch]
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import jsonschema
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterId
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from mftasks import pidfile
from mftasks.errors import ConfigError, MftasksError

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

    @contextlib.contextmanager
    def client(self, timeout: float = 30.0) -> Iterator[SyncPrefectClient]:
        """Prefect's typed client for this server (busy answers, 503, are retried by the client itself).

        The class `get_client(sync_client=True)` returns, built for this stack rather than from the process's
        settings (inside a flow run get_client hands back the run's own client).  An HTTP error the caller
        does not handle ends as one StackError line: HTTP 401 says what to set."""
        try:
            with SyncPrefectClient(self.api_url, auth_string=self.auth, httpx_settings={"timeout": timeout}) as c:
                yield c
        except PrefectHTTPStatusError as exc:
            raise self._http_error(exc) from None

    def _http_error(self, exc: PrefectHTTPStatusError) -> StackError:
        r = exc.response
        if r.status_code == 401:
            if self.auth:
                return StackError("the Prefect server rejected the credentials in PREFECT_API_AUTH_STRING "
                                  "(HTTP 401); check user and password")
            return StackError("the Prefect server asks for credentials (HTTP 401): set "
                              "PREFECT_API_AUTH_STRING=user:password")
        return StackError(f"the Prefect server at {self.api_url} answered {r.request.method} {r.request.url.path} "
                          f"with HTTP {r.status_code}: {_detail(r)}")

    def prefect(self) -> str:
        return str(Path(sys.executable).parent / "prefect")


def _detail(response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:500]
    except (ValueError, AttributeError):
        return response.text[:500]


# ---------------------------------------------------------------------------------------------- server
def healthy(stack: Stack, timeout: float = 2.0) -> bool:
    """The server answers /health (one try: a server that is starting is asked again by the caller)."""
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), stack.client(timeout) as c:
        return c.api_healthcheck() is None


def start_server(stack: Stack, wait: float = 120.0) -> str:
    """Start the server in the background unless one answers already; return a one-line status.

    Not `prefect server start --background`: its pid file holds a bare pid, which `prefect server stop`
    signals without proof that it is still the server (mftasks.pidfile), and not its process group."""
    if healthy(stack):
        return f"server already running at {stack.ui_url}"
    _check_port_free(stack.host, stack.port)
    stack.home.mkdir(parents=True, exist_ok=True)
    log = open(stack.home / "server.log", "ab")
    proc = subprocess.Popen([stack.prefect(), "server", "start", "--host", stack.host, "--port", str(stack.port)],
                            env=stack.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=stack.project)
    pidfile.write(stack.home / "server.pid", proc.pid)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if healthy(stack):
            return f"server started at {stack.ui_url} (pid {proc.pid}, log {stack.home / 'server.log'})"
        if proc.poll() is not None:
            raise StackError(f"prefect server exited with code {proc.returncode}; see {stack.home / 'server.log'}")
        time.sleep(0.5)
    pidfile.stop(stack.home / "server.pid")
    raise StackError(f"prefect server did not answer at {stack.api_url} within {wait:.0f}s; "
                     f"see {stack.home / 'server.log'}")


def stop_server(stack: Stack) -> str:
    outcome = pidfile.stop(stack.home / "server.pid")
    if outcome == pidfile.STOPPED:
        return "server stopped"
    if outcome == pidfile.NOT_RUNNING:
        return "no server of this project was running"
    return f"server not stopped: {outcome}"


def status(stack: Stack) -> str:
    lines = [f"server  {'up' if healthy(stack) else 'down'}  {stack.ui_url}  (PREFECT_HOME {stack.home})"]
    for pid_file in _worker_pid_files(stack):
        record = pidfile.read(pid_file)
        up = bool(record) and pidfile.identity_problem(record) is None
        lines.append(f"worker  {'up' if up else 'down'}  {pid_file.stem}  pid {record and record['pid']}")
    return "\n".join(lines)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise StackError(f"port {port} on {host} is in use by something that is not a Prefect server; "
                             "set MFTASKS_PREFECT_PORT to another port") from None


# ---------------------------------------------------------------------------------------------- work pool, workers
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
    """The project's process work pool with LOCKED_JOB_TEMPLATE: "created", "unchanged", or "locked" when an
    older pool's template (Prefect's default, which lets job variables set command, env and working_dir)
    was replaced."""
    with stack.client() as c:
        try:
            pool = c.read_work_pool(stack.pool)
        except ObjectNotFound:
            try:
                c.create_work_pool(WorkPoolCreate(name=stack.pool, type="process",
                                                  base_job_template=LOCKED_JOB_TEMPLATE))
                return "created"
            except ObjectAlreadyExists:  # created meanwhile by another process: check it as above
                pool = c.read_work_pool(stack.pool)
        if pool.type != "process":
            raise StackError(f"work pool {stack.pool!r} is of type {pool.type!r}, not 'process'; "
                             "delete it or set MFTASKS_POOL to another name")
        if pool.base_job_template == LOCKED_JOB_TEMPLATE:
            return "unchanged"
        c.update_work_pool(stack.pool, WorkPoolUpdate(base_job_template=LOCKED_JOB_TEMPLATE))
        return "locked"


def ensure_device_limit(stack: Stack, node: str, devices: int) -> None:
    """The global concurrency limit `devices-<node>`, counted in devices (set to `devices`)."""
    with stack.client() as c:
        try:
            c.upsert_global_concurrency_limit_by_name(f"devices-{node}", devices)
        except ObjectAlreadyExists:  # created between the upsert's read and its create: update it
            c.upsert_global_concurrency_limit_by_name(f"devices-{node}", devices)


def start_worker(stack: Stack, queue: str | None = None, name: str | None = None, devices: int | None = None) -> str:
    """A process worker on the project's pool (optionally one work queue = one node), in its own session.

    The node (the queue name, or "local") gets a device limit `devices-<node>` of `devices` slots
    (default: this machine's CPU count) that launches on it occupy, one slot per rank."""
    _require_server(stack)
    ensure_pool(stack)
    node = queue or "local"
    ensure_device_limit(stack, node, devices or os.cpu_count() or 1)
    label = name or f"worker-{queue or 'default'}"
    pid_file = stack.home / f"{label}.pid"
    record = pidfile.running(pid_file)
    if record:
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
    pidfile.write(pid_file, proc.pid)
    return f"{label} started (pid {proc.pid}, pool {stack.pool}{', queue ' + queue if queue else ''})"


def stop_workers(stack: Stack, warn=None) -> list[str]:
    """Stop the workers this project started; return their names.  A pid file whose pid is now another
    process is left alone: warn(message) (default: printed on stderr) says so."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    stopped = []
    for p in _worker_pid_files(stack):
        outcome = pidfile.stop(p)
        if outcome == pidfile.STOPPED:
            stopped.append(p.stem)
        elif outcome != pidfile.NOT_RUNNING:
            warn(f"{p.stem} not stopped: {outcome}")
    return stopped


def _worker_pid_files(stack: Stack) -> list[Path]:
    return sorted(stack.home.glob("worker-*.pid")) if stack.home.is_dir() else []


def _require_server(stack: Stack) -> None:
    if not healthy(stack):
        raise StackError(f"no Prefect server at {stack.api_url}; run `mftasks server start` first")


# ---------------------------------------------------------------------------------------------- deploy
def deploy(stack: Stack, prefect_file: str = "deployments/prefect.yaml") -> str:
    """`prefect deploy --all` from the repo root (deploying from deployments/ breaks `import flows`)."""
    _require_server(stack)
    ensure_pool(stack)
    r = subprocess.run([stack.prefect(), "--no-prompt", "deploy", "--all", "--prefect-file", prefect_file],
                       env=stack.env(), cwd=stack.project, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise StackError(f"prefect deploy failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout


def find_deployment(stack: Stack, name: str) -> dict:
    """Resolve 'flow/deployment' or a bare deployment name (`prefect deployment run` takes only the first),
    listing the choices when there are none or several; the deployment as JSON plus its `flow_name`."""
    flow_name, _, dep_name = name.rpartition("/")
    with stack.client() as c:
        found = c.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[dep_name])))
        flows = _flow_names(c, found)
        if flow_name:
            found = [d for d in found if flows.get(d.flow_id) == flow_name]
        if len(found) == 1:
            return {**found[0].model_dump(mode="json"), "flow_name": flows.get(found[0].flow_id)}
        if not found:
            every = c.read_deployments()
            names = _flow_names(c, every)
            listing = ", ".join(sorted(f"{names.get(d.flow_id)}/{d.name}" for d in every)) or "(none)"
            raise ConfigError(f"no deployment named {name!r}; deployments on {stack.api_url}: {listing}. "
                              "Deploy with `mftasks deploy`", where="mftasks deployment run")
    choices = ", ".join(sorted(f"{flows.get(d.flow_id)}/{d.name}" for d in found))
    raise ConfigError(f"deployment name {name!r} is ambiguous: {choices}; use FLOW/NAME",
                      where="mftasks deployment run")


def _flow_names(client: SyncPrefectClient, deployments: list) -> dict[UUID, str]:
    ids = sorted({d.flow_id for d in deployments}, key=str)
    if not ids:
        return {}
    return {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=ids)))}


# ---------------------------------------------------------------------------------------------- runs
def run_deployment(stack: Stack, name: str, params: dict | None = None) -> dict:
    """Create a flow run of a deployment once every parameter passes its schema (all problems at once);
    the run as JSON plus `deployment` (FLOW/NAME)."""
    dep = find_deployment(stack, name)
    full = f"{dep['flow_name']}/{dep['name']}"
    ConfigError.raise_if(parameter_problems(dep.get("parameter_openapi_schema") or {}, params or {}),
                         where=f"parameters of {full}")
    with stack.client() as c:
        try:
            run = c.create_flow_run_from_deployment(UUID(dep["id"]), parameters=params or {})
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 401:
                raise
            raise ConfigError(f"the server rejected the parameters of {full}: {_detail(exc.response)}",
                              where="mftasks deployment run") from None
    return {**run.model_dump(mode="json"), "deployment": full}


def parameter_problems(schema: dict, params: dict) -> list[str]:
    """Every problem with params against a deployment's parameter schema, each naming the parameter.

    Stricter than the server's check: `pattern`'s `$` ends the string, as JSON Schema (ECMA-262) means it,
    where Python's re (which jsonschema uses) also matches before a final newline."""
    def pattern(validator, regex, instance, schema):
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
    """Poll a flow run until it ends; call on_state(name) at each state change; return the run as JSON.

    Crashed counts as the end only once it has held for `crash_settle` seconds: when a crashed run is
    retried (`prefect flow-run retry`), the worker's own, later report of the old process's exit can flip
    the retried run to Crashed for a moment before it runs on (docs/RELIABILITY.md)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = crashed_since = None
    with stack.client() as c:
        while True:
            run = c.read_flow_run(UUID(str(flow_run_id)))
            state = run.state.type.value if run.state else None
            if state != last and on_state:
                on_state(run.state.name if run.state else state)
            if state == "CRASHED":
                crashed_since = crashed_since if last == "CRASHED" else time.monotonic()
                if time.monotonic() - crashed_since >= crash_settle:
                    break
            elif state in TERMINAL:
                break
            last = state
            if deadline is not None and time.monotonic() > deadline:
                if state == "CRASHED":
                    break
                raise StackError(f"flow run {flow_run_id} still {state} after {timeout:.0f}s")
            time.sleep(1.0)
    return run.model_dump(mode="json")


def flow_run_url(stack: Stack, flow_run_id: str) -> str:
    return f"{stack.ui_url}/runs/flow-run/{flow_run_id}"
