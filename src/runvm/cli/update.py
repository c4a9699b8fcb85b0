"""`runvm update [-r FILE|-] [--memory N] [--cpu-quota N] ... ID`: change cgroup limits.

The limits apply to the container's cgroup in the guest. A memory limit above the VM's own
memory cannot be held by the VM and is refused (until memory hotplug exists).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runvm.cli import through
from runvm.errors import RunvmError
from runvm.oci.resources import check_resources

FLAGS = {  # flag -> (section, key)
    "memory": ("memory", "limit"),
    "memory_reservation": ("memory", "reservation"),
    "memory_swap": ("memory", "swap"),
    "cpu_quota": ("cpu", "quota"),
    "cpu_period": ("cpu", "period"),
    "cpu_shares": ("cpu", "shares"),
    "cpuset_cpus": ("cpu", "cpus"),
    "cpuset_mems": ("cpu", "mems"),
    "pids_limit": ("pids", "limit"),
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("update", help="update a container's resource limits")
    p.add_argument("-r", "--resources", help="LinuxResources JSON file, or - for stdin")
    for flag in FLAGS:
        kind = str if flag.startswith("cpuset") else int
        p.add_argument("--" + flag.replace("_", "-"), type=kind)
    p.add_argument("container_id", metavar="ID")
    p.set_defaults(func=run)


def resources(args: argparse.Namespace) -> dict[str, Any]:
    """The LinuxResources to apply: the JSON given, then the flags on top."""
    doc: dict[str, Any] = {}
    if args.resources:
        try:
            text = sys.stdin.read() if args.resources == "-" else Path(args.resources).read_text()
            doc = json.loads(text)
        except (OSError, ValueError) as exc:
            raise RunvmError(f"resources: {exc}") from exc
        if not isinstance(doc, dict):
            raise RunvmError("resources must be a JSON object")
    for flag, (section, key) in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            doc.setdefault(section, {})[key] = value
    check_resources(doc, "resources")
    return doc


def run(args: argparse.Namespace) -> int:
    doc = resources(args)  # the VM grows or shrinks for it (runtime/pod.Pod.update)
    through.call(
        args, lambda agent: agent.update_container(args.container_id, json.dumps(doc).encode())
    )
    return 0
