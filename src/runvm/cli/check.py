"""`runvm check`: can this host run runvm, and with what?

Reports the accelerator (KVM usable / present but unusable / absent -> TCG), QEMU and
virtiofsd versions, vhost-vsock, KSM and the guest image; then, for each guest architecture
(amd64, arm64), whether this host runs it and how (KVM or TCG) or what it lacks. Exits 0
when guests of the configured architecture (``hypervisor.arch``, ``auto``: the host's) can
run, 1 with one sentence per missing piece saying what to install or run otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from runvm import arch as arches
from runvm import config as cfg
from runvm.errors import ImageError, RunvmError
from runvm.hypervisor.accel import detect, kvm_device, report_json
from runvm.hypervisor.qemu.machines import binary_name, target

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="check that this host can run runvm")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=run)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else f"exit {out.returncode}"


def _ksm() -> dict[str, Any]:
    base = Path("/sys/kernel/mm/ksm")
    if not base.exists():
        return {"available": False}
    run = (base / "run").read_text().strip()
    return {
        "available": True,
        "run": int(run),
        "pages_sharing": int((base / "pages_sharing").read_text()),
    }


def _guest(config: cfg.RunvmConfig, arch: str) -> tuple[dict[str, Any], list[str]]:
    """What a guest of ``arch`` runs with here, and what it lacks (sentences with the fix)."""
    from runvm.runtime.guestarch import for_arch
    from runvm.runtime.guestimage import resolve_guest_files

    missing: list[str] = []
    guest: dict[str, Any] = {}
    qemu = shutil.which(binary_name(config.hypervisor.path, arch))
    guest["qemu"] = {"path": qemu, "version": _version([qemu, "--version"]) if qemu else None}
    if not qemu:
        missing.append(f"QEMU is missing: install the Debian package {target(arch).package}")
    try:
        files = resolve_guest_files(for_arch(config, arches.get(arch)))
        guest["image"] = {"kernel": str(files.kernel), "initrd": str(files.initrd)}
    except ImageError as exc:
        files = None
        guest["image"] = {"error": str(exc)}
        flag = "" if arch == arches.host().name else f" --arch {arch}"
        missing.append(f"no guest image: run `runvm image build{flag}`")
    except RunvmError as exc:  # the configuration rules it out (explicit guest files)
        files = None
        guest["image"] = {"error": str(exc)}
        missing.append(str(exc))
    if qemu and files:
        accel = asyncio.run(detect(config.hypervisor.accelerator, qemu, files.kernel,
                                   Path(config.runtime.cache_dir), arch))  # fmt: skip
        guest["accelerator"] = report_json(accel)
    else:
        guest["accelerator"] = {"accel": None, "reason": "needs QEMU and a guest image to probe"}
    guest["ok"] = not missing
    guest["missing"] = missing
    return guest, missing


def gather(config: cfg.RunvmConfig) -> tuple[dict[str, Any], list[str]]:
    """The report and the list of problems that stop runvm from running. Guests of the
    configured architecture (``auto``: the host's) must be able to run; the report says for
    each other architecture whether and how its guests run."""
    problems: list[str] = []
    report: dict[str, Any] = {}
    default = arches.resolve(config.hypervisor.arch).name
    guests = {arch: _guest(config, arch) for arch in arches.ARCHES}
    report["arch"] = default
    report["guests"] = {arch: guest for arch, (guest, _) in guests.items()}
    mine, problems = guests[default]
    report.update(qemu=mine["qemu"], image=mine["image"], accelerator=mine["accelerator"])
    fsd = VIRTIOFSD if os.access(VIRTIOFSD, os.X_OK) else None
    report["virtiofsd"] = {"path": fsd, "version": _version([fsd, "--version"]) if fsd else None}
    if not fsd:
        problems.append("virtiofsd is missing: install the Debian package qemu-system-common")
    report["vhost_vsock"] = os.path.exists("/dev/vhost-vsock")
    report["agent_channel"] = "vsock" if report["vhost_vsock"] else "virtio-serial"
    report["ksm"] = _ksm()
    dev_ok, dev_reason = kvm_device()
    report["kvm_device"] = {"usable": dev_ok, "reason": dev_reason}
    report["ok"] = not problems
    report["problems"] = problems
    return report, problems


def _guest_line(arch: str, guest: dict[str, Any]) -> str:
    if guest["missing"]:
        return f"{arch}: cannot run here: " + "; ".join(guest["missing"])
    acc = guest["accelerator"]
    return f"{arch}: {acc.get('accel')} (KVM {acc.get('kvm', '?')}: {acc.get('reason')})"


def run(args: argparse.Namespace) -> int:
    config = cfg.load(args.config)
    report, problems = gather(config)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        acc = report["accelerator"]
        print(f"accelerator:  {acc.get('accel')} (KVM {acc.get('kvm', '?')}: {acc.get('reason')})")
        print(f"qemu:         {report['qemu']['version']} ({report['qemu']['path']})")
        print(f"virtiofsd:    {report['virtiofsd']['version']}")
        print(f"vhost-vsock:  {'yes' if report['vhost_vsock'] else 'no'} "
              f"(agent channel: {report['agent_channel']})")  # fmt: skip
        ksm = report["ksm"]
        print(f"ksm:          {'run=' + str(ksm['run']) if ksm['available'] else 'not available'}")
        image = report["image"]
        print(f"guest image:  {image.get('error') or image['kernel'] + ', ' + image['initrd']}")
        for i, (arch, guest) in enumerate(report["guests"].items()):
            print(f"{'' if i else 'guests:':14}{_guest_line(arch, guest)}")
        for problem in problems:
            print(f"runvm cannot run: {problem}")
    return 1 if problems else 0
