"""Shared volumes seen from both sides, and a guest that tries to write where it may not."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config, guest_arch

from runvm.image.busybox import make_bundle

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNVM = [sys.executable, "-m", "runvm.cli.main"]


def run_once(
    cli_env: dict[str, str], bundle: Path, name: str, text: bool = True
) -> subprocess.CompletedProcess[Any]:
    """`runvm run` the bundle in the foreground, then `delete --force` whatever is left."""
    root = ["--root", cli_env["RUNVM_TEST_ROOT"]]
    r = subprocess.run([*RUNVM, *root, "run", "-b", str(bundle), name], env=cli_env,
                       capture_output=True, text=text, timeout=180)  # fmt: skip
    subprocess.run([*RUNVM, *root, "delete", "--force", name], env=cli_env, capture_output=True)
    return r


SCRIPT = r"""
# read-only volume: refused, and still refused after remounting it read-write inside
{ echo x > /ro/new; } 2>/dev/null && echo ro-writable || echo ro-refused
mount -o remount,rw,bind /ro && echo remounted
{ echo x > /ro/new; } 2>/dev/null && echo ro-writable-after-remount || echo ro-still-refused
# read-write volume: written here, seen on the host; written there, seen here
echo from-guest > /rw/guest.new && mv /rw/guest.new /rw/guest.txt && echo rw-written
until [ -e /rw/host.txt ]; do sleep 0.2; done; cat /rw/host.txt
# a file mount edited on the host is seen here
cat /etc/config.txt; touch /rw/seen-v1
i=0; until grep -q v2 /etc/config.txt || [ $i -ge 20 ]; do sleep 0.1; i=$((i+1)); done
cat /etc/config.txt
echo done
"""


@pytest.mark.parametrize("share", [pytest.param("virtio-fs", marks=pytest.mark.smoke), "9p"])
def test_volumes_both_ways_and_readonly_on_the_host_side(
    tmp_path: Path, cli_env: dict[str, str], share: str
) -> None:
    """Over virtio-fs (cache=none: every access goes to the host) and over 9p (QEMU serves the
    share; the minimal kernel has 9p): the same guarantees for volumes and file mounts."""
    conf = Path(cli_env["RUNVM_CONFIG"])
    extra = f'[storage]\nvirtiofs_cache = "none"\nshared_fs = "{share}"\n'
    if share == "9p":
        extra += '[image]\nvariant = "minimal"\n'
    add_config(conf, extra)
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "keep.txt").write_text("host data\n")
    config = tmp_path / "config.txt"
    config.write_text("v1\n")
    b = tmp_path / "bundle"
    spec = make_bundle(b, ["sh", "-c", SCRIPT], arch=guest_arch())
    spec["mounts"] += [
        {"destination": "/ro", "type": "bind", "source": str(ro), "options": ["rbind", "ro"]},
        {"destination": "/rw", "type": "bind", "source": str(rw), "options": ["rbind", "rw"]},
        {"destination": "/etc/config.txt", "type": "bind", "source": str(config),
         "options": ["rbind", "ro"]},
    ]  # fmt: skip
    caps = spec["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind] = [*caps.get(kind, []), "CAP_SYS_ADMIN"]  # the guest may remount
    (b / "config.json").write_text(json.dumps(spec))
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "-b",
                                 str(b), "vols"], env=cli_env, stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not (rw / "guest.txt").exists():
                assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.2)
            assert (rw / "guest.txt").read_text() == "from-guest\n"
            ps = subprocess.run(["ps", "-ewwo", "args"], capture_output=True, text=True).stdout
            virtiofsd = [a for a in ps.splitlines()
                         if a.split()[0].endswith("/virtiofsd") and "/vols/" in a]  # fmt: skip
            if share == "9p":
                assert not virtiofsd and "virtio-9p-pci" in ps
            else:
                assert virtiofsd and all("cache=none" in a for a in virtiofsd), virtiofsd
            (rw / "host.txt").write_text("from-host\n")
            while not (rw / "seen-v1").exists():
                assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.1)
            config.write_text("v2\n")  # edited in place, on the host
            assert proc.wait(120) == 0, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "delete", "--force",
                            "vols"], env=cli_env, capture_output=True)  # fmt: skip
    lines = out.read_text().split()
    assert lines[:4] == ["ro-refused", "remounted", "ro-still-refused", "rw-written"], lines
    assert lines[4:] == ["from-host", "v1", "v2", "done"], lines
    assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"]  # the host side never changed


def test_mount_destination_symlink_does_not_reach_the_host(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A rootfs symlink pointing at a host path, used as a mount destination, stays inside
    the container (the CVE-2020-2026 class): the host directory is untouched."""
    host_target = tmp_path / "host-target"
    host_target.mkdir()
    b = tmp_path / "bundle"
    spec = make_bundle(b, ["sh", "-c", "echo x > /evil/pwned && echo wrote"])
    (b / "rootfs" / "evil").symlink_to(host_target)
    spec["mounts"].append({"destination": "/evil", "type": "tmpfs", "source": "tmpfs"})
    (b / "config.json").write_text(json.dumps(spec))
    r = run_once(cli_env, b, "cve", text=False)
    assert list(host_target.iterdir()) == [], r.stdout
    mounts = Path("/proc/self/mounts").read_text()
    assert str(host_target) not in mounts


def test_guest_local_mounts_keep_their_options(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """tmpfs mounts (and /dev/shm with its size) are made in the guest, options intact."""
    b = tmp_path / "bundle"
    spec = make_bundle(b, ["sh", "-c", "df -k /dev/shm /scratch | tail -n 2 | awk '{print $2}'"])
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/dev/shm"]
    spec["mounts"] += [
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=16m"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=8m"]},
    ]  # fmt: skip
    (b / "config.json").write_text(json.dumps(spec))
    r = run_once(cli_env, b, "shm", text=False)
    assert (r.returncode, r.stdout.split()) == (0, [b"16384", b"8192"]), r.stderr


def _ext4_image(tmp_path: Path, rootfs: Path) -> Path:
    image = tmp_path / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs), str(image), "64M"], check=True)
    return image


def _read_from_image(image: Path, path: str) -> str:
    """A file's text as the host kernel sees the filesystem (journal replayed)."""
    mnt = image.parent / "check-mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        return (mnt / path).read_text()
    finally:
        subprocess.run(["umount", "-d", str(mnt)], check=True)


@pytest.mark.parametrize("kind", ["image-file", "loop-device"])
@pytest.mark.smoke
def test_block_device_rootfs_boots_and_is_writable(
    tmp_path: Path, cli_env: dict[str, str], kind: str
) -> None:
    """A rootfs on an ext4 disk (image file, or a host block device) is hot-plugged as
    virtio-blk, not shared: the container runs from it, its writes land in the disk."""
    b = tmp_path / "bundle"
    script = "grep ' / ' /proc/mounts; echo written > /new.txt && sync && cat /new.txt"
    spec = make_bundle(b, ["sh", "-c", script], arch=guest_arch())
    image = _ext4_image(tmp_path, b / "rootfs")
    loop = ""
    if kind == "loop-device":
        loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    try:
        spec["annotations"] = {"io.runvm.rootfs.device": loop or str(image)}
        spec["root"] = {"path": "absent", "readonly": False}  # the disk is the rootfs
        (b / "config.json").write_text(json.dumps(spec))
        r = run_once(cli_env, b, "blk")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("/dev/vd") and " ext4 " in r.stdout, r.stdout
        assert r.stdout.endswith("written\n"), r.stdout
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], check=True)
    assert _read_from_image(image, "new.txt") == "written\n"


def test_block_rootfs_mounted_on_the_host_is_refused(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Two kernels must not write one filesystem: a disk the host has mounted is refused."""
    b = tmp_path / "bundle"
    spec = make_bundle(b, ["true"])
    image = _ext4_image(tmp_path, b / "rootfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        spec["annotations"] = {"io.runvm.rootfs.device": str(image)}
        (b / "config.json").write_text(json.dumps(spec))
        r = run_once(cli_env, b, "busy")
    finally:
        subprocess.run(["umount", "-d", str(mnt)], check=True)
    assert r.returncode != 0 and "is mounted on the host" in r.stderr, r.stderr


def test_shim_takes_a_block_rootfs_mount_as_a_disk(
    tmp_path: Path, cli_env: dict[str, str], state_root: Path
) -> None:
    """containerd's devmapper snapshotter hands the shim one ext4 mount of a block device:
    the shim gives that device to the VM instead of mounting it on the host. Shown with a
    loop device (these hosts have no device-mapper) and the shim driven as containerd does."""
    import asyncio

    from runvm.shim import shim_api_pb2 as spb
    from runvm.shim import wire
    from runvm.ttrpc import Client

    b = tmp_path / "bundle"
    spec = make_bundle(b, ["sh", "-c", "grep ' / ' /proc/mounts; echo shim > /shim.txt"])
    spec["root"] = {"path": "rootfs", "readonly": False}
    (b / "config.json").write_text(json.dumps(spec))
    image = _ext4_image(tmp_path, b / "rootfs")
    subprocess.run(["rm", "-rf", str(b / "rootfs")], check=True)
    (b / "rootfs").mkdir()  # as containerd leaves it: the snapshot lives on the disk only
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    out = tmp_path / "out.txt"
    env = {**cli_env, "TTRPC_ADDRESS": str(tmp_path / "containerd.sock.ttrpc")}
    shim = [
        "containerd-shim-runvm-v2",
        "-namespace",
        "blk",
        "-address",
        str(tmp_path / "containerd.sock"),
        "-publish-binary",
        "/bin/true",
        "-id",
        "blk",
    ]
    try:
        started = subprocess.run([*shim, "start"], cwd=b, env=env, input=b"",
                                 capture_output=True, timeout=60)  # fmt: skip
        assert started.returncode == 0, started.stderr
        socket = started.stdout.decode().strip().removeprefix("unix://")

        async def drive() -> int:
            client = await Client.connect_unix(socket)

            async def call(method: str, req: Any, timeout: float = 120) -> bytes:
                return await client.call(wire.TASK_SERVICE, method, req.SerializeToString(),
                                         timeout=timeout)  # fmt: skip

            try:
                mount = spb.Mount(type="ext4", source=loop, options=["rw"])
                await call("Create", spb.CreateTaskRequest(
                    id="blk", bundle=str(b), rootfs=[mount], stdout=f"file://{out}"))  # fmt: skip
                await call("Start", spb.StartRequest(id="blk"))
                waited = spb.WaitResponse.FromString(await call("Wait", spb.WaitRequest(id="blk")))
                await call("Delete", spb.DeleteRequest(id="blk"))
                with contextlib.suppress(Exception):
                    await call("Shutdown", spb.ShutdownRequest(id="blk"), timeout=10)
                return waited.exit_status
            finally:
                await client.close()

        status = asyncio.run(drive())
        assert str(b / "rootfs") not in Path("/proc/self/mounts").read_text()
    finally:
        subprocess.run([*shim, "delete"], cwd=b, env=env, capture_output=True, timeout=60)
        subprocess.run(["losetup", "-d", loop], check=True)
    left = sorted(str(p) for p in state_root.rglob("*") if not p.is_dir())
    assert not left, f"pod state left when the shim's delete returned: {left}"
    assert status == 0, out.read_text()
    assert out.read_text().startswith("/dev/vd"), out.read_text()
    assert _read_from_image(image, "shim.txt") == "shim\n"


def test_9p_with_a_kernel_without_9p_is_refused(tmp_path: Path, cli_env: dict[str, str]) -> None:
    conf = Path(cli_env["RUNVM_CONFIG"])
    add_config(conf, '[storage]\nshared_fs = "9p"\n[image]\nvariant = "debian"\n')
    b = tmp_path / "bundle"
    make_bundle(b, ["true"])
    r = subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "-b", str(b),
                        "no9p"], env=cli_env, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode != 0 and 'image.variant = "minimal"' in r.stderr, r.stderr


MMAP_TEST = r"""
#include <sys/mman.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
int main(int c, char **v) {
  int fd = open(v[1], O_RDWR | O_CREAT, 0644);
  if (fd < 0 || ftruncate(fd, 4096) != 0) { perror(v[1]); return 2; }
  char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) { printf("failed: %s\n", strerror(errno)); return 1; }
  strcpy(p, "mapped"); msync(p, 4096, MS_SYNC); puts("ok"); return 0;
}
"""


def test_shared_writable_mmap_works_on_the_default_share(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Why virtiofs_cache defaults to auto: with cache=none (FUSE direct I/O) a 6.1 guest
    refuses MAP_SHARED writable mappings, which databases and other programs rely on."""
    b = tmp_path / "bundle"
    vol = tmp_path / "vol"
    vol.mkdir()
    spec = make_bundle(b, ["sh", "-c", "/mmtest /rootfs.bin && /mmtest /vol/vol.bin"])
    spec["root"]["readonly"] = False
    spec["mounts"].append({"destination": "/vol", "type": "bind", "source": str(vol),
                           "options": ["rbind", "rw"]})  # fmt: skip
    (b / "config.json").write_text(json.dumps(spec))
    (tmp_path / "m.c").write_text(MMAP_TEST)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(b / "rootfs/mmtest"), str(tmp_path / "m.c")],
                   check=True)  # fmt: skip
    r = run_once(cli_env, b, "mmap")
    assert (r.returncode, r.stdout) == (0, "ok\nok\n"), r.stdout + r.stderr
    assert (vol / "vol.bin").read_bytes().startswith(b"mapped\0")
    assert (b / "rootfs/rootfs.bin").read_bytes().startswith(b"mapped\0")


def test_block_device_volumes_rw_and_ro(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """An ext4 mount of a host block device (and of an image with ``loop``) is hot-plugged as
    virtio-blk and mounted in the guest: written through when rw, refused when ro."""
    data = tmp_path / "data-src"
    data.mkdir()
    (data / "seed.txt").write_text("seed\n")
    rw_image = _ext4_image(tmp_path, data)
    ro_image = tmp_path / "ro.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(data), str(ro_image), "16M"], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(rw_image)], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    b = tmp_path / "bundle"
    script = ("cat /data/seed.txt; echo vol > /data/new.txt && sync && echo wrote; "
              "{ echo x > /ro/new.txt; } 2>/dev/null && echo ro-writable || echo ro-refused; "
              "cat /ro/seed.txt")  # fmt: skip
    spec = make_bundle(b, ["sh", "-c", script])
    spec["mounts"] += [
        {"destination": "/data", "type": "ext4", "source": loop, "options": ["rw"]},
        {"destination": "/ro", "type": "ext4", "source": str(ro_image), "options": ["loop", "ro"]},
    ]  # fmt: skip
    (b / "config.json").write_text(json.dumps(spec))
    try:
        r = run_once(cli_env, b, "vols")
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["seed", "wrote", "ro-refused", "seed"], r.stdout + r.stderr
    assert _read_from_image(rw_image, "new.txt") == "vol\n"
