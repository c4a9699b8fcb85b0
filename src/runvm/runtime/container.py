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
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runvm import trace
from runvm.errors import (
    ConfigError,
    ExistsError,
    GuestError,
    NotFoundError,
    RpcError,
    RunvmError,
)
from runvm.metrics.figures import ContainerStats
from runvm.names import check_id
from runvm.oci import load_spec, parse_process
from runvm.protocol import agent_pb2 as pb
from runvm.runtime import checkpoint, hooks
from runvm.runtime.checkpoint import CheckpointOptions, RestoreOptions
from runvm.runtime.guestspec import guest_spec, with_path
from runvm.runtime.lifecycle import State, require
from runvm.runtime.proc import Process
from runvm.runtime.sandbox import Sandbox
from runvm.storage import blockdev, mounts
from runvm.storage.shared import PRIVATE_OPTIONS, ReadOnly

log = logging.getLogger(__name__)

MAX_RESOURCES = 1 << 20  # an update's LinuxResources document


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
    init: Process | None = None  # set once the guest created the container
    execs: dict[str, Process] = field(default_factory=dict)
    # A container created from a checkpoint: its start restores it (what the guest is told)
    restore: RestoreOptions | None = None
    _restore_request: pb.RestoreContainerRequest | None = None
    _on_exit: Callable[[Process], Awaitable[None]] | None = None  # its watch, from its start

    @property
    def process(self) -> Process:
        if self.init is None:
            raise RunvmError(f"container {self.id} was never created")
        return self.init

    @property
    def state(self) -> State:
        return self.init.state if self.init is not None else State.CREATING

    def proc(self, exec_id: str) -> Process:
        """The init (``""``) or the exec ``exec_id``; NotFoundError if there is none."""
        if not exec_id:
            return self.process
        found = self.execs.get(exec_id)
        if found is None:
            raise NotFoundError(f"process {exec_id} of {self.id}: not found")
        return found

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
        restore: RestoreOptions | None = None,
    ) -> Container:
        """Share the rootfs (or hot-plug it: ``block``, or the bundle's block-device
        annotation), create the container (``join``: see ``guest_spec``) and run the create
        hooks with ``host_pid`` in their state. With ``restore`` nothing is made in the guest
        yet: :meth:`start` restores the checkpoint's processes."""
        spec, rootfs = cls.load(container_id, bundle)
        block = block or blockdev.from_annotations(spec.get("annotations") or {})
        shared = sandbox.shared
        agent = sandbox.agent
        if shared is None or agent is None:
            raise ConfigError(f"sandbox {sandbox.id} has no shared filesystem for containers")
        container = cls(container_id, bundle.resolve(), spec, sandbox, host_pid=host_pid,
                        hooks_log=hooks_log, restore=restore)  # fmt: skip
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
                trace.mark("rootfs shared")

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
            if restore is not None:
                container._restore_request = pb.RestoreContainerRequest(
                    container_id=container_id, oci_spec_json=request.oci_spec_json,
                    stdin=stdin, storages=storages)  # fmt: skip
            else:
                trace.mark("agent CreateContainer")
                try:
                    container.guest_pid = await agent.create_container(request)
                except RpcError as exc:
                    raise GuestError(exc.code, f"container {container_id}: creating it in the "
                                     f"guest failed: {exc.message}") from exc  # fmt: skip
                trace.mark("agent CreateContainer done")
            container.init = Process(agent, container_id, stdin=stdin)
            container.init.guest_pid = container.guest_pid
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
        init = self.process
        init.require("start")
        try:
            await self._hooks("startContainer", "created")
        except BaseException:
            with contextlib.suppress(RunvmError):
                await init.agent.signal_process(self.id, "", signal.SIGKILL, True)
            raise
        if self.restore is not None:
            await self._restore(init)
        else:
            trace.mark("agent StartContainer")
            await init.agent.start_container(self.id)
            trace.mark("agent StartContainer done")
            log.info("container %s started", self.id)
        init.become(State.RUNNING)
        if self._on_exit is not None and self.restore is not None:
            init.watch(self._on_exit)
        self.on_started()
        return await self._hooks("poststart", "running", warn_only=True)

    def follow(self, on_exit: Callable[[Process], Awaitable[None]]) -> None:
        """Watch the init to its exit (:meth:`Process.watch`); a restored one from its start."""
        if self.restore is None:
            self.process.watch(on_exit)
        else:
            self._on_exit = on_exit

    async def _restore(self, init: Process) -> None:
        """The checkpoint's processes, restored in the guest as this container's."""
        assert self.restore is not None and self._restore_request is not None
        opts, request = self.restore, self._restore_request
        shared, files = self.sandbox.shared, self.sandbox.files
        made = checkpoint.made_by(files.image if files else None, f"restore of {self.id}")
        assert shared is not None and files is not None and files.image is not None
        await asyncio.to_thread(opts.work.mkdir, mode=0o700, parents=True, exist_ok=True)
        async with checkpoint.shared_dirs(shared, self.id, Path(files.image.tools), opts.images,
                                          opts.work, images_readonly=True) as criu:  # fmt: skip
            criu.tcp_established, criu.file_locks = opts.tcp_established, opts.file_locks
            request.criu.CopyFrom(criu)
            try:
                self.guest_pid = await init.agent.restore_container(request)
            except RpcError as exc:
                raise GuestError(exc.code, f"container {self.id}: restoring it in the guest "
                                 f"failed: {exc.message}") from exc  # fmt: skip
        init.guest_pid = self.guest_pid
        log.info("container %s restored from %s (made by %s)", self.id, opts.images, made)

    async def checkpoint(self, opts: CheckpointOptions) -> None:
        """The container's processes into ``opts.images`` (made if missing), described by
        the checkpoint's :data:`~runvm.runtime.checkpoint.META`; without ``leave_running``
        they are gone afterwards (the init's exit is reported as any exit)."""
        init = self.process
        init.require("checkpoint")
        shared, files = self.sandbox.shared, self.sandbox.files
        made = checkpoint.made_by(files.image if files else None, f"checkpoint of {self.id}")
        assert shared is not None and files is not None and files.image is not None
        for directory in (opts.images, opts.work):
            await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
        (opts.images / checkpoint.META).unlink(missing_ok=True)  # not a checkpoint until done
        async with checkpoint.shared_dirs(shared, self.id, Path(files.image.tools), opts.images,
                                          opts.work, images_readonly=False) as criu:  # fmt: skip
            criu.leave_running, criu.tcp_established = opts.leave_running, opts.tcp_established
            criu.file_locks = opts.file_locks
            try:
                await init.agent.checkpoint_container(self.id, criu)
            except RpcError as exc:
                raise GuestError(exc.code, f"container {self.id}: checkpoint in the guest "
                                 f"failed: {exc.message}") from exc  # fmt: skip
        sandbox, config = self.sandbox, self.sandbox.config
        settings = {"machine": sandbox.machine, "image": config.image.variant,
                    "shared_fs": config.storage.shared_fs, "origin": sandbox.origin}  # fmt: skip
        await asyncio.to_thread(checkpoint.write_meta, opts.images, self.id, made, self.terminal,
                                settings)  # fmt: skip
        log.info("container %s checkpointed to %s", self.id, opts.images)

    # --- what a running container is asked --------------------------------------------------
    def add_exec(self, exec_id: str, process_json: bytes, stdin: bool) -> Process:
        """A new exec process (``created``; it runs at its ``start_exec``), from an OCI
        process document (parsed with limits)."""
        self.process.require("exec")
        if not exec_id:
            raise ConfigError(f"exec in {self.id}: the exec id is empty")
        if exec_id in self.execs:
            raise ExistsError(f"exec {exec_id!r} of {self.id}: already exists")
        spec = with_path(parse_process(process_json, f"exec {exec_id} process"))
        proc = Process(self.process.agent, self.id, exec_id, spec, stdin)
        self.execs[exec_id] = proc
        return proc

    async def remove_exec(self, exec_id: str) -> Process:
        """Forget an exec that ended (or never started)."""
        proc = self.proc(exec_id)
        if proc.state is not State.CREATED:
            require("delete", proc.state, proc.name)
        await proc.release()
        del self.execs[exec_id]
        return proc

    async def pause(self) -> None:
        init = self.process
        init.require("pause")
        await init.agent.pause_container(self.id)
        init.become(State.PAUSED)

    async def resume(self) -> None:
        init = self.process
        init.require("resume")
        await init.agent.resume_container(self.id)
        init.become(State.RUNNING)

    async def update(self, resources_json: bytes) -> None:
        """Apply an OCI LinuxResources document (JSON) to the container's guest cgroup."""
        self.process.require("update")
        parse_resources(self.id, resources_json)
        await self.process.agent.update_container(self.id, resources_json or b"{}")

    async def stats(self) -> ContainerStats:
        s = await self.process.agent.stats_container(self.id)
        return ContainerStats(
            cpu_usage_usec=s.cpu_usage_usec, cpu_user_usec=s.cpu_user_usec,
            cpu_system_usec=s.cpu_system_usec, memory_current=s.memory_current,
            memory_max=s.memory_max, pids_current=s.pids_current, pids_max=s.pids_max,
            oom_kills=s.memory_oom_kills, io_read_bytes=s.io_read_bytes,
            io_write_bytes=s.io_write_bytes, io_read_ops=s.io_read_ops,
            io_write_ops=s.io_write_ops,
        )  # fmt: skip

    async def pids(self) -> list[int]:
        """Guest PIDs of every process in the container."""
        return await self.process.agent.list_processes(self.id)

    async def wait_oom(self, seen: int) -> int:
        """Block until the guest counted more than ``seen`` OOM kills in the container."""
        return await self.process.agent.wait_oom(self.id, seen)

    async def poststop(self) -> list[str]:
        """The poststop hooks, after the container was deleted; returns their failures."""
        return await self._hooks("poststop", "stopped", warn_only=True)

    async def remove(self) -> None:
        """Remove the container in the guest and its shares on the host (idempotent); its
        processes' relays are let go of first."""
        if self.removed:
            return
        self.removed = True
        for proc in (*self.execs.values(), *([self.init] if self.init else [])):
            proc.stop_watching()
            await proc.release()
        agent = self.sandbox.agent
        try:
            if agent is not None:
                trace.mark("agent RemoveContainer")
                await agent.remove_container(self.id)
                trace.mark("agent RemoveContainer done")
        except RpcError:
            pass
        finally:
            if self.sandbox.shared is not None:
                await asyncio.to_thread(self.sandbox.shared.remove_container, self.id)
                trace.mark("rootfs unshared")
            await self._unplug_disks()


def parse_resources(container_id: str, resources_json: bytes) -> dict[str, Any]:
    """An update's LinuxResources document, read with limits; ConfigError if it is not one."""
    if len(resources_json) > MAX_RESOURCES:
        raise ConfigError(f"resources of {container_id}: over {MAX_RESOURCES} bytes")
    try:
        doc = json.loads(resources_json or b"{}")
    except ValueError as exc:
        raise ConfigError(f"resources of {container_id}: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"resources of {container_id}: not a JSON object")
    return doc
