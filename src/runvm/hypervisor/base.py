"""What a hypervisor driver receives (typed specs) and what it declares (capabilities).

Network and storage hand the driver device specs; the driver never imports them.
The sandbox asks ``capabilities`` instead of testing driver types.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runvm.process import ForeignProcess


class Accel(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class Capabilities:
    """Features a driver supports; the sandbox plans with these."""

    virtio_fs: bool = False
    vsock: bool = False
    virtio_serial: bool = False
    hotplug_net: bool = False
    hotplug_blk: bool = False
    templating: bool = False
    # The VM gains vCPUs while it runs: hot-plugged as devices (``hotplug_vcpus``), or
    # present from boot and brought online by the guest when needed.
    grow_vcpus: bool = False
    hotplug_vcpus: bool = False
    grow_memory: bool = False  # virtio-mem
    pmem: bool = False  # virtio-pmem (DAX boots from the read-only root image)


@dataclass(frozen=True)
class AgentChannelSpec:
    """The agent link: a virtio-serial port backed by a host unix socket, or vsock."""

    kind: str  # "virtio-serial" | "vsock"
    socket_path: Path | None = None  # virtio-serial: host unix socket (QEMU listens)
    port_name: str = "runvm.agent"  # virtio-serial port name the guest looks up
    guest_cid: int = 0  # vsock: guest context id


@dataclass(frozen=True)
class VirtioFsSpec:
    """A vhost-user-fs device served by a virtiofsd listening on ``socket_path``."""

    tag: str
    socket_path: Path
    queue_size: int = 1024


@dataclass(frozen=True)
class NinePSpec:
    """A virtio-9p device: QEMU itself serves ``path`` (no helper process)."""

    tag: str
    path: Path


@dataclass(frozen=True)
class NetSpec:
    """A virtio-net NIC on an open tap (or macvtap) device: QEMU inherits ``fds`` (one per
    queue) under the same numbers; ``vhost_fds`` (one per queue) enable vhost-net."""

    id: str
    mac: str
    fds: tuple[int, ...]
    vhost_fds: tuple[int, ...] = ()

    @property
    def queues(self) -> int:
        return len(self.fds)


@dataclass(frozen=True)
class DiskSpec:
    """A virtio-blk disk on an open host file or block device ``fd`` (QEMU gets the fd over
    QMP and never opens the path itself). The guest finds it by ``serial`` (<= 20 chars)."""

    id: str
    fd: int
    block_device: bool  # a host block device (else a regular image file)
    serial: str
    readonly: bool = False


DeviceSpec = AgentChannelSpec | VirtioFsSpec | NinePSpec | NetSpec


@dataclass(frozen=True)
class VMSpec:
    """Everything needed to start one VM. A pure value: the argv is a function of it."""

    name: str
    run_dir: Path  # per-VM directory for sockets and logs (exists, owned by the caller)
    kernel: Path
    initrd: Path
    accel: Accel
    arch: str = "amd64"  # the guest's architecture (runvm.arch): its QEMU, machine and console
    vcpus: int = 1
    memory_mib: int = 256
    # Room to grow while running (pc, q35, virt): vCPUs up to ``max_vcpus`` (``-smp maxcpus``),
    # and a virtio-mem device of ``hotplug_memory_mib`` that starts empty. 0: no room.
    max_vcpus: int = 0
    hotplug_memory_mib: int = 0
    machine: str = "pc"
    kernel_params: Sequence[str] = ()
    devices: Sequence[DeviceSpec] = field(default_factory=tuple)
    tcg_tb_size_mib: int = 32
    console_log_max_kib: int = 512
    host_tsc_khz: int = 0  # given to a microvm guest under TCG (its TSC calibration can hang)
    # Guest RAM in a file instead of a memfd: a template's (shared: written through to the
    # file) or a clone's (private copy-on-write mapping of the template's file).
    memory_path: Path | None = None
    # Guest RAM mapped shared: needed by vhost-user devices (virtio-fs), which map it too;
    # private RAM (a memfd's or a clone's) is anonymous memory that KSM can merge.
    memory_shared: bool = True
    incoming: bool = False  # wait for a saved state (``-incoming defer``) instead of booting
    seccomp: bool = True  # QEMU's own seccomp filter (``-sandbox``, see argv.SECCOMP)
    # Unprivileged user QEMU runs as ("" = the caller). Its sockets then live in
    # ``socket_dir``, the one directory that user owns; logs stay in ``run_dir``.
    user: str = ""
    # Boot from this read-only ext4 image on a virtio-pmem device, mapped with DAX, instead of
    # ``initrd``: every VM maps the same host pages.
    root_image: Path | None = None
    root_image_bytes: int = 0
    # QEMU dies with the process that started it (PR_SET_PDEATHSIG); False for the VMs the
    # cache daemon keeps ready, which outlive it in the sandboxes they are handed to.
    die_with_owner: bool = True
    # A virtio-balloon with free page reporting: the guest hands back the pages it frees and
    # QEMU releases them (a hole punched in the memfd). Never for a template or its clones:
    # the hole would be punched in the template's file, under every other clone.
    free_page_reporting: bool = False

    @property
    def socket_dir(self) -> Path:
        return socket_dir(self.run_dir, self.user)


def socket_dir(run_dir: Path, user: str) -> Path:
    """Where QEMU's own sockets go: ``run_dir``, or its ``qemu/`` when QEMU runs as ``user``."""
    return run_dir / "qemu" if user else run_dir


class VM(Protocol):
    """A running VM as the runtime core uses it. Devices come and go by their specs (the
    machine's :class:`Capabilities` say which it can hot-plug); a saved state goes to or
    comes from a file; :meth:`detach` lets go of a VM that keeps running for another owner."""

    @property
    def pid(self) -> int: ...

    @property
    def accel(self) -> Accel: ...

    @property
    def returncode(self) -> int | None: ...  # None while the VM runs

    def console_tail(self) -> str: ...  # the guest console's last lines

    def stderr_tail(self) -> str: ...  # what the hypervisor process itself printed last

    async def wait(self) -> int: ...

    async def stop(self) -> None: ...

    async def detach(self) -> None: ...

    async def terminate(self) -> None: ...

    async def hotplug_nic(self, nic: NetSpec) -> None: ...

    async def unplug_nic(self, nic_id: str, timeout: float = ...) -> None: ...

    async def hotplug_disk(self, disk: DiskSpec) -> None: ...

    async def unplug_disk(self, disk_id: str, timeout: float = ...) -> None: ...

    async def hotplug_fs(self, share: VirtioFsSpec, share_id: str = ...) -> None: ...

    async def save_state(self, path: Path, timeout: float = ...) -> None: ...

    async def resize(self, vcpus: int, memory_mib: int, timeout: float = ...) -> tuple[int, int]:
        """Plug or unplug vCPUs and hot-plugged memory towards ``vcpus`` and ``memory_mib`` in
        all (never below the boot size, never past the spec's room); the (vCPUs, MiB) the VM
        has when the guest has taken or given back what it could within ``timeout``."""
        ...

    async def load_state(self, path: Path, timeout: float = ...) -> None: ...


class Hypervisor(Protocol):
    """A hypervisor driver: starts VMs from specs, or takes over one another process
    started (by its pid file descriptor)."""

    def resolve_binary(self) -> str: ...

    async def launch(self, spec: VMSpec) -> VM: ...

    async def adopt(self, spec: VMSpec, process: ForeignProcess) -> VM: ...
