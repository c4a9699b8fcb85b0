"""Start-up benchmark: `runvm run` of busybox `true` against its floor and against runc.

Measured in one run, interleaved, N times each (medians printed):
- runvm:  `runvm run` of a busybox bundle running `true` (CLI, wall clock, end to end);
- floor:  a bare QEMU boot of the same kernel with a trivial busybox initramfs that powers
          off at once (same accelerator and machine), the least any VM runtime can take;
- runc:   `runc run` of the same bundle;
- phases: one more runvm start through the Python API, split into QEMU start, kernel,
          Python start, agent setup, host handshake, container create, run to exit, teardown.

With --matrix, instead: each guest kernel (debian, minimal) on each machine type (pc, q35,
microvm), and knobs on the minimal kernel on pc (bzImage instead of the PVH vmlinux, a 16 or 64 MiB
TCG translation cache instead of 32), interleaved: a cold start through the Python API
(sandbox up, container run to exit, teardown), QEMU start to agent ready, and QEMU's PSS
with the sandbox up and the container created.

With --arches, instead: each guest architecture (the host's and the other, emulated: arm64 on
virt on an amd64 host) on the minimal kernel, interleaved: `runvm run` end to end (CLI), a cold
start through the Python API, QEMU start to agent ready, QEMU's PSS with the container created.

With --ctr, instead: `ctr run --rm` of busybox `true` through one private containerd with
runc, runvm cold, runvm cloned from a template and runvm handed a VM by the cache daemon
(bench/ctrstart.py), ratios to runc.

With --ctr --phases, also each runvm configuration's start split into the shim's traced
marks (bench/ctrstart.py).

Usage (root, after scripts/install):
    python3 bench/start.py [--runs 7] [--matrix | --arches | --ctr [--phases]]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runvm import arch as arches
from runvm import config as cfg
from runvm import image
from runvm.hypervisor.accel import detect
from runvm.hypervisor.base import Accel
from runvm.image import cpio
from runvm.image.busybox import make_bundle
from runvm.runtime.container import Container
from runvm.runtime.sandbox import Sandbox, SandboxOptions

FLOOR_INIT = b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n"


def floor_initrd(path: Path) -> None:
    entries = [
        cpio.directory("bin"),
        cpio.directory("dev"),
        cpio.chardev("dev/console", 5, 1),
        cpio.regular("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755),
        cpio.regular("init", FLOOR_INIT, 0o755),
    ]
    buf = io.BytesIO()
    cpio.write_newc(entries, buf)
    path.write_bytes(cpio.zstd(buf.getvalue(), 10))


def floor_boot(kernel: Path, initrd: Path, accel: Accel) -> float:
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel is Accel.KVM else [
        "-accel", "tcg,tb-size=64", "-cpu", "max"]  # fmt: skip
    argv = [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
        "-M", "pc", *accel_args, "-m", "256M", "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet random.trust_cpu=on", "-no-reboot",
        "-serial", "none",
    ]  # fmt: skip
    start = time.monotonic()
    subprocess.run(argv, check=True, timeout=120)
    return time.monotonic() - start


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{argv[:3]} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def phases(config: cfg.RunvmConfig, bundle: Path, cid: str) -> dict[str, float]:
    t0 = time.monotonic()
    sandbox = await Sandbox.start(cid, config, SandboxOptions(hostname=cid))
    try:
        t_ready = time.monotonic()
        d = sandbox.details
        assert d is not None and sandbox.agent is not None and sandbox.vm is not None
        container = await Container.create(sandbox, cid, bundle, stdin=False)
        t_created = time.monotonic()
        pss = pss_mib(sandbox.vm.pid)
        await container.start()
        await sandbox.agent.wait_process(cid)
        t_exited = time.monotonic()
        await container.remove()
    finally:
        t_stop = time.monotonic()
        await sandbox.stop()
    t_end = time.monotonic()
    steps = sandbox.timings
    guest_boot = d.init_boottime_ms / 1000  # kernel until /init's first Python line
    python_start = d.serving_boottime_ms / 1000 - guest_boot  # imports + PID 1 setup
    agent_ready = steps["agent-ready"]
    return {
        "host setup (dirs, virtiofsd)": steps.get("virtio-fs", 0) + steps.get("run-dir", 0),
        "QEMU start (to QMP)": steps["qemu-start"],
        "kernel boot (guest clock)": guest_boot,
        "Python + agent setup (guest clock)": python_start,
        "handshake seen by host (rest)": max(0.0, agent_ready - guest_boot - python_start),
        "sandbox create": steps["guest-details"] + steps["create-sandbox"],
        "container create": t_created - t_ready,
        "start to exit": t_exited - t_created,
        "teardown": (t_stop - t_exited) + (t_end - t_stop),
        "total": t_end - t0,
        "QEMU start to agent ready": steps["qemu-start"] + agent_ready,
        "QEMU PSS (MiB)": pss,
    }


MATRIX: list[tuple[str, dict[str, Any]]] = [
    *[(f"{kernel:7} {machine:7}", {"image": {"variant": kernel},
                                    "hypervisor": {"machine": machine}})
      for kernel in ("debian", "minimal") for machine in ("pc", "q35", "microvm")],
    ("minimal pc      bzImage", {"image": {"variant": "minimal", "boot": "bzimage"}}),
    *[(f"minimal pc      tb-size={mib}", {"image": {"variant": "minimal"},
                                           "hypervisor": {"tcg_tb_size_mib": mib}})
      for mib in (16, 64)],
]  # fmt: skip


def matrix(runs: int, tmp: Path, bundle: Path) -> None:
    """Every MATRIX configuration, interleaved ``runs`` times; prints medians."""
    rows: dict[str, list[dict[str, float]]] = {label: [] for label, _ in MATRIX}
    for i in range(runs):
        for label, overrides in MATRIX:
            tables: dict[str, dict[str, object]] = {
                "runtime": {"state_root": str(tmp / "state"), "cache_dir": str(tmp / "c")},
                "factory": {"enable": False},  # cold starts
            }
            tables.update(overrides)
            rows[label].append(asyncio.run(phases(cfg.parse(tables), bundle, f"m{i}")))
    print(f"{runs} interleaved runs each, medians; the shipped default is minimal pc")
    print(
        f"{'kernel  machine knob':28}{'cold start s':>14}{'QEMU->agent s':>15}{'QEMU PSS MiB':>14}"
    )
    for label, results in rows.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(
            f"{label:28}{med['total']:14.2f}{med['QEMU start to agent ready']:15.2f}"
            f"{med['QEMU PSS (MiB)']:14.0f}"
        )


def true_bundle(path: Path, arch: str = "") -> Path:
    """A busybox bundle of ``arch`` running ``true`` without a terminal."""
    make_bundle(path, ["true"], arch=arch)
    spec = json.loads((path / "config.json").read_text())
    spec["process"]["terminal"] = False
    (path / "config.json").write_text(json.dumps(spec))
    return path


def compare_arches(runs: int, tmp: Path) -> None:
    """The host's architecture against the other one, interleaved ``runs`` times."""
    names = [arches.host().name, *(a for a in arches.ARCHES if a != arches.host().name)]
    tables: dict[str, dict[str, object]] = {
        "runtime": {"state_root": str(tmp / "state"), "cache_dir": str(tmp / "c")},
        "factory": {"enable": False},  # cold starts
        "image": {"variant": "minimal"},
    }
    conf = tmp / "runvm.toml"
    conf.write_text(f'[runtime]\nstate_root = "{tmp / "state"}"\ncache_dir = "{tmp / "c"}"\n'
                    '[factory]\nenable = false\n[image]\nvariant = "minimal"\n')  # fmt: skip
    env = {**os.environ, "RUNVM_CONFIG": str(conf)}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for i in range(runs):
        for name in names:
            bundle = true_bundle(tmp / f"bundle-{name}", name) if i == 0 else tmp / f"bundle-{name}"
            run = [sys.executable, "-m", "runvm.cli.main", "run", "--bundle", str(bundle)]
            wall = timed([*run, f"a{i}-{name}"], env)  # hypervisor.arch auto: the program's
            config = cfg.parse({**tables, "hypervisor": {"arch": name}})
            rows[name].append({"runvm run": wall, **asyncio.run(phases(config, bundle, f"p{i}"))})
    print(f"{runs} interleaved cold starts each, medians; minimal kernel, TCG unless KVM says")
    print(f"{'guest':18}{'runvm run s':>13}{'cold start s':>14}{'QEMU->agent s':>15}"
          f"{'QEMU PSS MiB':>14}")  # fmt: skip
    for name, results in rows.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        machine = "virt" if name == arches.ARM64 else "pc"
        print(f"{name + ' ' + machine:18}{med['runvm run']:13.2f}{med['total']:14.2f}"
              f"{med['QEMU start to agent ready']:15.2f}{med['QEMU PSS (MiB)']:14.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--matrix", action="store_true", help="kernels x machines x knobs")
    parser.add_argument("--arches", action="store_true", help="the host's guests against arm64")
    parser.add_argument("--ctr", action="store_true", help="ctr run: runc, cold, templated, cached")
    parser.add_argument("--phases", action="store_true", help="with --ctr: each start's marks")
    parser.add_argument("--only", default="", help="with --ctr: e.g. default,templated")
    args = parser.parse_args()
    if args.ctr:
        import ctrstart

        marks: ctrstart.Phases | None = {} if args.phases else None
        ctrstart.report(ctrstart.run(args.runs, marks, args.only))
        if marks is not None:
            ctrstart.report_phases(marks)
        return
    if os.geteuid() != 0 or not shutil.which("runc"):
        sys.exit("bench/start.py needs root and runc (scripts/install)")
    info = image.current(variant=cfg.load().image.variant)
    with tempfile.TemporaryDirectory(prefix="runvm-bench-") as tmp_s:
        tmp = Path(tmp_s)
        # Cold boots: no template (the defaults make one on first use) and no cache daemon.
        config = cfg.RunvmConfig(
            runtime=cfg.RuntimeConfig(state_root=str(tmp / "state"), cache_dir=str(tmp / "c")),
            factory=cfg.FactoryConfig(enable=False),
        )
        report = asyncio.run(detect("auto", "qemu-system-x86_64", Path(info.kernel), tmp / "c"))
        conf = tmp / "runvm.toml"
        conf.write_text(f'[runtime]\nstate_root = "{tmp / "state"}"\ncache_dir = "{tmp / "c"}"\n'
                        "[factory]\nenable = false\n")  # fmt: skip
        env = {**os.environ, "RUNVM_CONFIG": str(conf)}
        if args.arches:
            compare_arches(args.runs, tmp)
            return
        bundle = true_bundle(tmp / "bundle")
        if args.matrix:
            matrix(args.runs, tmp, bundle)
            return
        floor = tmp / "floor.img"
        floor_initrd(floor)
        results: dict[str, list[float]] = {"runvm": [], "floor": [], "runc": []}
        breakdown: list[dict[str, float]] = []
        runvm = [sys.executable, "-m", "runvm.cli.main", "run", "--bundle", str(bundle)]
        for i in range(args.runs):
            results["floor"].append(floor_boot(Path(info.kernel), floor, report.accel))
            results["runvm"].append(timed([*runvm, f"bench-{i}"], env))
            results["runc"].append(
                timed(["runc", "--root", str(tmp / "runc"), "run", "-b", str(bundle), f"rc-{i}"])
            )
            breakdown.append(asyncio.run(phases(config, bundle, f"phase-{i}")))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"accelerator: {report.sentence()}; {args.runs} interleaved runs each, medians")
    for name, values in results.items():
        print(f"  {name:6} {med[name]:7.3f} s   (min {min(values):.3f}, max {max(values):.3f})")
    print(f"  runvm / floor = {med['runvm'] / med['floor']:.2f}")
    print(f"  runvm / runc  = {med['runvm'] / med['runc']:.1f}")
    print("runvm phases (median s):")
    for key in breakdown[0]:
        print(f"  {key:38} {statistics.median(b[key] for b in breakdown):7.3f}")


if __name__ == "__main__":
    main()
