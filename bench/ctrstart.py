"""`ctr run --rm` of busybox `true` through one private containerd: runc; runvm on its
defaults (clones of a template made on first use: the first round's start makes it, and
counts); runvm cold (templates off); runvm cloned from the template `runvm factory init`
made; runvm handed a ready VM by `runvm cache serve` (one kept ready; each measured start
waits until it is, so no refill boot competes with a measurement). Used by
``bench/start.py --ctr``.

Each configuration runs once per round, rounds interleaved; the runvm ones get their config
through ctr's ``--runtime-config-path`` (the shim reads it), so one containerd serves all.

With ``phases``, the shims trace their start (``RUNVM_TRACE``, :mod:`runvm.trace`) and each
runvm start is split into its marks: when containerd exec'd the shim, its Python reached main,
it served, each Task call and each sandbox step ended, the exit was seen, the shim exited and
ctr returned, as medians of the time since ``ctr run`` was started.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import PrivateContainerd as PrivateContainerd  # re-exported to the benches

from runvm.image.ociarchive import busybox_archive

IMAGE = "localhost/runvm/busybox:latest"


def daemon_env(trace: Path | None = None) -> dict[str, str]:
    """The private containerd's environment (its shims inherit it): this interpreter's bin
    first, and the caller's PYTHONPATH, so shims run the runvm this bench imports; with
    ``trace``, the shims trace their start into it."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if trace is not None:
        env["RUNVM_TRACE"] = str(trace)
    return env


Phases = dict[str, list[dict[str, float]]]


def _marks(trace: Path, since: float) -> dict[str, float]:
    """The first time of each event in ``trace``, as seconds after ``since``."""
    first: dict[str, float] = {}
    if trace.exists():
        for line in trace.read_text().splitlines():
            at, _, rest = line.partition(" ")
            event = rest.partition(" ")[2]
            if event and event not in first:
                first[event] = float(at) - since
    return first


def _config(path: Path, state: Path, extra: str = "") -> Path:
    path.write_text(f'[runtime]\nstate_root = "{state}"\ncache_dir = "{state}/cache"\n{extra}')
    return path


def _pool_full(conf: Path, timeout: float = 300) -> None:
    """Wait until the cache daemon of ``conf`` has its one VM ready."""
    deadline = time.monotonic() + timeout
    status = [sys.executable, "-m", "runvm.cli.main", "--config", str(conf), "cache", "status"]
    while True:
        r = subprocess.run(status, capture_output=True, text=True)
        if r.returncode == 0 and json.loads(r.stdout).get("ready") == 1:
            return
        if time.monotonic() > deadline:
            sys.exit(f"the cache daemon has no VM ready after {timeout} s: {r.stdout}")
        time.sleep(0.5)


@dataclass
class Bench:
    """One private containerd with busybox imported, and the ctr arguments of each
    configuration (``runc`` first)."""

    daemon: PrivateContainerd
    configs: dict[str, list[str]]
    cached: Path | None  # the cache daemon's config, when "runvm cached" is measured
    trace: Path | None

    def ready(self) -> None:
        """Before a measured start: the cache daemon (if any) has its VM ready, so no refill
        boot competes with the measurement; the trace is empty."""
        if self.cached is not None:
            _pool_full(self.cached)
        if self.trace is not None:
            self.trace.unlink(missing_ok=True)


@contextlib.contextmanager
def bench(only: str = "", trace: bool = False) -> Iterator[Bench]:
    """Set up every configuration (``only``: comma-separated words such as "default,cold"
    keep the ones whose names contain one, and runc); everything is removed on exit."""
    base = Path(tempfile.mkdtemp(prefix="rvb-", dir="/tmp"))
    trace_file = base / "trace" if trace else None
    state = base / "s"
    state.mkdir()
    shm = Path(tempfile.mkdtemp(prefix="rvb-", dir="/dev/shm"))
    default = _config(base / "default.toml", state,
                      f'[factory]\ntemplates_dir = "{shm}/templates"\n')  # fmt: skip
    cold = _config(base / "cold.toml", state, "[factory]\nenable = false\n")
    factory = base / "factory"
    tpl = _config(base / "tpl.toml", state,
                  f'[factory]\nfirst_use = false\ndir = "{factory}"\n')  # fmt: skip
    sock = base / "cache.sock"
    cached = _config(base / "cached.toml", state, "[factory]\nenable = false\n"
                     f'[cache]\nenable = true\nsize = 1\nsocket = "{sock}"\n')  # fmt: skip
    runtime = ["--runtime", "io.containerd.runvm.v2", "--runtime-config-path"]
    configs = {
        "runc": ["--runtime", "io.containerd.runc.v2"],
        "runvm default": [*runtime, str(default)],
        "runvm cold": [*runtime, str(cold)],
        "runvm templated": [*runtime, str(tpl)],
        "runvm cached": [*runtime, str(cached)],
    }
    wanted = [w for w in only.split(",") if w]
    configs = {name: args for name, args in configs.items()
               if name == "runc" or not wanted or any(w in name for w in wanted)}  # fmt: skip
    daemon = PrivateContainerd(base, daemon_env(trace_file))
    runvm = [sys.executable, "-m", "runvm.cli.main", "--config", str(tpl)]
    cache = None
    if "runvm cached" in configs:
        cache = subprocess.Popen([sys.executable, "-m", "runvm.cli.main", "--config",
                                  str(cached), "cache", "serve"],
                                 stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        daemon.ctr("image", "import", str(busybox_archive(base / "busybox.tar", IMAGE)))
        if "runvm templated" in configs:
            subprocess.run([*runvm, "factory", "init"], check=True, capture_output=True)
        yield Bench(daemon, configs, cached if cache is not None else None, trace_file)
    finally:
        if cache is not None:
            cache.terminate()
            cache.wait(60)
        subprocess.run([*runvm, "factory", "destroy"], capture_output=True)
        daemon.stop()
        subprocess.run(["rm", "-rf", str(base), str(shm)], check=False)


def run(rounds: int, phases: Phases | None = None, only: str = "") -> dict[str, list[float]]:
    """``rounds`` interleaved rounds of one start per configuration (see :func:`bench`);
    with ``phases``, each runvm start's marks go in it."""
    with bench(only, trace=phases is not None) as b:
        times: dict[str, list[float]] = {name: [] for name in b.configs}
        for i in range(rounds):
            for name, args in b.configs.items():
                b.ready()
                start = time.monotonic()
                r = b.daemon.ctr("run", "--rm", *args, IMAGE, f"b{i}-{len(times[name])}", "true")
                if r.returncode != 0:
                    sys.exit(f"ctr run ({name}) failed: {r.stderr.decode()[-500:]}")
                times[name].append(time.monotonic() - start)
                if b.trace is not None and phases is not None and name != "runc":
                    marks = _marks(b.trace, start)
                    marks["ctr returned"] = times[name][-1]
                    phases.setdefault(name, []).append(marks)
        return times


def report(times: dict[str, list[float]]) -> None:
    med = {name: statistics.median(v) for name, v in times.items()}
    rounds = len(next(iter(times.values())))
    print(f"ctr run --rm busybox true, one containerd, {rounds} interleaved rounds, medians")
    for name, values in times.items():
        print(f"  {name:16} {med[name]:7.3f} s  (min {min(values):.3f}, max {max(values):.3f})"
              f"  x{med[name] / med['runc']:.1f} runc")  # fmt: skip


def report_phases(phases: Phases) -> None:
    """Per configuration, each mark's median time after ``ctr run`` started, in order."""
    for name, runs in phases.items():
        events = {e for marks in runs for e in marks}
        med = {e: statistics.median(m[e] for m in runs if e in m) for e in events}
        print(f"{name}: median s after ctr run started ({len(runs)} runs)")
        previous = 0.0
        for event in sorted(med, key=med.__getitem__):
            print(f"  {event:34} {med[event]:7.3f}  (+{med[event] - previous:.3f})")
            previous = med[event]
