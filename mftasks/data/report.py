"""`mftasks data inspect`: verify a dataset against its manifest, show counts and one decoded sample."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import manifest as mf
from . import tokenizer as tok


@dataclass
class InspectReport:
    folder: Path
    manifest: dict
    problems: list[str]
    sample_ids: list[int]
    sample_text: str

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        m = self.manifest
        lines = [f"dataset   {self.folder}", f"id        {m['dataset_id']}",
                 f"tokenizer {m['tokenizer']['model_type']}, vocab {m['tokenizer']['vocab_size']}, "
                 f"eos {m['tokenizer']['eos_id']}, pad {m['tokenizer']['pad_id']}",
                 f"samples   seq_length {m['seq_length']} (+1 per row)",
                 f"sources   {len(m['sources'])} file(s)"]
        for split in mf.SPLITS:
            s = m["splits"][split]
            lines.append(f"{split:<9} {s['samples']} samples, {s['tokens']} tokens, {s['documents']} documents, "
                         f"{len(s['shards'])} file(s)")
        lines.append("verified  yes: every file matches the manifest" if self.ok
                     else "verified  NO:\n" + "\n".join(f"  - {p}" for p in self.problems))
        if self.sample_ids:
            lines.append(f"sample 0  {len(self.sample_ids)} tokens: {self.sample_ids[:16]}...")
            lines.append("decoded   " + self.sample_text[:400].replace("\n", "\n          "))
        return "\n".join(lines)


def inspect(folder: str | Path) -> InspectReport:
    """Verify every file of the dataset and decode its first train sample."""
    folder = Path(folder)
    manifest = mf.read(folder)
    problems = mf.verify(folder, manifest)
    ids, text = [], ""
    if not problems and manifest["splits"]["train"]["samples"]:
        import mindspore.dataset as ds

        files = mf.data_files(folder, manifest, "train")
        row = next(ds.MindDataset(files, columns_list=["input_ids"], shuffle=False,
                                  num_samples=1).create_dict_iterator(output_numpy=True))
        ids = row["input_ids"].tolist()
        text = tok.load(folder / manifest["tokenizer"]["file"]).decode(ids)
    return InspectReport(folder, manifest, problems, ids, text)
