"""Many pods at once: N `ctr run --rm busybox true` started together through one private
containerd, timed until the last one exited, per configuration (runc, runvm on its defaults,
runvm templated; `--only` as in bench/start.py), rounds interleaved; prints each median and
its ratio to runc's N at once. Every start must succeed, and after each burst nothing may be
left: no task, container, shim or QEMU of the bench's containerd.

The default's first burst includes making its first-use template (the first start makes it
while the others boot cold or wait for it), as a user's first burst would.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ctrstart import IMAGE, Bench, bench


def _leftovers(b: Bench) -> list[str]:
    """What of a finished burst is still there: tasks, containers, and processes naming the
    bench's containerd socket or state directory."""
    left = []
    for what in ("task", "container"):
        rows = b.daemon.ctr(what, "ls", "-q").stdout.decode().split()
        left += [f"{what} {row}" for row in rows]
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    base = str(b.daemon.base)
    left += [line.strip() for line in ps.splitlines()
             if base in line and "containerd " not in line and "ps -eo" not in line]  # fmt: skip
    return left


def burst(b: Bench, name: str, n: int, tag: str) -> float:
    """Start ``n`` at once; the seconds until the last exited. Exits the bench on a failure
    or a leftover."""
    args = b.configs[name]
    start = time.monotonic()
    ctr = ["ctr", "--address", b.daemon.address, "run", "--rm", *args, IMAGE]
    procs = [
        subprocess.Popen([*ctr, f"{tag}-{k}", "true"], stdout=subprocess.DEVNULL, stderr=PIPE)
        for k in range(n)
    ]
    errors = [(p.communicate(timeout=600)[1], p.returncode) for p in procs]
    took = time.monotonic() - start
    failed = [err.decode()[-300:] for err, rc in errors if rc != 0]
    if failed:
        sys.exit(f"{name}: {len(failed)} of {n} failed: {failed[0]}")
    deadline = time.monotonic() + 30
    while (left := _leftovers(b)) and time.monotonic() < deadline:
        time.sleep(0.5)  # a shim may still be exiting after ctr returned
    if left:
        sys.exit(f"{name}: left behind after the burst: {left}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10, help="starts at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="default,templated")
    opts = parser.parse_args()
    with bench(opts.only) as b:
        times: dict[str, list[float]] = {name: [] for name in b.configs}
        for i in range(opts.rounds):
            for name in b.configs:
                b.ready()
                times[name].append(burst(b, name, opts.n, f"c{i}-{len(times[name])}"))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{opts.n} x ctr run --rm busybox true at once, {opts.rounds} interleaved rounds, "
          "seconds until all exited, medians")  # fmt: skip
    for name, values in times.items():
        print(f"  {name:16} {med[name]:7.2f} s  (min {min(values):.2f}, max {max(values):.2f})"
              f"  x{med[name] / med['runc']:.1f} runc")  # fmt: skip


if __name__ == "__main__":
    main()
