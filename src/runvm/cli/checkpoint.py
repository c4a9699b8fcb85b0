"""`runvm checkpoint [--image-path DIR] [--work-path DIR] [--leave-running] ... ID`.

runc's verb: the running (or paused) container's processes are written to the image
directory (default ``./checkpoint``, made if missing) by CRIU in the container's VM, with
the host's description of the checkpoint (``runvm.json``); CRIU's log and statistics go to
the work directory (default: the image directory). Without ``--leave-running`` the container
is gone afterwards, as with runc. runc's options for pre-dumps, lazy pages and page servers
are refused; ``--manage-cgroups-mode``, ``--empty-ns network``, ``--auto-dedup`` and
``--ext-unix-sk`` are accepted (the guest's cgroups are the container's own, its network
namespace is the VM's and is never dumped).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from runvm.cli import common, delete
from runvm.cli.monitor import monitor_pb2 as mpb
from runvm.errors import ConfigError
from runvm.runtime.state import require

REFUSED = {"pre_dump": "--pre-dump", "parent_path": "--parent-path",
           "lazy_pages": "--lazy-pages", "page_server": "--page-server"}  # fmt: skip


def add_criu_flags(p: argparse.ArgumentParser) -> None:
    """The flags runc's checkpoint and restore share."""
    p.add_argument("--image-path", type=Path, help="CRIU images (default ./checkpoint)")
    p.add_argument("--work-path", type=Path, help="CRIU's logs and statistics")
    p.add_argument("--tcp-established", action="store_true", help="established TCP too")
    p.add_argument("--file-locks", action="store_true", help="file locks too")
    p.add_argument("--ext-unix-sk", action="store_true", help="accepted")
    p.add_argument("--shell-job", action="store_true", help="refused: no shell job in a VM")
    p.add_argument("--manage-cgroups-mode", help="accepted: the guest's cgroups are its own")
    p.add_argument("--empty-ns", action="append", default=[], help="accepted: network")
    p.add_argument("--auto-dedup", action="store_true", help="accepted")
    p.add_argument("--lazy-pages", action="store_true", help="refused")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("checkpoint", help="checkpoint a running container")
    add_criu_flags(p)
    p.add_argument("--leave-running", action="store_true", help="keep the container running")
    p.add_argument("--pre-dump", action="store_true", help="refused")
    p.add_argument("--parent-path", help="refused")
    p.add_argument("--page-server", help="refused")
    p.add_argument("--status-fd", type=int, default=-1, help="accepted (no lazy pages)")
    p.add_argument("container_id", metavar="ID")
    p.set_defaults(func=run)


def refuse_unsupported(args: argparse.Namespace, names: dict[str, str]) -> None:
    for attr, flag in names.items():
        if getattr(args, attr, None):
            raise ConfigError(f"{flag} is not supported by runvm: CRIU runs in the container's "
                              "VM, with the whole checkpoint written at once")  # fmt: skip
    if args.shell_job:
        raise ConfigError("--shell-job is not supported: a container in a VM has no shell "
                          "session on the host")  # fmt: skip
    if any(ns != "network" for ns in args.empty_ns):
        raise ConfigError(f"--empty-ns {args.empty_ns}: only network is supported")


def image_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    images = (args.image_path or Path("checkpoint")).absolute()
    return images, (args.work_path or images).absolute()


def run(args: argparse.Namespace) -> int:
    refuse_unsupported(args, {**REFUSED, "lazy_pages": "--lazy-pages"})
    images, work = image_paths(args)
    st = common.store(args)
    with st.locked(args.container_id):
        state = st.load(args.container_id)
        require("checkpoint", state.effective_status(), args.container_id)
        request = mpb.CheckpointRequest(image_path=str(images), work_path=str(work),
                                        leave_running=args.leave_running,
                                        tcp_established=args.tcp_established,
                                        file_locks=args.file_locks)  # fmt: skip
        common.monitor_request(st, args.container_id, "Checkpoint", request)
    if not args.leave_running:  # runc's checkpoint leaves no container behind
        args.force = True
        delete.delete(args)
    return 0
