"""The QEMU argv is a pure function of the VM spec: compared with reviewed golden files.

Set RUNVM_UPDATE_GOLDEN=1 to rewrite the files after an intended change (then review the diff).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runvm.hypervisor.base import Accel, AgentChannelSpec, VirtioFsSpec, VMSpec
from runvm.hypervisor.qemu.argv import build_argv, kernel_cmdline

GOLDEN = Path(__file__).parent / "golden"


def spec(accel: Accel, **kw: object) -> VMSpec:
    run = Path("/run/runvm/sandboxes/sb1")
    base: dict[str, object] = dict(
        name="sb1", run_dir=run, kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"),
        accel=accel, vcpus=2, memory_mib=512, kernel_params=("runvm.channel=virtio-serial",),
        devices=(
            AgentChannelSpec(kind="virtio-serial", socket_path=run / "agent.sock"),
            VirtioFsSpec(tag="runvm-shared", socket_path=run / "virtiofsd.sock"),
        ),
    )  # fmt: skip
    base.update(kw)
    return VMSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("accel", [Accel.KVM, Accel.TCG])
def test_argv_matches_golden(accel: Accel) -> None:
    argv = build_argv(spec(accel), "/usr/bin/qemu-system-x86_64")
    text = "\n".join(argv) + "\n"
    golden = GOLDEN / f"qemu-{accel.value}.argv"
    if os.environ.get("RUNVM_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


def test_accelerator_selects_cpu_model() -> None:
    kvm = build_argv(spec(Accel.KVM))
    tcg = build_argv(spec(Accel.TCG, tcg_tb_size_mib=16))
    assert kvm[kvm.index("-accel") + 1] == "kvm" and kvm[kvm.index("-cpu") + 1] == "host"
    assert tcg[tcg.index("-accel") + 1] == "tcg,tb-size=16" and tcg[tcg.index("-cpu") + 1] == "max"


def test_vsock_channel_and_memory_backend() -> None:
    s = spec(Accel.KVM, devices=(AgentChannelSpec(kind="vsock", guest_cid=42),), memory_mib=300)
    argv = build_argv(s)
    assert "vhost-vsock-pci,id=vsock0,guest-cid=42" in argv
    assert "virtserialport" not in " ".join(argv)
    assert "memory-backend-memfd,id=mem,size=300M,share=on" in argv


def test_room_to_grow_is_maxcpus_and_an_empty_shared_virtio_mem_device() -> None:
    s = spec(Accel.KVM, vcpus=2, max_vcpus=8, memory_mib=512, hotplug_memory_mib=1536)
    argv = build_argv(s)
    assert argv[argv.index("-smp") + 1] == "2,maxcpus=8"
    assert argv[argv.index("-m") + 1] == "512M,maxmem=2048M"
    assert "memory-backend-memfd,id=vmem0-ram,size=1536M,share=on" in argv
    assert "virtio-mem-pci,id=vmem0,memdev=vmem0-ram,requested-size=0" in argv
    assert "memhp_default_state=online_movable" in kernel_cmdline(s).split()
    without = build_argv(spec(Accel.KVM, vcpus=2))
    assert without[without.index("-smp") + 1] == "2" and "virtio-mem-pci" not in str(without)
    assert not [p for p in kernel_cmdline(s).split() if p.startswith("maxcpus=")]


def test_under_tcg_every_vcpu_is_there_from_boot_and_the_guest_brings_up_the_base() -> None:
    s = spec(Accel.TCG, vcpus=2, max_vcpus=8)
    argv = build_argv(s)
    assert argv[argv.index("-smp") + 1] == "8,maxcpus=8"
    assert "maxcpus=2" in kernel_cmdline(s).split()
    fixed = spec(Accel.TCG, vcpus=2)
    assert build_argv(fixed)[build_argv(fixed).index("-smp") + 1] == "2"
    assert "maxcpus=2" not in kernel_cmdline(fixed).split()


def test_kernel_cmdline_ends_vm_on_panic() -> None:
    line = kernel_cmdline(spec(Accel.TCG))
    assert "panic=-1" in line.split() and line.endswith("runvm.channel=virtio-serial")
    assert "-no-reboot" in build_argv(spec(Accel.TCG))


def test_nics_on_open_taps() -> None:
    from runvm.hypervisor.base import NetSpec
    from runvm.hypervisor.qemu.argv import net_device_arg, netdev_arg
    from runvm.hypervisor.qemu.driver import inherited_fds

    one = NetSpec(id="net0", mac="02:00:00:00:00:01", fds=(7,))
    four = NetSpec(id="net1", mac="02:00:00:00:00:02", fds=(8, 9, 10, 11),
                   vhost_fds=(12, 13, 14, 15))  # fmt: skip
    assert netdev_arg(one) == "tap,id=net0,fd=7,vhost=off"
    assert netdev_arg(four) == "tap,id=net1,fds=8:9:10:11,vhost=on,vhostfds=12:13:14:15"
    assert net_device_arg(one) == "virtio-net-pci,netdev=net0,id=dev-net0,mac=02:00:00:00:00:01"
    assert net_device_arg(four).endswith(",mq=on,vectors=10")
    vm = spec(Accel.TCG, devices=(one, four))
    argv = build_argv(vm)
    assert argv[argv.index("-netdev") + 1] == netdev_arg(one)
    assert inherited_fds(vm) == (7, 8, 9, 10, 11, 12, 13, 14, 15)


@pytest.mark.parametrize("machine", ["q35", "microvm"])
def test_other_machines_match_golden(machine: str) -> None:
    """q35 gets empty root ports to hot-plug into; microvm gets MMIO devices and, under TCG,
    the host's TSC rate on the kernel command line."""
    from runvm.hypervisor.base import NetSpec, NinePSpec

    devices = (
        AgentChannelSpec(kind="virtio-serial", socket_path=Path("/run/sb1/agent.sock")),
        NinePSpec(tag="runvm", path=Path("/run/sb1/shared")),
        NetSpec(id="net0", mac="02:00:00:00:00:01", fds=(5, 6)),
    )
    argv = build_argv(spec(Accel.TCG, machine=machine, devices=devices, host_tsc_khz=2100000),
                      "/usr/bin/qemu-system-x86_64")  # fmt: skip
    text = "\n".join(argv) + "\n"
    golden = GOLDEN / f"qemu-{machine}.argv"
    if os.environ.get("RUNVM_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()
    pci = [a for a in argv if "-pci" in a]
    assert (machine == "microvm") == (not pci)
    assert ("tsc_early_khz=2100000" in kernel_cmdline(spec(Accel.TCG, machine=machine,
            host_tsc_khz=2100000))) == (machine == "microvm")  # fmt: skip
    assert "tsc_early_khz" not in kernel_cmdline(spec(Accel.KVM, machine=machine,
                                                      host_tsc_khz=2100000))  # fmt: skip


def test_host_tsc_rate_from_cpuinfo() -> None:
    from runvm.hypervisor.accel import host_tsc_khz

    assert host_tsc_khz("processor\t: 0\ncpu MHz\t\t: 2100.000\n") == 2100000
    assert host_tsc_khz("processor\t: 0\n") == 0
    assert host_tsc_khz("cpu MHz\t: fast\n") == 0


def test_dax_root_image_replaces_the_initramfs() -> None:
    argv = build_argv(spec(Accel.TCG, root_image=Path("/img/root.img"),
                           root_image_bytes=64 << 20), "/usr/bin/qemu-system-x86_64")  # fmt: skip
    text = "\n".join(argv) + "\n"
    golden = GOLDEN / "qemu-dax.argv"
    if os.environ.get("RUNVM_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()
    assert "-initrd" not in argv and argv[argv.index("-m") + 1] == "512M,slots=1,maxmem=576M"
    cmdline = argv[argv.index("-append") + 1]
    assert "root=/dev/pmem0" in cmdline and "rootflags=dax" in cmdline


@pytest.mark.parametrize("machine", ["pc", "microvm"])
def test_free_page_reporting_balloon(machine: str) -> None:
    plain = build_argv(spec(Accel.TCG, machine=machine))
    argv = build_argv(spec(Accel.TCG, machine=machine, free_page_reporting=True))
    t = "device" if machine == "microvm" else "pci"
    assert "balloon" not in " ".join(plain)
    assert f"virtio-balloon-{t},id=balloon0,free-page-reporting=on" in argv
    cmdline = argv[argv.index("-append") + 1].split()
    assert "runvm.page_reporting_order=5" in cmdline


def test_private_guest_ram_without_vhost_user() -> None:
    argv = build_argv(spec(Accel.TCG, memory_shared=False, devices=()))
    assert "memory-backend-memfd,id=mem,size=512M,share=off" in argv


@pytest.mark.parametrize("accel", [Accel.KVM, Accel.TCG])
def test_arm64_virt_matches_golden(accel: Accel) -> None:
    """An arm64 guest on virt: the host's GIC under KVM and an emulated GICv3 otherwise, the
    PL011 console, PCIe root ports to hot-plug into, every vCPU there from boot (virt cannot
    hot-plug one) with the guest bringing up its base, virtio-mem room."""
    from runvm.hypervisor.base import NetSpec

    devices = (
        AgentChannelSpec(kind="virtio-serial", socket_path=Path("/run/sb1/agent.sock")),
        VirtioFsSpec(tag="runvm-shared", socket_path=Path("/run/sb1/virtiofsd.sock")),
        NetSpec(id="net0", mac="02:00:00:00:00:01", fds=(5,)),
    )
    vm = spec(accel, arch="arm64", machine="virt", devices=devices, vcpus=1, max_vcpus=4,
              hotplug_memory_mib=1024, free_page_reporting=True)  # fmt: skip
    argv = build_argv(vm, "/usr/bin/qemu-system-aarch64")
    text = "\n".join(argv) + "\n"
    golden = GOLDEN / f"qemu-virt-{accel.value}.argv"
    if os.environ.get("RUNVM_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()
    gic = "host" if accel is Accel.KVM else "3"
    assert argv[argv.index("-machine") + 1] == f"virt,gic-version={gic},memory-backend=mem"
    assert argv[argv.index("-smp") + 1] == "4,maxcpus=4"
    cmdline = kernel_cmdline(vm).split()
    assert cmdline[0] == "console=ttyAMA0" and "maxcpus=1" in cmdline
    assert not {"reboot=t", "tsc=reliable"} & set(cmdline)  # x86's own


def test_the_qemu_binary_follows_the_guests_architecture() -> None:
    from runvm import config as cfg
    from runvm.hypervisor.qemu.driver import QemuHypervisor

    arm = QemuHypervisor.for_config(cfg.parse({"hypervisor": {"arch": "arm64"}}))
    assert (arm.binary, arm.arch) == ("qemu-system-aarch64", "arm64")
    amd = QemuHypervisor.for_config(cfg.parse({"hypervisor": {"arch": "amd64"}}))
    assert (amd.binary, amd.arch) == ("qemu-system-x86_64", "amd64")
    fixed = cfg.parse({"hypervisor": {"arch": "arm64", "path": "/opt/qemu/bin/qemu-{target}"}})
    assert QemuHypervisor.for_config(fixed).binary == "/opt/qemu/bin/qemu-aarch64"


def test_an_arm64_spec_is_refused_by_the_qemu_of_amd64_guests(tmp_path: Path) -> None:
    import asyncio

    from runvm.errors import HypervisorError
    from runvm.hypervisor.qemu.driver import QemuHypervisor

    vm = spec(Accel.TCG, arch="arm64", machine="virt", run_dir=tmp_path)
    with pytest.raises(HypervisorError, match="an arm64 VM cannot start with the QEMU of amd64"):
        asyncio.run(QemuHypervisor("qemu-system-x86_64", "amd64").launch(vm))
    assert not list(tmp_path.iterdir())
