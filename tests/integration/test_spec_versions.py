"""Every runtime-spec 1.x bundle runs, through the CLI and through containerd's shim; the
fields 1.1-1.3 added are honoured in the guest or refused by name (runvm.oci.fields)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle import Cli, bundle
from test_shim_v2 import RUNTIME

from runvm.image.busybox import make_bundle

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

VERSIONS = ["1.0.2", "1.1.0", "1.2.0", "1.2.1", "1.3.0"]


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> Cli:
    return Cli(tmp_path, cli_env)


def versioned(cli: Cli, version: str, script: str) -> Path:
    b = bundle(cli.tmp, script)
    spec = json.loads((b / "config.json").read_text())
    spec["ociVersion"] = version
    (b / "config.json").write_text(json.dumps(spec))
    return b


@pytest.mark.parametrize("version", VERSIONS)
def test_cli_runs_and_creates_every_version(cli: Cli, version: str) -> None:
    b = versioned(cli, version, "echo ran-$0")
    r = cli("run", "-b", str(b), "v-run")
    assert r.stdout == "ran-sh\n", r.stderr
    cli.create(b, "v-cs")
    cli("start", "v-cs")
    cli.wait_status("v-cs", "stopped", timeout=60)
    assert cli.output("v-cs") == "ran-sh\n"
    cli("delete", "v-cs")


def ctr_spec(tmp: Path, version: str, args: list[str], **extra: Any) -> Path:
    """A spec file of ``version`` for ``ctr run --config``, its rootfs a busybox tree."""
    spec = make_bundle(tmp / "ctrbundle", args)
    spec["ociVersion"] = version
    spec["root"] = {"path": str(tmp / "ctrbundle" / "rootfs")}
    spec["linux"].pop("cgroupsPath", None)
    spec.update(extra)
    path = tmp / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("version", VERSIONS)
def test_shim_runs_every_version(
    containerd: Any,
    tmp_path: Path,
    version: str,
) -> None:
    spec = ctr_spec(tmp_path, version, ["sh", "-c", "echo shim-ran"])
    r = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--config", str(spec), "v1")
    assert r.returncode == 0 and r.stdout == b"shim-ran\n", r.stderr


HONOURED = """
set -- $(cat /proc/1/stat | sed 's/.*) //')
echo "nice=${17} policy=${39}"
echo "ioprio=$(ionice -p 1)"
grep Cpus_allowed_list /proc/1/status
echo "domain=$(cat /proc/sys/kernel/domainname)"
echo "burst=$(cat /sys/fs/cgroup/cpu.max.burst)"
"""


def test_new_process_fields_are_honoured(cli: Cli) -> None:
    b = versioned(cli, "1.3.0", HONOURED)
    spec = json.loads((b / "config.json").read_text())
    spec["process"]["scheduler"] = {"policy": "SCHED_BATCH", "nice": 7}
    spec["process"]["ioPriority"] = {"class": "IOPRIO_CLASS_IDLE", "priority": 0}
    spec["process"]["execCPUAffinity"] = {"final": "0"}
    spec["domainname"] = "pods.example"
    spec["linux"].setdefault("resources", {})["cpu"] = {"quota": 50000, "period": 100000,
                                                        "burst": 20000}  # fmt: skip
    spec["linux"]["namespaces"].append({"type": "cgroup"})
    (b / "config.json").write_text(json.dumps(spec))
    out = cli("run", "-b", str(b), "v-fields").stdout.splitlines()
    assert out[0] == "nice=7 policy=3"  # SCHED_BATCH
    assert out[1] == "ioprio=idle"
    assert out[2].split() == ["Cpus_allowed_list:", "0"]
    assert out[3:] == ["domain=pods.example", "burst=20000"]


REFUSED = {
    "mounts[7].uidMappings": lambda s: s["mounts"].append(
        {
            "destination": "/x",
            "type": "bind",
            "source": "/tmp",
            "options": ["rbind"],
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
        }
    ),
    "mounts[7].options: ridmap": lambda s: s["mounts"].append(
        {"destination": "/x", "type": "bind", "source": "/tmp", "options": ["rbind", "ridmap"]}
    ),
    "mounts[7].options: nosymfollow": lambda s: s["mounts"].append(
        {"destination": "/x", "type": "bind", "source": "/tmp", "options": ["nosymfollow"]}
    ),
    "linux.namespaces[5]: time": lambda s: s["linux"]["namespaces"].append({"type": "time"}),
    "linux.timeOffsets": lambda s: s["linux"].update(
        timeOffsets={"monotonic": {"secs": 10, "nanosecs": 0}}
    ),
    "linux.netDevices": lambda s: s["linux"].update(netDevices={"eth1": {"name": "eth1"}}),
    "linux.memoryPolicy": lambda s: s["linux"].update(
        memoryPolicy={"mode": "MPOL_BIND", "nodes": "0"}
    ),
    "linux.intelRdt": lambda s: s["linux"].update(intelRdt={"closID": "guaranteed"}),
    "linux.seccomp.listenerPath": lambda s: s["linux"].update(
        seccomp={"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/notify.sock"}
    ),
    "process.scheduler.policy": lambda s: s["process"].update(scheduler={"policy": "FAST"}),
    "process.ioPriority.priority": lambda s: s["process"].update(
        ioPriority={"class": "IOPRIO_CLASS_BE", "priority": 9}
    ),
}


@pytest.mark.parametrize("field", REFUSED)
def test_fields_runvm_cannot_honour_are_refused_by_name(cli: Cli, field: str) -> None:
    b = versioned(cli, "1.3.0", "echo never")
    spec = json.loads((b / "config.json").read_text())
    REFUSED[field](spec)
    (b / "config.json").write_text(json.dumps(spec))
    code, err = cli.create(b, "v-refused", ok=False)
    assert code != 0 and f"config.json.{field}" in err, err
    assert "Traceback" not in err
    cli.fails("state", "v-refused", expect="container does not exist")


def test_exec_refuses_per_process_fields(cli: Cli) -> None:
    b = versioned(cli, "1.2.0", "sleep 60")
    cli.create(b, "v-exec")
    try:
        cli("start", "v-exec")
        process = {"args": ["true"], "cwd": "/", "scheduler": {"policy": "SCHED_IDLE"}}
        (cli.tmp / "process.json").write_text(json.dumps(process))
        r = cli("exec", "-p", str(cli.tmp / "process.json"), "v-exec", ok=False)
        assert r.returncode != 0 and "scheduler" in r.stderr and "init only" in r.stderr
    finally:
        cli("delete", "--force", "v-exec")
