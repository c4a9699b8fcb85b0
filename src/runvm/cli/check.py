"""`runvm check`: can this host run runvm, and with what?

Reports the accelerator (KVM usable / present but unusable / absent -> TCG), QEMU and
virtiofsd versions, vhost-vsock, KSM and the guest image. Exits 0 when runvm can run,
1 with one sentence per missing piece saying what to install or run otherwise.
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

from runvm import config as cfg
from runvm.errors import RunvmError
from runvm.hypervisor.accel import detect, kvm_device, report_json

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


def gather(config: cfg.RunvmConfig) -> tuple[dict[str, Any], list[str]]:
    """The report and the list of problems that stop runvm from running."""
    problems: list[str] = []
    report: dict[str, Any] = {}
    qemu = shutil.which(config.hypervisor.path)
    report["qemu"] = {"path": qemu, "version": _version([qemu, "--version"]) if qemu else None}
    if not qemu:
        problems.append("QEMU is missing: install the Debian package qemu-system-x86")
    fsd = VIRTIOFSD if os.access(VIRTIOFSD, os.X_OK) else None
    report["virtiofsd"] = {"path": fsd, "version": _version([fsd, "--version"]) if fsd else None}
    if not fsd:
        problems.append("virtiofsd is missing: install the Debian package qemu-system-common")
    report["vhost_vsock"] = os.path.exists("/dev/vhost-vsock")
    report["agent_channel"] = "vsock" if report["vhost_vsock"] else "virtio-serial"
    report["ksm"] = _ksm()
    dev_ok, dev_reason = kvm_device()
    report["kvm_device"] = {"usable": dev_ok, "reason": dev_reason}
    try:
        from runvm.runtime.guestimage import resolve_guest_files

        files = resolve_guest_files(config)
        report["image"] = {"kernel": str(files.kernel), "initrd": str(files.initrd)}
    except RunvmError as exc:
        files = None
        report["image"] = {"error": str(exc)}
        problems.append("no guest image: run `runvm image build`")
    if qemu and files:
        accel = asyncio.run(
            detect(
                config.hypervisor.accelerator, qemu, files.kernel, Path(config.runtime.cache_dir)
            )
        )
        report["accelerator"] = report_json(accel)
    else:
        report["accelerator"] = {"accel": None, "reason": "needs QEMU and a guest image to probe"}
    report["ok"] = not problems
    report["problems"] = problems
    return report, problems


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
        for problem in problems:
            print(f"runvm cannot run: {problem}")
    return 1 if problems else 0
