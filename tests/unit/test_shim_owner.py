"""The shim's pid-file lock: start and delete wait for a shim on its way out, kill a stuck one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runvm.errors import RunvmError
from runvm.shim.owner import hold_owner, wait_for_owner

HOLDER = """
import sys, time
from pathlib import Path
from runvm.shim.owner import hold_owner
hold_owner(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_no_pid_file_or_no_holder_returns_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    wait_for_owner(tmp_path / "none.pid")
    (tmp_path / "free.pid").write_text("1234")
    wait_for_owner(tmp_path / "free.pid")
    assert time.monotonic() - start < 0.5


def test_waits_for_an_exiting_owner(tmp_path: Path) -> None:
    path = tmp_path / "s.pid"
    proc = _holder(path, 1.0)
    try:
        assert path.read_text() == str(proc.pid)
        start = time.monotonic()
        wait_for_owner(path, timeout=10)
        assert 0.5 < time.monotonic() - start < 5
        assert proc.wait(timeout=5) == 0  # it ended by itself
    finally:
        proc.kill()


def test_a_stuck_owner_is_killed_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.pid"
    proc = _holder(path, 60)
    try:
        wait_for_owner(path, timeout=0.5)
        assert proc.wait(timeout=5) == -9
    finally:
        proc.kill()


def test_a_second_owner_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.pid"
    proc = _holder(path, 60)
    try:
        with pytest.raises(RunvmError, match="another shim still owns"):
            hold_owner(path)
    finally:
        proc.kill()
        proc.wait()
    fd = hold_owner(path)  # free again once the holder is gone
    assert path.read_text() == str(os.getpid())
    os.close(fd)
