"""`runvm logs ID`: a sandbox's logs, interleaved by time.

The guest console (the kernel's lines and the agent's, which it writes there), QEMU's and
virtiofsd's own output, and the owner's records (the CLI monitor's, or the containerd
shim's), from the files the sandbox keeps in one place under the config's state root (see
runtime/sandboxlogs.py): a CLI container's until `runvm delete`, a containerd pod's while
its VM lives. One line each: ``<time> <source> <text>``; with the global ``--log-format
json``, one JSON object each (``time``, ``source``, ``msg``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from runvm.cli import common
from runvm.errors import NotFoundError
from runvm.metrics import discover
from runvm.names import run_dir_name
from runvm.runtime import sandboxlogs

WIDTH = max(len(s) for s in (*sandboxlogs.LOGS.values(), "agent", "shim"))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("logs", help="print a sandbox's logs interleaved by time")
    p.add_argument("sandbox", metavar="ID", help="a container or pod id")
    p.set_defaults(func=run)


def _logs_of(state_root: Path, name: str) -> list[tuple[Path, str]]:
    """The log files of the sandbox ``name`` names, with their sources; NotFoundError."""
    run_dir = state_root / "sandboxes" / run_dir_name(name)
    if run_dir.is_dir():  # a CLI container's
        return sandboxlogs.files_of(run_dir)
    pod = discover.pod_record(state_root, name)
    if pod is None:
        raise NotFoundError(f"no sandbox {name!r} under {state_root}")
    record, run_dir = pod
    shim_log = record.with_suffix(".log")
    return [*sandboxlogs.files_of(run_dir), (shim_log.with_name(shim_log.name + ".1"), "shim"),
            (shim_log, "shim")]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    state_root = Path(common.load_config(args).runtime.state_root)
    lines = sandboxlogs.read(_logs_of(state_root, args.sandbox))
    for line in lines:
        if args.log_format == "json":
            print(json.dumps({"time": line.time, "source": line.source, "msg": line.text}))
        else:
            print(f"{line.time or '-':27} {line.source:{WIDTH}} {line.text}")
    return 0
