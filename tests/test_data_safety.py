"""`mftasks data prepare` never destroys what it did not create, never reads outside --input, and ends
every failure (bad input, an unreadable file, a full disk) in a message that names what and where.

Each case goes in through the command line and checks both halves: the exit status and message, and
that the user's files are as they were (nothing deleted, nothing partial left)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mftasks.cli import main
from mftasks.data import PrepareSpec, prepare, read_manifest, verify
from mftasks.data import tokenizer as tok
from mftasks.errors import ConfigError
from mftasks.files import sha256_file

from conftest import REPO


def cli(argv, capfd) -> tuple[int, str, str]:
    """`mftasks ARGV` in this process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capfd.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under folder with its sha256 (folders: 'dir'): compares a whole tree before and after."""
    return {p.relative_to(folder).as_posix(): ("dir" if p.is_dir() else sha256_file(p))
            for p in sorted(folder.rglob("*"))}


def _prepare_args(inputs, output, tokenizer, *extra, seq: int = 16):
    args = ["data", "prepare", "--output", output, "--tokenizer", tokenizer, "--seq-length", seq, *extra]
    for i in inputs:
        args += ["--input", i]
    return args


@pytest.fixture
def project(tmp_path, corpus_dir):
    """proj/corpus (the input) and proj/notes.md (the user's other file)."""
    proj = tmp_path / "proj"
    (proj / "corpus").mkdir(parents=True)
    shutil.copy(corpus_dir / "c.md", proj / "corpus" / "c.md")
    (proj / "notes.md").write_text("my notes\n")
    return proj


# ---------------------------------------------------------------------------------------------- what --force may replace
@pytest.mark.parametrize("output, needle", [
    ("{proj}", "--output {proj} contains the input {proj}/corpus (replacing it would delete the input)"),
    ("{proj}/corpus", "--output {proj}/corpus is the input {proj}/corpus; write the output to a new folder"),
    ("{proj}/corpus/ds", "--output {proj}/corpus/ds lies inside the input {proj}/corpus; write the output outside"),
], ids=["ancestor_of_input", "the_input", "inside_input"])
def test_force_never_replaces_the_input_or_a_folder_holding_it(project, tiny_dataset, capfd, output, needle):
    before = snapshot(project.parent)
    out = output.format(proj=project)
    code, stdout, err = cli(_prepare_args([project / "corpus"], out, tiny_dataset / "tokenizer.model", "--force"),
                            capfd)
    assert code == 2 and stdout == ""
    assert err.startswith("error: invalid configuration in data prepare") and needle.format(proj=project) in err
    assert snapshot(project.parent) == before  # the input, the notes, everything: as it was


def test_force_never_replaces_a_folder_of_user_files(project, tiny_dataset, capfd):
    before = snapshot(project.parent)
    code, _, err = cli(_prepare_args([project / "corpus" / "c.md"], project / "corpus",
                                     tiny_dataset / "tokenizer.model", "--force"), capfd)
    assert code == 2
    assert (f"--output {project / 'corpus'} holds files that are not an mftasks dataset; mftasks never replaces "
            "what it did not create (--force included)") in err
    assert snapshot(project.parent) == before


def test_a_dataset_of_other_parameters_is_replaced_only_with_force(tmp_path, corpus_dir, tiny_dataset, capfd):
    out = tmp_path / "ds"
    first = _prepare_args([corpus_dir / "c.md"], out, tiny_dataset / "tokenizer.model")
    assert cli(first, capfd)[0] == 0
    before = snapshot(out)
    other = _prepare_args([corpus_dir / "c.md"], out, tiny_dataset / "tokenizer.model", seq=24)
    code, _, err = cli(other, capfd)
    assert code == 2
    assert f"--output {out} already holds an mftasks dataset of other inputs or parameters (dataset_id " in err
    assert "pass --force to replace it, or choose a new folder" in err
    assert snapshot(out) == before
    code, stdout, _ = cli(first, capfd)  # the same parameters: kept as it is, no --force needed
    assert code == 0 and stdout.startswith("up to date:") and snapshot(out) == before
    code, stdout, _ = cli([*other, "--force"], capfd)
    assert code == 0 and stdout.startswith("replaced:") and read_manifest(out)["seq_length"] == 24


def test_a_dataset_holding_user_files_is_not_replaced_even_with_force(tmp_path, corpus_dir, tiny_dataset, capfd):
    out = tmp_path / "ds"
    args = _prepare_args([corpus_dir / "c.md"], out, tiny_dataset / "tokenizer.model")
    assert cli(args, capfd)[0] == 0
    (out / "train" / "my-notes.txt").write_text("mine")
    before = snapshot(out)
    code, _, err = cli(_prepare_args([corpus_dir / "c.md"], out, tiny_dataset / "tokenizer.model", "--force",
                                     seq=24), capfd)
    assert code == 2
    assert (f"--output {out} is an mftasks dataset but also holds files it did not write (train/my-notes.txt); "
            "mftasks never replaces what it did not create (--force included)") in err
    assert snapshot(out) == before


def test_a_damaged_dataset_of_the_same_inputs_is_rebuilt_without_force(tmp_path, corpus_dir, tiny_dataset, capfd):
    out = tmp_path / "ds"
    args = _prepare_args([corpus_dir / "c.md"], out, tiny_dataset / "tokenizer.model")
    assert cli(args, capfd)[0] == 0
    good = snapshot(out)
    shard = out / read_manifest(out)["splits"]["train"]["shards"][0]["file"]
    os.chmod(shard, 0o600)
    os.truncate(shard, 100)
    code, stdout, _ = cli(args, capfd)
    assert code == 0 and stdout.startswith("replaced:")
    assert snapshot(out) == good and verify(out) == []


# ---------------------------------------------------------------------------------------------- bad input: messages
def test_absolute_pattern_is_refused(project, tiny_dataset, capfd):
    code, _, err = cli(_prepare_args([project / "corpus"], project.parent / "ds", tiny_dataset / "tokenizer.model",
                                     "--pattern", "/etc/*"), capfd)
    assert code == 2 and "Traceback" not in err
    assert ("--pattern '/etc/*' is an absolute path; a pattern picks files inside each --input folder: give a "
            "relative one such as '*.txt'") in err
    assert not (project.parent / "ds").exists()


def test_pattern_reaching_outside_input_is_refused_and_reads_nothing(project, tiny_dataset, capfd):
    (project / "secret.jsonl").write_text(json.dumps({"text": "the password is hunter2 " * 50}) + "\n")
    out = project.parent / "ds"
    code, _, err = cli(_prepare_args([project / "corpus"], out, tiny_dataset / "tokenizer.model",
                                     "--pattern", "../*.jsonl", "--pattern", "*.md"), capfd)
    assert code == 2
    assert "--pattern '../*.jsonl' reaches outside the --input folder ('..')" in err
    assert not out.exists()


def test_output_dot_holding_other_files_is_refused(project, tiny_dataset, capfd, monkeypatch):
    elsewhere = project.parent / "elsewhere.md"
    shutil.copy(project / "corpus" / "c.md", elsewhere)
    monkeypatch.chdir(project)
    before = snapshot(project.parent)
    code, _, err = cli(_prepare_args([elsewhere], ".", tiny_dataset / "tokenizer.model", "--force"), capfd)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: invalid configuration in data prepare: --output . holds files that are not an "
                          "mftasks dataset; mftasks never replaces what it did not create (--force included)")
    assert snapshot(project.parent) == before


def test_unreadable_input_file_is_named(tmp_path, tiny_dataset, capfd):
    """/proc/self/mem is a regular file that read() refuses (EIO), as root too (chmod 000 would not be:
    the tests run as root)."""
    out = tmp_path / "ds"
    code, _, err = cli(_prepare_args(["/proc/self/mem"], out, tiny_dataset / "tokenizer.model"), capfd)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: cannot read the corpus:")
    assert f"/proc/{os.getpid()}/mem: cannot read it (Input/output error); check the file" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_fifo_input_is_refused_instead_of_hanging(tmp_path, tiny_dataset):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "mftasks.cli",
                        *map(str, _prepare_args([fifo], tmp_path / "ds", tiny_dataset / "tokenizer.model"))],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2
    assert f"--input {fifo} is not a regular file or folder (a FIFO, socket or device)" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def test_a_line_longer_than_sentencepiece_allows_is_kept_whole(tmp_path, capfd):
    """sentencepiece's trainer skips lines over 16384 bytes; a file that is one long line used to end in
    'INTERNAL: ... [!sentences_.empty()]'.  Its tokenizer now trains on the line cut into pieces, and the
    dataset holds every token of the whole line."""
    from mftasks.data.demo_corpus import stdlib_docstrings

    line = " ".join(" ".join(stdlib_docstrings(45_000)).split())
    assert len(line.encode()) > 2 * tok.MAX_SENTENCE_BYTES
    src = tmp_path / "one-line.txt"
    src.write_text(line + "\n")
    out = tmp_path / "ds"
    code, stdout, err = cli(["data", "prepare", "--input", src, "--output", out, "--vocab-size", "200",
                             "--seq-length", "16", "--eval-fraction", "0"], capfd)
    assert code == 0, err
    m = read_manifest(out)
    sp = tok.load(out / "tokenizer.model")
    assert m["splits"]["train"]["tokens"] == len(sp.encode(line)) + 1  # the whole line and its EOS
    assert m["splits"]["train"]["documents"] == 1


def test_cr_only_line_endings_are_line_breaks(tmp_path, tiny_dataset, capfd):
    paragraphs = [f"paragraph {i} says hello\rand goes on for a second line {i}" for i in range(40)]
    src = tmp_path / "old-mac.txt"
    src.write_bytes("\r\r".join(paragraphs).encode() + b"\r")
    out = tmp_path / "ds"
    code, _, err = cli(_prepare_args([src], out, tiny_dataset / "tokenizer.model", "--eval-fraction", "0.1"), capfd)
    assert code == 0, err
    m = read_manifest(out)
    assert m["sources"][0]["documents"] == 40  # a blank line ("\r\r") separates documents, as "\n\n" does
    assert m["splits"]["eval"]["documents"] == 4


# ---------------------------------------------------------------------------------------------- disk full
def _user_file(folder: Path) -> Path:
    keep = folder / "keep.txt"
    keep.write_text("the user's file beside the output\n")
    return keep


def test_disk_full_in_the_mindrecord_write(small_fs, corpus_dir, tiny_dataset, capfd):
    """A real 4 MB tmpfs: the tokenizer fits, the MindRecord writer (which wants 10 MiB free) does not."""
    fs = small_fs(4_000_000)
    _user_file(fs)
    before = snapshot(fs)
    out = fs / "ds"
    code, stdout, err = cli(_prepare_args([corpus_dir / "c.md"], out, tiny_dataset / "tokenizer.model"), capfd)
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert err.startswith(f"error: disk full while writing the train split (MindRecord; MindSpore's writer also "
                          f"keeps 10 MiB free) at {out / 'train'}: needs about ")
    assert "nothing partial was kept" in err
    assert snapshot(fs) == before  # no output, no staging folder, no temporary file


def test_disk_full_for_the_tokenizer_names_it(small_fs, corpus_dir, tiny_dataset, capfd):
    """A 128 KB tmpfs: writing the 240 KB tokenizer.model fails with ENOSPC."""
    fs = small_fs(128 * 1024)
    out = fs / "ds"
    code, _, err = cli(_prepare_args([corpus_dir / "c.md"], out, tiny_dataset / "tokenizer.model"), capfd)
    size = (tiny_dataset / "tokenizer.model").stat().st_size
    assert code == 2
    assert err.startswith(f"error: disk full while writing tokenizer.model at {out / 'tokenizer.model'}: "
                          f"needs about ")
    assert float(err.split("needs about ")[1].split(" MB")[0]) >= size / 1e6
    assert list(fs.iterdir()) == []


def test_disk_full_while_replacing_keeps_the_previous_dataset(small_fs, corpus_dir, tiny_dataset, capfd):
    fs = small_fs(8_000_000)
    out = fs / "ds"
    shutil.copytree(tiny_dataset, out)
    before = snapshot(fs)
    args = _prepare_args([corpus_dir / "c.md"], out, tiny_dataset / "tokenizer.model", "--force")
    code, _, err = cli(args, capfd)
    assert code == 2 and f"error: disk full while writing the train split" in err and str(out / "train") in err
    assert snapshot(fs) == before and verify(out) == []


def test_a_later_run_removes_what_a_killed_run_left(tmp_path, corpus_dir, tiny_dataset):
    """A run killed mid-build (SIGKILL: no cleanup runs) leaves its hidden staging folder; the next run
    removes it, even when it finds the dataset up to date and has nothing else to do."""
    out = tmp_path / "ds"
    spec = PrepareSpec(inputs=[str(corpus_dir / "c.md")], output=str(out), tokenizer=str(tiny_dataset /
                       "tokenizer.model"), seq_length=16)
    prepare(spec)
    # Another dataset into the same folder (--force), trained from scratch: killed while it builds.
    victim = subprocess.Popen([sys.executable, "-m", "mftasks.cli", "data", "prepare", "--input", str(corpus_dir),
                               "--output", str(out), "--vocab-size", "300", "--seq-length", "16", "--force"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    staged = []
    while not staged and victim.poll() is None and time.monotonic() < deadline:
        staged = list(tmp_path.glob(".ds.tmp-*"))
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert staged and staged[0].exists(), "the run ended before it could be killed mid-build"
    assert prepare(spec).status == "up_to_date"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_errors_are_config_errors_before_anything_is_read(tmp_path, corpus_dir):
    """The library door: the same refusals, as one ConfigError listing every problem."""
    with pytest.raises(ConfigError) as err:
        prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(corpus_dir), vocab_size=300, force=True,
                            patterns=("/etc/*", "../*.md")))
    assert "(4 problems)" in str(err.value)
