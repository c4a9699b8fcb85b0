"""Accelerator detection: KVM when a guest really runs under it, else TCG.

``/dev/kvm`` opening is not enough: on paravirtual (PVM) nested hosts it opens and answers
ioctls, yet an ordinary guest kernel never gets past its decompressor. So the probe boots the
guest kernel itself under KVM with no root filesystem: a working KVM reaches the kernel's
"no root" panic, which with ``panic=-1 -no-reboot`` ends QEMU within a few seconds. The
verdict is cached per (QEMU binary, host kernel, guest kernel) in ``<cache_dir>/accel.json``.
KVM runs guests of the host's architecture only: a guest of another one is emulated (TCG)
without a probe.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from runvm import arch as arches
from runvm.errors import ConfigError, HypervisorError
from runvm.hypervisor.base import Accel
from runvm.hypervisor.qemu.machines import machine_arg, target
from runvm.process import Child, ChildSpec

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
PROBE_TIMEOUT = 8.0


@dataclass(frozen=True)
class AccelReport:
    """The accelerator chosen and why. ``kvm`` is usable | present but unusable | absent |
    not probed | not for <arch> guests."""

    accel: Accel
    kvm: str
    reason: str
    cached: bool = False

    def sentence(self) -> str:
        return f"{self.accel.value} (KVM {self.kvm}: {self.reason})"


def kvm_device(path: str = "/dev/kvm") -> tuple[bool, str]:
    """Can ``path`` be opened read-write and does it speak the KVM API?"""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, f"{path} does not exist"
    except OSError as exc:
        return False, f"{path}: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
    except OSError as exc:
        return False, f"{path}: KVM_GET_API_VERSION failed: {exc.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, f"{path}: KVM API version {version}, expected {KVM_API_VERSION}"
    return True, f"{path} opens"


def decide(wanted: str, device: tuple[bool, str], probe: tuple[bool, str] | None) -> AccelReport:
    """Pure choice from the configured wish, the device check and the guest probe."""
    if wanted not in ("auto", "kvm", "tcg"):
        raise ConfigError(f"accelerator must be auto, kvm or tcg, not {wanted!r}")
    dev_ok, dev_reason = device
    if wanted == "tcg":
        return AccelReport(Accel.TCG, "not probed", "software emulation requested by config")
    if not dev_ok:
        if wanted == "kvm":
            raise HypervisorError(f"KVM requested but unavailable: {dev_reason}")
        return AccelReport(Accel.TCG, "absent", dev_reason)
    assert probe is not None, "a present KVM device must be probed"
    ok, why = probe
    if ok:
        return AccelReport(Accel.KVM, "usable", why)
    if wanted == "kvm":
        raise HypervisorError(f"KVM requested but a guest does not run under it: {why}")
    return AccelReport(Accel.TCG, "present but unusable", why)


def foreign(wanted: str, arch: str) -> AccelReport:
    """The choice for a guest of ``arch``, another architecture than the host's: TCG."""
    host = arches.host().name
    if wanted == "kvm":
        raise HypervisorError(f"KVM requested, but KVM cannot run {arch} guests on this {host} "
                              'host: set hypervisor.accelerator = "auto" or "tcg"')  # fmt: skip
    return AccelReport(Accel.TCG, f"not for {arch} guests",
                       f"an {arch} guest on an {host} host is emulated")  # fmt: skip


def probe_argv(binary: str, kernel: Path, arch: str) -> list[str]:
    """QEMU booting ``kernel`` of ``arch`` under KVM on its first machine, no root fs."""
    guest = target(arch)
    return [
        binary, "-no-user-config", "-nodefaults", "-display", "none",
        "-machine", machine_arg(guest.machines[0], Accel.KVM, memory_backend=False),
        "-accel", "kvm", "-cpu", "host", "-m", "128",
        "-kernel", str(kernel), "-append", f"console={guest.console} panic=-1 quiet",
        "-serial", "stdio", "-no-reboot",
    ]  # fmt: skip


async def probe_kvm(
    binary: str, kernel: Path, work_dir: Path, arch: str = arches.AMD64
) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM without a root fs; usable iff QEMU ends by itself in time."""
    log = work_dir / "kvm-probe.log"
    log.unlink(missing_ok=True)
    argv = probe_argv(binary, kernel, arch)
    child = await Child.launch(ChildSpec(name="kvm-probe", argv=argv, log_path=log))
    try:
        code = await asyncio.wait_for(child.wait(), PROBE_TIMEOUT)
    except TimeoutError:
        await child.stop(grace=0.5)
        return False, f"guest kernel did not reach its first panic within {PROBE_TIMEOUT:g} s"
    finally:
        await child.stop(grace=0.5)
        text = log.read_text(errors="replace") if log.exists() else ""
        log.unlink(missing_ok=True)
    if code != 0:
        lines = [ln for ln in text.splitlines() if "qemu" in ln.lower()]
        return False, (lines[-1] if lines else f"QEMU exited {code}").strip()
    return True, "a guest kernel ran under KVM"


CACHE_ENTRIES = 16


def _cache_key(binary: str, kernel: Path) -> str:
    qemu = Path(binary).stat()
    k = kernel.stat()
    raw = f"{binary}:{qemu.st_size}:{qemu.st_mtime_ns}:{platform.release()}:{kernel}:{k.st_size}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


async def detect(
    wanted: str, binary: str, kernel: Path, cache_dir: Path, arch: str = ""
) -> AccelReport:
    """Choose the accelerator for a guest of ``arch`` (default: the host's) running
    ``kernel`` (see module docstring), using and filling the cache."""
    arch = arch or arches.host().name
    if wanted == "tcg":
        return decide(wanted, (True, ""), None)
    if arch != arches.host().name:
        return foreign(wanted, arch)
    device = kvm_device()
    if not device[0]:
        return decide(wanted, device, None)
    resolved = shutil.which(binary) or binary
    cache = cache_dir / "accel.json"
    key = _cache_key(resolved, kernel)
    entries: dict[str, object] = {}
    try:
        loaded = json.loads(cache.read_text()).get("entries", {})
        entries = loaded if isinstance(loaded, dict) else {}
        saved = entries[key]
        report = decide(wanted, device, (saved["usable"], saved["reason"]))  # type: ignore[index]
        return AccelReport(report.accel, report.kvm, report.reason, cached=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    probe = await probe_kvm(resolved, kernel, cache_dir, arch)
    # One entry per (QEMU, host kernel, guest kernel): sandboxes of different image variants
    # must not evict each other's result (each probe costs seconds). The newest few are kept.
    entries = {k: v for k, v in entries.items() if k != key}
    entries = dict(list(entries.items())[-(CACHE_ENTRIES - 1) :])
    entries[key] = {"usable": probe[0], "reason": probe[1]}
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"entries": entries}))
    os.replace(tmp, cache)
    return decide(wanted, device, probe)


def report_json(report: AccelReport) -> dict[str, object]:
    data = asdict(report)
    data["accel"] = report.accel.value
    return data


def host_tsc_khz(cpuinfo: str | None = None) -> int:
    """The host's TSC rate in kHz (what a TCG guest's TSC runs at), 0 if unknown."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                return int(float(value) * 1000)
            except ValueError:
                return 0
    return 0
