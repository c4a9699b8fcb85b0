"""The agent runs crun from its sealed in-memory copy, and crun then starts once per call.

Real crun, the agent's own :func:`runvm.agent.crun.run_crun`, strace counting executions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CRUN = "/usr/bin/crun"

#: Runs `crun --version` the way the agent runs crun, after sealing a copy of it or not.
PROGRAM = """
import asyncio, sys
from pathlib import Path
from runvm.agent import crun
from runvm.agent.reaper import Reaper

async def main() -> None:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    await crun.run_crun(reaper, ["--version"], Path(sys.argv[2]))

if sys.argv[1] == "seal":
    assert crun.seal(sys.argv[3]), "no sealed copy"
asyncio.run(main())
"""


def _crun_execs(tmp_path: Path, how: str) -> list[str]:
    """The executions of crun (the Python process's own left out) for one ``how``."""
    binary = tmp_path / "crun"
    shutil.copy2(CRUN, binary)
    trace = tmp_path / "strace.log"
    program = [sys.executable, "-c", PROGRAM, how, str(tmp_path / "crun.log"), str(binary)]
    argv = ["strace", "-f", "-qq", "-e", "trace=execve,execveat", "-o", str(trace), *program]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    execs = [ln for ln in trace.read_text().splitlines() if "exec" in ln and "= 0" in ln]
    return execs[1:]


def test_sealed_crun_runs_once(tmp_path: Path) -> None:
    for tool in ("strace", CRUN):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool} (scripts/install)")
    for how in ("plain", "seal"):
        (tmp_path / how).mkdir()
    plain = _crun_execs(tmp_path / "plain", "plain")
    sealed = _crun_execs(tmp_path / "seal", "seal")
    assert len(plain) >= 2, plain  # from a file, crun re-executes itself
    assert len(sealed) == 1, sealed
    assert "/proc/self/fd/" in sealed[0]


def test_seal_of_a_missing_binary_reports_and_returns_false(tmp_path: Path) -> None:
    from runvm.agent import crun

    assert crun.seal(str(tmp_path / "absent")) is False
    assert crun._executable == crun.CRUN
