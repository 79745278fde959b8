"""The `mftasks` console command: the library's commands (mftasks.cli) plus the Prefect ones.

    mftasks server start|stop|status
    mftasks worker start|stop [--queue node-0 --devices 8]
    mftasks deploy
    mftasks deployment run NAME [-p key=value ...] [--watch]

The library never imports Prefect, so this command lives in the Prefect layer; `python -m mftasks.cli`
still offers the library's own commands.  Prefect is imported only when one of these commands runs.
"""
from __future__ import annotations

import json
import sys

from mftasks import cli
from mftasks.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, parser=cli.build_parser(more=[add_commands]))


def add_commands(sub) -> None:
    p = sub.add_parser("server", help="the project's Prefect server (127.0.0.1, SQLite under .prefect/)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=_server)

    p = sub.add_parser("worker", help="a Prefect process worker on the project's work pool")
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--queue", help="work queue (one per node for multi-node dispatch), e.g. node-0")
    p.add_argument("--devices", type=int, help="devices this node offers (its concurrency limit; default: CPUs)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("deploy", help="deploy every flow in deployments/prefect.yaml (from the repo root)")
    p.set_defaults(func=_deploy)

    p = sub.add_parser("deployment", help="run a deployment by its bare name")
    dsub = p.add_subparsers(title="deployment commands")
    r = dsub.add_parser("run", help="mftasks deployment run finetune-gpt2 -p key=value --watch")
    r.add_argument("name", help="deployment name, bare (finetune-gpt2) or FLOW/NAME")
    r.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--watch", action="store_true", help="wait for the run to end; exit 0 only if it completed")
    r.set_defaults(func=_deployment_run)


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


def _server(args) -> int:
    from flows import stack as st

    s = st.Stack.from_env()
    print({"start": st.start_server, "stop": st.stop_server, "status": st.status}[args.action](s))
    return 0


def _worker(args) -> int:
    from flows import stack as st

    s = st.Stack.from_env()
    if args.action == "stop":
        print("stopped: " + (", ".join(st.stop_workers(s)) or "none"))
    else:
        print(st.start_worker(s, queue=args.queue, devices=args.devices))
    return 0


def _deploy(args) -> int:
    from flows import stack as st

    print(st.deploy(st.Stack.from_env()))
    return 0


def _deployment_run(args) -> int:
    from flows import stack as st

    s = st.Stack.from_env()
    run = st.run_deployment(s, args.name, parse_params(args.param))
    print(f"created flow run {run['name']} ({run['id']}) of {run['deployment']}: {st.flow_run_url(s, run['id'])}")
    if not args.watch:
        return 0
    final = st.watch(s, run["id"], on_state=lambda name: print(f"state: {name}", flush=True))
    return 0 if final["state"]["type"] == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
