"""`runvm delete [--force] ID`: remove a stopped container (``--force``: kill it first)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from runvm.cli import common
from runvm.cli.monitor import monitor_pb2 as mpb
from runvm.errors import NotFoundError, RunvmError, StateError
from runvm.runtime import hooks
from runvm.runtime.state import ContainerState, Status, require

STOP_TIMEOUT = 15.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("delete", help="delete a stopped container")
    p.add_argument("-f", "--force", action="store_true", help="kill the container if running")
    p.add_argument("container_id", metavar="ID")
    p.set_defaults(func=run)


def _wait_gone(state: ContainerState) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    while state.monitor_alive():
        if time.monotonic() > deadline:
            os.kill(state.pid, signal.SIGKILL)  # the VM dies with it (PDEATHSIG)
            deadline = time.monotonic() + STOP_TIMEOUT
        time.sleep(0.05)


def _poststop(state: ContainerState, log_path: Path) -> None:
    try:
        spec = json.loads((Path(state.bundle) / "config.json").read_text())
    except (OSError, ValueError):
        return
    doc = state.oci() | {"status": "stopped"}
    doc.pop("pid", None)
    asyncio.run(hooks.run_hooks(spec, "poststop", doc, log_path, warn_only=True))


def _remove_half_made(args: argparse.Namespace, directory: Path) -> None:
    """A create that was killed with its monitor before it saved the container's state (the
    lock held here says neither lives): its sandbox directory and its own go."""
    from runvm.runtime.sandbox import sandbox_run_dir

    common.clean_sandbox_dir(sandbox_run_dir(common.load_config(args), args.container_id))
    shutil.rmtree(directory, ignore_errors=True)


def delete(args: argparse.Namespace) -> None:
    st = common.store(args)
    try:
        with st.locked(args.container_id) as directory:
            if args.force and not st.exists(args.container_id):
                _remove_half_made(args, directory)
                return
            state = st.load(args.container_id)
            status = state.effective_status()
            if status != Status.STOPPED:
                if not args.force:
                    raise StateError(f"cannot delete container {args.container_id} that is not "
                                     "stopped", status.value, ("stopped",))  # fmt: skip
                kill = mpb.KillRequest(signal=signal.SIGKILL, all=True)
                with contextlib.suppress(RunvmError):  # the monitor may be exiting already
                    common.monitor_request(st, args.container_id, "Kill", kill)
            _wait_gone(state)  # stopped is saved before the monitor has stopped the VM
            require("delete", Status.STOPPED, args.container_id)
            common.clean_sandbox(state)
            _poststop(state, directory / "hooks.log")
            shutil.rmtree(directory, ignore_errors=True)
    except NotFoundError:
        if not args.force:
            raise


def run(args: argparse.Namespace) -> int:
    delete(args)
    return 0
