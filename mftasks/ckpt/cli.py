"""`mftasks ckpt ...`: list, verify, merge, convert and import checkpoints.

`add_commands(subparsers)` registers the `ckpt` group; each handler returns the exit status (verify: 0
verified, 1 not).  Errors of the user's making raise mftasks.errors subclasses (the main CLI prints
them and exits 2).
"""
from __future__ import annotations

from pathlib import Path


def add_commands(subparsers) -> None:
    group = subparsers.add_parser("ckpt", help="list, verify, merge, convert and import checkpoints")
    sub = group.add_subparsers(title="ckpt commands")

    p = sub.add_parser("list", help="the checkpoint sets of an output dir: step, ranks, size, verified, kind")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    p.add_argument("--no-hash", action="store_true", help="check sizes only (no sha256; fast)")
    p.set_defaults(func=_list)

    p = sub.add_parser("verify", help="a checkpoint file, or every set of an output dir, against its manifests")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=_verify)

    p = sub.add_parser("merge", help="one step of an output dir -> one checkpoint (data-parallel replicas, "
                                     "or slices when the dir has strategy files)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    p.add_argument("--output", required=True, metavar="OUT", help="checkpoint to write (.ckpt or .safetensors)")
    p.add_argument("--step", type=int, help="global step (default: the newest step every rank has)")
    p.add_argument("--prefix", help="which run when several share the dir (e.g. mindformers_lora)")
    p.set_defaults(func=_merge)

    p = sub.add_parser("merge-sliced", help="model/pipeline-parallel rank files + strategy -> one checkpoint")
    p.add_argument("--ranks", nargs="+", required=True, metavar="FILE", help="rank files, in rank order")
    p.add_argument("--strategy", nargs="+", required=True, metavar="FILE", help="strategy file(s) of the run")
    p.add_argument("--output", required=True, metavar="OUT")
    p.set_defaults(func=_merge_sliced)

    p = sub.add_parser("transform", help="re-slice rank files for another strategy (MindSpore's transform)")
    p.add_argument("--ranks", nargs="+", required=True, metavar="FILE", help="rank files, in rank order")
    p.add_argument("--strategy", nargs="+", required=True, metavar="FILE", help="their strategy file(s)")
    p.add_argument("--dst-strategy", metavar="FILE", help="target strategy (default: one unsliced rank)")
    p.add_argument("--output", required=True, metavar="DIR", help="new output dir (checkpoint/rank_N/...)")
    p.set_defaults(func=_transform)

    p = sub.add_parser("merge-lora", help="fold a LoRA adapter into its base checkpoint")
    p.add_argument("--base", required=True, metavar="B")
    p.add_argument("--adapter", required=True, metavar="A")
    p.add_argument("--output", required=True, metavar="O")
    p.set_defaults(func=_merge_lora)

    p = sub.add_parser("convert", help="between .ckpt and .safetensors, keeping a manifest")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.set_defaults(func=_convert)

    p = sub.add_parser("import-hf", help="a Hugging Face GPT-2 safetensors file -> our checkpoint")
    p.add_argument("src", metavar="SRC")
    p.add_argument("--model-type", required=True, help="model preset (gpt2, gpt2_tiny, ...)")
    p.add_argument("--vocab-size", type=int, help="override the preset's vocab_size")
    p.add_argument("--output", required=True, metavar="OUT")
    p.set_defaults(func=_import_hf)


def _list(args) -> int:
    from .sets import sets_in

    found = sets_in(args.output_dir)
    if not found:
        print(f"{args.output_dir}: no checkpoints with manifests under checkpoint/rank_*/")
        return 0
    rows = [("STEP", "PREFIX", "STAGE", "KIND", "RANKS", "SIZE", "VERIFIED")]
    for s in found:
        problems = s.problems(hashes=not args.no_hash)
        ranks = f"{len(s.ranks)}/{s.world_size}" + (f" (missing {','.join(map(str, s.missing))})" if s.missing else "")
        verified = "no" if problems else ("size" if args.no_hash else "yes")
        rows.append((str(s.global_step), s.prefix, str(s.stage), s.kind, ranks, _mb(s.size), verified))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _verify(args) -> int:
    from .. import checkpoint as ckpt
    from ..errors import CheckpointError
    from .sets import sets_in

    path = Path(args.path)
    if path.is_file():
        problems = ckpt.verify(path)
        report = {str(path): problems}
    elif (path / "checkpoint").is_dir():
        found = sets_in(path)
        if not found:
            raise CheckpointError(f"{path}: no checkpoints with manifests under checkpoint/rank_*/")
        report = {f"{s.prefix} step {s.global_step} ({len(s.ranks)}/{s.world_size} ranks)": s.problems()
                  for s in found}
    elif path.is_dir():
        report = {info.path.name: ckpt.verify(info.path) for info in ckpt.listing(path)}
        if not report:
            raise CheckpointError(f"{path}: neither a checkpoint file nor an output dir with checkpoint/rank_*/")
    else:
        raise CheckpointError(f"{path} does not exist")
    for what, problems in report.items():
        print(f"{'ok' if not problems else 'FAILED'}  {what}")
        for p in problems:
            print(f"    {p}")
    return 0 if not any(report.values()) else 1


def _merge(args) -> int:
    from .sliced import merge_set

    out = merge_set(args.output_dir, args.output, global_step=args.step, prefix=args.prefix)
    print(f"merged: {out}")
    return 0


def _merge_sliced(args) -> int:
    from .sliced import merge_sliced

    out = merge_sliced(args.ranks, args.strategy, args.output)
    print(f"merged {len(args.ranks)} slices: {out}")
    return 0


def _transform(args) -> int:
    from .sliced import transform

    out = transform(args.ranks, args.strategy, args.dst_strategy, args.output)
    print(f"transformed: {out}")
    return 0


def _merge_lora(args) -> int:
    from .lora_merge import merge_lora_status

    out, did = merge_lora_status(args.base, args.adapter, args.output)
    if did == "exists":
        print(f"already merged: {out} holds adapter {args.adapter}; nothing to do")
    elif did == "copied":
        print(f"already merged: base {args.base} already holds adapter {args.adapter}; wrote a verified copy of "
              f"it to {out}")
    else:
        print(f"merged: {out}")
    return 0


def _convert(args) -> int:
    from .derived import has_manifest
    from .formats import convert

    out = convert(args.src, args.dst)
    if has_manifest(out):
        print(f"converted: {out}")
    else:
        print(f"converted (unverified): {out}; {args.src} has no manifest, so none was written for {out} and it "
              "stays unverified (ckpt verify, eval and predict refuse it); convert a checkpoint mftasks wrote, or "
              "bring Hugging Face GPT-2 weights in with `mftasks ckpt import-hf`")
    return 0


def _import_hf(args) -> int:
    from ..model import GPT2Config
    from .formats import import_hf_gpt2

    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    out = import_hf_gpt2(args.src, args.output, GPT2Config.from_name(args.model_type, **overrides))
    print(f"imported: {out}")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
