"""In-container conformance checks, run inside the guest: what config.json asks for is what
the container sees (mounts and options, hostname, rlimits, capabilities, masked/readonly paths,
sysctl, uid/gid mappings, devices, seccomp)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runvm.image.busybox import make_bundle

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

SCRIPT = r"""
echo "hostname=$(hostname)"
echo "nofile=$(ulimit -n) nproc=$(ulimit -u)"
grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status
echo "shm_rmid_forced=$(cat /proc/sys/kernel/shm_rmid_forced)"
echo "uid_map=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')"
echo "gid_map=$(cat /proc/self/gid_map | tr -s ' ' | sed 's/^ //')"
echo "null=$(stat -c '%t,%T' /dev/null) zero=$(stat -c '%t,%T' /dev/zero)" \
     "fuse=$(stat -c '%t,%T %a' /dev/fuse)"
cat /proc/self/mounts | awk '{print "mount " $2 " " $3 " " $4}'
echo "hosts=$(cat /etc/hosts.runvm)"
echo x > /etc/hosts.runvm 2>/dev/null && echo bind-rw || echo bind-ro
echo "scratch=$(cat /scratch/probe 2>/dev/null || echo none)"
echo "done"
"""


def test_the_container_gets_what_config_json_asks(tmp_path: Path, cli_env: dict[str, str]) -> None:
    b = tmp_path / "bundle"
    make_bundle(b, ["sh", "-c", SCRIPT])
    # With a user namespace the container's root cannot create mount points in a rootfs
    # owned by the host's root: make them here, as an image would have them.
    (b / "rootfs/etc/hosts.runvm").touch()
    (b / "rootfs/scratch").mkdir()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 conformance\n")
    spec: dict[str, Any] = json.loads((b / "config.json").read_text())
    spec["hostname"] = "conform"
    spec["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "hard": 777, "soft": 555},
        {"type": "RLIMIT_NPROC", "hard": 99, "soft": 88},
    ]
    caps = ["CAP_CHOWN", "CAP_KILL"]
    spec["process"]["capabilities"] = {
        "bounding": [*caps, "CAP_NET_RAW"], "effective": caps, "permitted": caps,
        "inheritable": caps, "ambient": caps,
    }  # fmt: skip
    spec["linux"]["sysctl"] = {"kernel.shm_rmid_forced": "1"}
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 65536}]
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 65536}]
    spec["linux"]["devices"] = [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640}
    ]
    spec["linux"]["resources"]["devices"].append(
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
    )
    spec["mounts"] += [
        {"destination": "/etc/hosts.runvm", "type": "bind", "source": str(hosts),
         "options": ["rbind", "ro"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "size=1m", "mode=700"]},
    ]  # fmt: skip
    # /sys and cgroup cannot be mounted from a user namespace without a network namespace
    # of its own: keep what a user-namespaced container may mount.
    spec["mounts"] = [
        m for m in spec["mounts"] if m["destination"] not in ("/sys", "/sys/fs/cgroup")
    ]
    (b / "config.json").write_text(json.dumps(spec))

    r = subprocess.run(
        [sys.executable, "-m", "runvm.cli.main", "--root", cli_env["RUNVM_TEST_ROOT"], "run",
         "--bundle", str(b), "c-conform"],
        env=cli_env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "done", r.stdout
    assert "hostname=conform" in lines
    assert "nofile=555 nproc=88" in lines
    caps_mask = f"{(1 << 0) | (1 << 5):016x}"  # CHOWN(0), KILL(5)
    for kind in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert f"{kind}:\t{caps_mask}" in lines, (kind, lines)
    assert f"CapBnd:\t{(1 << 0) | (1 << 5) | (1 << 13):016x}" in lines  # + NET_RAW(13)
    assert "shm_rmid_forced=1" in lines
    assert "uid_map=0 1000 65536" in lines and "gid_map=0 1000 65536" in lines
    assert "null=1,3 zero=1,5 fuse=a,e5 640" in lines  # major,minor in hex
    mounts = {ln.split()[1]: ln.split()[2:] for ln in lines if ln.startswith("mount ")}
    assert mounts["/proc"][0] == "proc"
    assert mounts["/dev"][0] == "tmpfs" and "nosuid" in mounts["/dev"][1]
    assert mounts["/dev/pts"][0] == "devpts"
    shm = mounts["/dev/shm"][1].split(",")
    assert {"nosuid", "nodev", "noexec"} <= set(shm)
    scratch = mounts["/scratch"][1].split(",")
    assert mounts["/scratch"][0] == "tmpfs" and "size=1024k" in scratch and "mode=700" in scratch
    assert "ro" in mounts["/etc/hosts.runvm"][1].split(",")
    assert "hosts=127.0.0.1 conformance" in lines and "bind-ro" in lines
    assert "scratch=none" in lines
