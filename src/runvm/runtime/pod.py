"""A pod: one VM and the containers in it. The one API both front ends call.

Contract of :class:`Pod`:
- :meth:`create` of the first container boots the VM, of that container's architecture
  (runtime/guestarch.py); a later container of another architecture is refused. Unless the
  caller placed this process
  already (``place=False``: the CLI monitor), that first create enters the network
  namespace its config.json names, or keeps it as a descriptor when the process serves
  several pods (``shared``), and makes the host cgroup its ``cgroupsPath`` names. Later
  creates add containers to the same VM and join the first one's namespaces in the guest.
  A failed create leaves nothing: a VM it booted is stopped.
- Every container's processes are watched: ``on_exit(container, process)`` is awaited
  after the process's output was drained and before it is ``stopped``; a container's
  OOM kills reach ``on_oom(container)`` (before the exit they caused).
- :meth:`kill` of a stopped process, or of any process once the VM has failed, is a
  NotFoundError ("already finished"), as containerd expects.
- :meth:`delete` needs a stopped container (a created one is killed first), removes it in
  the guest and on the host, stops the VM with the last container, then runs the
  ``poststop`` hooks.
- ``on_change()`` is called whenever the set of containers or the VM's NICs changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from runvm import config as cfg
from runvm.arch import Arch
from runvm.errors import (
    AgentError,
    ConfigError,
    ExistsError,
    NotFoundError,
    RpcError,
    RunvmError,
    StateError,
)  # fmt: skip
from runvm.network import netns
from runvm.runtime import growth, guestarch, sizing
from runvm.runtime.checkpoint import RestoreOptions
from runvm.runtime.container import Container, parse_resources
from runvm.runtime.hostcgroup import HostCgroup
from runvm.runtime.lifecycle import State, require
from runvm.runtime.proc import DRAIN_TIMEOUT, Process
from runvm.runtime.sandbox import Sandbox, SandboxOptions
from runvm.runtime.sizing import Size
from runvm.storage import blockdev, mounts

log = logging.getLogger(__name__)

StartSandbox = Callable[[str, cfg.RunvmConfig, SandboxOptions], Awaitable[Sandbox]]

JOINABLE = ("ipc", "uts", "pid", "cgroup")
KILL_WAIT = 10.0  # for a created container's init to go, at delete


def join_map(host_pid: int, guest_pid: int) -> dict[str, str]:
    """The host namespace paths front ends name for the pod's first container (its task
    PID is the VM's) -> that container's init's paths in the guest."""
    return {f"/proc/{host_pid}/ns/{t}": f"/proc/{guest_pid}/ns/{t}" for t in JOINABLE}


async def _no_exit(container: Container, process: Process) -> None:
    return None


class Pod:
    def __init__(
        self,
        pod_id: str,
        config: cfg.RunvmConfig,
        *,
        shared: bool = False,
        place: bool = True,
        keep_logs: bool = False,
        start_sandbox: StartSandbox = Sandbox.start,
    ) -> None:
        """``keep_logs``: the VM's logs outlive it (SandboxOptions.keep_logs)."""
        self.id = pod_id
        self.keep_logs = keep_logs
        self.start_sandbox = start_sandbox  # (tests boot a fake)
        self.config = config
        self.shared = shared
        self.place = place
        self.sandbox: Sandbox | None = None
        self.first = ""  # the container whose create booted the VM
        self.arch = ""  # the VM's architecture (runvm.arch), once it booted
        self.containers: dict[str, Container] = {}
        self.cgroup: HostCgroup | None = None
        self.netns_fd: int | None = None  # shared: the pod's network namespace
        self.netns_path = ""
        self.lock = asyncio.Lock()  # create and delete change the pod
        self._stopping: asyncio.Future[None] | None = None  # the VM of the last delete
        self.on_exit: Callable[[Container, Process], Awaitable[None]] = _no_exit
        self.on_oom: Callable[[Container], None] = lambda c: None
        self.on_change: Callable[[], None] = lambda: None
        self._oom_seen: dict[str, int] = {}
        self._oom_watches: dict[str, asyncio.Future[None]] = {}
        self._mounted: set[str] = set()  # containers whose rootfs this pod mounted
        # What each container adds to the VM (runtime/sizing.py), from these resources.
        self.wants: dict[str, Size] = {}
        self.resources: dict[str, dict[str, Any]] = {}

    # --- lookups ---------------------------------------------------------------------------
    @property
    def vm_pid(self) -> int:
        if self.sandbox is None or self.sandbox.vm is None:
            return 0
        return self.sandbox.vm.pid or 0

    @property
    def failure(self) -> str:
        return self.sandbox.failure if self.sandbox is not None else ""

    def leftovers(self) -> dict[str, Any]:
        """What outlives this process in the pod's namespace if it is killed (tc redirects,
        macvtaps, port-forwarding rules), for whoever cleans up after it:
        :func:`runvm.network.plug.clean_up`."""
        sandbox = self.sandbox
        net = sandbox.network if sandbox is not None else None
        if sandbox is None or net is None or not self.netns_path:
            return {}
        forwarded = [sandbox.forward_port] if sandbox.forward_port else []
        return {"netns": self.netns_path, **net.leftovers(), "port_forward": forwarded}

    def container(self, container_id: str) -> Container:
        found = self.containers.get(container_id)
        if found is None:
            raise NotFoundError(f"container {container_id}: not found")
        return found

    def proc(self, container_id: str, exec_id: str = "") -> tuple[Container, Process]:
        container = self.container(container_id)
        return container, container.proc(exec_id)

    # --- create ------------------------------------------------------------------------------
    async def create(
        self,
        container_id: str,
        bundle: Path,
        *,
        stdin: bool,
        boots: bool = True,
        rootfs_mounts: Iterable[tuple[str, str, list[str]]] = (),
        host_pid: int | None = None,
        hooks_log: Path | None = None,
        restore: RestoreOptions | None = None,
    ) -> Container:
        """Create a container (see the module docstring); ``boots=False`` refuses to be the
        pod's first. ``rootfs_mounts`` (type, source, options) make the bundle's rootfs,
        unless they are one block device, which the VM gets as a disk. ``host_pid`` is the
        container's PID in its state (default: the VM's). With ``restore``, its start
        restores that checkpoint instead of starting the bundle's process."""
        async with self.lock:
            if container_id in self.containers:
                raise ExistsError(f"container {container_id}: already exists")
            await self.stopped()  # a new first container after the last one's delete
            wanted = list(rootfs_mounts)
            try:
                container = await self._create(container_id, bundle.resolve(), stdin, boots,
                                               wanted, host_pid, hooks_log, restore)  # fmt: skip
            except BaseException:
                self._unmount(container_id, bundle.resolve())
                if not self.containers:
                    await self._stop_vm()
                else:
                    await self._fit(f"failed create of container {container_id}")
                raise
            self.containers[container_id] = container
            self._oom_watches[container_id] = asyncio.ensure_future(self._watch_oom(container))
            self.on_change()
        log.info("pod %s: container %s created (guest pid %d)", self.id, container_id,
                 container.guest_pid)  # fmt: skip
        return container

    async def _create(
        self,
        container_id: str,
        bundle: Path,
        stdin: bool,
        boots: bool,
        rootfs_mounts: list[tuple[str, str, list[str]]],
        host_pid: int | None,
        hooks_log: Path | None,
        restore: RestoreOptions | None,
    ) -> Container:
        block = blockdev.from_mounts(rootfs_mounts)
        for kind, source, options in rootfs_mounts if block is None else ():
            mounts.mount_spec(kind, source, str(bundle / "rootfs"), options)
            self._mounted.add(container_id)
        spec, rootfs = Container.load(container_id, bundle)
        resources = dict((spec.get("linux") or {}).get("resources") or {})
        need = sizing.needs(resources)
        readable = (
            block is None and blockdev.from_annotations(spec.get("annotations") or {}) is None
        )
        arch = guestarch.container_arch(self.config, container_id, spec,
                                        rootfs if readable else None)  # fmt: skip
        join: dict[str, str] = {}
        if self.sandbox is None:
            if not boots:
                raise StateError(f"create container {container_id} in pod {self.id}",
                                 "without a VM", ["its sandbox created first"])  # fmt: skip
            needs_hotplug = block is not None or blockdev.needs_disks(spec)
            await self._boot(container_id, spec, needs_hotplug, arch)
        else:
            guestarch.pod_mismatch(container_id, arch, self.id, self.arch)
            what = f"container {container_id}"
            target = sizing.check(self.config, self._target(need), need, what)
            await growth.resize(self.sandbox, target, f"create {what}", need)
            if self.first in self.containers:
                join = join_map(self.vm_pid, self.containers[self.first].guest_pid)
        assert self.sandbox is not None
        container = await Container.create(self.sandbox, container_id, bundle, stdin, join, block,
                                           host_pid=self.vm_pid if host_pid is None else host_pid,
                                           hooks_log=hooks_log, restore=restore)  # fmt: skip
        container.follow(self._exited)
        self.wants[container_id], self.resources[container_id] = need, resources
        return container

    async def _boot(
        self, container_id: str, spec: Mapping[str, Any], needs_hotplug: bool, arch: Arch
    ) -> None:
        """The pod's first container: network namespace, host cgroup, then a VM of ``arch``."""
        config = guestarch.for_arch(self.config, arch)
        wanted, self.netns_path = netns.network_namespace(spec)
        if self.place and self.shared:
            self.netns_fd = netns.open_namespace(spec)
        elif self.place:
            netns.apply(spec)
        cgroups_path = (spec.get("linux") or {}).get("cgroupsPath")
        if cgroups_path and self.place:
            try:
                self.cgroup = HostCgroup.create(cgroups_path)
                if not self.shared:  # QEMU and virtiofsd start in it
                    self.cgroup.enter()
            except (OSError, RunvmError) as exc:
                log.warning("host cgroup %s: %s (the pod runs outside it)", cgroups_path, exc)
        limit = self.cgroup.memory_limit() if self.cgroup is not None else None
        resources = (spec.get("linux") or {}).get("resources")
        size = sizing.vm_size(self.config, resources, f"container {container_id}")
        options = SandboxOptions(hostname=spec.get("hostname") or container_id[:63],
                                 network=wanted, needs_hotplug=needs_hotplug,
                                 netns_fd=self.netns_fd, memory_limit=limit,
                                 size=size, keep_logs=self.keep_logs)  # fmt: skip
        self.sandbox = sandbox = await self.start_sandbox(self.id, config, options)
        sandbox.on_network_change = lambda: self.on_change()  # records list the NICs
        self.first, self.arch = container_id, arch.name
        if self.shared and self.cgroup is not None:  # moved in once started
            for child in (sandbox.vm, sandbox.virtiofsd):
                if child is not None:
                    try:
                        self.cgroup.enter(child.pid)
                    except OSError as exc:
                        log.warning("host cgroup: pid %d not moved: %s", child.pid, exc)
        steps = " ".join(f"{k}={v:.3f}" for k, v in sandbox.timings.items())
        accel = sandbox.accel.accel.value if sandbox.accel else "?"
        log.info("pod %s: %s VM up (pid %d, %s; %s)", self.id, arch.name, self.vm_pid, accel,
                 steps)  # fmt: skip

    # --- resources ---------------------------------------------------------------------------
    def _target(self, extra: Size = sizing.NOTHING, without: str = "") -> Size:
        """The base plus what every container (but ``without``) wants, plus ``extra``."""
        total = sizing.base(self.config) + extra
        for cid, want in self.wants.items():
            total = total if cid == without else total + want
        return total

    async def _fit(self, what: str) -> None:
        """Give back what no container wants any more (best effort: logged if it fails)."""
        if self.sandbox is None:
            return
        try:
            await growth.resize(self.sandbox, self._target(), what, sizing.NOTHING)
        except RunvmError as exc:
            log.warning("pod %s: %s: the VM keeps %s: %s", self.id, what, self.sandbox.size, exc)

    async def update(self, container_id: str, resources_json: bytes) -> None:
        """Apply new limits to a container: the VM grows first, the guest cgroup follows, and
        what the pod no longer wants is given back. A memory limit below what the container
        uses now is refused (ConfigError), not left to the OOM killer."""
        container = self.container(container_id)
        container.process.require("update")  # before the VM changes for it
        what = f"update of container {container_id}"
        async with self.lock:
            new = sizing.merged(self.resources.get(container_id),
                                parse_resources(container_id, resources_json))  # fmt: skip
            need = sizing.needs(new)
            target = sizing.check(self.config, self._target(need, container_id), need, what)
            limit = (new.get("memory") or {}).get("limit")
            if isinstance(limit, int) and limit > 0:
                used = (await container.stats()).memory_current
                if used > limit:
                    raise ConfigError(f"{what}: memory limit {limit} is below the {used} "
                                      "bytes it uses now")  # fmt: skip
            assert self.sandbox is not None
            have = self.sandbox.size
            grown = Size(max(have.vcpus, target.vcpus), max(have.memory_mib, target.memory_mib))
            try:
                await growth.resize(self.sandbox, grown, what, need)
                await container.update(resources_json)
                self.wants[container_id], self.resources[container_id] = need, new
            finally:  # what is wanted now (the old limits if the update failed)
                await self._fit(what)

    # --- exits and OOM kills ---------------------------------------------------------------
    async def _exited(self, process: Process) -> None:
        container = self.containers.get(process.container_id)
        if container is None:
            return
        if process.lost:
            log.error("%s: lost the process: %s", process.name, self.failure or process.lost)
        else:
            log.info("pod %s: %s exited (status %d)", self.id, process.name, process.exit_status)
        if not process.lost and not process.exec_id:  # an OOM kill that ended it comes first
            with contextlib.suppress(RunvmError):
                self._oom(container, (await container.stats()).oom_kills)
        await self.on_exit(container, process)

    async def _watch_oom(self, container: Container) -> None:
        """Report each new OOM kill the guest counts in the container."""
        while self.containers.get(container.id) is container:
            try:
                count = await container.wait_oom(self._oom_seen.get(container.id, 0))
            except (RpcError, AgentError):  # removed, VM gone, or an agent without WaitOOM
                return
            self._oom(container, count)

    def _oom(self, container: Container, count: int) -> None:
        if count > self._oom_seen.get(container.id, 0):
            self._oom_seen[container.id] = count
            self.on_oom(container)

    async def start_exec(
        self, container_id: str, exec_id: str, attach: Callable[[Process], None]
    ) -> Process:
        """Run an added exec, ``attach`` its stdio, then watch it like every process of the
        pod (``on_exit`` at its end). Attaching comes first, so no early output is lost."""
        _, proc = self.proc(container_id, exec_id)
        try:
            await proc.start_exec()
        except RunvmError:
            proc.never_ran()
            raise
        attach(proc)
        proc.watch(self._exited)
        return proc

    # --- signals ---------------------------------------------------------------------------
    async def kill(
        self, container_id: str, exec_id: str, signum: int, all_processes: bool = False
    ) -> None:
        _, proc = self.proc(container_id, exec_id)
        if proc.state is State.STOPPED:  # with all too: a stopped init leaves none behind
            raise NotFoundError(f"{proc.name}: process already finished")
        if self.failure:  # the VM is gone, and so is the process
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.exited.wait(), DRAIN_TIMEOUT * 2)
            raise NotFoundError(f"{proc.name}: process already finished ({self.failure})")
        if proc.exec_id and proc.state is State.CREATED:
            raise StateError(f"signal {proc.name}", proc.state.value, ["running"])
        await proc.signal(signum, all_processes)

    # --- delete ------------------------------------------------------------------------------
    async def delete_exec(self, container_id: str, exec_id: str) -> Process:
        return await self.container(container_id).remove_exec(exec_id)

    async def delete(self, container_id: str) -> tuple[Container, list[str]]:
        """Delete a stopped (or never started) container; (it, poststop warnings)."""
        container = self.container(container_id)
        init = container.process
        if init.state is not State.CREATED:
            require("delete", init.state, init.name)
        async with self.lock:
            if init.state is State.CREATED:  # never started: its init waits in the guest
                with contextlib.suppress(RunvmError):
                    await init.agent.signal_process(container_id, "", signal.SIGKILL, True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(init.exited.wait(), KILL_WAIT)
            await self._remove(container)
            if not self.containers:  # the answer need not wait for the VM to stop: close does
                self._stopping = asyncio.ensure_future(self._release(self._detach()))
            else:
                await self._fit(f"delete of container {container_id}")
            self.on_change()
        log.info("pod %s: container %s deleted", self.id, container_id)
        return container, await container.poststop()

    async def _remove(self, container: Container) -> None:
        self.containers.pop(container.id, None)
        self.wants.pop(container.id, None)
        self.resources.pop(container.id, None)
        watch = self._oom_watches.pop(container.id, None)
        if watch is not None:
            watch.cancel()
        with contextlib.suppress(Exception):
            await container.remove()
        self._unmount(container.id, container.bundle)

    def _unmount(self, container_id: str, bundle: Path) -> None:
        if container_id in self._mounted:
            self._mounted.discard(container_id)
            with contextlib.suppress(OSError):
                mounts.umount(str(bundle / "rootfs"))

    async def _stop_vm(self) -> None:
        await self._release(self._detach())

    def _detach(self) -> Sandbox | None:
        """The pod has no VM from now on; the one it had is returned, to be released."""
        sandbox, self.sandbox, self.first, self.arch = self.sandbox, None, "", ""
        return sandbox

    async def _release(self, sandbox: Sandbox | None) -> None:
        """Stop ``sandbox``, then let go of the pod's cgroup and netns (kept in the record
        until they are gone) and record that."""
        try:
            if sandbox is not None:
                await sandbox.stop()
            if self.cgroup is not None:
                self.cgroup.leave()
                await asyncio.to_thread(self.cgroup.remove)
                self.cgroup = None
            if self.netns_fd is not None:
                os.close(self.netns_fd)
                self.netns_fd = None
        finally:
            self.on_change()

    async def stopped(self) -> None:
        """Wait until the VM that the delete of the pod's last container stops is gone."""
        stopping, self._stopping = self._stopping, None
        if stopping is not None:
            try:
                await stopping
            except Exception:
                log.exception("pod %s: stopping the VM", self.id)

    async def close(self) -> None:
        """End every container and stop the VM (the front end is going away)."""
        await self.stopped()
        async with self.lock:
            for container in list(self.containers.values()):
                await self._remove(container)
            await self._stop_vm()
