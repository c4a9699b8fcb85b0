"""The minimal kernel's configuration: fragments parsed and checked against the result."""

from __future__ import annotations

import shutil

import pytest

from runvm import arch as arches
from runvm.errors import ImageError
from runvm.image import kernel


def test_parse_config_reads_set_and_unset_options() -> None:
    text = '# comment\nCONFIG_A=y\nCONFIG_B=64\n# CONFIG_C is not set\nCONFIG_D="x y"\n'
    assert kernel.parse_config(text) == {
        "CONFIG_A": "y", "CONFIG_B": "64", "CONFIG_C": "n", "CONFIG_D": '"x y"'
    }  # fmt: skip


def test_unmet_options_names_what_kconfig_dropped() -> None:
    final = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n"
    unmet = kernel.unmet_options({"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "y",
                                  "CONFIG_D": "y"}, final)  # fmt: skip
    assert unmet == ["CONFIG_B=y (got n)", "CONFIG_C=y (got m)", "CONFIG_D=y (got n)"]
    assert kernel.unmet_options({"CONFIG_A": "y"}, final) == []


@pytest.mark.parametrize("arch", list(arches.ARCHES))
def test_every_fragment_option_is_documented_and_built_in(arch: str) -> None:
    """Each option sits under a comment saying why; nothing is a module (the image has none)."""
    texts = kernel.fragments(arch)
    assert list(texts) == [*kernel.COMMON_FRAGMENTS, kernel.target(arch).make_arch]
    for name, text in texts.items():
        lines = text.splitlines()
        assert lines[0].startswith(f"# {name}:"), f"{name}.config starts with its purpose"
        seen_comment = False
        for line in lines:
            if line.startswith("#"):
                seen_comment = True
            elif not line.strip():
                seen_comment = False
            else:
                assert seen_comment, f"{name}.config: {line} has no comment above its group"
                assert not line.endswith("=m"), f"{name}.config: {line}: no modules"
    options = [kernel.parse_config(t) for t in texts.values()]
    for wanted in (
        "CONFIG_VIRTIO_FS",
        "CONFIG_9P_FS",
        "CONFIG_NET_9P_VIRTIO",
        "CONFIG_VIRTIO_BLK",
        "CONFIG_OVERLAY_FS",
        "CONFIG_HOTPLUG_PCI_PCIE",
        "CONFIG_SECCOMP_FILTER",
        {"amd64": "CONFIG_HOTPLUG_PCI_ACPI", "arm64": "CONFIG_PCI_HOST_GENERIC"}[arch],
        {"amd64": "CONFIG_SERIAL_8250_CONSOLE", "arm64": "CONFIG_SERIAL_AMBA_PL011_CONSOLE"}[arch],
    ):
        assert any(o.get(wanted) == "y" for o in options), wanted


def test_the_architectures_fragments_name_no_option_of_the_other() -> None:
    """What one architecture's fragment sets is its own: the common fragments hold the rest."""
    amd64 = kernel.parse_config(kernel.fragments("amd64")["x86_64"])
    arm64 = kernel.parse_config(kernel.fragments("arm64")["arm64"])
    assert set(amd64) & set(arm64) == {"CONFIG_PARAVIRT"}  # each architecture's own
    common = {k for n in kernel.COMMON_FRAGMENTS
              for k in kernel.parse_config(kernel.fragments()[n])}  # fmt: skip
    assert not common & (set(amd64) | set(arm64))


def test_a_kernel_of_another_architecture_is_cross_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arches, "host", lambda: arches.ARCHES["amd64"])
    assert kernel.make_args("amd64") == ["ARCH=x86_64"]
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert kernel.make_args("arm64") == ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ImageError, match="Debian package gcc-aarch64-linux-gnu"):
        kernel.make_args("arm64")
    monkeypatch.setattr(arches, "host", lambda: arches.ARCHES["arm64"])
    with pytest.raises(ImageError, match="Debian package gcc-x86-64-linux-gnu"):
        kernel.make_args("amd64")
    assert kernel.KernelBuild.outputs("arm64") == ("Image", "config", "release")
    assert kernel.KernelBuild.outputs("amd64") == ("bzImage", "vmlinux", "config", "release")


def test_build_hash_changes_with_source_and_fragments() -> None:
    texts = kernel.fragments()
    base = kernel.build_hash("6.1.192-2", texts)
    assert base == kernel.build_hash("6.1.192-2", dict(texts))
    assert base != kernel.build_hash("6.1.193-1", texts)
    changed = {**texts, "net": texts["net"] + "CONFIG_BRIDGE=y\n"}
    assert base != kernel.build_hash("6.1.192-2", changed)
    commented = {**texts, "net": texts["net"] + "# a new remark\n"}
    assert base == kernel.build_hash("6.1.192-2", commented)  # comments cost no rebuild
    assert base != kernel.build_hash("6.1.192-2", texts, "arm64")
