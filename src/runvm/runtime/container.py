"""A container in a sandbox, seen from the host: share its rootfs, create, start, remove.

Contract: :meth:`Container.create` shares the bundle's rootfs and bind sources into the
sandbox and asks the agent to create the container (status ``created``); on failure the
shares are removed again. :meth:`Container.remove` removes the container in the guest and
its shares on the host; it is idempotent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runvm.errors import ConfigError, RpcError
from runvm.oci import load_spec
from runvm.protocol import agent_pb2 as pb
from runvm.runtime.guestspec import guest_spec
from runvm.runtime.names import check_id
from runvm.runtime.sandbox import Sandbox


@dataclass
class Container:
    id: str
    bundle: Path
    spec: dict[str, Any]
    sandbox: Sandbox
    guest_pid: int = 0
    removed: bool = False

    @property
    def terminal(self) -> bool:
        return bool(self.spec.get("process", {}).get("terminal"))

    @staticmethod
    def load(container_id: str, bundle: Path) -> tuple[dict[str, Any], Path]:
        """Validate the id and bundle before any VM work; returns (spec, rootfs)."""
        check_id(container_id, "container")
        bundle = bundle.resolve()
        spec = load_spec(bundle)
        if "process" not in spec:
            raise ConfigError(f"{bundle}/config.json: process is required to run a container")
        rootfs = Path(spec["root"]["path"])
        rootfs = rootfs if rootfs.is_absolute() else bundle / rootfs
        if not rootfs.is_dir():
            raise ConfigError(f"rootfs {rootfs} does not exist (root.path in {bundle}/config.json)")
        return spec, rootfs

    @classmethod
    async def create(
        cls,
        sandbox: Sandbox,
        container_id: str,
        bundle: Path,
        stdin: bool = True,
        join: Mapping[str, str] | None = None,
    ) -> Container:
        """Share the rootfs and create the container (``join``: see ``guest_spec``)."""
        spec, rootfs = cls.load(container_id, bundle)
        shared = sandbox.shared
        agent = sandbox.agent
        if shared is None or agent is None:
            raise ConfigError(f"sandbox {sandbox.id} has no shared filesystem for containers")
        container = cls(container_id, bundle.resolve(), spec, sandbox)
        try:
            # (root.readonly is applied in the guest, after the mount points were made)
            share = await asyncio.to_thread(shared.add_rootfs, container_id, rootfs)

            def share_bind(index: int, source: str, readonly: bool) -> str:
                path = shared.add_bind(container_id, index, Path(source), readonly)
                return shared.guest_path(path)

            gspec = guest_spec(spec, container_id, shared.guest_path(share), share_bind, join)
            request = pb.CreateContainerRequest(
                container_id=container_id, oci_spec_json=json.dumps(gspec).encode(), stdin=stdin
            )
            container.guest_pid = await agent.create_container(request)
        except BaseException:
            await asyncio.to_thread(shared.remove_container, container_id)
            raise
        return container

    async def start(self) -> int:
        assert self.sandbox.agent is not None
        return await self.sandbox.agent.start_container(self.id)

    async def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        agent = self.sandbox.agent
        try:
            if agent is not None:
                await agent.remove_container(self.id)
        except RpcError:
            pass
        finally:
            if self.sandbox.shared is not None:
                await asyncio.to_thread(self.sandbox.shared.remove_container, self.id)
