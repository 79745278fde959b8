"""The rank logger: a run whose earlier log handler sits on a disk that filled up still starts."""
from __future__ import annotations

import logging

from mftasks import progress


def test_a_full_disk_under_an_earlier_runs_log_does_not_fail_the_next_run(small_fs, tmp_path, capsys):
    fs = small_fs(64 * 1024)
    logger = progress.setup_logging(fs / "first", 0)
    handler = next(h for h in logger.handlers if isinstance(h, logging.FileHandler))
    try:
        (fs / "filler").write_bytes(b"\0" * 200_000)  # fill the disk for real (ENOSPC part-way)
    except OSError:
        pass
    logger.info("x" * 100)  # stays in the handler's buffer: its flush fails (logging reports it)
    assert handler.stream is not None
    logger2 = progress.setup_logging(tmp_path / "second", 0)  # closes the old handler: must not raise
    logger2.info("the second run logs")
    assert "the second run logs" in (tmp_path / "second" / "log" / "rank_0" / "mindformer.log").read_text()
    for h in [h for h in logger2.handlers if isinstance(h, logging.FileHandler)]:
        logger2.removeHandler(h)
        h.close()
