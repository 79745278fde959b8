import os, pytest
from pathlib import Path
from mftasks import files
from mftasks.errors import DiskFullError

def test_overlap(tmp_path):
    (tmp_path/"proj"/"corpus").mkdir(parents=True)
    assert files.overlap_problems(tmp_path/"proj", [tmp_path/"proj"/"corpus"])
    assert files.overlap_problems(tmp_path/"proj"/"corpus", [tmp_path/"proj"/"corpus"])
    assert files.overlap_problems(tmp_path/"proj"/"corpus"/"x", [tmp_path/"proj"/"corpus"])
    assert not files.overlap_problems(tmp_path/"proj"/"out", [tmp_path/"proj"/"corpus"])

def test_diskfull(small_fs):
    fs = small_fs(64*1024)
    with pytest.raises(DiskFullError) as e:
        files.atomic_write_bytes(fs/"big.bin", b"x"*200_000)
    assert str(fs/"big.bin") in str(e.value)
    assert list(fs.iterdir()) == []

def test_stale(tmp_path):
    (tmp_path/".a.bin.tmp-999999-0123abcd").write_text("x")
    (tmp_path/f".a.bin.tmp-{os.getpid()}-0123abcd").write_text("x")
    (tmp_path/".mine").write_text("x")
    assert files.remove_stale_temporaries(tmp_path) == [tmp_path/".a.bin.tmp-999999-0123abcd"]
