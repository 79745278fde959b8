"""`make demo`: the finetune-gpt2 pipeline through a real local Prefect server and worker.

Starts (or reuses) the project's Prefect server on 127.0.0.1 and a process worker, deploys
deployments/prefect.yaml, runs the `finetune-gpt2` deployment on the embedded demo corpus with a
CPU-sized preset, waits, and prints a summary and the UI address of the flow run.  Running it again
reuses the server and the cached data preparation.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from flows import stack as st


def main(argv: list[str] | None = None) -> int:
    params = dict(p.split("=", 1) for p in (argv if argv is not None else sys.argv[1:]))
    s = st.Stack.from_env()
    t0 = time.time()
    print(st.start_server(s), flush=True)
    print(st.start_worker(s), flush=True)
    st.deploy(s)
    print("deployed deployments/prefect.yaml", flush=True)
    run = st.run_deployment(s, "finetune-gpt2", {k: json.loads(v) if v[:1].isdigit() else v
                                                 for k, v in params.items()})
    url = st.flow_run_url(s, run["id"])
    print(f"flow run {run['name']} of {run['deployment']}: {url}", flush=True)
    final = st.watch(s, run["id"], on_state=lambda name: print(f"  state: {name}", flush=True))
    work_dir = Path(final.get("parameters", {}).get("work_dir", "demo/pipeline"))
    summary_file = work_dir / "runs" / run["id"] / "summary.json"
    if final["state"]["type"] != "COMPLETED" or not summary_file.is_file():
        print(f"finetune-gpt2 ended {final['state']['name']}; see {url} and {s.home}/worker-default.log")
        return 1
    print(render_summary(json.loads(summary_file.read_text()), url, time.time() - t0))
    return 0


def render_summary(summary: dict, url: str, seconds: float) -> str:
    m, prev = summary["metrics"], summary.get("previous") or {}
    lines = [f"finetune-gpt2 completed in {summary['seconds']:.0f}s (demo total {seconds:.0f}s)",
             f"  stages: train {summary['stages']['train']:.0f}s, LoRA finetune {summary['stages']['lora']:.0f}s",
             f"  finetune-domain perplexity: {m['finetune_base_PPL']:.2f} before -> {m['finetune_merged_PPL']:.2f} "
             f"after LoRA finetune",
             f"  pretraining-domain perplexity (base): {m['pretrain_base_PPL']:.2f}"]
    if prev:
        lines.append(f"  previous run: finetune-domain PPL {prev.get('finetune_merged_PPL', float('nan')):.2f}")
    for p in summary.get("predictions", [])[:4]:
        lines.append(f"  predict: {p['output']!r} (expected {p['expected']!r})")
    lines.append(f"  merged model: {summary['merged_model']}")
    lines.append(f"  Prefect UI: {url}")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("GLOG_v", "3")
    sys.exit(main())
