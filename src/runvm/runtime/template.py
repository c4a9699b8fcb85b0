"""VM templates: boot one VM, save it paused, start sandboxes as copy-on-write clones of it.

The factory directory (``[factory] dir``, a tmpfs runvm mounts there) holds::

    memory          the template's guest RAM, written through while it ran (share=on)
    state           its device state, saved paused with x-ignore-shared (RAM left out)
    template.json   what it was made from (:func:`template_key`)

A clone is a QEMU on the same memory file mapped private (copy-on-write), started with
``-incoming defer``; the saved state goes in through an fd, then the guest runs on. Its agent
then gets a fresh random seed, instance id and the host's time (``ResumeClone``). virtio-fs
cannot serve a private copy-on-write guest (vhost-user needs memory it can map), so the
template carries a 9p device, unmounted, which each clone points at its own shared
directory and mounts; NICs are hot-plugged into the clone. A template whose key differs from
what a sandbox would boot is refused, and the sandbox boots cold (and logs why).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runvm import __version__
from runvm import arch as arches
from runvm import files as own_files
from runvm.config import RunvmConfig
from runvm.errors import ConfigError, RunvmError
from runvm.hypervisor.accel import AccelReport, detect
from runvm.hypervisor.base import AgentChannelSpec, NinePSpec, VMSpec
from runvm.hypervisor.qemu.driver import QemuHypervisor
from runvm.hypervisor.qemu.machines import machine_capabilities
from runvm.protocol import PROTOCOL_VERSION
from runvm.runtime import sizing
from runvm.runtime.agentlink import connect_agent
from runvm.runtime.guestimage import GuestFiles, resolve_guest_files
from runvm.runtime.machine import machine_for, room
from runvm.storage import mounts
from runvm.storage.shared import TAG

log = logging.getLogger(__name__)

CHANNEL = "virtio-serial"  # a vsock guest cid would be the same in every clone
META = "template.json"
RUN_DIR_PREFIX = "template-"  # + the maker's pid: a template VM's sockets, under the state root
# Its clones' pods may have NICs: the agent imports its netlink library before it is saved.
PARAMS = ("runvm.channel=virtio-serial", "runvm.preload=network")


@dataclass(frozen=True)
class Template:
    directory: Path
    meta: Mapping[str, Any]

    @property
    def memory(self) -> Path:
        return self.directory / "memory"

    @property
    def state(self) -> Path:
        return self.directory / "state"


def _file_id(path: Path) -> list[object]:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def template_key(config: RunvmConfig, files: GuestFiles, accel: str, qemu: str) -> dict[str, Any]:
    """Everything a clone inherits from its template and must therefore match."""
    hv = config.hypervisor
    machine = machine_for(config)
    return {
        "arch": arches.resolve(hv.arch).name,
        "runvm": __version__,
        "protocol": PROTOCOL_VERSION,
        "qemu": _file_id(Path(qemu)),
        "kernel": _file_id(files.kernel),
        "initrd": _file_id(files.initrd),
        "root_image": _file_id(files.root_image) if files.root_image else None,
        "kernel_params": [*PARAMS, *hv.kernel_params.split()],
        "machine": machine,
        "vcpus": hv.vcpus,
        "memory_mib": hv.memory_mib,
        "room": list(room(config, machine, sizing.base(config))),
        "tcg_tb_size_mib": hv.tcg_tb_size_mib,
        "accel": accel,
    }


def mismatch(meta: Mapping[str, Any], key: Mapping[str, Any]) -> str:
    """Why a template made with ``meta`` cannot serve ``key`` ("" if it can)."""
    have = meta.get("key") or {}
    diff = [name for name in key if have.get(name) != key[name]]
    return f"it differs in {', '.join(diff)}" if diff else ""


def factory_dir(config: RunvmConfig) -> Path:
    return Path(config.factory.dir)


def qemu_binary(config: RunvmConfig) -> str:
    return QemuHypervisor.for_config(config).resolve_binary()


def load(config: RunvmConfig) -> Template | None:
    """The factory's template if one is complete, else None."""
    return load_from(factory_dir(config))


def load_from(directory: Path) -> Template | None:
    """The template in ``directory`` if one is complete there, else None."""
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, ValueError):
        return None
    tpl = Template(directory, meta)
    if not (tpl.memory.is_file() and tpl.state.is_file()) or not isinstance(meta, dict):
        return None
    return tpl


async def usable(config: RunvmConfig, files: GuestFiles, accel: AccelReport) -> Template | None:
    """The template a new sandbox may clone, or None (logged when one exists but differs)."""
    tpl = load(config)
    if tpl is None:
        log.debug("factory: no template in %s", factory_dir(config))
        return None
    why = mismatch(tpl.meta, template_key(config, files, accel.accel.value, qemu_binary(config)))
    if why:
        log.warning("factory: template in %s refused (%s); booting cold", tpl.directory, why)
        return None
    return tpl


def clone_spec(tpl: Template, spec: VMSpec) -> VMSpec:
    """``spec`` (channel + 9p share only) turned into a clone of ``tpl``."""
    return replace(
        spec, memory_path=tpl.memory, memory_shared=False, incoming=True, free_page_reporting=False
    )


def unsupported(config: RunvmConfig) -> str:
    """Why sandboxes of ``config`` cannot be clones ("" if they can)."""
    hv = config.hypervisor
    machine = machine_for(config)
    if not machine_capabilities(machine).hotplug_net:
        return (f"templates need device hot-plug (NICs go into each clone); machine "
                f"{machine} has none: use pc or q35")  # fmt: skip
    if config.image.variant == "debian" and not config.image.kernel:
        return ("templates need a guest kernel with 9p (clones cannot use virtio-fs);"
                ' Debian\'s cloud kernel has none: set image.variant = "minimal"')  # fmt: skip
    if hv.user:
        return "templates are not used with hypervisor.user (a clone's 9p share needs root)"
    return ""


async def create(config: RunvmConfig) -> Template:
    """Boot the template VM in the factory directory (a tmpfs mounted there), save it, and
    record what it was made from (``runvm factory init``)."""
    why = unsupported(config)
    if why:
        raise ConfigError(why)
    files = resolve_guest_files(config)
    hypervisor = QemuHypervisor.for_config(config)
    qemu = hypervisor.resolve_binary()
    accel = await detect(config.hypervisor.accelerator, qemu, files.kernel,
                         Path(config.runtime.cache_dir), hypervisor.arch)  # fmt: skip
    directory = factory_dir(config)
    destroy(config)
    directory.mkdir(parents=True, exist_ok=True)
    flags, _ = mounts.mount_options(["nosuid", "nodev", "noexec"])
    mounts.mount("tmpfs", str(directory), "tmpfs", flags,
                 f"size={config.hypervisor.memory_mib + 16}m,mode=0700")  # fmt: skip
    try:
        return await make(config, directory, files, accel)
    except BaseException:
        destroy(config)
        raise


async def make(
    config: RunvmConfig, directory: Path, files: GuestFiles, accel: AccelReport
) -> Template:
    """Boot a template VM of ``config`` with its files in ``directory`` (an existing, empty
    directory on a tmpfs), save it paused and write its ``template.json`` last."""
    hypervisor = QemuHypervisor.for_config(config)
    qemu = hypervisor.resolve_binary()
    # Its sockets live under the state root: a unix socket path has at most 108 bytes.
    state_root = Path(config.runtime.state_root)
    own_files.make_dirs(state_root)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-", dir=state_root))
    try:
        return await _boot_and_save(config, directory, files, accel, hypervisor, qemu, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def _boot_and_save(
    config: RunvmConfig,
    directory: Path,
    files: GuestFiles,
    accel: AccelReport,
    hypervisor: QemuHypervisor,
    qemu: str,
    run_dir: Path,
) -> Template:
    hv = config.hypervisor
    tpl = Template(directory, {})
    with tpl.memory.open("wb") as f:
        f.truncate(hv.memory_mib << 20)
    empty = directory / "share"
    empty.mkdir(mode=0o700)
    channel = AgentChannelSpec(kind=CHANNEL, socket_path=run_dir / "agent.sock")
    machine = machine_for(config)
    max_vcpus, hotplug_mib = room(config, machine, sizing.base(config))
    spec = VMSpec(
        name="template", run_dir=run_dir, kernel=files.kernel, initrd=files.initrd,
        accel=accel.accel, arch=hypervisor.arch, vcpus=hv.vcpus, memory_mib=hv.memory_mib,
        machine=machine,
        max_vcpus=max_vcpus, hotplug_memory_mib=hotplug_mib,
        kernel_params=(*PARAMS, *hv.kernel_params.split()),
        devices=(channel, NinePSpec(tag=TAG, path=empty)), tcg_tb_size_mib=hv.tcg_tb_size_mib,
        console_log_max_kib=hv.console_log_max_kib, memory_path=tpl.memory, memory_shared=True,
        seccomp=hv.seccomp,
        root_image=files.root_image,
        root_image_bytes=files.root_image_bytes,
    )  # fmt: skip
    started = time.monotonic()
    vm = await hypervisor.launch(spec)
    try:
        agent = await connect_agent(channel, hv.boot_timeout, config.agent.timeout, vm.wait)
        details = await agent.guest_details()
        await agent.close()
        await asyncio.sleep(1.0)  # the agent notices the host left and waits for the next one
        await vm.save_state(tpl.state)
    finally:
        await vm.stop()
    meta = {
        "key": template_key(config, files, accel.accel.value, qemu),
        "created": time.time(),
        "boot_seconds": round(time.monotonic() - started, 2),
        "kernel_release": details.kernel_release,
        "state_bytes": tpl.state.stat().st_size,
    }
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("factory: template saved in %s (%s)", directory, accel.sentence())
    return Template(directory, meta)


def destroy(config: RunvmConfig) -> bool:
    """Remove the template (detach its tmpfs); True if there was one. Running clones keep
    their mappings of the memory file: the tmpfs goes away when the last one exits."""
    directory = factory_dir(config)
    if not directory.exists():
        return False
    while mounts.is_mountpoint(str(directory.resolve())):
        try:
            mounts.umount(str(directory))
        except OSError as exc:
            raise RunvmError(f"cannot unmount the factory tmpfs {directory}: {exc}") from exc
    with contextlib.suppress(OSError):
        shutil.rmtree(directory)
    return True


def status(config: RunvmConfig) -> dict[str, Any]:
    """What ``runvm factory status`` prints: the template, and whether it still matches."""
    tpl = load(config)
    if tpl is None:
        return {"template": None, "dir": str(factory_dir(config))}
    out: dict[str, Any] = {"template": str(tpl.directory), **tpl.meta}
    out["memory_bytes"] = os.stat(tpl.memory).st_size
    return out


def cache_key(config: RunvmConfig, files: GuestFiles, accel: str, qemu: str) -> dict[str, Any]:
    """What a VM of the cache daemon must have been made with to serve a sandbox of
    ``config``: a template's key plus what a clone does not share with its template."""
    hv = config.hypervisor
    return {
        **template_key(config, files, accel, qemu),
        "seccomp": hv.seccomp,
        "console_log_max_kib": hv.console_log_max_kib,
    }
