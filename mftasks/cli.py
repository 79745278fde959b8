"""The `mftasks` command line: one subcommand per library piece.

Errors of the user's making (MftasksError) print one clear message and exit with status 2; nothing
else is caught.
"""
from __future__ import annotations

import argparse
import sys

from .errors import MftasksError


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command of `parser` (default: the library's, build_parser())."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MftasksError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser(more=()) -> argparse.ArgumentParser:
    """The library's commands, then those that each of `more` (functions of the subparsers) adds."""
    parser = argparse.ArgumentParser(prog="mftasks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(title="commands")
    _add_data(sub)
    for extra in (*_EXTRA_COMMANDS, *more):
        extra(sub)
    return parser


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="prepare, inspect and build datasets")
    dsub = data.add_subparsers(title="data commands")

    p = dsub.add_parser("prepare", help="corpus -> sentencepiece -> packed MindRecord dataset")
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="text file, folder (recursive) or .jsonl file; repeat for several")
    p.add_argument("--output", required=True, metavar="DIR", help="dataset folder to write")
    p.add_argument("--seq-length", type=int, default=1024, help="model context length (samples are +1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--vocab-size", type=int, help="train a sentencepiece tokenizer of this size")
    g.add_argument("--tokenizer", metavar="MODEL", help="reuse this sentencepiece .model file")
    p.add_argument("--tokenizer-type", default="bpe", help="bpe (default) or unigram")
    p.add_argument("--max-sentences", type=int, default=300_000, help="cap on tokenizer training lines")
    p.add_argument("--eval-fraction", type=float, default=0.05, help="share of documents held out (0-0.5)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--pattern", action="append", metavar="GLOB",
                   help="file names picked inside input folders, relative (default: *.txt and *.md)")
    p.add_argument("--jsonl-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--num-shards", type=int, default=1, help="MindRecord files per split")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (output identical for any N)")
    p.add_argument("--force", action="store_true",
                   help="replace the mftasks dataset in --output when it was made from other inputs or parameters. "
                        "Without --force such a dataset is left alone (error); an up-to-date one is kept and a "
                        "damaged one of the same inputs is rebuilt either way. A folder holding anything else, "
                        "or an --output that is, holds or lies inside an --input, is never replaced")
    p.set_defaults(func=_data_prepare)

    p = dsub.add_parser("inspect", help="verify a dataset against its manifest and show a sample")
    p.add_argument("folder", metavar="DIR")
    p.set_defaults(func=_data_inspect)

    p = dsub.add_parser("demo-corpus", help="build the embedded demo corpora (no download)")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--max-bytes", type=int, default=3_000_000)
    p.set_defaults(func=_data_demo_corpus)


def _data_prepare(args) -> int:
    from .data import PrepareSpec, prepare
    from .data.sources import DEFAULT_PATTERNS

    spec = PrepareSpec(inputs=args.input, output=args.output, seq_length=args.seq_length,
                       vocab_size=args.vocab_size, tokenizer=args.tokenizer, tokenizer_type=args.tokenizer_type,
                       max_sentences=args.max_sentences, eval_fraction=args.eval_fraction, seed=args.seed,
                       patterns=tuple(args.pattern or DEFAULT_PATTERNS), jsonl_field=args.jsonl_field,
                       num_shards=args.num_shards, workers=args.workers, force=args.force)
    result = prepare(spec)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if result.status == "up_to_date":
        print(f"up to date: {result.output} (dataset_id {result.dataset_id[:16]}); nothing to do")
    else:
        print(f"{result.status}: {result.output} (dataset_id {result.dataset_id[:16]}): "
              f"{result.train_samples} train / {result.eval_samples} eval samples of "
              f"{result.manifest['sample_length']} tokens, {result.tokens} tokens in {result.seconds:.1f}s")
    return 0


def _data_inspect(args) -> int:
    from .data import inspect

    report = inspect(args.folder)
    print(report.render())
    return 0 if report.ok else 1


def _data_demo_corpus(args) -> int:
    from .data import demo_corpus

    c = demo_corpus.build(args.output, max_bytes=args.max_bytes)
    print(f"pretrain: {c.pretrain} ({c.pretrain_documents} documents, {c.pretrain_bytes} bytes)")
    print(f"finetune: {c.finetune} ({c.finetune_documents} question/answer documents)")
    print(f"checks:   {c.checks}")
    return 0


def _add_run(sub) -> None:
    from . import run

    p = sub.add_parser("run", help="train / finetune / eval / predict from a YAML config (like run_mindformer.py)")
    run.add_arguments(p)
    p.set_defaults(func=lambda args: run.main(args))


# Command groups beyond `data` register here.  The Prefect ones (server, worker, deploy, deployment) are
# added by flows/cli.py, the `mftasks` console command: the library never imports Prefect.
def _add_ranktable(sub) -> None:
    from . import ranktable

    ranktable.add_commands(sub)


def _add_launch(sub) -> None:
    from .launcher import add_commands

    add_commands(sub)


def _add_ckpt(sub) -> None:
    from .ckpt.cli import add_commands

    add_commands(sub)


_EXTRA_COMMANDS: list = [_add_run, _add_ranktable, _add_launch, _add_ckpt]


if __name__ == "__main__":
    sys.exit(main())
