"""A sandbox: one VM, its helpers and the one agent connection, set up as named steps.

Contract of :meth:`Sandbox.start`: returns a sandbox whose agent answered the version
handshake and ``CreateSandbox``; ``timings`` holds each step's duration. If any step fails
(or the caller is cancelled), everything already done is undone: QEMU and helpers stopped,
sockets and the run directory removed. :meth:`Sandbox.stop` asks the agent to power off,
then stops QEMU the hard way if needed, and removes everything; it is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runvm import arch as arches
from runvm.config import RunvmConfig
from runvm.errors import AgentError, AgentTimeout, LaunchError, RunvmError, VersionMismatch
from runvm.hypervisor.accel import AccelReport, host_tsc_khz
from runvm.hypervisor.base import (
    VM,
    AgentChannelSpec,
    Capabilities,
    DeviceSpec,
    NinePSpec,
    VirtioFsSpec,
    VMSpec,
    socket_dir,
)
from runvm.hypervisor.qemu.driver import unprivileged_user
from runvm.hypervisor.qemu.machines import machine_capabilities
from runvm.ksm import server as ksm
from runvm.metrics.recorder import CallRecorder
from runvm.names import check_id, run_dir_name
from runvm.process import Child
from runvm.protocol import agent_pb2 as pb
from runvm.protocol.client import AgentClient
from runvm.runtime import diagnose, footprint, hostcgroup, sizing, template
from runvm.runtime import origin as origins
from runvm.runtime.guestimage import GuestFiles
from runvm.runtime.lifecycle import SandboxState
from runvm.runtime.machine import channel_kind, guest_cid, machine_for, room
from runvm.runtime.origin import Adopted, Cloned, Origin, Parts, refuse_bad_combinations
from runvm.runtime.sizing import Size
from runvm.runtime.steps import Steps
from runvm.storage import virtiofsd
from runvm.storage.shared import GUEST_ROOT, NINEP_OPTIONS, TAG, SharedDir

if TYPE_CHECKING:  # pyroute2 (~20 MiB per process) is imported only by pods with networking
    from runvm.network.plug import PodNetwork

log = logging.getLogger(__name__)
T = TypeVar("T")

PARTS = Parts()


@dataclass
class SandboxOptions:
    """Per-sandbox choices beyond the config file."""

    hostname: str = ""
    extra_devices: list[DeviceSpec] = field(default_factory=list)
    extra_kernel_params: list[str] = field(default_factory=list)
    guest_files: GuestFiles | None = None  # overrides the built image (tests, image variants)
    share_fs: bool = True  # export a shared directory over virtio-fs (container rootfs)
    # Wire the interfaces of the caller's network namespace into the VM (config's model).
    # Only for a namespace of the pod's own: never the host's.
    network: bool = False
    # That namespace as a descriptor, when the caller is not in it (a shim serving several
    # pods); the caller keeps it open while the sandbox runs.
    netns_fd: int | None = None
    # The sandbox will hot-plug devices (a block-device rootfs): a configured machine that
    # cannot (microvm) is replaced by pc for this sandbox.
    needs_hotplug: bool = False
    # A VM for the cache daemon: booted cold (virtio-fs needs shared guest RAM), no share and
    # no NICs yet (its taker hot-plugs both), virtio-serial, QEMU not tied to this process;
    # start() returns before CreateSandbox and the daemon later calls release().
    pooled: bool = False
    # The pod's host memory limit (bytes), if it has one: a VM that cannot fit is refused.
    memory_limit: int | None = None
    # The VM's size (runtime/sizing.py); None: the configured base. A VM of another size
    # than the base boots cold (templates and cached VMs have the base size).
    size: Size | None = None
    # The run directory's logs stay when the VM stops (runtime/sandboxlogs.py): an owner
    # whose container outlives its VM (the CLI's, until `runvm delete`) removes them itself.
    keep_logs: bool = False


class Sandbox:
    """One running VM with its agent; see the module docstring."""

    def __init__(self, sandbox_id: str, config: RunvmConfig, run_dir: Path, steps: Steps) -> None:
        self.id = sandbox_id
        self.config = config
        self.run_dir = run_dir
        self.steps = steps
        self.vm: VM | None = None
        self.machine = machine_for(config)
        self.arch = arches.resolve(config.hypervisor.arch).name
        self.templated = False  # cloned from the factory's template
        self.origin = "cold"  # cold | clone | cache: the recipe it was started by
        self.calls = CallRecorder()  # every agent request of this sandbox, timed
        self.agent: AgentClient | None = None
        self.accel: AccelReport | None = None
        self.files: GuestFiles | None = None  # what the VM booted
        self.details: pb.GuestDetailsResponse | None = None
        self.shared: SharedDir | None = None
        self.virtiofsd: Child | None = None
        self.failure = ""  # why the sandbox died under us, if it did
        self.forward_port = 0  # the port-forwarding listener in the pod's namespace, if any
        self.network: PodNetwork | None = None
        self.on_network_change: Callable[[], None] = lambda: None  # NICs plugged or unplugged
        self._net_lock = asyncio.Lock()
        self._net_watcher: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.state = SandboxState.BOOTING
        self.parts = PARTS
        self.size = sizing.base(config)

    @property
    def hotplug_blk(self) -> bool:
        return machine_capabilities(self.machine).hotplug_blk

    @property
    def growth(self) -> Capabilities:
        """What the machine can add while it runs: vCPUs, memory (runtime/growth.py)."""
        return machine_capabilities(self.machine)

    @property
    def timings(self) -> dict[str, float]:
        return self.steps.timings

    @classmethod
    async def start(
        cls,
        sandbox_id: str,
        config: RunvmConfig,
        options: SandboxOptions | None = None,
        parts: Parts = PARTS,
    ) -> Sandbox:
        check_id(sandbox_id)
        options = options or SandboxOptions()
        refuse_bad_combinations(config, options)
        steps = Steps()
        async with steps:
            run_dir = sandbox_run_dir(config, sandbox_id)
            origin = await origins.choose(config, options, run_dir, steps, parts)
            sandbox = cls(sandbox_id, config, run_dir, steps)
            sandbox.size = options.size or sizing.base(config)
            footprint.check_fits(config, origin.accel.accel, options.memory_limit,
                                 sandbox.size.memory_mib)  # fmt: skip
            sandbox.parts = parts
            sandbox.files = origin.files
            sandbox.accel = origin.accel
            sandbox.templated = isinstance(origin, Cloned)
            sandbox.origin = ("clone" if isinstance(origin, Cloned) else
                              "cache" if isinstance(origin, Adopted) else "cold")  # fmt: skip
            sandbox.machine = machine_for(config, options.needs_hotplug)
            if isinstance(origin, Cloned):
                storages = await sandbox._clone(options, origin)
            elif isinstance(origin, Adopted):
                storages = await sandbox._adopt(options, origin)
            else:
                storages = await sandbox._boot_cold(options, origin)
            if options.pooled:
                steps.commit()
                sandbox.state = SandboxState.READY
                return sandbox
            await sandbox._create_sandbox(options, storages, origin.booted_before)
            steps.commit()
            sandbox.state = SandboxState.READY
        sandbox._watcher = asyncio.ensure_future(sandbox._watch_helpers())
        if sandbox.network is not None and sandbox.network.model != "none":
            sandbox._net_watcher = asyncio.ensure_future(sandbox._watch_network())
        return sandbox

    # --- the recipes, one per origin ---------------------------------------------------------
    async def _boot_cold(self, options: SandboxOptions, origin: Origin) -> list[pb.Storage]:
        """Boot QEMU with the share and the pod's NICs as boot devices (a pooled VM: none;
        its taker hot-plugs both)."""
        devices, storages = list(options.extra_devices), []
        if options.share_fs and not options.pooled:
            device, storage = await (self._share_9p() if self.config.storage.shared_fs == "9p"
                                     else self._share_fs())  # fmt: skip
            devices.append(device)
            storages.append(storage)
        if options.network:
            devices += list(await self.steps.run("network", _async(self._network(options).plug)()))
        kind = template.CHANNEL if options.pooled else channel_kind(self.config.agent.channel)
        channel = self._channel(kind)
        spec = self._vm_spec(options, origin, channel, devices)
        booted = time.monotonic()
        ksm.kick()  # a throttler, if one runs, merges the new guest's pages hard now
        self.vm = vm = await self.steps.run("qemu-start", self._launch(origin, spec))
        self.steps.add_undo("qemu", vm.stop)
        if self.network is not None:
            self.network.handed_over()  # the taps now live as long as QEMU
        await self._greet(channel, booted)
        return storages

    async def _clone(self, options: SandboxOptions, origin: Cloned) -> list[pb.Storage]:
        """Start QEMU from the template's saved state, sharing over 9p (a template keeps
        no virtio-fs connection); NICs are hot-plugged once it runs."""
        devices, storages = list(options.extra_devices), []
        if options.share_fs:
            device, storage = await self._share_9p()
            devices.append(device)
            storages.append(storage)
        if options.network:
            self._network(options)
        channel = self._channel(template.CHANNEL)
        spec = template.clone_spec(origin.tpl, self._vm_spec(options, origin, channel, devices))
        booted = time.monotonic()
        ksm.kick()
        self.vm = vm = await self.steps.run("qemu-start", self._launch(origin, spec))
        self.steps.add_undo("qemu", vm.stop)
        await self.steps.run("restore", vm.load_state(origin.tpl.state))
        await self._greet(channel, booted, resume=True)
        return storages

    async def _adopt(self, options: SandboxOptions, origin: Adopted) -> list[pb.Storage]:
        """Take over the VM the cache booted: its QEMU joins this caller's cgroup, the share
        is hot-plugged as virtio-fs, NICs once it runs."""
        device, storage = await self._share_fs()
        if options.network:
            self._network(options)
        channel = self._channel(template.CHANNEL)
        spec = self._vm_spec(options, origin, channel, list(options.extra_devices))
        booted = time.monotonic()
        ksm.kick()
        self.vm = vm = await self.steps.run("cache-adopt", origin.hypervisor.adopt(
            spec, origin.process))  # fmt: skip
        self.steps.add_undo("qemu", vm.stop)
        for failure in hostcgroup.join_mine(vm.pid):  # the caller's accounting
            log.warning("sandbox %s: QEMU not moved to this cgroup: %s", self.id, failure)
        await self.steps.run("virtio-fs-plug", vm.hotplug_fs(device))
        await self._greet(channel, booted)
        return [storage]

    async def _create_sandbox(
        self, options: SandboxOptions, storages: list[pb.Storage], booted_before: bool
    ) -> None:
        """CreateSandbox, then the pod's network (hot-plugged into a VM booted before this
        sandbox existed), then port forwarding."""
        assert self.agent is not None and self.vm is not None
        request = pb.CreateSandboxRequest(sandbox_id=self.id, hostname=options.hostname,
                                          host_time_ns=time.time_ns(), storages=storages,
                                          debug_console=self.config.debug.console)  # fmt: skip
        await self.steps.run("create-sandbox", self.agent.create_sandbox(request))
        if self.network is not None and booted_before:
            await self.steps.run("network", self.network.sync(self.vm, self.agent))
        elif self.network is not None:
            await self.steps.run("network-config", self.network.configure(self.agent))
        if self.network is not None and self.config.network.port_forward:
            await self.steps.run("port-forward", self._forward_ports(options))

    # --- the shared steps --------------------------------------------------------------------
    def _network(self, options: SandboxOptions) -> PodNetwork:
        """The pod's network, unplugged at undo."""
        from runvm.network.plug import PodNetwork

        self.network = net = PodNetwork(self.config.network.model, self.size.vcpus,
                                        self.run_dir, netns_fd=options.netns_fd)  # fmt: skip
        self.steps.add_undo("network", _async(net.unplug))
        return net

    async def _forward_ports(self, options: SandboxOptions) -> None:
        """Relay the pod namespace's loopback to the guest's; without it the pod still runs."""
        from runvm.network.portforward import PortForwarder, PortForwardError

        assert self.agent is not None
        forwarder = PortForwarder(self.agent, options.netns_fd, f"sandbox {self.id}")
        try:
            await forwarder.start()
        except PortForwardError as exc:
            log.warning("sandbox %s: no port forwarding: %s", self.id, exc)
            return
        self.steps.add_undo("port-forward", forwarder.stop)
        self.forward_port = forwarder.port

    def _channel(self, kind: str) -> AgentChannelSpec:
        if kind == "vsock":
            return AgentChannelSpec(kind=kind, guest_cid=guest_cid(self.id))
        path = socket_dir(self.run_dir, self.config.hypervisor.user) / "agent.sock"
        return AgentChannelSpec(kind=kind, socket_path=path)

    def _vm_spec(
        self,
        options: SandboxOptions,
        origin: Origin,
        channel: AgentChannelSpec,
        devices: list[DeviceSpec],
    ) -> VMSpec:
        hv_cfg = self.config.hypervisor
        params = [f"runvm.channel={channel.kind}", *options.extra_kernel_params]
        if options.pooled:  # its taker may have NICs: the netlink library comes ready
            params.append("runvm.preload=network")
        if hv_cfg.kernel_params:
            params += hv_cfg.kernel_params.split()
        files = origin.files
        max_vcpus, hotplug_mib = room(self.config, self.machine, self.size)
        return VMSpec(
            name=self.id, run_dir=self.run_dir, kernel=files.kernel, initrd=files.initrd,
            accel=origin.accel.accel, arch=self.arch, vcpus=self.size.vcpus,
            memory_mib=self.size.memory_mib,
            machine=self.machine, kernel_params=tuple(params),
            max_vcpus=max_vcpus, hotplug_memory_mib=hotplug_mib, devices=(channel, *devices),
            tcg_tb_size_mib=hv_cfg.tcg_tb_size_mib,
            console_log_max_kib=hv_cfg.console_log_max_kib, seccomp=hv_cfg.seccomp,
            user=hv_cfg.user,
            host_tsc_khz=host_tsc_khz() if self.machine == "microvm" else 0,
            root_image=files.root_image,
            root_image_bytes=files.root_image_bytes,
            die_with_owner=not options.pooled,
            free_page_reporting=True,  # not kept by a clone (template.clone_spec)
            # virtio-fs (now, or hot-plugged into a pooled VM) maps guest RAM too; 9p
            # does not, and private RAM can be merged by KSM.
            memory_shared=options.pooled or any(isinstance(d, VirtioFsSpec) for d in devices),
        )  # fmt: skip

    async def _launch(self, origin: Origin, spec: VMSpec) -> VM:
        """QEMU for ``spec``; a failure names this sandbox and QEMU's complaint (its command
        line goes to the log)."""
        try:
            return await origin.hypervisor.launch(spec)
        except LaunchError as exc:
            log.info("sandbox %s: QEMU failed to start: %s", self.id, " ".join(exc.argv))
            raise LaunchError(f"sandbox {self.id}: {exc.args[0]}", exc.argv, exc.exitcode,
                              exc.log_tail) from exc  # fmt: skip

    async def _greet(self, channel: AgentChannelSpec, booted: float, resume: bool = False) -> None:
        """The agent's handshake within the boot deadline, then its details (``resume``: a
        clone's, after it re-seeded its randomness and took a new identity)."""
        left = self.config.hypervisor.boot_timeout - (time.monotonic() - booted)
        self.agent = agent = await self.steps.run("agent-ready", self._connect(channel, left))
        agent.on_call = self.calls.observe
        self.steps.add_undo("agent", agent.close)
        if resume:
            request = pb.ResumeCloneRequest(random_seed=os.urandom(64),
                                            instance_id=uuid.uuid4().hex,
                                            host_time_ns=time.time_ns())  # fmt: skip
            self.details = await self.steps.run("resume-clone", agent.resume_clone(request))
        else:
            self.details = await self.steps.run("guest-details", agent.guest_details())

    async def sync_network(self) -> None:
        """Bring the VM's NICs in line with the pod namespace's interfaces now (hot-plug
        what appeared, unplug what went). Call on the thread that is in that namespace."""
        if self.network is None or self.vm is None or self.agent is None:
            return
        async with self._net_lock:
            before = [p.spec.id for p in self.network.plugged]
            try:
                await self.network.sync(self.vm, self.agent)
            finally:
                if [p.spec.id for p in self.network.plugged] != before:
                    self.on_network_change()

    async def _watch_network(self) -> None:
        """Follow link changes in the pod namespace (netlink) and sync after each burst."""
        from runvm.network import links

        assert self.network is not None
        with self.network.inside():
            events = links.LinkEvents()
        await links.follow(events, self._sync_network_logged)

    async def _sync_network_logged(self) -> None:
        try:
            await self.sync_network()
        except (RunvmError, OSError) as exc:
            log.warning("sandbox %s: network change not applied: %s", self.id, exc)

    async def _watch_helpers(self) -> None:
        """A helper that dies, or an agent link that breaks (EOF, garbage, an answer to no
        request, a stalled frame), takes the VM down with it and records why in ``failure``."""
        if self.vm is None or self.agent is None:
            return
        agent = self.agent
        watched: dict[asyncio.Future[Any], str] = {
            asyncio.ensure_future(self.vm.wait()): "qemu",
            asyncio.ensure_future(agent.conn.wait_closed()): "agent",
        }
        if self.virtiofsd is not None:
            watched[asyncio.ensure_future(self.virtiofsd.wait())] = "virtiofsd"
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in watched:
                future.cancel()
        if self.state is SandboxState.STOPPED:
            return
        self.state = SandboxState.FAILED
        first = min(done, key=lambda f: list(watched).index(f))  # QEMU's exit explains the rest
        if watched[first] == "qemu":
            why = diagnose.vm_exit(first.result(), self.vm.stderr_tail(), self.vm.console_tail())
            self.failure = f"{why}: the VM is gone"
        elif watched[first] == "virtiofsd":
            self.failure = f"virtiofsd exited (status {first.result()}); the VM was stopped"
        else:
            self.failure = f"the agent link broke ({agent.conn.error}); the VM was stopped"
        log.error("sandbox %s: %s", self.id, self.failure)
        await self.vm.stop()

    def _shared_dir(self) -> SharedDir:
        shared = SharedDir(self.run_dir / "shared")
        self.steps.add_undo("shared-dir", lambda: asyncio.to_thread(shared.teardown))
        shared.setup()
        self.shared = shared
        return shared

    async def _share_9p(self) -> tuple[NinePSpec, pb.Storage]:
        """The shared directory, served over 9p by QEMU itself."""
        device = NinePSpec(tag=TAG, path=self._shared_dir().path)
        return device, pb.Storage(driver="9p", source=TAG, fstype="9p",
                                  options=list(NINEP_OPTIONS), mount_point=GUEST_ROOT)  # fmt: skip

    async def _share_fs(self) -> tuple[VirtioFsSpec, pb.Storage]:
        """The shared directory and its virtiofsd (undone in reverse on failure)."""
        return await self.steps.run("virtio-fs", self._start_virtiofsd()), pb.Storage(
            driver="virtio-fs", source=TAG, fstype="virtiofs", mount_point=GUEST_ROOT)  # fmt: skip

    async def _start_virtiofsd(self) -> VirtioFsSpec:
        shared = self._shared_dir()
        sock = self.run_dir / "virtiofsd.sock"
        child = await virtiofsd.start(sock, shared.path, self.run_dir / "virtiofsd.log",
                                      self.config.storage.virtiofs_cache)  # fmt: skip
        self.steps.add_undo("virtiofsd", child.stop)
        if self.config.hypervisor.user:  # QEMU, running as that user, connects to it
            account = unprivileged_user(self.config.hypervisor.user)
            os.chown(sock, account.pw_uid, account.pw_gid)
        self.virtiofsd = child
        return VirtioFsSpec(tag=TAG, socket_path=sock)

    async def _connect(self, channel: AgentChannelSpec, timeout: float) -> AgentClient:
        assert self.vm is not None
        vm = self.vm
        try:
            return await self.parts.connect(channel, timeout, self.config.agent.timeout, vm.wait)
        except VersionMismatch:
            raise
        except (AgentError, OSError) as exc:
            timed_out = isinstance(exc, (AgentTimeout, OSError))
            why = diagnose.boot_failure(
                exited=vm.returncode, timed_out=timed_out,
                boot_timeout=self.config.hypervisor.boot_timeout, stderr=vm.stderr_tail(),
                console=vm.console_tail(), detail=str(exc),
            )  # fmt: skip
            kind = AgentTimeout if timed_out and vm.returncode is None else AgentError
            raise kind(f"sandbox {self.id}: {why}") from exc

    async def release(self) -> None:
        """Let go of a pooled sandbox's VM and leave it running for the sandbox it is handed
        to: agent link and QMP closed, nothing undone (the taker owns QEMU, share, run dir)."""
        self.state = SandboxState.STOPPED  # for this process: the VM runs on for its taker
        if self.agent is not None:
            await self.agent.close()
        if self.vm is not None:
            await self.vm.detach()
        self.steps = Steps()

    async def stop(self) -> None:
        """Power the guest off through the agent, then make sure QEMU is gone; idempotent."""
        if self.state is SandboxState.STOPPED:
            return
        self.state = SandboxState.STOPPED
        for watcher in (self._watcher, self._net_watcher):
            if watcher is not None:
                watcher.cancel()
        try:
            if self.agent and self.vm and self.vm.returncode is None:
                await self.agent.destroy_sandbox()  # answered once the guest has synced
        except (RunvmError, OSError) as exc:
            log.warning("sandbox %s: the guest did not sync before it stopped: %s", self.id, exc)
        finally:
            await self.steps.close()  # QEMU ends here: nothing in the guest needs a poweroff


def _async(fn: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """Run ``fn`` on the loop's thread: netlink work must stay in the network namespace
    that thread entered (worker threads may be in another)."""

    async def run() -> T:
        return fn()

    return run


def sandbox_run_dir(config: RunvmConfig, sandbox_id: str) -> Path:
    """Where the sandbox ``sandbox_id`` keeps its sockets, logs and shared directory."""
    return Path(config.runtime.state_root) / "sandboxes" / run_dir_name(sandbox_id)
