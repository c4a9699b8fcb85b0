"""Storage benchmark: fio inside a runvm container (rootfs and a volume) against the host.

One run, same fio jobs everywhere (buffered I/O, fsync at the end of writes):
- host:          fio on a host directory (what a runc container gets on a bind mount);
- runvm rootfs:  fio in the container's root filesystem (virtio-fs share of the bundle);
- runvm volume:  fio in a bind-mounted host directory (virtio-fs share of the volume).
Prints MB/s (sequential, 1 MiB blocks) and IOPS (random, 4 KiB blocks) and runvm/host ratios.

Usage (root, after scripts/install): python3 bench/storage.py [--size 64] [--cache auto]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hostbin import copy_program  # bench/ is the script's directory

from runvm.image.busybox import make_bundle

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
    report = json.loads(output[output.index("{") :])
    out = {}
    for job in report["jobs"]:
        side = job["write"] if "write" in job["jobname"] else job["read"]
        out[job["jobname"]] = side["iops"] if "rand" in job["jobname"] else side["bw_bytes"] / 1e6
    return out


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
                        f'[storage]\nvirtiofs_cache = "{args.cache}"\n')  # fmt: skip
        env = {**os.environ, "RUNVM_CONFIG": str(conf)}
        host_dir, volume = tmp / "host", tmp / "volume"
        host_dir.mkdir()
        volume.mkdir()
        results: dict[str, dict[str, float]] = {}
        r = subprocess.run(fio_args(str(host_dir), args.size), capture_output=True, text=True,
                           check=True)  # fmt: skip
        results["host"] = figures(r.stdout)
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
        print(f"fio, {args.size} MiB per job, buffered + fsync, virtiofs cache={args.cache}")
        print(f"{'':14}" + "".join(f"{name:>14}" for name, _, _ in JOBS))
        for where, values in results.items():
            print(f"{where:14}" + "".join(f"{values[n]:14.1f}" for n, _, _ in JOBS))
        for where in ("runvm rootfs", "runvm volume"):
            ratios = [results[where][n] / results["host"][n] for n, _, _ in JOBS]
            print(f"{where + '/host':22}" + "".join(f"{x:10.3f}" for x in ratios))
        print("(seq: MB/s, rand: IOPS)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
