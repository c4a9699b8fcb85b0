"""The QEMU driver: launch from a spec, control over QMP, a capped console log, stop.

Contract of :meth:`QemuHypervisor.launch`: returns a running :class:`QemuVM` whose QMP
connection is up and whose serial console is being copied into ``<run_dir>/console.log``
(rotated to ``console.log.1`` at the cap, so at most twice the cap is kept). On any failure
QEMU is stopped and a :class:`LaunchError` carries argv, exit code and log tail.
:meth:`QemuVM.stop` asks QMP ``quit``, then SIGTERM, then SIGKILL; it is idempotent and
removes the VM's sockets. :meth:`QemuVM.detach` lets go of a running VM (QMP and console
closed, QEMU left running) so that :meth:`QemuHypervisor.adopt` in another process can take
it over by its pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from runvm import arch as arches
from runvm import files
from runvm.config import RunvmConfig
from runvm.errors import ConfigError, HypervisorError, LaunchError
from runvm.hypervisor.base import Accel, DiskSpec, NetSpec, VirtioFsSpec, VMSpec
from runvm.hypervisor.qemu import resize
from runvm.hypervisor.qemu.argv import (
    all_vcpus_present,
    build_argv,
    console_socket,
    hotplug_ports,
    qmp_socket,
)
from runvm.hypervisor.qemu.machines import binary_name, machine_capabilities, target
from runvm.process import Child, ChildSpec, ForeignProcess, read_tail

log = logging.getLogger(__name__)
# qemu.qmp logs a dropped connection as an error; here QEMU exiting is reported by runvm itself.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

MIGRATE_TIMEOUT = 30.0
RESIZE_TIMEOUT = 10.0
QMP_READY_TIMEOUT = 15.0
QUIT_GRACE = 3.0

KVM_DEVICE = "/dev/kvm"


class QemuVM:
    """A running QEMU process and its QMP connection."""

    def __init__(self, spec: VMSpec, child: Child | ForeignProcess, qmp: QMPClient) -> None:
        self.spec = spec
        self.child = child
        self.qmp = qmp
        self._console_task: asyncio.Task[None] | None = None
        self._stopped = False
        self._ports: dict[str, str] = {}  # hot-plugged device id -> its q35 root port

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def accel(self) -> Accel:
        return self.spec.accel

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    @property
    def console_path(self) -> Path:
        return self.spec.run_dir / "console.log"

    def console_tail(self) -> str:
        return files.unstamp(read_tail(self.console_path))

    def stderr_tail(self) -> str:
        return files.unstamp(read_tail(self.spec.run_dir / "qemu.log"))

    async def _copy_console(self) -> None:
        cap = self.spec.console_log_max_kib * 1024
        sink = files.StampedLog(self.console_path, cap)
        try:
            reader, writer = await asyncio.open_unix_connection(str(console_socket(self.spec)))
            try:
                while chunk := await reader.read(65536):
                    sink.write(chunk)
            finally:
                writer.close()
        except OSError as exc:
            log.debug("console of %s: %s", self.spec.name, exc)
        finally:
            sink.close()

    def start_console(self) -> None:
        self._console_task = asyncio.get_running_loop().create_task(self._copy_console())

    async def execute(self, command: str, args: dict[str, object] | None = None) -> object:
        """Run one QMP command; a QMP failure is a HypervisorError."""
        try:
            return await self.qmp.execute(command, args)
        except Exception as exc:
            raise HypervisorError(f"QMP {command} failed: {exc}") from exc

    def _slot(self, device_id: str) -> dict[str, object]:
        """Where ``device_add`` puts a new device: a free root port on q35 and virt, the root bus
        on pc.
        HypervisorError if the machine cannot hot-plug or every port is taken."""
        machine = self.spec.machine
        if not machine_capabilities(machine).hotplug_net:
            raise HypervisorError(f"machine {machine} cannot hot-plug devices")
        ports = hotplug_ports(machine)
        if not ports:
            return {}
        free = [f"hp{i}" for i in range(ports) if f"hp{i}" not in self._ports.values()]
        if not free:
            raise HypervisorError(f"all {ports} hot-plug ports of the {machine} VM are in use")
        self._ports[device_id] = free[0]
        return {"bus": free[0]}

    async def hotplug_nic(self, nic: NetSpec) -> None:
        """Add a virtio-net NIC on ``nic``'s open fds (sent over QMP) to the running VM."""
        slot = self._slot(f"dev-{nic.id}")
        names = []
        for i, fd in enumerate(nic.fds):
            name = f"{nic.id}-q{i}"
            try:
                self.qmp.send_fd_scm(fd)
            except Exception as exc:
                raise HypervisorError(f"QMP: sending the fd of {nic.id} failed: {exc}") from exc
            await self.execute("getfd", {"fdname": name})
            names.append(name)
        netdev: dict[str, object] = {"type": "tap", "id": nic.id, "vhost": False}
        netdev["fds" if nic.queues > 1 else "fd"] = ":".join(names)
        await self.execute("netdev_add", netdev)
        device: dict[str, object] = {"driver": "virtio-net-pci", "netdev": nic.id,
                                     "id": f"dev-{nic.id}", "mac": nic.mac, **slot}  # fmt: skip
        if nic.queues > 1:
            device.update(mq=True, vectors=2 * nic.queues + 2)
        try:
            await self.execute("device_add", device)
        except HypervisorError:
            self._ports.pop(f"dev-{nic.id}", None)
            with contextlib.suppress(HypervisorError):
                await self.execute("netdev_del", {"id": nic.id})
            raise

    async def hotplug_fs(self, share: VirtioFsSpec, share_id: str = "fs-hp") -> None:
        """Add a vhost-user-fs device for the virtiofsd on ``share.socket_path`` (the guest RAM
        must be shared: a cold-booted VM's memfd; not a clone's private mapping)."""
        slot = self._slot(f"dev-{share_id}")
        backend = {"type": "socket", "data": {"server": False,
                   "addr": {"type": "unix", "data": {"path": str(share.socket_path)}}}}  # fmt: skip
        try:
            await self.execute("chardev-add", {"id": share_id, "backend": backend})
            device = {"driver": "vhost-user-fs-pci", "id": f"dev-{share_id}", "chardev": share_id,
                      "tag": share.tag, "queue-size": share.queue_size, **slot}  # fmt: skip
            await self.execute("device_add", device)
        except BaseException:
            self._ports.pop(f"dev-{share_id}", None)
            with contextlib.suppress(HypervisorError):
                await self.execute("chardev-remove", {"id": share_id})
            raise

    async def unplug_nic(self, nic_id: str, timeout: float = 10.0) -> None:
        """Remove a NIC: ask the guest to eject it, wait for the removal, drop its backend."""
        await self._unplug(f"dev-{nic_id}", timeout)
        with contextlib.suppress(HypervisorError):
            await self.execute("netdev_del", {"id": nic_id})

    async def hotplug_disk(self, disk: DiskSpec) -> None:
        """Add a virtio-blk disk on ``disk.fd`` (passed into an fd set over QMP)."""
        slot = self._slot(f"dev-{disk.id}")
        try:
            await self._add_disk(disk, slot)
        except BaseException:
            self._ports.pop(f"dev-{disk.id}", None)
            raise

    async def _add_disk(self, disk: DiskSpec, slot: dict[str, object]) -> None:
        try:
            self.qmp.send_fd_scm(disk.fd)
        except Exception as exc:
            raise HypervisorError(f"QMP: sending the fd of {disk.id} failed: {exc}") from exc
        added = await self.execute("add-fd", {"opaque": disk.id})
        fdset = added.get("fdset-id") if isinstance(added, dict) else None
        if not isinstance(fdset, int):
            raise HypervisorError(f"QMP add-fd for {disk.id} returned {added!r}")
        node: dict[str, object] = {
            "node-name": disk.id, "driver": "raw", "read-only": disk.readonly,
            "file": {"driver": "host_device" if disk.block_device else "file",
                     "filename": f"/dev/fdset/{fdset}", "read-only": disk.readonly},
        }  # fmt: skip
        try:
            await self.execute("blockdev-add", node)
            try:
                await self.execute(
                    "device_add",
                    {
                        "driver": "virtio-blk-pci",
                        "drive": disk.id,
                        "id": f"dev-{disk.id}",
                        "serial": disk.serial,
                        **slot,
                    },
                )
            except HypervisorError:
                with contextlib.suppress(HypervisorError):
                    await self.execute("blockdev-del", {"node-name": disk.id})
                raise
        finally:  # the block node holds its own dup; the set is closed once it is unused
            with contextlib.suppress(HypervisorError):
                await self.execute("remove-fd", {"fdset-id": fdset})

    async def unplug_disk(self, disk_id: str, timeout: float = 10.0) -> None:
        """Remove a disk: the guest ejects it (after unmounting), then its node is dropped."""
        await self._unplug(f"dev-{disk_id}", timeout)
        with contextlib.suppress(HypervisorError):
            await self.execute("blockdev-del", {"node-name": disk_id})

    async def _unplug(self, device_id: str, timeout: float) -> None:
        """``device_del`` and wait until the guest has released the device (or timeout)."""
        with contextlib.suppress(HypervisorError):
            await self.execute("device_del", {"id": device_id})
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            devices = await self.execute("qom-list", {"path": "/machine/peripheral"})
            names = {d.get("name") for d in devices} if isinstance(devices, list) else set()
            if device_id not in names:
                self._ports.pop(device_id, None)
                return
            await asyncio.sleep(0.2)

    async def resize(
        self, vcpus: int, memory_mib: int, timeout: float = RESIZE_TIMEOUT
    ) -> tuple[int, int]:
        """See :meth:`runvm.hypervisor.base.VM.resize` (and :mod:`.resize`)."""
        spec = self.spec
        have = spec.vcpus
        if all_vcpus_present(spec):
            have = spec.max_vcpus  # the guest onlines what it is asked for
        elif spec.max_vcpus > spec.vcpus:
            wanted = min(max(vcpus, spec.vcpus), spec.max_vcpus)
            have = await resize.set_vcpus(self, wanted, timeout, unplug=self.accel is Accel.KVM)
        plugged = 0
        if spec.hotplug_memory_mib:
            extra = min(max(memory_mib - spec.memory_mib, 0), spec.hotplug_memory_mib)
            plugged = await resize.set_memory(self, extra, timeout)
        return have, spec.memory_mib + plugged

    # --- templates: save a paused guest's device state, restore it in a clone ----------------
    async def save_state(self, path: Path, timeout: float = MIGRATE_TIMEOUT) -> None:
        """Pause the guest and write its device state to ``path`` through an fd (``fd:``
        migration: QEMU spawns nothing). Guest RAM is left out (``x-ignore-shared``): it
        stays in the shared memory file."""
        await self.execute("stop")
        await self._ignore_shared()
        await self._send_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "state")
        await self.execute("migrate", {"uri": "fd:state"})
        await self._migration_done(timeout)

    async def load_state(self, path: Path, timeout: float = MIGRATE_TIMEOUT) -> None:
        """Restore ``path`` into this VM (started with ``incoming``), then let it run."""
        await self._ignore_shared()
        await self._send_file(path, os.O_RDONLY, "state")
        await self.execute("migrate-incoming", {"uri": "fd:state"})
        await self._migration_done(timeout)
        await self.execute("cont")

    async def _ignore_shared(self) -> None:
        caps = [{"capability": "x-ignore-shared", "state": True}]
        await self.execute("migrate-set-capabilities", {"capabilities": caps})

    async def _send_file(self, path: Path, flags: int, name: str) -> None:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            try:
                self.qmp.send_fd_scm(fd)
            except Exception as exc:
                raise HypervisorError(f"QMP: sending the fd of {path} failed: {exc}") from exc
            await self.execute("getfd", {"fdname": name})
        finally:
            os.close(fd)

    async def _migration_done(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            info = await self.execute("query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                detail = info.get("error-desc", "") if isinstance(info, dict) else ""
                raise HypervisorError(f"VM state transfer {status}: {detail}")
            if asyncio.get_running_loop().time() > deadline:
                raise HypervisorError(f"VM state transfer not done after {timeout} s ({status})")
            await asyncio.sleep(0.01)

    async def wait(self) -> int:
        return await self.child.wait()

    async def detach(self) -> None:
        """Close QMP and the console copy and leave QEMU running (see the module docstring)."""
        self._stopped = True
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()
        if self._console_task:
            self._console_task.cancel()
            with contextlib.suppress(BaseException):
                await self._console_task

    async def terminate(self) -> None:
        """SIGTERM (then SIGKILL) to QEMU itself, detached or not: it exits cleanly."""
        await self.child.stop()

    async def stop(self) -> None:
        """QMP quit, then SIGTERM, then SIGKILL; always reaps and removes sockets."""
        if self._stopped:
            return
        self._stopped = True
        if self.child.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.qmp.execute("quit"), QUIT_GRACE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.child.wait(), QUIT_GRACE)
        await self.child.stop()
        if isinstance(self.child, ForeignProcess):
            self.child.close()
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()
        if self._console_task:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._console_task, 1.0)
        for sock in (qmp_socket(self.spec), console_socket(self.spec)):
            sock.unlink(missing_ok=True)


def inherited_fds(spec: VMSpec) -> tuple[int, ...]:
    """The open tap (and vhost) fds QEMU must inherit for the spec's NICs."""
    nics = [d for d in spec.devices if isinstance(d, NetSpec)]
    return tuple(fd for nic in nics for fd in (*nic.fds, *nic.vhost_fds))


def credentials(spec: VMSpec) -> dict[str, Any]:
    """ChildSpec fields that run QEMU as ``spec.user``, whose socket directory is made here
    (owned by that user, 0700); nothing for root. ConfigError for an unknown user."""
    if not spec.user:
        return {}
    account = unprivileged_user(spec.user)
    spec.socket_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(spec.socket_dir, account.pw_uid, account.pw_gid)
    groups = [os.stat(KVM_DEVICE).st_gid] if os.path.exists(KVM_DEVICE) else []
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": groups}


def unprivileged_user(name: str) -> pwd.struct_passwd:
    """The account ``name``; ConfigError if it does not exist or is root."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"hypervisor.user: no user {name!r} on this host") from None
    if account.pw_uid == 0:
        raise ConfigError(f"hypervisor.user: {name!r} is root; leave it empty for root")
    return account


class QemuHypervisor:
    """Starts QEMU guests of one architecture; see the module docstring."""

    capabilities = machine_capabilities("pc")

    def __init__(self, binary: str = "qemu-system-x86_64", arch: str = arches.AMD64) -> None:
        self.binary = binary
        self.arch = arch

    @classmethod
    def for_config(cls, config: RunvmConfig) -> QemuHypervisor:
        """The QEMU of ``config``'s guests (``hypervisor.arch``, ``auto``: the host's)."""
        arch = arches.resolve(config.hypervisor.arch).name
        return cls(binary_name(config.hypervisor.path, arch), arch)

    def resolve_binary(self) -> str:
        found = shutil.which(self.binary)
        if not found:
            raise HypervisorError(f"QEMU binary {self.binary!r} for {self.arch} guests not "
                                  f"found: install {target(self.arch).package}")  # fmt: skip
        return found

    async def launch(self, spec: VMSpec) -> QemuVM:
        """Start QEMU for ``spec`` and connect QMP (see the module docstring)."""
        if spec.arch != self.arch:
            raise HypervisorError(f"an {spec.arch} VM cannot start with the QEMU of {self.arch} "
                                  f"guests ({self.binary})")  # fmt: skip
        argv = build_argv(spec, self.resolve_binary())
        for path in (spec.kernel, spec.initrd):
            if not path.is_file():
                raise LaunchError(f"guest file {path} does not exist", argv, None)
        log_path = spec.run_dir / "qemu.log"
        child = await Child.launch(
            ChildSpec(
                name="QEMU",
                argv=argv,
                log_path=log_path,
                pass_fds=inherited_fds(spec),
                die_with_parent=spec.die_with_owner,
                **credentials(spec),
            )
        )
        qmp = QMPClient(f"runvm-{spec.name}")

        async def qmp_up() -> bool:
            if not qmp_socket(spec).exists():
                return False
            try:
                await qmp.connect(str(qmp_socket(spec)))
            except Exception:
                return False
            return True

        try:
            await child.wait_ready(qmp_up, QMP_READY_TIMEOUT)
        except BaseException:
            await child.stop()
            for sock in (qmp_socket(spec), console_socket(spec)):
                sock.unlink(missing_ok=True)
            raise
        vm = QemuVM(spec, child, qmp)
        vm.start_console()
        return vm

    async def adopt(self, spec: VMSpec, process: ForeignProcess) -> QemuVM:
        """Take over the running QEMU ``process`` whose sockets are where ``spec`` puts them:
        connect QMP and copy the console again. HypervisorError if QMP does not answer."""
        qmp = QMPClient(f"runvm-{spec.name}")
        try:
            await asyncio.wait_for(qmp.connect(str(qmp_socket(spec))), QMP_READY_TIMEOUT)
        except Exception as exc:
            raise HypervisorError(
                f"the handed-over VM (pid {process.pid}) has no QMP: {exc}"
            ) from exc
        vm = QemuVM(spec, process, qmp)
        vm.start_console()
        return vm
