"""Bad input to `data prepare`: each says what, where and how to fix, and writes nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mftasks.data import PrepareSpec, prepare
from mftasks.errors import ConfigError, DataError


def _spec(tmp_path, inputs, **kw):
    kw.setdefault("vocab_size", 300)
    kw.setdefault("seq_length", 32)
    return PrepareSpec(inputs=[str(i) for i in inputs], output=str(tmp_path / "out"), **kw)


def _nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_missing_input_path(tmp_path):
    with pytest.raises(ConfigError, match=r"--input .*nope: no such file or folder"):
        prepare(_spec(tmp_path, [tmp_path / "nope"]))
    _nothing_written(tmp_path)


def test_every_problem_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        prepare(_spec(tmp_path, [tmp_path / "nope"], seq_length=1, eval_fraction=0.9, workers=0))
    msg = str(err.value)
    assert "4 problems" in msg
    for needle in ("no such file", "--seq-length 1", "--eval-fraction 0.9", "--workers 0"):
        assert needle in msg
    _nothing_written(tmp_path)


def test_empty_corpus(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(DataError, match="empty corpus.*empty.txt"):
        prepare(_spec(tmp_path, [tmp_path / "in"]))
    _nothing_written(tmp_path)


def test_folder_without_matching_files(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match=r"no files matching \*\.txt, \*\.md .*--pattern"):
        prepare(_spec(tmp_path, [tmp_path / "in"]))


def test_binary_file_in_folder_is_skipped_with_warning(tmp_path, corpus_dir, tiny_dataset):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.txt").write_text((corpus_dir / "a.txt").read_text())
    (folder / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    result = prepare(_spec(tmp_path, [folder], vocab_size=None, tokenizer=str(tiny_dataset / "tokenizer.model")))
    assert [Path(s["path"]).name for s in result.manifest["sources"]] == ["good.txt"]
    assert len(result.warnings) == 1
    assert "blob.txt" in result.warnings[0] and "latin1.txt" in result.warnings[0]


def test_binary_file_named_directly_is_an_error(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: not UTF-8 text .*convert it to UTF-8"):
        prepare(_spec(tmp_path, [bad]))
    _nothing_written(tmp_path)


def test_jsonl_malformed_line_and_missing_field_report_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken\n{"body": "no text field"}\n{"text": 5}\n')
    with pytest.raises(DataError) as err:
        prepare(_spec(tmp_path, [path]))
    msg = str(err.value)
    assert f"{path}:2: malformed JSON" in msg
    assert f"{path}:3: no field 'text' (found: body)" in msg and "--jsonl-field" in msg
    assert f"{path}:4: field 'text' is int" in msg
    _nothing_written(tmp_path)


@pytest.mark.parametrize("seq, needle", [(1, "too small"), (0, "too small"), (10_000_000, "absurdly large")])
def test_bad_seq_length(tmp_path, corpus_dir, seq, needle):
    with pytest.raises(ConfigError, match=f"--seq-length {seq}.*{needle}"):
        prepare(_spec(tmp_path, [corpus_dir], seq_length=seq))


def test_vocab_size_the_corpus_cannot_support(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("tiny corpus with few words\n\nanother tiny line\n")
    with pytest.raises(ConfigError, match=r"--vocab-size 5000 is more than this corpus can support \(at most \d+"):
        prepare(_spec(tmp_path, [small], vocab_size=5000))
    _nothing_written(tmp_path)


def test_tokenizer_that_is_not_sentencepiece(tmp_path, corpus_dir):
    fake = tmp_path / "fake.model"
    fake.write_bytes(b"definitely not a protobuf" * 10)
    with pytest.raises(ConfigError, match=r"--tokenizer .*fake.model is not a sentencepiece model"):
        prepare(_spec(tmp_path, [corpus_dir], vocab_size=None, tokenizer=str(fake)))
    _nothing_written(tmp_path)


def test_tokenizer_and_vocab_size_are_exclusive(tmp_path, corpus_dir, tiny_dataset):
    with pytest.raises(ConfigError, match="exactly one of --tokenizer"):
        prepare(_spec(tmp_path, [corpus_dir], tokenizer=str(tiny_dataset / "tokenizer.model")))
    with pytest.raises(ConfigError, match="exactly one of --tokenizer"):
        prepare(_spec(tmp_path, [corpus_dir], vocab_size=None))


def test_output_with_foreign_content_is_refused_even_with_force(tmp_path, corpus_dir, tiny_dataset):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    spec = _spec(tmp_path, [corpus_dir], vocab_size=None, tokenizer=str(tiny_dataset / "tokenizer.model"))
    for force in (False, True):
        spec.force = force
        with pytest.raises(ConfigError, match=r"holds files that are not an mftasks dataset; mftasks never "
                                              r"replaces what it did not create \(--force included\)"):
            prepare(spec)
        assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder either


def test_output_that_is_a_file(tmp_path, corpus_dir):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        prepare(_spec(tmp_path, [corpus_dir]))


def test_too_little_text_for_one_sample(tmp_path, tiny_dataset):
    small = tmp_path / "small.txt"
    small.write_text("only a few words here")
    with pytest.raises(DataError, match=r"train split has \d+ tokens, fewer than one sample"):
        prepare(_spec(tmp_path, [small], vocab_size=None, tokenizer=str(tiny_dataset / "tokenizer.model"),
                      seq_length=512, eval_fraction=0))
    _nothing_written(tmp_path)


def test_cli_reports_error_with_exit_code_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mftasks.cli", "data", "prepare", "--input", str(tmp_path / "nope"),
                        "--output", str(tmp_path / "out"), "--vocab-size", "100"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: invalid configuration in data prepare: --input") and "Traceback" not in r.stderr
