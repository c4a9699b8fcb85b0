"""Isolation seen from inside a container (real VM): no host path outside its rootfs and
volumes, and no way to the agent's channel. (That a hostile guest cannot make the host write
outside the sandbox directory: tests/integration/test_shared_dir.py, test_hostile_guest.py.)"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest
from test_lifecycle import RUNVM

from runvm.image.busybox import make_bundle

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

PROBE = r"""
find / \( -path /proc -o -path /sys \) -prune -o -name "*$TOKEN*" -print | sed 's/^/found: /'
for p in /run/runvm /usr/lib/runvm /dev/vport0p1 /dev/vport1p1 /dev/virtio-ports /dev/hvc0; do
  test -e $p && echo "visible: $p"
done
major=$(awk '$2 == "virtio-portsdev" {print $1}' /proc/devices)
echo "major: ${major:-none}"
if [ -n "$major" ]; then
  if mknod /dev/shm/port c "$major" 1 && echo x > /dev/shm/port; then
    echo "reached the port"
  fi
fi
echo "volume: $(cat /vol/file)"
echo done
"""


def test_container_sees_only_its_rootfs_and_volumes(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    secret = tmp_path / f"host-secret-{token}"  # next to the bundle, outside rootfs and volume
    secret.write_text("secret")
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "file").write_text("shared")
    bundle = tmp_path / "bundle"
    spec = make_bundle(bundle, ["sh", "-c", PROBE])
    spec["process"]["env"].append(f"TOKEN={token}")
    for kind in ("bounding", "effective", "permitted"):  # mknod may succeed: open must not
        spec["process"]["capabilities"].setdefault(kind, []).append("CAP_MKNOD")
    spec["mounts"].append({"destination": "/vol", "type": "bind", "source": str(volume),
                           "options": ["rbind", "ro"]})  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    with out.open("wb") as f:
        r = subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "--bundle",
                            str(bundle), "c-iso"], env=cli_env, stdin=subprocess.DEVNULL,
                           stdout=f, stderr=subprocess.STDOUT, timeout=180)  # fmt: skip
    text = out.read_text()
    assert r.returncode == 0, text
    assert "done" in text and "volume: shared" in text, text  # the probe ran to its end
    assert "found:" not in text, text  # no host file outside rootfs and volume is in view
    assert "visible:" not in text, text
    assert "major: none" not in text, text  # the guest has virtio ports: the check ran
    assert "reached the port" not in text, text
