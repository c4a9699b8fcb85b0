"""`runvm restore [--image-path DIR] [--bundle DIR] [--detach] [--pid-file F] ... ID`.

runc's verb: a new container ``ID`` from the bundle (its rootfs, mounts and limits) whose
processes are the checkpoint's, restored by CRIU in a new VM; they continue where they were
(memory, open files, working directories, output not yet written). The checkpoint is
checked first (see runtime/checkpoint.py: made by this runvm and guest image, every file as
written) and refused with the reason otherwise, before any VM starts. With ``--detach`` this
returns once the container runs (the monitor's PID in ``--pid-file``, as for create);
without, it waits and exits with the container's status, then deletes it, as ``run`` does.
"""

from __future__ import annotations

import argparse
from typing import Any

from runvm.cli import common, create
from runvm.cli import run as run_verb
from runvm.cli.checkpoint import add_criu_flags, image_paths, refuse_unsupported
from runvm.errors import ConfigError
from runvm.runtime import checkpoint
from runvm.runtime.container import Container
from runvm.runtime.guestimage import resolve_guest_files


def add_parser(sub: Any) -> None:
    p = sub.add_parser("restore", help="restore a container from a checkpoint")
    add_criu_flags(p)
    create.add_create_flags(p)
    p.add_argument("-d", "--detach", action="store_true", help="return once it runs")
    p.add_argument("--keep", action="store_true", help="do not delete the container on exit")
    p.add_argument("--no-subreaper", "-no-subreaper", action="store_true", help="accepted")
    p.add_argument("--lsm-profile", help="accepted: no LSM profile crosses into the VM")
    p.add_argument("--lsm-mount-context", help="accepted: no LSM profile crosses into the VM")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    refuse_unsupported(args, {"lazy_pages": "--lazy-pages"})
    images, work = image_paths(args)
    config = common.load_config(args)
    made = checkpoint.made_by(resolve_guest_files(config).image, f"restore of {args.container_id}")
    checkpoint.check(images, made)
    spec, _ = Container.load(args.container_id, args.bundle)
    if spec["process"].get("terminal"):
        raise ConfigError(f"restore of {args.container_id}: a container with a terminal cannot "
                          "be checkpointed or restored by runvm")  # fmt: skip
    if args.pid_file:
        args.pid_file.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    args.restore = checkpoint.RestoreOptions(images, work, args.tcp_established, args.file_locks)
    return run_verb.run(args)
