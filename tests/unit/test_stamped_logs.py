"""Stamped log files: every line starts with its time; a file is capped (one older file
kept, so at most twice the cap on disk); records before their directory exists are kept."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from runvm import files as logfile
from runvm.process import read_tail

STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ")


def test_console_log_is_capped_at_twice_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    log = logfile.StampedLog(path, cap=400)
    for i in range(50):
        log.write(f"line {i:04}\n".encode())  # 38 bytes stamped, 1900 in all
    log.write(b"x" * 1000 + b"\n")  # one line larger than the cap keeps only its tail
    log.close()
    rotated = path.with_name("console.log.1")
    assert path.stat().st_size <= 400 and rotated.stat().st_size <= 400
    assert path.read_bytes() == b"x" * 399 + b"\n"
    assert rotated.read_bytes().endswith(b" line 0049\n")
    assert all(STAMPED.match(line) for line in rotated.read_text().splitlines())


def test_lines_are_stamped_when_they_begin_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    log = logfile.StampedLog(path, cap=1 << 20)
    log.write(b"one\ntw")
    log.write(b"o\nthree")  # "two" arrives in two pieces: one line, one time
    log.close()  # the unfinished last line is kept
    lines = path.read_text().splitlines()
    assert [logfile.split(line)[1] for line in lines] == ["one", "two", "three"]
    assert all(logfile.split(line)[0] for line in lines)
    assert logfile.unstamp(path.read_text()) == "one\ntwo\nthree\n"
    assert logfile.split("no time here") == ("", "no time here")


def test_a_line_longer_than_the_limit_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    log = logfile.StampedLog(path, cap=1 << 20)
    log.write(b"y" * (logfile.LINE_MAX + 10) + b"\n")
    log.close()
    texts = [logfile.split(line)[1] for line in path.read_text().splitlines()]
    assert [len(t) for t in texts] == [logfile.LINE_MAX, 10]


def test_records_wait_for_their_directory(tmp_path: Path) -> None:
    path = tmp_path / "later" / "monitor.log"
    handler = logfile.StampedHandler(path, prefix="runvm-monitor ")
    logger = logging.getLogger("runvm.test.logfile")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("before the directory")
        assert not path.exists()
        path.parent.mkdir()
        logger.warning("after\nand a second line")
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = path.read_text().splitlines()
    assert [logfile.split(line)[1] for line in lines] == [
        "runvm-monitor WARNING runvm.test.logfile: before the directory",
        "runvm-monitor WARNING runvm.test.logfile: after",
        "    and a second line",
    ]


def test_the_console_tail_has_no_times(tmp_path: Path) -> None:
    log = logfile.StampedLog(tmp_path / "console.log", cap=1 << 20)
    log.write(b"Kernel panic - not syncing: x\n")
    log.close()
    assert logfile.unstamp(read_tail(tmp_path / "console.log")) == (
        "Kernel panic - not syncing: x\n"
    )
