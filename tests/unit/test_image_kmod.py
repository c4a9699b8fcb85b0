"""Kernel modules: names, .modinfo, load order and resolution in a module tree."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_image_elf import make_elf

from runvm.errors import ImageError
from runvm.image import kmod
from runvm.image.builder import current


def _ko(depends: str, name: str = "") -> bytes:
    info = f"license=GPL\0depends={depends}\0name={name}\0alias=a\0alias=b\0"
    return make_elf({".text": b"\xc3", ".modinfo": info.encode()})


def test_module_name_normalises() -> None:
    assert kmod.module_name("virtio-rng.ko") == "virtio_rng"
    assert kmod.module_name("virtio_net.ko.xz") == "virtio_net"
    assert kmod.module_name("overlay.ko.zst") == "overlay"
    assert kmod.module_name("vmw_vsock_virtio_transport") == "vmw_vsock_virtio_transport"


def test_modinfo_groups_keys() -> None:
    info = kmod.modinfo(_ko("virtio,virtio_ring", "virtio_net"))
    assert info["alias"] == ["a", "b"]
    assert kmod.depends_of(info) == ("virtio", "virtio_ring")
    assert kmod.depends_of(kmod.modinfo(_ko(""))) == ()
    with pytest.raises(ImageError, match=r"no \.modinfo"):
        kmod.modinfo(make_elf({".text": b""}), "x.ko")


GRAPH = {
    "virtio_net": ["virtio_ring", "virtio", "net_failover"],
    "net_failover": ["failover"],
    "failover": [],
    "virtio": [],
    "virtio_ring": [],
    "virtio_blk": ["virtio", "virtio_ring"],
    "overlay": [],
}


def _deps(name: str) -> Sequence[str]:
    if name not in GRAPH:
        raise ImageError(f"kernel module {name} not found")
    return GRAPH[name]


def test_load_order_puts_dependencies_first() -> None:
    order = kmod.load_order(["virtio_net", "virtio_blk", "overlay"], _deps)
    assert order == [
        "virtio_ring",
        "virtio",
        "failover",
        "net_failover",
        "virtio_net",
        "virtio_blk",
        "overlay",
    ]
    for name in order:
        assert all(order.index(dep) < order.index(name) for dep in GRAPH[name])


def test_load_order_dedups_and_normalises() -> None:
    assert kmod.load_order(["virtio-blk", "virtio_blk", "virtio"], _deps) == [
        "virtio",
        "virtio_ring",
        "virtio_blk",
    ]


def test_load_order_cycle_and_missing() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"]}
    with pytest.raises(ImageError, match="cycle: a -> b -> c -> a"):
        kmod.load_order(["a"], lambda n: graph[n])
    with pytest.raises(ImageError, match="nosuch"):
        kmod.load_order(["nosuch"], _deps)


def _tree(tmp_path: Path) -> Path:
    moddir = tmp_path / "lib/modules/6.1.0-test"
    files = {
        "kernel/drivers/virtio/virtio.ko": _ko(""),
        "kernel/drivers/virtio/virtio_ring.ko": _ko(""),
        "kernel/drivers/char/hw_random/virtio-rng.ko": _ko("virtio_ring,virtio"),
        "kernel/drivers/net/virtio_net.ko": _ko("virtio,virtio_ring,net_failover"),
    }
    for rel, data in files.items():
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(data)
    (moddir / "modules.builtin").write_text("kernel/net/core/net_failover.ko\n")
    return moddir


def test_resolve_modules_in_tree(tmp_path: Path) -> None:
    moddir = _tree(tmp_path)
    mods = kmod.resolve_modules(moddir, ["virtio_rng", "virtio_net"])
    assert [m.relpath for m in mods] == [
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/char/hw_random/virtio-rng.ko",
        "kernel/drivers/net/virtio_net.ko",  # net_failover is built in
    ]
    assert mods[2].name == "virtio_rng"
    assert mods[3].data == (moddir / mods[3].relpath).read_bytes()


def test_resolve_names_the_missing_module(tmp_path: Path) -> None:
    moddir = _tree(tmp_path)
    with pytest.raises(ImageError, match="kernel module virtiofs not found"):
        kmod.resolve_modules(moddir, ["virtio_net", "virtiofs"])
    (moddir / "kernel/drivers/virtio/virtio.ko").unlink()
    with pytest.raises(ImageError, match=r"virtio \(needed by virtio_rng\) not found"):
        kmod.resolve_modules(moddir, ["virtio_rng"])


@pytest.mark.skipif(shutil.which("xz") is None, reason="xz not installed")
def test_compressed_module_is_stored_uncompressed(tmp_path: Path) -> None:
    moddir = _tree(tmp_path)
    path = moddir / "kernel/drivers/virtio/virtio.ko"
    subprocess.run(["xz", "--check=crc32", str(path)], check=True)
    mods = kmod.resolve_modules(moddir, ["virtio"])
    assert mods[0].relpath == "kernel/drivers/virtio/virtio.ko"
    assert mods[0].data == _ko("")


def _real_module(name: str) -> bytes:
    """A module from the Debian-kernel image's initramfs (the minimal one has none), or skip."""
    try:
        info = current(variant="debian")
    except ImageError as exc:
        pytest.skip(f"no guest image built to read a real module from: {exc}")
    unpacked = subprocess.run(
        f"zstd -dcq {info.initrd} | cpio -i --quiet --to-stdout '*/{name}'",
        shell=True,
        capture_output=True,
        check=True,
    )
    if not unpacked.stdout:
        pytest.skip(f"{name} not in {info.initrd}")
    return unpacked.stdout


def test_real_module_modinfo() -> None:
    info = kmod.modinfo(_real_module("virtio_net.ko"), "virtio_net.ko")
    assert info["name"] == ["virtio_net"]
    assert set(kmod.depends_of(info)) == {"virtio", "virtio_ring", "net_failover"}
    assert info["vermagic"][0].split()[0] == current(variant="debian").kernel_release
