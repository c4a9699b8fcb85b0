"""Storage benchmark: fio inside a runvm container (rootfs and a volume) against the host.

One run, same fio jobs everywhere (buffered I/O, fsync at the end of writes):
- host:          fio on a host directory (what a runc container gets on a bind mount);
- floor:         fio in a bare QEMU guest (same kernel, memory and accelerator as runvm's)
                 on a virtio-fs mount served by a virtiofsd with runvm's options: what the
                 transport itself allows, with no runtime around it;
- runvm rootfs:  fio in the container's root filesystem (virtio-fs share of the bundle);
- runvm volume:  fio in a bind-mounted host directory (virtio-fs share of the volume).
Prints MB/s (sequential, 1 MiB blocks) and IOPS (random, 4 KiB blocks), then ratios to the
host and to the floor.

Usage (root, after scripts/install): python3 bench/storage.py [--size 64] [--cache auto]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from runvm import config
from runvm.hypervisor.accel import detect
from runvm.hypervisor.base import Accel
from runvm.image.busybox import make_bundle
from runvm.image.hostbin import copy_program
from runvm.runtime.guestimage import resolve_guest_files

JOBS = [  # name, fio rw mode, block size
    ("seq-write", "write", "1M"),
    ("seq-read", "read", "1M"),
    ("rand-write", "randwrite", "4k"),
    ("rand-read", "randread", "4k"),
]


def fio_args(directory: str, size_mib: int) -> list[str]:
    args = ["fio", "--output-format=json", f"--directory={directory}", f"--size={size_mib}M",
            "--ioengine=psync", "--end_fsync=1", "--runtime=10", "--time_based=0"]  # fmt: skip
    for name, mode, bs in JOBS:
        args += [f"--name={name}", f"--rw={mode}", f"--bs={bs}", "--stonewall",
                 f"--filename={name.split('-')[0]}.dat"]  # fmt: skip
    return args


def figures(output: str) -> dict[str, float]:
    """MB/s for sequential jobs, IOPS for random ones."""
    report, _ = json.JSONDecoder().raw_decode(output[output.index("{") :])
    out = {}
    for job in report["jobs"]:
        side = job["write"] if "write" in job["jobname"] else job["read"]
        out[job["jobname"]] = side["iops"] if "rand" in job["jobname"] else side["bw_bytes"] / 1e6
    return out


FLOOR_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t virtiofs floor /mnt
cd /mnt && {fio} 2>&1
/bin/busybox poweroff -f
"""


def floor_run(
    tmp: Path, kernel: Path, directory: Path, size_mib: int, cache: str, accel: Accel
) -> str:
    """fio in a bare QEMU guest on a virtio-fs mount of ``directory``; returns fio's output.
    ``kernel`` must have virtio-fs built in (the minimal one): this initramfs has no modules."""
    from runvm.image import cpio
    from runvm.storage import virtiofsd

    root = tmp / "floor-root"
    for name in ("bin", "proc", "mnt", "dev"):
        (root / name).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    copy_program(root, "fio")
    (root / "init").write_text(FLOOR_INIT.format(fio=" ".join(fio_args("/mnt", size_mib))))
    (root / "init").chmod(0o755)
    buf = io.BytesIO()
    cpio.write_newc([*cpio.entries_from_tree(root), cpio.chardev("dev/console", 5, 1)], buf)
    initrd = tmp / "floor.img"
    initrd.write_bytes(cpio.zstd(buf.getvalue(), 3))
    sock = tmp / "floor-fs.sock"
    fsd = subprocess.Popen(virtiofsd.argv(sock, directory, cache=cache),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while not sock.exists():
            time.sleep(0.05)
        accel_args = ["-accel", "kvm", "-cpu", "host"] if accel is Accel.KVM else [
            "-accel", "tcg,tb-size=64", "-cpu", "max"]  # fmt: skip
        argv = [
            "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
            "-M", "pc,memory-backend=mem", *accel_args, "-m", "256M",
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet random.trust_cpu=on", "-no-reboot",
            "-serial", "stdio", "-chardev", f"socket,id=fs,path={sock}",
            "-device", "vhost-user-fs-pci,chardev=fs,tag=floor,queue-size=1024",
        ]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, check=True,
                              timeout=600).stdout  # fmt: skip
    finally:
        fsd.kill()
        fsd.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="MiB per job file")
    parser.add_argument("--cache", default="auto", help="virtiofs_cache for runvm")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rvbs-", dir="/tmp"))
    state = Path(tempfile.mkdtemp(prefix="rvs-", dir="/tmp"))
    try:
        conf = tmp / "runvm.toml"
        conf.write_text(f'[runtime]\nstate_root = "{state}"\n'
                        f'[storage]\nvirtiofs_cache = "{args.cache}"\n'
                        '[image]\nvariant = "minimal"\n')  # fmt: skip
        env = {**os.environ, "RUNVM_CONFIG": str(conf)}
        host_dir, volume = tmp / "host", tmp / "volume"
        host_dir.mkdir()
        volume.mkdir()
        results: dict[str, dict[str, float]] = {}
        r = subprocess.run(fio_args(str(host_dir), args.size), capture_output=True, text=True,
                           check=True)  # fmt: skip
        results["host"] = figures(r.stdout)
        files = resolve_guest_files(config.load(conf))
        accel = asyncio.run(detect("auto", "qemu-system-x86_64", files.kernel,
                                   Path("/var/cache/runvm"))).accel  # fmt: skip
        floor_dir = tmp / "floor"
        floor_dir.mkdir()
        output = floor_run(tmp, files.kernel, floor_dir, args.size, args.cache, accel)
        results["floor"] = figures(output)
        for where, directory in (("runvm rootfs", "/work"), ("runvm volume", "/vol")):
            bundle = tmp / where.replace(" ", "-")
            script = f"mkdir -p /work && exec {' '.join(fio_args(directory, args.size))}"
            spec = make_bundle(bundle, ["sh", "-c", script])
            copy_program(bundle / "rootfs", "fio")
            spec["root"]["readonly"] = False
            spec["mounts"].append({"destination": "/vol", "type": "bind", "source": str(volume),
                                   "options": ["rbind", "rw"]})  # fmt: skip
            (bundle / "config.json").write_text(json.dumps(spec))
            r = subprocess.run(["runvm", "--root", str(tmp / "root"), "run", "--bundle",
                                str(bundle), "bench-fio"], capture_output=True, text=True,
                               env=env, check=True)  # fmt: skip
            results[where] = figures(r.stdout)
        print(
            f"fio, {args.size} MiB per job, buffered + fsync, virtiofs cache={args.cache}, "
            f"minimal guest kernel, {accel.value}"
        )
        print(f"{'':14}" + "".join(f"{name:>14}" for name, _, _ in JOBS))
        for where, values in results.items():
            print(f"{where:14}" + "".join(f"{values[n]:14.1f}" for n, _, _ in JOBS))
        for where, base in (("runvm rootfs", "host"), ("runvm volume", "host"),
                            ("runvm rootfs", "floor"), ("runvm volume", "floor")):  # fmt: skip
            ratios = [results[where][n] / results[base][n] for n, _, _ in JOBS]
            print(f"{where + '/' + base:22}" + "".join(f"{x:10.3f}" for x in ratios))
        print("(seq: MB/s, rand: IOPS)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
