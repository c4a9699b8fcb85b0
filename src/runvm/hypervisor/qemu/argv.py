"""The QEMU command line as a pure function of a :class:`VMSpec` (golden-tested).

Guest RAM is a memfd, shared when vhost-user devices (virtio-fs) must map it too. The kernel
command line makes a guest panic or reboot end QEMU (``panic=-1`` with ``-no-reboot``). The
guest's architecture picks the machine's details and the console (:mod:`.machines`).
"""

from __future__ import annotations

from pathlib import Path

from runvm.hypervisor.base import (
    Accel,
    AgentChannelSpec,
    NetSpec,
    NinePSpec,
    VirtioFsSpec,
    VMSpec,
)
from runvm.hypervisor.qemu.machines import machine_arg, machine_capabilities, target

BASE_KERNEL_PARAMS = ("panic=-1", "quiet", "random.trust_cpu=on")


HOTPLUG_PORTS = 4


def qmp_socket(spec: VMSpec) -> Path:
    return spec.socket_dir / "qmp.sock"


def console_socket(spec: VMSpec) -> Path:
    return spec.socket_dir / "console.sock"


DAX_ROOT_PARAMS = ("root=/dev/pmem0", "rootfstype=ext4", "rootflags=dax", "ro", "init=/init")


PAGE_REPORTING_ORDER = 5
"""Smallest free block the guest reports, as a power of two of pages (128 KiB); the kernel's
own default is its pageblock (4 MiB here), which leaves most freed memory unreported."""


def kernel_cmdline(spec: VMSpec) -> str:
    arch = target(spec.arch)
    params = [f"console={arch.console}", *BASE_KERNEL_PARAMS, *arch.kernel_params,
              *spec.kernel_params]  # fmt: skip
    if spec.root_image is not None:
        params += DAX_ROOT_PARAMS
    if spec.free_page_reporting:
        params.append(f"runvm.page_reporting_order={PAGE_REPORTING_ORDER}")
    if spec.hotplug_memory_mib:  # movable: virtio-mem can take it back
        params.append("memhp_default_state=online_movable")
    if all_vcpus_present(spec):
        params.append(f"maxcpus={spec.vcpus}")
    if spec.machine == "microvm" and spec.accel is Accel.TCG and spec.host_tsc_khz:
        params.append(f"tsc_early_khz={spec.host_tsc_khz}")
    return " ".join(params)


def _accel_args(spec: VMSpec) -> list[str]:
    if spec.accel is Accel.KVM:
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", f"tcg,tb-size={spec.tcg_tb_size_mib}", "-cpu", "max"]


def transport(machine: str) -> str:
    """Suffix of the virtio device models on ``machine``: PCI, or MMIO on microvm."""
    return "device" if machine == "microvm" else "pci"


def hotplug_ports(machine: str) -> int:
    """Empty PCIe root ports created at start on q35 and virt (their root bus cannot
    hot-plug)."""
    return HOTPLUG_PORTS if machine in ("q35", "virt") else 0


def _device_args(spec: VMSpec) -> list[str]:
    t = transport(spec.machine)
    args: list[str] = []
    if t == "device":  # modern virtio over MMIO: vhost-user (virtiofsd) refuses legacy devices
        args += ["-global", "virtio-mmio.force-legacy=false"]
    for i in range(hotplug_ports(spec.machine)):
        args += ["-device", f"pcie-root-port,id=hp{i},bus=pcie.0,chassis={i + 1}"]
    serial_ports = [d for d in spec.devices if isinstance(d, AgentChannelSpec)]
    for i, dev in enumerate(serial_ports):
        if dev.kind == "virtio-serial":
            args += [
                "-device", f"virtio-serial-{t},id=vser{i}",
                "-chardev", f"socket,id=agent{i},path={dev.socket_path},server=on,wait=off",
                "-device", f"virtserialport,bus=vser{i}.0,chardev=agent{i},name={dev.port_name}",
            ]  # fmt: skip
        else:
            args += ["-device", f"vhost-vsock-{t},id=vsock{i},guest-cid={dev.guest_cid}"]
    shares = [d for d in spec.devices if isinstance(d, VirtioFsSpec)]
    for i, share in enumerate(shares):
        args += [
            "-chardev", f"socket,id=fs{i},path={share.socket_path}",
            "-device",
            f"vhost-user-fs-{t},chardev=fs{i},tag={share.tag},queue-size={share.queue_size}",
        ]  # fmt: skip
    # 9p: ids as root on the host (passthrough), inode numbers made unique across the bind
    # mounts under the share (multidevs=remap).
    for i, p9 in enumerate(d for d in spec.devices if isinstance(d, NinePSpec)):
        args += [
            "-fsdev",
            f"local,id=p9fs{i},path={p9.path},security_model=passthrough,multidevs=remap",
            "-device", f"virtio-9p-{t},fsdev=p9fs{i},mount_tag={p9.tag}",
        ]  # fmt: skip
    for nic in (d for d in spec.devices if isinstance(d, NetSpec)):
        args += ["-netdev", netdev_arg(nic), "-device", net_device_arg(nic, t)]
    return args


def netdev_arg(nic: NetSpec) -> str:
    """``-netdev`` (also the ``netdev_add`` arguments for hot-plug) for an open tap."""
    fds = ":".join(str(fd) for fd in nic.fds)
    out = f"tap,id={nic.id},{'fds' if nic.queues > 1 else 'fd'}={fds}"
    if nic.vhost_fds:
        vhost = ":".join(str(fd) for fd in nic.vhost_fds)
        return out + f",vhost=on,{'vhostfds' if nic.queues > 1 else 'vhostfd'}={vhost}"
    return out + ",vhost=off"


def net_device_arg(nic: NetSpec, t: str = "pci") -> str:
    out = f"virtio-net-{t},netdev={nic.id},id=dev-{nic.id},mac={nic.mac}"
    if nic.queues > 1:
        out += ",mq=on"
        if t == "pci":  # one MSI-X vector per queue each way, plus config and control
            out += f",vectors={2 * nic.queues + 2}"
    return out


def _memory_arg(spec: VMSpec) -> str:
    if spec.root_image is None and not spec.hotplug_memory_mib:
        return f"{spec.memory_mib}M"
    extra = (spec.root_image_bytes + (1 << 20) - 1) >> 20  # the pmem device's address space
    slots = ",slots=1" if spec.root_image is not None else ""
    return f"{spec.memory_mib}M{slots},maxmem={spec.memory_mib + extra + spec.hotplug_memory_mib}M"


VIRTIO_MEM = "vmem0"
"""The virtio-mem device's id; its memory backend is ``VIRTIO_MEM + "-ram"``."""


def all_vcpus_present(spec: VMSpec) -> bool:
    """Under TCG, and on a machine without vCPU hot-plug (virt), every vCPU a VM may grow to
    is there from the start and the guest brings up only ``vcpus`` of them (``maxcpus=``);
    the agent onlines more later. QEMU 7.2 aborts (``tcg_region_initial_alloc__locked:
    assertion failed``) when a vCPU is hot-plugged while the running ones hold every region of
    the translation cache, and corrupts its heap when one is plugged again after an unplug.
    Under KVM on pc and q35 vCPUs are hot-plugged."""
    plugged = spec.accel is Accel.KVM and machine_capabilities(spec.machine).hotplug_vcpus
    return not plugged and spec.max_vcpus > spec.vcpus


def smp_arg(spec: VMSpec) -> str:
    if all_vcpus_present(spec):
        return f"{spec.max_vcpus},maxcpus={spec.max_vcpus}"
    if spec.max_vcpus > spec.vcpus:
        return f"{spec.vcpus},maxcpus={spec.max_vcpus}"
    return str(spec.vcpus)


def _virtio_mem_args(spec: VMSpec) -> list[str]:
    """An empty virtio-mem device spanning the hot-pluggable memory. Its backend is always a
    shared memfd: a clone's is new and empty like its template's, and vhost-user maps it."""
    if not spec.hotplug_memory_mib:
        return []
    return [
        "-object",
        f"memory-backend-memfd,id={VIRTIO_MEM}-ram,size={spec.hotplug_memory_mib}M,share=on",
        "-device", f"virtio-mem-pci,id={VIRTIO_MEM},memdev={VIRTIO_MEM}-ram,requested-size=0",
    ]  # fmt: skip


def _root_args(spec: VMSpec) -> list[str]:
    """The initramfs, or the root image on a read-only, shared virtio-pmem device."""
    if spec.root_image is None:
        return ["-initrd", str(spec.initrd)]
    return [
        "-object", f"memory-backend-file,id=rootimg,mem-path={spec.root_image},"
        f"size={spec.root_image_bytes},share=on,readonly=on",
        "-device", "virtio-pmem-pci,memdev=rootimg,id=pmem0",
    ]  # fmt: skip


def _memory_backend(spec: VMSpec) -> str:
    size = f"size={spec.memory_mib}M"
    share = "on" if spec.memory_shared else "off"
    if spec.memory_path is None:
        return f"memory-backend-memfd,id=mem,{size},share={share}"
    return f"memory-backend-file,id=mem,{size},mem-path={spec.memory_path},share={share}"


def _balloon_args(spec: VMSpec) -> list[str]:
    if not spec.free_page_reporting:
        return []
    t = transport(spec.machine)
    return ["-device", f"virtio-balloon-{t},id=balloon0,free-page-reporting=on"]


SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
"""QEMU's syscall filter: no obsolete calls, no set*uid, no fork/exec, no scheduler or
affinity changes. Nothing runvm asks of QEMU needs them: taps, disks and migration streams
all arrive as file descriptors."""


def build_argv(spec: VMSpec, binary: str = "qemu-system-x86_64") -> list[str]:
    """The complete argv that starts ``spec`` with QEMU ``binary`` (of ``spec.arch``); no
    side effects."""
    return [
        binary,
        "-name", f"runvm-{spec.name},debug-threads=on",
        "-no-user-config", "-nodefaults", "-display", "none", "-vga", "none",
        "-msg", "timestamp=on",  # its stderr (qemu.log) in runvm's log line format
        "-machine", machine_arg(spec.machine, spec.accel),
        *_accel_args(spec),
        "-smp", smp_arg(spec),
        "-m", _memory_arg(spec),
        "-object", _memory_backend(spec),
        *_virtio_mem_args(spec),
        "-kernel", str(spec.kernel),
        *_root_args(spec),
        "-append", kernel_cmdline(spec),
        "-no-reboot",
        *(["-sandbox", SECCOMP] if spec.seccomp else []),
        "-qmp", f"unix:{qmp_socket(spec)},server=on,wait=off",
        "-chardev", f"socket,id=console,path={console_socket(spec)},server=on,wait=off",
        "-serial", "chardev:console",
        "-device", f"virtio-rng-{transport(spec.machine)},id=rng0",
        *_balloon_args(spec),
        *_device_args(spec),
        *(["-incoming", "defer"] if spec.incoming else []),
    ]  # fmt: skip
