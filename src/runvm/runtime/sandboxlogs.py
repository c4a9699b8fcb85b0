"""A sandbox's logs, and reading them back interleaved by time (``runvm logs``).

Contract: :data:`LOGS` names the files of a sandbox's run directory that are its logs, each
with its source: the guest console (kernel lines, and the agent's, which it writes there),
QEMU's and virtiofsd's own output, and the CLI monitor's records. A shim's records are in
its own log next to the pod's record (:func:`read` takes extra files). :func:`read` merges
them by the time each line starts with (:mod:`runvm.files`); a line without one (a
record's continuation, an unstamped helper line) goes with the line before it in its file.
At most :data:`READ_MAX` bytes are read from the end of each file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runvm import files
from runvm.process import read_tail

READ_MAX = 4 << 20
AGENT_PREFIX = "runvm-agent:"
LOGS = {  # file in the run directory -> its source (rotated ones first: they are older)
    "console.log.1": "console",
    "console.log": "console",
    "qemu.log": "qemu",
    "virtiofsd.log.1": "virtiofsd",
    "virtiofsd.log": "virtiofsd",
    "monitor.log.1": "monitor",
    "monitor.log": "monitor",
}


@dataclass(frozen=True)
class Line:
    time: str  # as the file says it ("" before any line with a time)
    source: str  # console | agent | qemu | virtiofsd | monitor | shim
    text: str


def files_of(run_dir: Path) -> list[tuple[Path, str]]:
    """The log files of the sandbox whose run directory is ``run_dir``, with their sources."""
    return [(run_dir / name, source) for name, source in LOGS.items()]


def read(logs: Iterable[tuple[Path, str]]) -> list[Line]:
    """Every line of ``logs`` (missing files are skipped), in time order."""
    found: list[Line] = []
    for path, source in logs:
        try:
            cut = path.stat().st_size > READ_MAX  # the first line read is a line's end
        except OSError:
            continue
        last = ""
        for raw in read_tail(path, READ_MAX).splitlines()[1 if cut else 0 :]:
            when, line = files.split(raw)
            last = when or last
            kind = "agent" if source == "console" and line.startswith(AGENT_PREFIX) else source
            found.append(Line(last, kind, line))
    return sorted(found, key=lambda line: line.time)  # stable: each file keeps its order
