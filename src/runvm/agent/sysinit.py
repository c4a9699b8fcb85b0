"""PID 1 setup, as a straight recipe of named steps (see :func:`run`).

Order matters: /proc and /sys come first because module loading and device discovery read
them; devtmpfs before modules so the virtio-serial port's node appears when its driver binds;
cgroup2 last, as containers are the only users; then crun's sealed copy (see
:func:`runvm.agent.crun.seal`), which reads /proc.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from runvm.agent import crun
from runvm.agent import syscalls as sc

log = logging.getLogger("runvm.agent")

MANIFEST = Path("/etc/runvm/image.json")


SYSROOT = "/sysroot"
ROOT_DIRS = ("usr", "bin", "lib", "lib64", "etc")


def leave_initramfs() -> None:
    """Make / a tmpfs mount, with the initramfs's directories bound into it, without copying.

    pivot_root(2) refuses to move the initial rootfs, and crun pivots every container root.
    So PID 1 builds a tmpfs, binds the image's directories into it, moves it over / and
    chroots into it. The initramfs stays underneath, unreachable from the new root. A
    read-only root image (a DAX boot) gets the same treatment: its directories are bound
    read-only too, and the image ships the ``/sysroot`` mount point.
    """
    os.makedirs(SYSROOT, exist_ok=True)
    sc.mount("tmpfs", SYSROOT, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755")
    for entry in os.listdir("/"):
        if entry == SYSROOT.strip("/"):
            continue
        source = f"/{entry}"
        target = f"{SYSROOT}/{entry}"
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        elif os.path.isdir(source):
            os.mkdir(target, 0o755)
            if entry in ROOT_DIRS:
                sc.mount(source, target, "", sc.MS_BIND | sc.MS_REC)
                sc.mount("", target, "", sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
    os.chdir(SYSROOT)
    sc.mount(SYSROOT, "/", "", sc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def mount_pseudo_filesystems() -> None:
    nosuid_nodev_noexec = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    table = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, ""),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, ""),
        ("devtmpfs", "/dev", "devtmpfs", sc.MS_NOSUID, "mode=0755"),
        ("tmpfs", "/run", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777"),
    ]
    for source, target, fstype, flags, data in table:
        os.makedirs(target, exist_ok=True)
        sc.mount(source, target, fstype, flags, data)
    for sub, fstype, data in (
        ("pts", "devpts", "newinstance,ptmxmode=0666,mode=0620"),
        ("shm", "tmpfs", "mode=1777"),
        ("mqueue", "mqueue", ""),
    ):
        os.makedirs(f"/dev/{sub}", exist_ok=True)
        sc.mount(fstype, f"/dev/{sub}", fstype, sc.MS_NOSUID | sc.MS_NOEXEC, data)
    if not os.path.exists("/dev/ptmx"):
        os.symlink("pts/ptmx", "/dev/ptmx")


def mount_cgroup2() -> None:
    sc.mount("cgroup2", "/sys/fs/cgroup", "cgroup2", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    # Delegate the controllers to children so containers can get limits.
    controllers = Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
    Path("/sys/fs/cgroup/cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in controllers))


def load_modules(manifest: dict[str, object]) -> list[str]:
    """Load the image's modules in the manifest's dependency order; return those loaded."""
    loaded = []
    modules = manifest.get("modules", [])
    assert isinstance(modules, list)
    for path in modules:
        try:
            sc.finit_module(str(path))
            loaded.append(str(path))
        except OSError as exc:
            if exc.errno != 17:  # EEXIST: built in or already loaded
                log.warning("module %s: %s", path, exc)
    return loaded


def read_manifest() -> dict[str, object]:
    try:
        data = json.loads(MANIFEST.read_text())
    except (OSError, ValueError) as exc:
        log.warning("no image manifest: %s", exc)
        return {}
    return data if isinstance(data, dict) else {}


def kernel_params() -> dict[str, str]:
    """``runvm.KEY=VALUE`` words of the kernel command line, without the prefix."""
    words = Path("/proc/cmdline").read_text().split()
    return {w[6:].partition("=")[0]: w.partition("=")[2] for w in words if w.startswith("runvm.")}


PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")


def set_page_reporting_order(params: dict[str, str]) -> None:
    """Report free blocks from ``runvm.page_reporting_order`` up (the host asks for it with a
    free-page-reporting balloon). Written after the balloon driver registered: registration
    resets the order to the kernel's default."""
    order = params.get("page_reporting_order", "")
    if not order.isdigit() or not PAGE_REPORTING_ORDER.exists():
        return
    try:
        PAGE_REPORTING_ORDER.write_text(order)
    except OSError as exc:
        log.warning("page reporting order %s not set: %s", order, exc)


def run() -> dict[str, object]:
    """The PID 1 recipe; returns the image manifest."""
    leave_initramfs()
    mount_pseudo_filesystems()
    manifest = read_manifest()
    load_modules(manifest)
    set_page_reporting_order(kernel_params())
    mount_cgroup2()
    crun.seal()
    os.makedirs("/run/runvm", exist_ok=True)
    return manifest
