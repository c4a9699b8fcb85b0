"""A container in a sandbox, seen from the host: share its rootfs, create, start, remove.

Contract: :meth:`Container.create` shares the bundle's rootfs and bind sources into the
sandbox, asks the agent to create the container (status ``created``), then runs the
``prestart`` and ``createRuntime`` hooks, then ``createContainer``; on any failure what it did
is undone. :meth:`Container.start` runs ``startContainer`` hooks, starts the user program
(the agent answers once it was executed), then the ``poststart`` hooks, whose failures are
only warnings. :meth:`Container.remove` removes the container in the guest and its shares on
the host; it is idempotent. :meth:`Container.poststop` runs the ``poststop`` hooks (warnings
only) for a front end's delete. Every hook gets the state JSON with the status the
runtime-spec names at its point: ``creating``, ``created`` (startContainer), ``running``
(poststart), ``stopped`` (poststop); where each runs for a VM runtime: :mod:`runvm.runtime.hooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runvm.errors import ConfigError, RpcError, RunvmError
from runvm.oci import load_spec
from runvm.protocol import agent_pb2 as pb
from runvm.runtime import hooks
from runvm.runtime.guestspec import guest_spec
from runvm.runtime.names import check_id
from runvm.runtime.sandbox import Sandbox
from runvm.storage import blockdev, mounts
from runvm.storage.shared import PRIVATE_OPTIONS, ReadOnly


@dataclass
class Container:
    id: str
    bundle: Path
    spec: dict[str, Any]
    sandbox: Sandbox
    guest_pid: int = 0
    removed: bool = False
    disk_ids: list[str] = field(default_factory=list)  # hot-plugged disks, unplugged at removal
    host_pid: int = 0  # the container's pid as its front end reports it (state JSON)
    hooks_log: Path | None = None  # where hooks' output goes (none: the run directory)
    on_started: Callable[[], None] = lambda: None  # the front end's "running", before poststart

    def oci_state(self, status: str) -> dict[str, Any]:
        """The runtime-spec state of this container, as hooks get it on stdin."""
        state = {
            "ociVersion": self.spec.get("ociVersion", ""), "id": self.id, "status": status,
            "pid": self.host_pid, "bundle": str(self.bundle),
            "annotations": dict(self.spec.get("annotations") or {}),
        }  # fmt: skip
        if status == "stopped":  # no process left to name
            del state["pid"]
        return state

    async def _hooks(self, kind: str, status: str, warn_only: bool = False) -> list[str]:
        log = self.hooks_log or self.sandbox.run_dir / f"{self.id}.hooks.log"
        return await hooks.run_hooks(self.spec, kind, self.oci_state(status), log, warn_only)

    @property
    def terminal(self) -> bool:
        return bool(self.spec.get("process", {}).get("terminal"))

    @staticmethod
    def load(container_id: str, bundle: Path) -> tuple[dict[str, Any], Path]:
        """Validate the id and bundle before any VM work; returns (spec, rootfs).

        With a block-device rootfs annotation, root.path need not exist (the disk is it)."""
        check_id(container_id, "container")
        bundle = bundle.resolve()
        spec = load_spec(bundle)
        if "process" not in spec:
            raise ConfigError(f"{bundle}/config.json: process is required to run a container")
        rootfs = Path(spec["root"]["path"])
        rootfs = rootfs if rootfs.is_absolute() else bundle / rootfs
        block = blockdev.from_annotations(spec.get("annotations") or {})
        if block is None and not rootfs.is_dir():
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
        block: blockdev.BlockRootfs | None = None,
        host_pid: int = 0,
        hooks_log: Path | None = None,
    ) -> Container:
        """Share the rootfs (or hot-plug it: ``block``, or the bundle's block-device
        annotation), create the container (``join``: see ``guest_spec``) and run the create
        hooks with ``host_pid`` in their state."""
        spec, rootfs = cls.load(container_id, bundle)
        block = block or blockdev.from_annotations(spec.get("annotations") or {})
        shared = sandbox.shared
        agent = sandbox.agent
        if shared is None or agent is None:
            raise ConfigError(f"sandbox {sandbox.id} has no shared filesystem for containers")
        container = cls(container_id, bundle.resolve(), spec, sandbox, host_pid=host_pid,
                        hooks_log=hooks_log)  # fmt: skip
        try:
            storages: list[pb.Storage] = []
            disks: dict[int, str] = {}  # mount index -> where the guest mounts its disk
            for i, mount in enumerate(spec.get("mounts") or []):
                volume = blockdev.from_mounts([(mount.get("type", ""), mount.get("source", ""),
                                                mount.get("options") or [])])  # fmt: skip
                if volume is not None:
                    storages.append(await container._plug(volume, f"v{i}", f"m{i}"))
                    disks[i] = storages[-1].mount_point
            if block is not None:
                storages.append(await container._plug(block, "r", "root"))
                root_guest = storages[-1].mount_point
            else:  # (root.readonly is applied in the guest, after the mount points were made)
                share = await asyncio.to_thread(shared.add_rootfs, container_id, rootfs)
                root_guest = shared.guest_path(share)

            def share_bind(index: int, source: str, options: list[str]) -> tuple[str, bool]:
                private = any(o in PRIVATE_OPTIONS for o in options)
                path = shared.add_bind(container_id, index, Path(source),
                                       ReadOnly.of(options), private)  # fmt: skip
                return shared.guest_path(path), mounts.has_submounts(source)

            gspec = guest_spec(spec, container_id, root_guest, share_bind, join, disks)
            request = pb.CreateContainerRequest(
                container_id=container_id,
                oci_spec_json=json.dumps(gspec).encode(),
                stdin=stdin,
                storages=storages,
            )
            container.guest_pid = await agent.create_container(request)
        except BaseException:
            await asyncio.to_thread(shared.remove_container, container_id)
            await container._unplug_disks()
            raise
        try:
            for kind in ("prestart", "createRuntime", "createContainer"):
                await container._hooks(kind, "creating")
        except BaseException:
            await container.remove()
            raise
        return container

    async def _plug(self, block: blockdev.BlockRootfs, kind: str, name: str) -> pb.Storage:
        """Hot-plug one disk (the rootfs or a volume); returns the agent's mount of it."""
        vm = self.sandbox.vm
        if vm is None or not self.sandbox.hotplug_blk:
            raise ConfigError(f"container {self.id}: a block device ({block.source}) needs disk "
                              f"hot-plug, which machine {self.sandbox.machine} lacks")  # fmt: skip
        disk_id = kind + hashlib.sha256(self.id.encode()).hexdigest()[:15]
        disk = await asyncio.to_thread(blockdev.open_disk, block, disk_id)
        try:
            await vm.hotplug_disk(disk)
        finally:
            os.close(disk.fd)
        self.disk_ids.append(disk_id)
        return pb.Storage(driver="blk", source=disk.serial, fstype=block.fstype,
                          options=list(block.options),
                          mount_point=f"{blockdev.GUEST_DISK_ROOT}/{self.id}/{name}")  # fmt: skip

    async def _unplug_disks(self) -> None:
        while self.disk_ids and self.sandbox.vm is not None:
            disk_id = self.disk_ids.pop()
            with contextlib.suppress(RunvmError):
                await self.sandbox.vm.unplug_disk(disk_id)

    async def start(self) -> list[str]:
        """startContainer hooks, the user program, poststart hooks; returns the warnings of
        failed poststart hooks. A failed startContainer hook kills the init (the container
        goes to ``stopped``)."""
        agent = self.sandbox.agent
        assert agent is not None
        try:
            await self._hooks("startContainer", "created")
        except BaseException:
            with contextlib.suppress(RunvmError):
                await agent.signal_process(self.id, "", signal.SIGKILL, True)
            raise
        await agent.start_container(self.id)
        self.on_started()
        return await self._hooks("poststart", "running", warn_only=True)

    async def poststop(self) -> list[str]:
        """The poststop hooks, after the container was deleted; returns their failures."""
        return await self._hooks("poststop", "stopped", warn_only=True)

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
            await self._unplug_disks()
