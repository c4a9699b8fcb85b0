"""`runvm events [--stats] [--interval 5s] ID`: cgroup figures from the guest, as JSON lines.

``--stats`` prints one ``{"type": "stats", "id": ..., "data": {...}}`` and exits; otherwise one
every interval until the container stops. ``data`` has runc's shape (cpu, memory, pids).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from runvm.cli import through
from runvm.errors import RunvmError
from runvm.protocol import agent_pb2 as pb


def add_parser(sub: Any) -> None:
    p = sub.add_parser("events", help="show container stats (JSON lines)")
    p.add_argument("--stats", action="store_true", help="print the stats once and exit")
    p.add_argument("--interval", default="5s", help="interval between stats (e.g. 500ms, 5s)")
    p.add_argument("container_id", metavar="ID")
    p.set_defaults(func=run)


def parse_interval(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not match or float(match.group(1)) <= 0:
        raise RunvmError(f"invalid interval {text!r} (use e.g. 500ms, 5s, 1m)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
    return float(match.group(1)) * scale


def stats_data(s: pb.StatsContainerResponse) -> dict[str, Any]:
    return {
        "cpu": {"usage": {"total": s.cpu_usage_usec * 1000, "kernel": s.cpu_system_usec * 1000,
                          "user": s.cpu_user_usec * 1000, "percpu": []},
                "throttling": {}},
        "memory": {"usage": {"usage": s.memory_current, "limit": s.memory_max, "max": 0,
                             "failcnt": s.memory_oom_kills}},
        "pids": {"current": s.pids_current, "limit": s.pids_max},
        "blkio": {},
        "hugetlb": {},
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    interval = parse_interval(args.interval)
    while True:
        try:
            stats = through.call(args, lambda agent: agent.stats_container(args.container_id))
        except RunvmError:
            if args.stats:
                raise
            return 0  # the container is gone: the stream ends
        event = {"type": "stats", "id": args.container_id, "data": stats_data(stats)}
        print(json.dumps(event), flush=True)
        if args.stats:
            return 0
        time.sleep(interval)
