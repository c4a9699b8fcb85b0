"""Density: how many idle pods fit, and what they cost while idle.

Idle busybox pods (`sleep 100000`) are started one after another through one private
containerd until one fails to start or --max run; then every one must answer an exec. Reports
the count, the total PSS of runvm's host processes, and the host CPU they use while idle
(from /proc/stat over --idle seconds). Templated by default (--cold for cold boots); --dax
boots the DAX root image, --ksm runs the KSM throttler meanwhile, --shared serves every pod
from one shim (`[shim] scope = "namespace"`).

Usage (root, after scripts/install):
    python3 bench/density.py [--max 100] [--cold] [--dax] [--ksm] [--shared]
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
from footprint import helpers, pss_kib

from runvm.image.ociarchive import busybox_archive


def busy_fraction(seconds: float) -> float:
    """Share of all host CPU time spent not idle over ``seconds``."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=100)
    parser.add_argument("--cold", action="store_true", help="cold boots instead of clones")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU sampling")
    parser.add_argument("--dax", action="store_true", help="boot the DAX root image")
    parser.add_argument("--ksm", action="store_true", help="run the KSM throttler")
    parser.add_argument("--shared", action="store_true", help="one shim for every pod")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) on SIGTERM
    base = Path(tempfile.mkdtemp(prefix="rvd-", dir="/tmp"))
    state = base / "s"
    state.mkdir()
    conf = base / "runvm.toml"
    factory = "" if args.cold else f'[factory]\nenable = true\ndir = "{base / "factory"}"\n'
    dax = "[image]\ndax = true\n" if args.dax else ""
    shim = '[shim]\nscope = "namespace"\n' if args.shared else ""
    conf.write_text(
        f'[runtime]\nstate_root = "{state}"\ncache_dir = "{state}/cache"\n{factory}{dax}{shim}'
    )
    daemon = PrivateContainerd(base, daemon_env())
    runvm = [sys.executable, "-m", "runvm.cli.main", "--config", str(conf)]
    rt = ["--runtime", "io.containerd.runvm.v2", "--runtime-config-path", str(conf)]
    running: list[str] = []
    throttler = subprocess.Popen([*runvm, "ksm", "serve"]) if args.ksm else None
    try:
        daemon.ctr("image", "import", str(busybox_archive(base / "busybox.tar", IMAGE)))
        if not args.cold:
            subprocess.run([*runvm, "factory", "init"], check=True, capture_output=True)
        idle_before = busy_fraction(5)
        started = time.monotonic()
        failure = ""
        while len(running) < args.max:
            name = f"d{len(running)}"
            r = daemon.ctr("run", "-d", *rt, IMAGE, name, "sleep", "100000", timeout=300)
            if r.returncode != 0:
                failure = r.stderr.decode().strip()[-300:]
                daemon.ctr("container", "rm", name)
                break
            running.append(name)
        elapsed = time.monotonic() - started
        answered = sum(
            daemon.ctr("task", "exec", "--exec-id", "probe", name, "true",
                       timeout=120).returncode == 0
            for name in running
        )  # fmt: skip
        pids = helpers(str(state))
        total_mib = sum(pss_kib(p) for ps in pids.values() for p in ps) / 1024
        idle_cpu = busy_fraction(args.idle)
    finally:
        for name in running:
            daemon.ctr("task", "kill", "-s", "KILL", name)
        time.sleep(3)
        for name in running:
            daemon.ctr("task", "rm", "-f", name)
            daemon.ctr("container", "rm", name)
        subprocess.run([*runvm, "factory", "destroy"], capture_output=True)
        if throttler is not None:
            throttler.terminate()
            throttler.wait(10)
        daemon.stop()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    mode = ("cold" if args.cold else "templated") + (" + DAX" if args.dax else "")
    mode += (" + KSM" if args.ksm else "") + (" + one shim" if args.shared else "")
    print(
        f"{mode}: {len(running)} pods started in {elapsed:.0f} s"
        f"{' (stopped by: ' + failure + ')' if failure else f' (the --max {args.max})'}"
    )
    print(f"  answered an exec: {answered}/{len(running)}")
    print(
        f"  PSS of QEMU + virtiofsd + shims: {total_mib:.0f} MiB total, "
        f"{total_mib / max(1, len(running)):.1f} MiB per pod"
    )
    print(
        f"  host CPU busy while idle: {100 * idle_cpu:.1f}% of 2 cores "
        f"(before the pods: {100 * idle_before:.1f}%)"
    )


if __name__ == "__main__":
    main()
