"""`runvm ksm serve|kick`: the KSM throttler daemon and a manual kick."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ksm", help="KSM throttling while sandboxes start")
    verbs = p.add_subparsers(dest="ksm_verb", metavar="ACTION", required=True)
    s = verbs.add_parser("serve", help="run the throttler (see docs/density.md for a unit)")
    s.add_argument("--socket", type=Path, help="default /run/runvm/ksm.sock")
    s.set_defaults(func=serve)
    k = verbs.add_parser("kick", help="tell the throttler a sandbox starts")
    k.add_argument("--socket", type=Path, help="default /run/runvm/ksm.sock")
    k.set_defaults(func=kick)


def serve(args: argparse.Namespace) -> int:
    from runvm.ksm import server
    from runvm.ksm.throttler import Throttler

    asyncio.run(server.serve(args.socket or server.DEFAULT_SOCKET, Throttler()))
    return 0


def kick(args: argparse.Namespace) -> int:
    from runvm.ksm import server

    if not server.kick(args.socket or server.DEFAULT_SOCKET):
        print("no KSM throttler is listening")
        return 1
    return 0
