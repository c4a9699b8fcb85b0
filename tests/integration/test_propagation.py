"""Bind mounts with a propagation option appear with that propagation in the guest; a host
mount made under an rslave volume after start reaches the container; runc's ``ro`` is not
recursive (a writable mount under a read-only volume stays writable), ``rro`` is."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_lifecycle import Cli, bundle, poll

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

OPTIONS = ["shared", "rshared", "slave", "rslave", "private", "rprivate", "unbindable",
           "runbindable"]  # fmt: skip


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> Cli:
    return Cli(tmp_path, cli_env)


def propagation(mountinfo: str, point: str) -> set[str]:
    """The optional fields (shared:N, master:N, unbindable) of the mount at ``point``."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if fields[4] == point:
            return {f.split(":")[0] for f in fields[6 : fields.index("-")]}
    raise AssertionError(f"{point} is not mounted:\n{mountinfo}")


def with_mounts(b: Path, mounts: list[dict[str, object]]) -> None:
    spec = json.loads((b / "config.json").read_text())
    spec["mounts"] += mounts
    (b / "config.json").write_text(json.dumps(spec))


def test_the_eight_propagation_options(cli: Cli, tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    (volume / "f").write_text("here")
    b = bundle(tmp_path, "cat /proc/self/mountinfo; cat /v-rslave/f")
    with_mounts(b, [{"destination": f"/v-{o}", "type": "bind", "source": str(volume),
                     "options": ["rbind", o]} for o in OPTIONS])  # fmt: skip
    out = cli("run", "-b", str(b), "p-eight").stdout
    assert out.endswith("here")
    seen = {o: propagation(out, f"/v-{o}") for o in OPTIONS}
    for o in ("shared", "rshared"):
        assert "shared" in seen[o], seen
    for o in ("slave", "rslave"):
        assert seen[o] == {"master"}, seen
    for o in ("private", "rprivate"):
        assert seen[o] == set(), seen
    for o in ("unbindable", "runbindable"):
        assert seen[o] == {"unbindable"}, seen


def test_host_mount_after_start_reaches_an_rslave_volume(cli: Cli, tmp_path: Path) -> None:
    """As kubelet's volumes are: on a shared mount (it makes its directory rshared)."""
    volume = tmp_path / "vol"
    (volume / "late").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(volume), str(volume)], check=True)
    subprocess.run(["mount", "--make-shared", str(volume)], check=True)
    b = bundle(tmp_path, "echo up; sleep 120")
    with_mounts(b, [{"destination": "/v", "type": "bind", "source": str(volume),
                     "options": ["rbind", "rslave"]}])  # fmt: skip
    cli.create(b, "p-late")
    mounted = False
    try:
        cli("start", "p-late")
        cli.wait_output("p-late", "up\n")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "late", str(volume / "late")],
                       check=True)  # fmt: skip
        mounted = True
        (volume / "late" / "file").write_text("mounted after start")

        def seen() -> bool:
            r = cli("exec", "p-late", "cat", "/v/late/file", ok=False)
            return r.stdout == "mounted after start"

        poll(seen, 30, "the late host mount in the container")
    finally:
        cli("delete", "--force", "p-late")
        if mounted:
            subprocess.run(["umount", str(volume / "late")], check=True)
        subprocess.run(["umount", str(volume)], check=True)


def test_ro_is_not_recursive_and_rro_is(cli: Cli, tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    (volume / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "sub", str(volume / "sub")],
                   check=True)  # fmt: skip
    try:
        script = ("for v in ro rro; do touch /$v/top 2>/dev/null && echo $v-top-rw || "
                  "echo $v-top-ro; touch /$v/sub/x 2>/dev/null && echo $v-sub-rw || "
                  "echo $v-sub-ro; done")  # fmt: skip
        b = bundle(tmp_path, script)
        with_mounts(b, [{"destination": f"/{o}", "type": "bind", "source": str(volume),
                         "options": ["rbind", o]} for o in ("ro", "rro")])  # fmt: skip
        out = cli("run", "-b", str(b), "p-ro").stdout.split()
        assert out == ["ro-top-ro", "ro-sub-rw", "rro-top-ro", "rro-sub-ro"], out
        assert not (volume / "top").exists()
    finally:
        subprocess.run(["umount", str(volume / "sub")], check=True)
