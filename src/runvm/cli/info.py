"""`runvm list`, `runvm spec`, `runvm features`: the verbs that need no VM."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from runvm.cli import common
from runvm.errors import RunvmError
from runvm.oci import fields
from runvm.oci.default import default_spec
from runvm.runtime.hooks import HOOK_KINDS

MOUNT_OPTIONS = [
    "ro", "rw", "bind", "rbind", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync",
    "async", "dirsync", "remount", "mand", "nomand", "atime", "noatime", "diratime",
    "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "rro", "rrw",
    "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec", "shared", "rshared", "slave",
    "rslave", "private", "rprivate", "unbindable", "runbindable", "tmpcopyup",
]  # fmt: skip


def add_parser(sub: Any) -> None:
    p = sub.add_parser("list", help="list containers")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the ids")
    p.set_defaults(func=list_containers)
    s = sub.add_parser("spec", help="write a default config.json")
    s.add_argument("-b", "--bundle", type=Path, default=Path("."))
    s.add_argument("--rootless", action="store_true")
    s.set_defaults(func=spec)
    f = sub.add_parser("features", help="describe what this runtime supports (JSON)")
    f.set_defaults(func=features)


def list_containers(args: argparse.Namespace) -> int:
    st = common.store(args)
    states = []
    for cid in st.ids():
        try:
            states.append(st.load(cid).oci())
        except RunvmError:
            continue
    if args.quiet:
        for doc in states:
            print(doc["id"])
    elif args.format == "json":
        print(json.dumps(states))
    else:
        print(f"{'ID':<24}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}{'CREATED':<32}OWNER")
        for d in states:
            print(f"{d['id']:<24}{d['pid']:<10}{d['status']:<10}{d['bundle']:<40}"
                  f"{d['created']:<32}{d['owner']}")  # fmt: skip
    return 0


def spec(args: argparse.Namespace) -> int:
    if args.rootless:
        raise RunvmError("rootless containers are not supported: runvm needs root to run VMs")
    path = args.bundle / "config.json"
    if path.exists():
        raise RunvmError(f"File {path} exists. Remove it first")
    path.write_text(json.dumps(default_spec(), indent=2) + "\n")
    return 0


def features(args: argparse.Namespace) -> int:
    doc = {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.3.0",
        "hooks": list(HOOK_KINDS),
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts", "user"],
            "capabilities": ["CAP_" + c for c in (
                "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
                "SETPCAP", "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE",
                "SETFCAP", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE")],
            "cgroup": {"v1": False, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {
            "io.github.runvm.vm": "every container runs in its own VM",
            **{f"io.github.runvm.honoured.{k}": v for k, v in fields.HONOURED.items()},
            **{f"io.github.runvm.refused.{k}": v for k, v in fields.REFUSED.items()},
        },
    }  # fmt: skip
    print(json.dumps(doc, indent=2))
    return 0
