"""Calling the agent about one container through its monitor (the connection's one owner)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from runvm.cli import common
from runvm.errors import AgentError, RpcError, RunvmError
from runvm.protocol.client import AgentClient
from runvm.ttrpc import Client

T = TypeVar("T")


async def _call(sock: str, container_id: str, fn: Callable[[AgentClient], Awaitable[T]]) -> T:
    try:
        agent = AgentClient(await Client.connect_unix(sock), timeout=60)
    except OSError as exc:
        raise RunvmError(f"container {container_id} is not running") from exc
    try:
        return await fn(agent)
    except RpcError as exc:
        raise RunvmError(exc.message) from exc
    except AgentError as exc:
        raise RunvmError(f"container {container_id}: {exc}") from exc
    finally:
        await agent.close()


def call(args: argparse.Namespace, fn: Callable[[AgentClient], Awaitable[T]]) -> T:
    """Run ``fn(agent)`` against the monitor of ``args.container_id``."""
    st = common.store(args)
    sock = st.load(args.container_id).monitor_socket()  # "container does not exist" first
    return asyncio.run(_call(str(sock), args.container_id, fn))
