"""Where a sandbox's VM comes from (the cache, a template, or a cold boot), and the checks
and run directory that come before it. See :func:`choose` and :func:`refuse_bad_combinations`."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from runvm import arch as arches
from runvm.cache import client as cache
from runvm.config import RunvmConfig
from runvm.errors import ConfigError
from runvm.hypervisor.accel import AccelReport, detect
from runvm.hypervisor.base import AgentChannelSpec, Hypervisor
from runvm.hypervisor.qemu.driver import QemuHypervisor, unprivileged_user
from runvm.hypervisor.qemu.machines import machine_capabilities
from runvm.process import ForeignProcess
from runvm.protocol.client import AgentClient
from runvm.runtime import firstuse, sandboxlogs, sizing, template
from runvm.runtime.agentlink import connect_agent
from runvm.runtime.guestimage import GuestFiles, resolve_guest_files
from runvm.runtime.machine import machine_for
from runvm.runtime.steps import Steps

if TYPE_CHECKING:
    from runvm.runtime.sandbox import SandboxOptions

log = logging.getLogger(__name__)


def refuse_bad_combinations(config: RunvmConfig, options: SandboxOptions) -> None:
    """ConfigError for settings that cannot work together, before anything is made."""
    if (config.storage.shared_fs == "9p" and config.image.variant == "debian"
            and not (options.guest_files or config.image.kernel)):  # fmt: skip
        raise ConfigError(
            "storage.shared_fs = 9p needs a guest kernel with 9p; Debian's "
            'cloud kernel has none: set image.variant = "minimal"'
        )
    hv_cfg = config.hypervisor
    machine = machine_for(config)
    if config.image.dax and not machine_capabilities(machine).pmem:
        if machine == "microvm":
            why, fix = "has no PCI bus", 'set hypervisor.machine = "pc" or "q35"'
        else:
            why, fix = "has no virtio-pmem device in QEMU 7.2", "set image.dax = false"
        raise ConfigError(f"image.dax boots from a virtio-pmem PCI device and the {machine} "
                          f"machine {why}: {fix}")  # fmt: skip
    if hv_cfg.user:
        unprivileged_user(hv_cfg.user)
        if config.storage.shared_fs == "9p":
            raise ConfigError("hypervisor.user: QEMU runs as root with 9p sharing; use virtio-fs")


@dataclass
class Origin:
    """A VM to boot cold; the subclasses are the other origins. Each origin has its own boot
    recipe in :class:`~runvm.runtime.sandbox.Sandbox`, made of the same named steps."""

    files: GuestFiles
    accel: AccelReport
    hypervisor: Hypervisor
    booted_before: ClassVar[bool] = False  # its NICs are hot-plugged once it runs


@dataclass
class Cloned(Origin):
    """A clone of a saved template VM (its memory shared copy-on-write)."""

    tpl: template.Template
    booted_before: ClassVar[bool] = True


@dataclass
class Adopted(Origin):
    """A VM the cache daemon booted and handed over, with its QEMU process."""

    handed: cache.Handed
    process: ForeignProcess
    booted_before: ClassVar[bool] = True


def qemu(config: RunvmConfig) -> Hypervisor:
    return QemuHypervisor.for_config(config)


@dataclass(frozen=True)
class Parts:
    """What sandboxes are made with: the hypervisor driver, its accelerator probe, the agent
    link. Unit tests of the core give fakes (``hypervisor/fake.py``, ``protocol/fake.py``)."""

    hypervisor: Callable[[RunvmConfig], Hypervisor] = qemu
    detect: Callable[[str, str, Path, Path, str], Awaitable[AccelReport]] = detect
    connect: Callable[
        [AgentChannelSpec, float, float, Callable[[], Awaitable[int]]], Awaitable[AgentClient]
    ] = connect_agent


async def choose(
    config: RunvmConfig, options: SandboxOptions, run_dir: Path, steps: Steps, parts: Parts
) -> Origin:
    """Ask the cache first, then the template, else boot cold; make or take over ``run_dir``."""
    files = options.guest_files or resolve_guest_files(config)
    keep = frozenset(sandboxlogs.LOGS) if options.keep_logs else frozenset()
    hypervisor = parts.hypervisor(config)
    qemu = hypervisor.resolve_binary()
    accel = await steps.run("accelerator", parts.detect(
        config.hypervisor.accelerator, qemu, files.kernel, Path(config.runtime.cache_dir),
        arches.resolve(config.hypervisor.arch).name))  # fmt: skip
    plain = options.share_fs and not (options.extra_devices or options.extra_kernel_params)
    sized = options.size is not None and options.size != sizing.base(config)
    fresh = plain and not options.pooled and not sized  # templates and cached VMs: the base
    if config.cache.enable and fresh and not options.guest_files:
        key = template.cache_key(config, files, accel.accel.value, qemu)
        handed = await steps.run("cache-take", cache.take(config, run_dir, key))
        if handed is not None:  # the daemon moved the VM's directory here; its QEMU is ours
            process = ForeignProcess(handed.pid, handed.pidfd)
            steps.add_undo("run-dir", lambda: _remove_dir(run_dir, keep))
            steps.add_undo("cached-qemu", process.stop)
            return Adopted(files, accel, hypervisor, handed, process)
    await steps.run("run-dir", _make_run_dir(run_dir, bool(config.hypervisor.user)),
                    lambda: _remove_dir(run_dir, keep))  # fmt: skip
    if config.factory.enable and fresh:
        why = template.unsupported(config)
        if why:
            log.debug("sandbox %s is no clone: %s", run_dir.name, why)
            return Origin(files, accel, hypervisor)
        tpl = await template.usable(config, files, accel)
        if tpl is None and config.factory.first_use and not options.guest_files:
            tpl = await steps.run("template", firstuse.template_for(config, files, accel))
        if tpl is not None:
            return Cloned(files, accel, hypervisor, tpl)
    return Origin(files, accel, hypervisor)


async def _make_run_dir(path: Path, traversable: bool) -> None:
    """Make the sandbox's run directory, 0700; ``traversable``: it and the two above it are
    0711, so that an unprivileged QEMU reaches its own socket directory inside."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise ConfigError(f"sandbox {path.name} already exists ({path})") from None
    if traversable:
        for directory in (path, path.parent, path.parent.parent):
            directory.chmod(0o711)


async def _remove_dir(path: Path, keep: frozenset[str] = frozenset()) -> None:
    """Remove the run directory, or all of it but the files named in ``keep`` (its logs, for
    an owner whose container outlives its VM)."""
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        for entry in path.iterdir():
            if entry.name in keep and entry.is_file():
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
