"""`runvm kill [--all] ID [SIGNAL]`: send a signal (name or number; default SIGTERM)."""

from __future__ import annotations

import argparse
from typing import Any

from runvm.cli import common
from runvm.cli.monitor import monitor_pb2 as mpb
from runvm.errors import RunvmError
from runvm.runtime.lifecycle import LIVE
from runvm.runtime.state import Status


def add_parser(sub: Any) -> None:
    p = sub.add_parser("kill", help="send a signal to a container's init (or all processes)")
    p.add_argument("-a", "--all", action="store_true", help="signal every process")
    p.add_argument("container_id", metavar="ID")
    p.add_argument("signal", nargs="?", default="SIGTERM")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    signum = common.parse_signal(args.signal)
    st = common.store(args)
    state = st.load(args.container_id)
    if state.effective_status() not in LIVE:
        raise RunvmError("container not running")
    request = mpb.KillRequest(signal=signum, all=args.all)
    try:
        common.monitor_request(st, args.container_id, "Kill", request)
    except RunvmError:
        # A signal that ends the container can lose its answer: the monitor closes its
        # connections as soon as the init is gone. The signal was delivered then.
        if st.load(args.container_id).effective_status() is not Status.STOPPED:
            raise
    return 0
