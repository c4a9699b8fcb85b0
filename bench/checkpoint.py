"""Checkpoint and restore: times and image sizes, through the runc verbs, end to end.

Two containers (busybox): one idle (``sleep``), one holding about 200 MiB of touched memory
(a shell variable filled from ``yes``). For each of ``--runs`` rounds (default 5): the
container is started (``runvm run -d``: the baseline, a cold start in the same run), then
``runvm checkpoint`` (CRIU in its VM writes the images; the container is gone after) and
``runvm restore -d`` into a new VM (until the command returns: the container runs). Medians
are printed with the image directory's size and each time's ratio to the cold start.
Sandboxes boot cold (no template, no cache) in a VM of ``--memory`` MiB.

Usage (root, after scripts/install): python3 bench/checkpoint.py [--runs 5] [--memory 768]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runvm.image.busybox import make_bundle

RUNVM = [sys.executable, "-m", "runvm.cli.main"]
WORKLOADS = {
    "idle": "echo ready; exec sleep 100000",
    # (the shell, which holds x, must outlive its last command: ash would exec that one)
    "200 MiB": "x=$(yes abcdefghijklmnop | head -c 209715200); echo ready; sleep 100000; :",
}


class Cli:
    def __init__(self, tmp: Path, memory_mib: int) -> None:
        self.tmp = tmp
        conf = tmp / "runvm.toml"
        conf.write_text(
            f'[runtime]\nstate_root = "{tmp}/s"\ncache_dir = "{tmp}/c"\n'
            f"[hypervisor]\nmemory_mib = {memory_mib}\n"
            "[factory]\nenable = false\n[cache]\nenable = false\n"
        )
        self.base = [*RUNVM, "--config", str(conf), "--root", str(tmp / "root")]

    def __call__(self, *args: str, out: Path | None = None) -> float:
        """Run a verb to its end (stdout to ``out``: a monitor keeps it); its duration."""
        t0 = time.monotonic()
        err = self.tmp / "verb.err"
        with (out or self.tmp / "verb.out").open("ab") as f, err.open("wb") as e:
            r = subprocess.run([*self.base, *args], stdin=subprocess.DEVNULL, stdout=f,
                               stderr=e, timeout=900)  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"runvm {' '.join(args)}: {err.read_text()}")
        return time.monotonic() - t0


def wait_ready(out: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while b"ready" not in (out.read_bytes() if out.exists() else b""):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the container did not say ready: {out.read_bytes()[-500:]!r}")
        time.sleep(0.2)


def size_of(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def round_of(cli: Cli, tmp: Path, script: str, n: int) -> tuple[float, float, float, int]:
    """(cold start, checkpoint, restore, image bytes) of one container."""
    bundle = tmp / f"b{n}"
    spec = make_bundle(bundle, ["sh", "-c", script])
    spec["root"]["readonly"] = False
    (bundle / "config.json").write_text(json.dumps(spec))
    cid, images, out = f"ck{n}", tmp / f"images{n}", tmp / f"out{n}"
    try:
        start = cli("run", "-d", "-b", str(bundle), cid, out=out)
        wait_ready(out)
        dump = cli("checkpoint", "--image-path", str(images), cid)
        restore = cli("restore", "--image-path", str(images), "-b", str(bundle), "-d", cid,
                      out=out)  # fmt: skip
    finally:
        cli("delete", "--force", cid)
    return start, dump, restore, size_of(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", type=int, default=768, help="the VM's MiB")
    args = parser.parse_args()
    print(f"medians of {args.runs}; VMs of {args.memory} MiB, cold boots")
    print(f"{'container':10}{'cold start':>12}{'checkpoint':>12}{'restore':>12}"
          f"{'images':>10}   ratios to the cold start")  # fmt: skip
    for name, script in WORKLOADS.items():
        with tempfile.TemporaryDirectory(prefix="rvb-ck-") as t:
            tmp = Path(t)
            cli = Cli(tmp, args.memory)
            rounds = [round_of(cli, tmp, script, i) for i in range(args.runs)]
        start, dump, restore = (statistics.median(r[i] for r in rounds) for i in range(3))
        mib = statistics.median(r[3] for r in rounds) / (1 << 20)
        print(f"{name:10}{start:10.2f} s{dump:10.2f} s{restore:10.2f} s{mib:7.1f} MiB   "
              f"checkpoint {dump / start:.2f}, restore {restore / start:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
