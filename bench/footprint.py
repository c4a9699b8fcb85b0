"""Memory footprint per pod, the shape of Kata's memory-footprint metric.

N busybox `tail -f /dev/null` containers started through one private containerd with the
runvm shim, left to settle, then the PSS of every QEMU, virtiofsd and runvm shim summed and
divided by N. Configurations: runvm's defaults as the README leaves them (clones of a
template made on first use, in a private templates directory here), cold boots and clones of
a template `runvm factory init` made, from the initramfs or from the DAX root image
(image.dax), each without and with the KSM throttler running (`runvm ksm serve`, kicked by
every new sandbox). A configuration is "default", or "cold" or "templated" plus any of
"+dax", "+9p" (the rootfs over 9p: no virtio-fs, so a cold guest's RAM is private and KSM can
merge it) and "+shared" (one shim for the namespace, `[shim] scope = "namespace"`). The
guest memory size is runvm's default unless --memory says otherwise. The "TCG" column is the
part of QEMU's PSS that is its translation cache (the anonymous executable mapping), which a
KVM guest does not have.

Usage (root, after scripts/install):
    python3 bench/footprint.py [--count 20] [--settle 60] [--machine q35] [--configs cold,...]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctrstart import IMAGE, PrivateContainerd, daemon_env  # bench/ is the script's directory

from runvm import config as cfg
from runvm.image.ociarchive import busybox_archive

NAMES = ("qemu-system", "virtiofsd", "containerd-shim-runvm")


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tcg_kib(pid: int) -> int:
    """PSS of QEMU's TCG translation cache: its anonymous read-write-execute mapping."""
    total, in_cache = 0, False
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            first, *rest = line.split()
            if not first.endswith(":"):
                in_cache = bool(rest) and rest[0] == "rwxp" and len(rest) == 4
            elif in_cache and first == "Pss:":
                total += int(rest[0])
    except OSError:
        pass
    return total


def helpers(marker: str) -> dict[str, list[int]]:
    """PIDs of runvm's host processes whose command line mentions ``marker``."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    found: dict[str, list[int]] = {name: [] for name in NAMES}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        program = " ".join(args.split()[:2])  # the shim runs as "python3 .../containerd-shim-..."
        for name in NAMES:
            if name in program and (marker in args or name == "containerd-shim-runvm"):
                found[name].append(int(pid))
                break
    return found


def measure(daemon: PrivateContainerd, conf: Path, count: int, settle: float, tag: str,
            marker: str) -> dict[str, float]:  # fmt: skip
    args = ["--runtime", "io.containerd.runvm.v2", "--runtime-config-path", str(conf)]
    started = time.monotonic()
    try:
        for i in range(count):
            r = daemon.ctr("run", "-d", *args, IMAGE, f"{tag}{i}", "tail", "-f", "/dev/null")
            if r.returncode != 0:
                sys.exit(f"{tag}{i}: {r.stderr.decode()[-400:]}")
        boot = (time.monotonic() - started) / count
        time.sleep(settle)
        pids = helpers(marker)
        per = {name: sum(pss_kib(p) for p in ps) / 1024 / count for name, ps in pids.items()}
        per["total"] = sum(per.values())
        per["TCG"] = sum(tcg_kib(p) for p in pids["qemu-system"]) / 1024 / count
        per["start s"] = boot
        per["processes"] = sum(len(p) for p in pids.values())
        return per
    finally:
        for i in range(count):
            daemon.ctr("task", "kill", "-s", "KILL", f"{tag}{i}")
        time.sleep(2)
        for i in range(count):
            daemon.ctr("task", "rm", "-f", f"{tag}{i}")
            daemon.ctr("container", "rm", f"{tag}{i}")


CONFIGS = ("default", "cold", "templated", "cold+dax", "templated+dax")
MODIFIERS = ("dax", "9p", "shared")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--settle", type=float, default=60.0, help="seconds before measuring")
    parser.add_argument("--memory", type=int, default=cfg.HypervisorConfig().memory_mib)
    parser.add_argument("--tcg-tb-size", type=int, default=cfg.HypervisorConfig().tcg_tb_size_mib,
                        help="TCG translation cache (MiB)")  # fmt: skip
    parser.add_argument("--machine", default=cfg.HypervisorConfig().machine, help="pc, q35, ...")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--ksm", choices=("both", "off", "on"), default="both")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) on SIGTERM
    chosen = args.configs.split(",")
    if unknown := [c for c in chosen if c.split("+")[0] not in ("default", "cold", "templated")
                   or not set(c.split("+")[1:]) <= set(MODIFIERS)]:  # fmt: skip
        sys.exit(f"unknown configurations {unknown}: default, or cold or templated plus any of "
                 f"{', '.join('+' + m for m in MODIFIERS)}")  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="rvf-", dir="/tmp"))
    shm = Path(tempfile.mkdtemp(prefix="rvf-", dir="/dev/shm"))  # the default's tmpfs
    state = base / "s"
    state.mkdir()
    common = (f'[runtime]\nstate_root = "{state}"\ncache_dir = "{state}/cache"\n'
              f"[hypervisor]\nmemory_mib = {args.memory}\n"
              f'tcg_tb_size_mib = {args.tcg_tb_size}\nmachine = "{args.machine}"\n')  # fmt: skip
    confs: dict[str, Path] = {}
    for name in chosen:
        text = common
        if "dax" in name:
            text += "[image]\ndax = true\n"
        if "+9p" in name:
            text += '[storage]\nshared_fs = "9p"\n'
        if "+shared" in name:
            text += '[shim]\nscope = "namespace"\n'
        if name.startswith("templated"):
            text += f'[factory]\nenable = true\ndir = "{base}/factory-{name}"\n'
        elif name.startswith("cold"):
            text += "[factory]\nenable = false\n"
        else:  # the defaults, but the first-use template where the run removes it
            text += f'[factory]\ntemplates_dir = "{shm}/templates"\n'
        confs[name] = base / f"{name}.toml"
        confs[name].write_text(text)
    daemon = PrivateContainerd(base, daemon_env())
    runvm = [sys.executable, "-m", "runvm.cli.main"]
    results: dict[str, dict[str, float]] = {}
    templated = [c for n, c in confs.items() if n.startswith("templated")]  # one factory each
    try:
        daemon.ctr("image", "import", str(busybox_archive(base / "busybox.tar", IMAGE)))
        for conf in templated:
            subprocess.run([*runvm, "--config", str(conf), "factory", "init"], check=True)
        for ksm in {"both": (False, True), "off": (False,), "on": (True,)}[args.ksm]:
            throttler = None
            if ksm:
                throttler = subprocess.Popen([*runvm, "ksm", "serve"])
                time.sleep(1)
            try:
                for i, (name, conf) in enumerate(confs.items()):
                    label = f"{name}{' + KSM' if ksm else ''}"
                    results[label] = measure(daemon, conf, args.count, args.settle,
                                             f"c{i}k{int(ksm)}-", str(state))  # fmt: skip
            finally:
                if throttler is not None:
                    throttler.terminate()
                    throttler.wait(10)
    finally:
        for conf in templated:
            subprocess.run([*runvm, "--config", str(conf), "factory", "destroy"],
                           capture_output=True)  # fmt: skip
        daemon.stop()
        subprocess.run(["rm", "-rf", str(base), str(shm)], check=False)
    print(
        f"{args.count} busybox pods through ctr, guest memory {args.memory} MiB, "
        f"TCG translation cache {args.tcg_tb_size} MiB, "
        f"settled {args.settle:.0f} s; PSS per pod (MiB)"
    )
    cols = ("qemu-system", "TCG", "virtiofsd", "containerd-shim-runvm", "total", "start s")
    print(f"{'':30}" + "".join(f"{c:>22}" for c in cols))
    for label, per in results.items():
        print(f"{label:30}" + "".join(f"{per[c]:22.1f}" for c in cols))


if __name__ == "__main__":
    main()
