"""`runvm ps [--format table|json] ID`: the container's processes.

The PIDs are the guest's: the processes live in the VM, not on the host.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from runvm.cli import through


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ps", help="list the processes of a container (guest PIDs)")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.add_argument("container_id", metavar="ID")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, help="ignored (no host ps to run)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pids = through.call(args, lambda agent: agent.list_processes(args.container_id))
    if args.format == "json":
        print(json.dumps(pids))
    else:
        print("PID")
        for pid in pids:
            print(pid)
    return 0
