"""`runvm debug [-T] ID [APPLET ARGS...]`: a shell in the guest of ID's sandbox, for an operator.

busybox's ``sh`` (or the busybox applet named) runs as root in the guest itself, outside
every container: the guest's kernel, the agent and all containers' processes are in view.
ID is a CLI container, or a containerd container or pod, whose sandbox lives under the
config's state root; its owner (the monitor or the shim) relays the shell. A terminal is
used when this command's stdin is one (``-T``: never). Refused unless the sandbox's config
says ``[debug] console = true``. Exits with the shell's status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from runvm.cli import common
from runvm.cli.exec import ExecRelay
from runvm.errors import NotFoundError, RunvmError
from runvm.metrics import discover
from runvm.protocol.client import AgentClient
from runvm.runtime import debug
from runvm.ttrpc import Client


def add_parser(sub: Any) -> None:
    p = sub.add_parser("debug", help="open a shell in a sandbox's guest, outside its containers")
    p.add_argument("-T", "--no-tty", action="store_true", help="no terminal, even on one")
    p.add_argument("sandbox", metavar="ID", help="a container or pod id")
    p.add_argument("command", nargs=argparse.REMAINDER, help="a busybox applet (default sh)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = common.load_config(args)
    owner = discover.locate(Path(config.runtime.state_root), args.sandbox)
    if owner is None:
        raise NotFoundError(f"no running sandbox {args.sandbox!r} under "
                            f"{config.runtime.state_root}")  # fmt: skip
    terminal = not args.no_tty and sys.stdin.isatty()
    process = {"args": list(args.command) or ["sh"], "terminal": terminal, "cwd": "/",
               "env": [f"TERM={os.environ.get('TERM', 'linux')}"]}  # fmt: skip

    async def connect() -> AgentClient:
        try:
            conn = await Client.connect_unix(str(owner.socket))
        except OSError as exc:
            raise RunvmError(f"sandbox {args.sandbox}: its {owner.kind} does not answer "
                             f"({exc.strerror})") from exc  # fmt: skip
        return AgentClient(conn, timeout=60, service=debug.SERVICE,
                           metadata={debug.SANDBOX_KEY: args.sandbox})  # fmt: skip

    return asyncio.run(ExecRelay(connect, "", process).run())
