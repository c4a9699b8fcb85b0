"""The build cache: reuse of a complete image, `current`, and atomic replacement.

apt and the build steps are replaced by stand-ins; the real build runs in integration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from runvm.errors import ImageError
from runvm.image import builder, current, debs, manifest
from runvm.image.debs import DebPackage
from runvm.image.manifest import ImageInfo
from runvm.image.spec import DEFAULT_SPEC

KERNEL = DebPackage("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", "amd64", "a" * 64)
OTHERS = [DebPackage("python3.11-minimal", "3.11.2-6", "amd64", "b" * 64)]


@pytest.fixture
def fake_apt(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    built: list[str] = []
    monkeypatch.setattr(debs, "host_arch", lambda: "amd64")
    monkeypatch.setattr(debs, "metapackage_target", lambda name, arch="": KERNEL.name)
    monkeypatch.setattr(debs, "packages", lambda names, arch="": [KERNEL]
                        if names == [KERNEL.name] else OTHERS)  # fmt: skip

    def fake_build(work: Path, final: Path, *args: Any) -> ImageInfo:
        built.append(final.name)
        out = work / "out"
        out.mkdir()
        for name in ("vmlinuz", "initrd.img"):
            (out / name).write_bytes(name.encode() + str(len(built)).encode())
        info = ImageInfo(
            kernel=final / "vmlinuz",
            kernel_pvh="",
            root_image="",
            initrd=final / "initrd.img",
            arch=args[-2].arch,
            variant=args[-2].variant,
            kernel_release="6.1.0-56-cloud-amd64",
            kernel_package=KERNEL.name,
            kernel_version=KERNEL.version,
            kernel_sha256=KERNEL.sha256,
            python_version="3.11.2",
            packages={},
            sha256=final.name,
            initrd_sha256="0" * 64,
            sizes={"kernel": 8, "initrd": 11, "initrd_uncompressed": 0},
            modules=(),
            tools="",
        )
        manifest.write(info, out)
        return info

    monkeypatch.setattr(builder, "_build", fake_build)
    return built


def test_build_then_reuse_then_force(tmp_path: Path, fake_apt: list[str]) -> None:
    steps: list[str] = []
    info = builder.build(tmp_path, progress=steps.append)
    assert steps[0] == "resolve packages (debian kernel, amd64)" and steps[-1] == "done"
    assert info.kernel == tmp_path / info.sha256 / "vmlinuz"
    assert (tmp_path / "current").resolve() == tmp_path / info.sha256
    assert current(tmp_path) == info
    assert len(fake_apt) == 1

    assert builder.build(tmp_path) == info  # complete: not built again
    assert len(fake_apt) == 1

    builder.build(tmp_path, force=True)
    assert len(fake_apt) == 2
    assert info.kernel.read_bytes() == b"vmlinuz2"
    assert not list(tmp_path.glob(".build-*"))


def test_incomplete_image_is_rebuilt(tmp_path: Path, fake_apt: list[str]) -> None:
    info = builder.build(tmp_path)
    info.initrd.unlink()
    with pytest.raises(ImageError, match="incomplete"):
        current(tmp_path)
    builder.build(tmp_path)
    assert len(fake_apt) == 2
    assert current(tmp_path).initrd.is_file()


def test_spec_change_builds_a_new_image(tmp_path: Path, fake_apt: list[str]) -> None:
    first = builder.build(tmp_path)
    spec = dataclasses.replace(DEFAULT_SPEC, zstd_level=3)
    second = builder.build(tmp_path, spec=spec)
    assert first.sha256 != second.sha256
    assert current(tmp_path).sha256 == second.sha256
    assert first.kernel.is_file()  # older images stay for VMs that still use them


def test_failed_build_leaves_no_trace(
    tmp_path: Path, fake_apt: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> ImageInfo:
        raise ImageError("kernel module virtiofs not found")

    monkeypatch.setattr(builder, "_build", broken)
    with pytest.raises(ImageError, match="virtiofs"):
        builder.build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    with pytest.raises(ImageError, match="no guest image built"):
        current(tmp_path)


def test_minimal_variant_uses_the_built_kernel_and_its_own_link(
    tmp_path: Path, fake_apt: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runvm.image import kernel
    from runvm.image.spec import ImageSpec

    kdir = tmp_path / "kernels" / ("k" * 64)
    made = kernel.KernelBuild(kdir, "6.1.192", "6.1.192-2")
    monkeypatch.setattr(kernel, "build", lambda cache, report, arch: made)
    debian = builder.build(tmp_path)
    minimal = builder.build(tmp_path, spec=ImageSpec(variant="minimal"))
    assert minimal.sha256 != debian.sha256 and minimal.variant == "minimal"
    assert current(tmp_path, "debian") == debian and current(tmp_path, "minimal") == minimal
    assert current(tmp_path) == minimal  # "current" is the newest build
    # A different kernel build gives a different image.
    monkeypatch.setattr(kernel, "build", lambda cache, report, arch: dataclasses.replace(
        made, directory=tmp_path / "kernels" / ("j" * 64)))  # fmt: skip
    assert builder.build(tmp_path, spec=ImageSpec(variant="minimal")).sha256 != minimal.sha256
    with pytest.raises(ImageError, match="unknown guest image variant"):
        builder.build(tmp_path, spec=ImageSpec(variant="tiny"))


def test_missing_variant_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="runvm image build --kernel minimal"):
        current(tmp_path, "minimal")
