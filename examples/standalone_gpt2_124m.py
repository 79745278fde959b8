"""Run MindFormers' single-card sample with `--model_type gpt2` (124M) on seq-1024 data, all four modes, on CPU.

This is the long proof behind issue #3's "Done when": MindFormers' own `standalone_task.py` (kept in
tests/fixtures/ with only its import line and device_target changed) run unchanged with the real GPT-2 layout.
The sample fixes `num_train_epochs=1, batch_size=2, warmup_steps=100`, so each training set must hold more than
200 samples of 1025 tokens. This driver builds exactly such a pair from the embedded demo corpus:

    1. `mftasks data demo-corpus` (Python standard-library docstrings + generated QA pairs; no download)
    2. `mftasks data prepare --seq-length 1024` for the pretraining text (tokenizer trained here) and for a
       QA subset (reusing that tokenizer), sized to just over 200 samples each
    3. standalone_task.py --model_type gpt2 in its four modes: train, eval, finetune --pet_method lora,
       predict 'hello!'

Every step is an argv list run in WORKDIR (default build/standalone-gpt2); logs go to WORKDIR/logs/ and a JSON
summary (seconds per mode, losses, PPL, prediction) to WORKDIR/summary.json. About 45 minutes on a 2-core
CPU, with 23 GB of memory for gpt2 at batch 2 x 1024: run it alone. `--prepare-only` stops after the data.

    .venv/bin/python examples/standalone_gpt2_124m.py [--workdir DIR] [--prepare-only]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "fixtures" / "mindformers_standalone_task.py"
SEQ = 1024


def _mftasks(*argv: str) -> list[str]:
    return [sys.executable, "-m", "mftasks.cli", *argv]


def _run(argv: list[str], log: Path, cwd: Path) -> tuple[float, str]:
    """Run argv with its output teed to log; raise with the log's tail when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    env = dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3"))
    with open(log, "w") as out:
        proc = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {proc.returncode}); see {log}:\n{text[-3000:]}")
    print(f"  done in {seconds:.0f} s -> {log}", flush=True)
    return seconds, text


def _samples(dataset: Path, split: str = "train") -> int:
    manifest = json.loads((dataset / "manifest.json").read_text())
    return int(manifest["splits"][split]["samples"])


def prepare(work: Path, pretrain_bytes: int, qa_pairs: int) -> tuple[Path, Path]:
    corpus = work / "corpus"
    if not corpus.is_dir():
        _run(_mftasks("data", "demo-corpus", str(corpus), "--max-bytes", str(pretrain_bytes)),
             work / "logs" / "corpus.log", work)
    pretrain = work / "data" / "pretrain"
    if not (pretrain / "manifest.json").is_file():
        _run(_mftasks("data", "prepare", "--input", str(corpus / "pretrain"), "--output", str(pretrain),
                      "--seq-length", str(SEQ), "--vocab-size", "8000", "--eval-fraction", "0.03",
                      "--pattern", "*.jsonl"),
             work / "logs" / "prepare-pretrain.log", work)
    qa_dir = work / "qa-subset"
    if not qa_dir.is_dir():
        lines = (corpus / "finetune" / "qa.jsonl").read_text().splitlines()[:qa_pairs]
        qa_dir.mkdir(parents=True)
        (qa_dir / "qa.jsonl").write_text("\n".join(lines) + "\n")
    finetune = work / "data" / "finetune"
    if not (finetune / "manifest.json").is_file():
        _run(_mftasks("data", "prepare", "--input", str(qa_dir), "--output", str(finetune), "--seq-length",
                      str(SEQ), "--tokenizer", str(pretrain / "tokenizer.model"), "--eval-fraction", "0.02",
                      "--pattern", "*.jsonl"),
             work / "logs" / "prepare-finetune.log", work)
    for name, path in (("pretrain", pretrain), ("finetune", finetune)):
        n = _samples(path)
        print(f"{name}: {n} training samples of {SEQ + 1} tokens -> {n // 2} steps at batch 2", flush=True)
        if n // 2 <= 100:
            raise SystemExit(f"{name} gives only {n // 2} steps; the sample's warmup_steps=100 needs more than 100 "
                             f"(raise --pretrain-bytes / --qa-pairs and delete {work})")
    return pretrain, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=str(REPO / "build" / "standalone-gpt2"))
    parser.add_argument("--pretrain-bytes", type=int, default=1_000_000)
    parser.add_argument("--qa-pairs", type=int, default=9_800)
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pretrain, finetune = prepare(work, args.pretrain_bytes, args.qa_pairs)
    if args.prepare_only:
        return
    sample = [sys.executable, str(SAMPLE), "--task", "text_generation", "--model_type", "gpt2"]
    summary: dict = {"model_type": "gpt2", "seq_length": SEQ, "train_samples": _samples(pretrain),
                     "finetune_samples": _samples(finetune), "seconds": {}}
    modes = [("train", ["--train_dataset", str(pretrain), "--run_mode", "train"]),
             ("eval", ["--eval_dataset", str(pretrain), "--run_mode", "eval"]),
             ("finetune", ["--train_dataset", str(finetune), "--pet_method", "lora", "--run_mode", "finetune"]),
             ("predict", ["--predict_data", "hello!", "--run_mode", "predict"])]
    for mode, extra in modes:
        print(f"standalone_task.py --model_type gpt2 --run_mode {mode} ...", flush=True)
        seconds, text = _run(sample + extra, work / "logs" / f"{mode}.log", work)
        summary["seconds"][mode] = round(seconds, 1)
        if mode == "predict":
            summary["prediction"] = text.strip().splitlines()[-1]
    log = (work / "output" / "log" / "rank_0" / "mindformer.log").read_text(errors="replace")
    summary["mindformer_log_tail"] = [line for line in log.splitlines()
                                      if re.search(r"finished|evaluate:|checkpoint", line)][-8:]
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
