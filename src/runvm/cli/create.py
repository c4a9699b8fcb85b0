"""`runvm create [-b DIR] [--pid-file F] [--console-socket S] ID`: the container, created.

Forks the monitor (see runvm.cli.monitor), waits until it reports the container ``created``
or an error, writes the monitor's PID to ``--pid-file`` (decimal, no newline, atomically) and
returns. The container's stdio is this command's stdio, held by the monitor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from runvm.cli import common
from runvm.cli.monitor.server import MonitorArgs, monitor_main
from runvm.errors import RunvmError
from runvm.runtime.container import Container
from runvm.runtime.sandbox import sandbox_run_dir
from runvm.spawn import fork_helper


def add_create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-b", "--bundle", type=Path, default=Path("."), help="bundle directory")
    p.add_argument("--pid-file", type=Path, help="write the container's PID here")
    p.add_argument("--console-socket", help="AF_UNIX socket that receives the pty master")
    p.add_argument("--no-pivot", action="store_true", help="accepted; the guest always pivots")
    p.add_argument("--no-new-keyring", action="store_true", help="accepted (guest keyring)")
    p.add_argument("--preserve-fds", type=int, default=0, help="not supported beyond 0")
    p.add_argument("container_id", metavar="ID")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("create", help="create a container")
    add_create_flags(p)
    p.set_defaults(func=run)


def write_pid_file(path: Path, pid: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(str(pid))
    os.replace(tmp, path)


def spawn_monitor(args: argparse.Namespace, foreground_tty: bool = False) -> int:
    """Validate, fork the monitor, wait for its verdict; returns its PID."""
    if args.preserve_fds:
        raise RunvmError("--preserve-fds is not supported: a VM cannot inherit host fds")
    bundle = args.bundle.resolve()
    spec, rootfs = Container.load(args.container_id, bundle)  # bad input fails before any fork
    st = common.store(args)
    common.reap_dead(st)
    margs = MonitorArgs(
        container_id=args.container_id, bundle=bundle, root=st.root,
        config=common.load_config(args), spec=spec, rootfs=rootfs,
        console_socket=args.console_socket,
        foreground_tty=foreground_tty, restore=getattr(args, "restore", None),
    )  # fmt: skip
    with st.locked(args.container_id, create=True) as directory:
        try:
            pid = fork_helper(lambda ready: monitor_main(margs, ready))
        except BaseException:
            # A monitor killed half-way cannot undo its own work: its sandbox directory
            # (mounts included) is removed here. QEMU and virtiofsd die with the monitor.
            common.clean_sandbox_dir(sandbox_run_dir(margs.config, args.container_id))
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if args.pid_file:
            try:
                write_pid_file(args.pid_file, pid)
            except OSError as exc:  # undo the container: the caller cannot track it
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                common.clean_sandbox(st.load(args.container_id))
                shutil.rmtree(directory, ignore_errors=True)
                raise RunvmError(f"pid file {args.pid_file}: {exc.strerror}") from exc
    return pid


def run(args: argparse.Namespace) -> int:
    spawn_monitor(args)
    return 0
