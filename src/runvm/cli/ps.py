"""`runvm ps [--format table|json] ID`: the container's processes.

The PIDs are the guest's: the processes live in the VM, not on the host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from runvm.cli import common
from runvm.errors import RpcError, RunvmError
from runvm.protocol.client import AgentClient
from runvm.ttrpc import Client


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ps", help="list the processes of a container (guest PIDs)")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.add_argument("container_id", metavar="ID")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, help="ignored (no host ps to run)")
    p.set_defaults(func=run)


async def _pids(sock: str, container_id: str) -> list[int]:
    try:
        agent = AgentClient(await Client.connect_unix(sock), timeout=30)
    except OSError as exc:
        raise RunvmError(f"container {container_id} is not running") from exc
    try:
        return await agent.list_processes(container_id)
    except RpcError as exc:
        raise RunvmError(exc.message) from exc
    finally:
        await agent.close()


def run(args: argparse.Namespace) -> int:
    st = common.store(args)
    st.load(args.container_id)
    pids = asyncio.run(_pids(str(st.dir(args.container_id) / "monitor.sock"), args.container_id))
    if args.format == "json":
        print(json.dumps(pids))
    else:
        print("PID")
        for pid in pids:
            print(pid)
    return 0
