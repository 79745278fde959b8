"""Security properties the project promises (docs/SECURITY.md).

(a) no shell anywhere in mftasks/ and flows/: processes are started from argv lists (checked on the
    syntax tree, so comments and strings don't count);
(b) deployment parameters carrying path traversal or shell metacharacters are rejected on the client,
    against the flow's real parameter schema, and again by the flow itself;
(c) the server listens on 127.0.0.1 only;
(d) basic auth for a shared server: without credentials the API answers 401; a worker and the
    command line holding PREFECT_API_AUTH_STRING work; the command line without it fails clearly;
(e) the work pool's base job template is locked (an older pool's template is replaced);
(f) an attacker with API access, basic auth off, then on: runs of every deployment with hostile
    parameters and job variables are refused at creation, or fail on their parameters before any task,
    or run without writing outside the project or running another command.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from flows import stack as st

from conftest import running_stack

REPO = Path(__file__).resolve().parents[1]
AUTH = "admin:secret"
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- (a) no shell
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
               ("asyncio", "create_subprocess_shell")}


def shell_uses(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, what) for every shell use in Python source: shell=<not False>, os.system/popen, getoutput, ..."""
    tree = ast.parse(source, filename)
    modules: dict[str, str] = {}  # local name -> module (import subprocess as sp)
    functions: dict[str, tuple[str, str]] = {}  # local name -> (module, function) (from os import system)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                modules[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                functions[a.asname or a.name] = (node.module, a.name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append((node.lineno, f"shell={ast.unparse(kw.value)}"))
        f = node.func
        target = None
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modules:
            target = (modules[f.value.id], f.attr)
        elif isinstance(f, ast.Name) and f.id in functions:
            target = functions[f.id]
        if target in SHELL_CALLS:
            found.append((node.lineno, f"{target[0]}.{target[1]}()"))
        elif isinstance(f, ast.Attribute) and f.attr == "subprocess_shell":  # loop.subprocess_shell(...)
            found.append((node.lineno, "subprocess_shell()"))
    return sorted(found)


def test_shell_detector_reads_code_not_comments():
    code = '''
import os, subprocess as sp
from subprocess import getoutput as g
# subprocess.run(cmd, shell=True) and os.system("x") in a comment are fine
doc = "os.system( shell=True"
sp.run(["ls"], shell=False)
sp.run("ls", shell=True)
os.system("ls")
g("ls")
sp.Popen("ls", shell=flag)
'''
    assert shell_uses(code) == [(7, "shell=True"), (8, "os.system()"), (9, "subprocess.getoutput()"),
                                (10, "shell=flag")]


def test_no_shell_in_the_library_or_flows():
    files = sorted(p for d in ("mftasks", "flows") for p in (REPO / d).rglob("*.py"))
    assert len(files) > 10, files
    problems = [f"{p.relative_to(REPO)}:{line}: {what}"
                for p in files for line, what in shell_uses(p.read_text(encoding="utf-8"), str(p))]
    assert not problems, "start processes from argv lists, never through a shell:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------- (b) parameters
NASTY = ["../../etc", "/etc/passwd", "a;rm -rf /", "$(id)", "`id`", "a|b", "a b", "a\nb", "\nid", "a/../b", "..",
         "a&&b", "a>b", "~/x", "a\\b", "a/*", "", "x" * 201]


@pytest.fixture(scope="module")
def schemas():
    from prefect.utilities.callables import parameter_schema

    import flows.pipeline as pipeline

    return {name: parameter_schema(fn).model_dump_for_openapi()
            for name, fn in (("finetune-gpt2", pipeline.finetune_gpt2), ("prepare-data", pipeline.prepare_data))}


@pytest.mark.parametrize("value", NASTY, ids=repr)
@pytest.mark.parametrize("name", ["corpus_dir", "work_dir"])
@pytest.mark.parametrize("flow", ["finetune-gpt2", "prepare-data"])
def test_path_parameters_reject_traversal_and_shell_syntax(schemas, flow, name, value):
    problems = st.parameter_problems(schemas[flow], {name: value})
    assert problems and all(p.startswith(f"{name}:") for p in problems), (value, problems)


def test_a_trailing_newline_is_rejected_too(schemas):
    """JSON Schema's `$` (ECMA-262) ends the string, but jsonschema checks `pattern` with Python's re.search,
    where `$` also matches before a final newline: "demo\n" slips through unless the client checks for it.
    (The flow itself, with pydantic's regex, rejects it: see test_the_flow_itself_rejects_bad_paths.)"""
    missed = [f"{flow}.{name}" for flow in schemas for name in ("corpus_dir", "work_dir")
              if not st.parameter_problems(schemas[flow], {name: "demo\n"})]
    assert not missed, f"'demo\\n' accepted by flows.stack.parameter_problems for {missed}"


@pytest.mark.parametrize("params", [{"model_type": "gpt2_tiny; id"}, {"nproc": "1; id"}, {"master_port": "$(id)"},
                                   {"vocab_size": "300 && id"}, {"corpus_dir": ["demo", "corpus"]}], ids=repr)
def test_other_parameters_reject_strings_smuggling_commands(schemas, params):
    problems = st.parameter_problems(schemas["finetune-gpt2"], params)
    assert len(problems) == 1 and problems[0].startswith(next(iter(params))), problems


def test_project_relative_paths_are_accepted(schemas):
    ok = {"corpus_dir": "demo/corpus", "work_dir": "build/e2e-1a2b/pipe_line.v2", "model_type": "gpt2_tiny"}
    assert st.parameter_problems(schemas["finetune-gpt2"], ok) == []


@pytest.mark.parametrize("value", [*NASTY, "demo\n"], ids=repr)
def test_the_flow_itself_rejects_bad_paths(value):
    """Second line: a run created around the client (prefect CLI, UI) still fails before using the value."""
    from prefect.exceptions import ParameterTypeError

    import flows.pipeline as pipeline

    with pytest.raises(ParameterTypeError, match="work_dir"):
        pipeline.finetune_gpt2.validate_parameters({"work_dir": value})


# ---------------------------------------------------------------------------------------------- (f) an attacker, no auth
def test_attacker_without_basic_auth(local_stack, bait, project_checkpoint):
    """The project's default: no password, the API on 127.0.0.1 (any local user is this attacker).  Runs before
    auth_stack exists: the session's local_stack must not start inside auth_stack's environment."""
    rel, checkpoint = project_checkpoint
    assert local_stack.auth is None
    with _Client(base_url=local_stack.api_url, timeout=30) as client:  # raw HTTP
        refused_at_creation(client, bait, str(rel))
        hostile_runs_fail_before_any_work(client, bait, str(rel))
        hostile_prompts_and_job_variables_run_harmlessly(client, bait, str(rel / "noauth"), checkpoint)


# ---------------------------------------------------------------------------------------------- (c), (d) a server
@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory):
    """A server started by flows.stack with its defaults and PREFECT_API_AUTH_STRING set (workers are the
    tests' own)."""
    with running_stack(tmp_path_factory.mktemp("prefect-home"), workers=(), deploy=False, MFTASKS_PREFECT_HOST=None,
                       PREFECT_API_AUTH_STRING=AUTH, PREFECT_SERVER_API_AUTH_STRING=None) as stack:
        assert stack.auth == AUTH and stack.host == "127.0.0.1"
        yield stack


def _cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env=os.environ if env is None else env, cwd=REPO, timeout=timeout, stdin=subprocess.DEVNULL)


def _without_auth() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING")}


def test_server_listens_on_loopback_only(auth_stack):
    pid = json.loads((auth_stack.home / "server.pid").read_text())["pid"]
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    listening = [(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert ("127.0.0.1", auth_stack.port) in listening, listening
    assert all(ip == "127.0.0.1" for ip, _ in listening), f"server listens beyond loopback: {listening}"
    outside = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
               if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for ip in outside:  # the machine's other addresses get no answer
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((ip, auth_stack.port))


def test_api_refuses_requests_without_the_right_credentials(auth_stack):
    url = f"{auth_stack.api_url}/deployments/filter"
    assert httpx.post(url, json={}, timeout=10).status_code == 401
    assert httpx.post(url, json={}, auth=("admin", "wrong"), timeout=10).status_code == 401
    assert httpx.post(url, json={}, auth=("admin", "secret"), timeout=10).status_code == 200
    with auth_stack.client() as c:  # what flows.stack uses: Prefect's client with the stack's credentials
        assert c.request("POST", "/deployments/filter", json={}).status_code == 200
    assert httpx.get(f"{auth_stack.api_url}/health", timeout=10).status_code == 200  # probes stay open


def test_worker_and_command_line_run_a_deployment_with_basic_auth(auth_stack):
    st.start_worker(auth_stack)
    st.deploy(auth_stack)
    dep = st.find_deployment(auth_stack, "prepare-data")  # its schema is the one the offline tests check
    from prefect.utilities.callables import parameter_schema

    import flows.pipeline as pipeline

    offline = parameter_schema(pipeline.prepare_data).model_dump_for_openapi()["properties"]
    served = dep["parameter_openapi_schema"]["properties"]
    assert sorted(served) == sorted(offline)
    assert served["work_dir"]["pattern"] == offline["work_dir"]["pattern"]

    r = _cli("server", "status")
    assert r.returncode == 0 and "server  up" in r.stdout and "worker  up" in r.stdout, r.stdout + r.stderr

    rel = Path("build") / f"sec-{uuid.uuid4().hex[:8]}"  # deployment parameters are project-relative
    from mftasks.data import demo_corpus

    demo_corpus.build(REPO / rel / "corpus", max_bytes=150_000, qa_pairs=2500, checks=8)
    try:
        r = _cli("deployment", "run", "prepare-data", "-p", f"corpus_dir={rel / 'corpus'}",
                 "-p", f"work_dir={rel / 'pipeline'}", "-p", "model_type=gpt2_tiny", "-p", "vocab_size=300", "--watch")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "created flow run" in r.stdout and "state: Completed" in r.stdout, r.stdout
        assert (REPO / rel / "pipeline" / "data").is_dir()
    finally:
        shutil.rmtree(REPO / rel, ignore_errors=True)


def test_command_line_without_credentials_fails_clearly(auth_stack):
    r = _cli("deployment", "run", "prepare-data", env=_without_auth(), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "HTTP 401" in r.stderr and "PREFECT_API_AUTH_STRING" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

    r = _cli("deployment", "run", "prepare-data", env={**_without_auth(), "PREFECT_API_AUTH_STRING": "admin:wrong"},
             timeout=120)
    assert r.returncode == 2 and "PREFECT_API_AUTH_STRING" in r.stderr, r.stderr

    # worker start / deploy stop at the work pool: one line naming HTTP 401, no traceback, nothing started
    for argv in (["worker", "start", "--queue", "nocreds"], ["deploy"]):
        r = _cli(*argv, env=_without_auth(), timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert "HTTP 401" in r.stderr, r.stderr
    assert not (auth_stack.home / "worker-nocreds.pid").exists()


# ---------------------------------------------------------------------------------------------- (e) the work pool
def test_work_pool_template_is_locked_and_an_older_pool_is_locked_too(auth_stack):
    """ensure_pool creates the pool with LOCKED_JOB_TEMPLATE, and replaces the template of a pool made with
    Prefect's default one (what older versions of mftasks created)."""
    from prefect.workers.process import ProcessWorker

    old = st.Stack(**{**auth_stack.__dict__, "pool": f"legacy-{uuid.uuid4().hex[:6]}"})
    with old.client() as c:
        r = c.request("POST", "/work_pools/", json={"name": old.pool, "type": "process",
                                                    "base_job_template": ProcessWorker.get_default_base_job_template()})
        assert r.status_code == 201, r.text
    assert st.ensure_pool(old) == "locked"
    assert st.ensure_pool(old) == "unchanged"
    with old.client() as c:
        assert c.request("GET", f"/work_pools/{old.pool}").json()["base_job_template"] == st.LOCKED_JOB_TEMPLATE
        c.request("DELETE", f"/work_pools/{old.pool}")


# ---------------------------------------------------------------------------------------------- (f) an attacker
# With API access (basic auth off, or the password), an attacker creates runs of every deployment with
# hostile parameters and job variables.  Each is refused when the run is created, or the run reads and
# writes nothing outside the project's folders and runs no other command.
class _Client(httpx.Client):
    """Raw HTTP; a 503 (a busy SQLite server, now and then) is sent again, a second later, as Prefect's client
    does."""

    def request(self, *args, **kwargs):
        import time

        for _ in range(9):
            r = super().request(*args, **kwargs)
            if r.status_code != 503:
                return r
            time.sleep(1.0)
        return super().request(*args, **kwargs)


VALID = {"prompts": ["Question: hi"], "node_rank": 0, "nnodes": 1, "nproc_per_node": 1}
"""Valid values for the required parameters that are not paths."""


@pytest.fixture(scope="module")
def bait(tmp_path_factory):
    """Files and folders outside the project that a successful attack would create or change."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # short: gpt2_tiny's context is 64 tokens
    target = root / "t.json"
    target.write_text("precious\n")
    escape = f"escape-{uuid.uuid4().hex[:8]}"
    evil = _evil_dirs(root)
    yield {"root": root, "target": target, "mtime": target.stat().st_mtime_ns, "canary": root / "c",
           "elsewhere": root / "e", "escape": escape, **evil}
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(REPO.parent / escape, ignore_errors=True)


def _evil_dirs(root: Path) -> dict:
    """Job variables that would each run another command if the worker honoured them."""
    canaries = {k: root / f"canary-{k}" for k in ("command", "env", "working_dir")}
    touch = "import pathlib; pathlib.Path({!r}).touch()"
    site = root / "site"  # env PYTHONPATH: Python imports sitecustomize.py at start-up
    site.mkdir()
    (site / "sitecustomize.py").write_text(touch.format(str(canaries["env"])) + "\n")
    work = root / "work"  # working_dir: `python -m prefect.engine` would import this `prefect` first
    (work / "prefect").mkdir(parents=True)
    (work / "prefect" / "__init__.py").write_text(touch.format(str(canaries["working_dir"])) + "\n")
    (work / "prefect" / "engine.py").write_text("")
    command = f"{sys.executable} -c \"{touch.format(str(canaries['command']))}\""
    job_variables = [{"command": command}, {"env": {"PYTHONPATH": str(site)}}, {"env.PYTHONPATH": str(site)},
                     {"working_dir": str(work)}, {"stream_output": False}, {"name": "x"}]
    return {"canaries": canaries, "job_variables": job_variables,
            "all_job_variables": {"command": command, "env": {"PYTHONPATH": str(site)}, "working_dir": str(work)}}


def _hostile_paths(bait) -> list[str]:
    c = bait["canary"]
    return [f"../{bait['escape']}", f"../../{bait['escape']}", str(bait["root"] / "abs"), f"x;touch {c}",
            f"$(touch {c})", f"`touch {c}`", f"x && touch {c}", f"a|touch {c}", "a b", "a\nb", "~/x", "demo/../.."]


def _deployments(client) -> list[dict]:
    r = client.post("/deployments/filter", json={})
    assert r.status_code == 200, r.text
    deployments = r.json()
    names = {d["name"] for d in deployments}
    declared = {"finetune-gpt2", "prepare-data", "nightly-eval", "train", "finetune", "evaluate", "predict",
                "node-launch", "multi-node-train"}
    assert declared <= names, names
    # the project's own (deployments/prefect.yaml: an entrypoint under flows/), not ones other tests made
    return [d for d in deployments if d["name"] in declared and (d.get("entrypoint") or "").startswith("flows/")]


def _paths(dep: dict) -> list[str]:
    props = dep["parameter_openapi_schema"]["properties"]
    return sorted(k for k, v in props.items() if "pattern" in v and k != "master_addr")


def _required(dep: dict, rel: str) -> dict:
    schema = dep["parameter_openapi_schema"]
    return {k: VALID.get(k, f"{rel}/{k}") for k in schema.get("required", [])}


def _assert_untouched(bait) -> None:
    assert bait["target"].read_text() == "precious\n" and bait["target"].stat().st_mtime_ns == bait["mtime"]
    made = [str(p) for p in (bait["canary"], bait["elsewhere"], bait["root"] / "abs", REPO.parent / bait["escape"],
                             *bait["canaries"].values()) if p.exists()]
    assert not made, f"an attack wrote outside the project: {made}"


def refused_at_creation(client, bait, rel: str) -> None:
    """Every hostile parameter and job variable of every deployment: refused before a run exists."""
    for dep in _deployments(client):
        base = _required(dep, rel)
        url = f"/deployments/{dep['id']}/create_flow_run"
        for name in _paths(dep):
            for value in _hostile_paths(bait):
                r = client.post(url, json={"parameters": {**base, name: value}})
                assert r.status_code == 409 and "Error creating flow run" in r.text, (dep["name"], name, value, r.text)
        for jv in bait["job_variables"]:
            r = client.post(url, json={"parameters": base, "job_variables": jv})
            assert r.status_code == 422 and "Additional properties are not allowed" in r.text, (dep["name"], jv, r.text)
            r = client.post(url, json={"parameters": base, "job_variables": jv,
                                       "enforce_parameter_schema": False})  # no way around it
            assert r.status_code == 422, (dep["name"], jv, r.text)
    # nor by editing a scheduled run (editing a deployment's job variables: see the harmless run below)
    dep = _deployments(client)[0]
    r = client.post(f"/deployments/{dep['id']}/create_flow_run",
                    json={"parameters": _required(dep, rel),
                          "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": "2999-01-01T00:00:00Z"}}})
    assert r.status_code in (200, 201), r.text
    run_id = r.json()["id"]
    r = client.patch(f"/flow_runs/{run_id}", json={"job_variables": bait["all_job_variables"]})
    assert r.status_code == 422 and "Additional properties are not allowed" in r.text, r.text
    client.delete(f"/flow_runs/{run_id}")
    _assert_untouched(bait)


def _wait(client, run_ids: list[str], bait: dict, timeout: float = 300) -> dict[str, dict]:
    """The runs once all have ended; fails at once when an attack has written outside the project."""
    import time

    deadline, runs = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        _assert_untouched(bait)
        runs = {i: client.get(f"/flow_runs/{i}").json() for i in run_ids}
        if all((r.get("state") or {}).get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
               for r in runs.values()):
            return runs
        time.sleep(1)
    raise AssertionError(f"runs not finished after {timeout}s: {[(i, r['state']['type']) for i, r in runs.items()]}")


def hostile_runs_fail_before_any_work(client, bait, rel: str) -> None:
    """The server's schema check switched off by the caller (enforce_parameter_schema: false): each
    deployment's run starts, and the flow rejects its parameters before it uses any of them."""
    hostile = _hostile_paths(bait)
    ids = {}
    for i, dep in enumerate(_deployments(client)):
        params = {**_required(dep, rel), **{n: hostile[(i + j) % len(hostile)] for j, n in enumerate(_paths(dep))}}
        if "prompts" in params:
            params["prompts"] = [f"--result_file={bait['target']}"]
        r = client.post(f"/deployments/{dep['id']}/create_flow_run",
                        json={"parameters": params, "enforce_parameter_schema": False})
        assert r.status_code in (200, 201), (dep["name"], r.text)
        ids[r.json()["id"]] = dep["name"]
    for run_id, run in _wait(client, list(ids), bait).items():
        state = run["state"]
        assert state["type"] == "FAILED" and "Validation of flow parameters failed" in (state["message"] or ""), \
            (ids[run_id], state)
        tasks = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}).json()
        assert tasks == [], (ids[run_id], [t["name"] for t in tasks])  # the flow body never ran
    _assert_untouched(bait)


def hostile_prompts_and_job_variables_run_harmlessly(client, bait, rel: str, checkpoint: str) -> None:
    """Prefect 3.9.1 checks job variables against the pool's schema only for create_flow_run of a
    deployment and for a flow-run PATCH: PATCH /deployments/{id} and POST /flow_runs/ take any.  So the
    predict deployment gets every hostile job variable, and a run of it, created through POST /flow_runs/,
    gets them again, with prompts that read like options: the worker ignores the job variables (the locked
    template has nothing for them to fill) and the prompts are predicted as text."""
    dep = next(d for d in _deployments(client) if d["name"] == "predict")
    r = client.patch(f"/deployments/{dep['id']}", json={"job_variables": bait["all_job_variables"]})
    assert r.status_code in (204, 422), r.text  # accepted by 3.9.1; harmless either way
    try:
        _predict_through_flow_runs(client, bait, rel, checkpoint, dep)
    finally:
        r = client.patch(f"/deployments/{dep['id']}", json={"job_variables": {}})
        assert r.status_code == 204, r.text


def _predict_through_flow_runs(client, bait, rel: str, checkpoint: str, dep: dict) -> None:
    prompts = [f"$(touch {bait['canary']})", f"--result_file={bait['target']}", f"--output_dir={bait['elsewhere']}"]
    params = {"prompts": prompts, "checkpoint": checkpoint, "model_type": "gpt2_tiny", "output_dir": f"{rel}/predict",
              "max_new_tokens": 2}
    r = client.post("/flow_runs/", json={
        "flow_id": dep["flow_id"], "deployment_id": dep["id"], "work_pool_name": dep["work_pool_name"],
        "work_queue_name": dep["work_queue_name"], "parameters": params,
        "job_variables": bait["all_job_variables"], "state": {"type": "SCHEDULED"}})
    assert r.status_code in (200, 201), r.text
    run = _wait(client, [r.json()["id"]], bait)[r.json()["id"]]
    assert run["state"]["type"] == "COMPLETED", run["state"]
    _assert_untouched(bait)
    result = json.loads((REPO / rel / "work" / "stages" / "predict" / "prompts.json").read_text())
    assert result == prompts
    outputs = sorted((REPO / rel / "work" / "stages" / "predict").glob("result-attempt*.json"))
    texts = [o["text_generation_text"][0] for o in json.loads(outputs[-1].read_text())["result"]]
    assert [t.startswith(p) for p, t in zip(prompts[1:], texts[1:])] == [True, True], texts


@pytest.fixture(scope="module")
def project_checkpoint(tiny_dataset):
    """A gpt2_tiny checkpoint inside the project (deployment paths are project-relative), and that folder."""
    from test_prompts_are_data import train_tiny

    rel = Path("build") / f"sec-{uuid.uuid4().hex[:8]}"
    ckpt = train_tiny(REPO / rel / "ckpt", tiny_dataset)
    yield rel, str(ckpt.relative_to(REPO))
    shutil.rmtree(REPO / rel, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_deployed(auth_stack):
    """auth_stack with a worker and every deployment."""
    st.start_worker(auth_stack)
    try:
        st.find_deployment(auth_stack, "predict/predict")
    except Exception:  # noqa: BLE001 - not deployed yet
        st.deploy(auth_stack)
    return auth_stack


def test_attacker_with_basic_auth(auth_deployed, bait, project_checkpoint):
    """Without the password nothing is accepted; with it, the same refusals as without basic auth."""
    rel, checkpoint = project_checkpoint
    with _Client(base_url=auth_deployed.api_url, timeout=30) as anonymous:
        r = anonymous.post("/deployments/filter", json={})
        assert r.status_code == 401
        with _Client(base_url=auth_deployed.api_url, timeout=30, auth=tuple(AUTH.split(":"))) as client:
            for dep in _deployments(client):
                r = anonymous.post(f"/deployments/{dep['id']}/create_flow_run",
                                   json={"parameters": _required(dep, str(rel)),
                                         "job_variables": bait["all_job_variables"]})
                assert r.status_code == 401, (dep["name"], r.text)
            refused_at_creation(client, bait, str(rel))
            hostile_prompts_and_job_variables_run_harmlessly(client, bait, str(rel / "auth"), checkpoint)
