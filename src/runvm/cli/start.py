"""`runvm start ID`: run the user program of a ``created`` container."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from runvm.cli import common
from runvm.cli.monitor import monitor_pb2 as mpb
from runvm.runtime.state import require

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("start", help="start a created container")
    p.add_argument("container_id", metavar="ID")
    p.set_defaults(func=run)


def start(args: argparse.Namespace) -> None:
    st = common.store(args)
    with st.locked(args.container_id):
        state = st.load(args.container_id)
        require("start", state.effective_status(), args.container_id)
        reply = common.monitor_request(st, args.container_id, "Start", mpb.StartRequest())
    for warning in mpb.StartResponse.FromString(reply).warnings:  # poststart hooks that failed
        log.warning("%s", warning)


def run(args: argparse.Namespace) -> int:
    start(args)
    return 0
