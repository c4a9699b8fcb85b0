"""Which architecture a container's VM gets: its program's ELF machine, found in the rootfs as
the container would find it; the annotation; the configured architecture; a pod's one VM."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from test_core import Boots, make_bundle, run

from runvm import arch as arches
from runvm import config as cfg
from runvm.errors import ConfigError
from runvm.runtime import guestarch
from runvm.runtime.pod import Pod
from runvm.runtime.sandbox import Sandbox, SandboxOptions

AMD64, ARM64, ARM32 = 62, 183, 40


def elf(machine: int, big_endian: bool = False) -> bytes:
    """The first 64 bytes of an ELF64 executable for ``machine``."""
    order = ">" if big_endian else "<"
    ident = b"\x7fELF" + bytes([2, 2 if big_endian else 1, 1]) + bytes(9)
    return ident + struct.pack(order + "HHI", 2, machine, 1) + bytes(40)


def rootfs(tmp_path: Path, machine: int = ARM64) -> Path:
    """A merged-/usr tree: /bin -> usr/bin, busybox with absolute and relative links."""
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/busybox").write_bytes(elf(machine))
    (root / "usr/bin/sh").symlink_to("/bin/busybox")
    (root / "usr/bin/env").symlink_to("../../usr/./bin/busybox")
    (root / "usr/bin/loop").symlink_to("loop")
    (root / "usr/bin/script").write_text("#!/usr/bin/env sh\necho hi\n")
    (root / "usr/bin/text").write_text("not a program\n")
    (root / "srv").mkdir()
    (root / "srv/tool").write_bytes(elf(machine))
    return root


def spec(*args: str, env: tuple[str, ...] = (), arch: str = "") -> dict[str, Any]:
    """A config.json with these args and env, annotated with ``arch`` if given."""
    annotations = {guestarch.ANNOTATION: arch} if arch else {}
    return {"process": {"args": list(args), "env": list(env)}, "annotations": annotations}


@pytest.mark.parametrize(
    ("args", "env", "found"),
    [
        (("sh", "-c", "true"), (), (ARM64, "/usr/bin/sh")),  # on the default PATH
        (("/bin/sh",), (), (ARM64, "/bin/sh")),  # through the /bin link and an absolute one
        (("env",), ("PATH=/bin",), (ARM64, "/bin/env")),  # a relative link with ..
        (("script",), ("PATH=/usr/bin",), (ARM64, "/usr/bin/env")),  # #! to its interpreter
        (("tool",), ("PATH=/usr/bin:/srv",), (ARM64, "/srv/tool")),
        (("loop",), ("PATH=/usr/bin",), None),  # a link to itself
        (("text",), ("PATH=/usr/bin",), None),  # neither ELF nor script
        (("missing",), (), None),
        ((), (), None),
    ],
)
def test_the_program_is_found_as_the_container_would_find_it(
    tmp_path: Path, args: tuple[str, ...], env: tuple[str, ...], found: tuple[int, str] | None
) -> None:
    root = rootfs(tmp_path)
    assert guestarch.program_machine(root, spec(*args, env=env)["process"]) == found


def test_links_never_leave_the_rootfs(tmp_path: Path) -> None:
    root = rootfs(tmp_path)
    outside = tmp_path / "host-program"
    outside.write_bytes(elf(AMD64))
    (root / "usr/bin/escape").symlink_to(f"../../../{outside.name}")
    (root / "usr/bin/abs").symlink_to(str(outside))
    assert guestarch.program_machine(root, {"args": ["/usr/bin/escape"]}) is None
    assert guestarch.program_machine(root, {"args": ["/usr/bin/abs"]}) is None


def test_big_endian_elf_is_read_in_its_byte_order(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "p").write_bytes(elf(22, big_endian=True))  # s390x
    assert guestarch.program_machine(root, {"args": ["/p"]}) == (22, "/p")


def config(arch: str = "auto") -> cfg.RunvmConfig:
    return cfg.parse({"hypervisor": {"arch": arch}})


def test_auto_takes_the_programs_architecture_and_the_hosts_without_one(tmp_path: Path) -> None:
    root = rootfs(tmp_path)
    assert guestarch.container_arch(config(), "c", spec("sh"), root).name == "arm64"
    assert guestarch.container_arch(config(), "c", spec("missing"), root) == arches.host()
    assert guestarch.container_arch(config(), "c", spec("sh"), None) == arches.host()


def test_the_annotation_names_it_when_the_rootfs_cannot_be_read(tmp_path: Path) -> None:
    assert guestarch.container_arch(config(), "c", spec("sh", arch="arm64"), None).name == "arm64"
    assert guestarch.container_arch(config(), "c", spec(arch="aarch64"), None).name == "arm64"
    with pytest.raises(ConfigError, match=r"container c: annotation io.runvm.arch: .*'mips'"):
        guestarch.container_arch(config(), "c", spec(arch="mips"), None)
    root = rootfs(tmp_path)
    with pytest.raises(
        ConfigError, match=r"says amd64, but its program /bin/sh is built for arm64"
    ):
        guestarch.container_arch(config(), "c", spec("/bin/sh", arch="amd64"), root)


def test_a_fixed_architecture_refuses_containers_of_another_naming_both(tmp_path: Path) -> None:
    root = rootfs(tmp_path)
    assert guestarch.container_arch(config("arm64"), "c", spec("sh"), root).name == "arm64"
    assert guestarch.container_arch(config("amd64"), "c", spec("missing"), root).name == "amd64"
    want = r"container c is built for arm64 \(its program /bin/sh\), but this runvm's guests are "
    with pytest.raises(ConfigError, match=want + r"amd64 \(hypervisor.arch\)"):
        guestarch.container_arch(config("amd64"), "c", spec("/bin/sh"), root)


def test_a_program_of_an_architecture_without_guests_is_refused(tmp_path: Path) -> None:
    root = rootfs(tmp_path, machine=ARM32)
    with pytest.raises(ConfigError, match=r"its program /bin/sh is built for arm; runvm runs "
                       "containers of amd64 and arm64 only"):  # fmt: skip
        guestarch.container_arch(config(), "c", spec("/bin/sh"), root)


def test_explicit_guest_files_serve_the_hosts_architecture_only() -> None:
    explicit = cfg.parse({"image": {"kernel": "/k", "initrd": "/i"}})
    host = arches.host()
    assert guestarch.for_arch(explicit, host).hypervisor.arch == host.name
    other = next(a for a in arches.ARCHES.values() if a != host)
    with pytest.raises(ConfigError, match=r"image.kernel/image.initrd name explicit files"):
        guestarch.for_arch(explicit, other)
    assert guestarch.for_arch(config(), other).hypervisor.arch == other.name


class ConfigBoots(Boots):
    """Boots that remember the config each sandbox was started with."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.configs: list[cfg.RunvmConfig] = []

    async def __call__(self, pod_id: str, config: cfg.RunvmConfig, o: SandboxOptions) -> Sandbox:
        self.configs.append(config)
        return await super().__call__(pod_id, config, o)


def bundle_of(tmp_path: Path, name: str, machine: int) -> Path:
    path = make_bundle(tmp_path / name)
    (path / "rootfs/bin").mkdir()
    (path / "rootfs/bin/true").write_bytes(elf(machine))
    data = json.loads((path / "config.json").read_text())
    data["process"]["args"] = ["/bin/true"]
    (path / "config.json").write_text(json.dumps(data))
    return path


def test_a_pods_vm_has_its_first_containers_architecture_and_no_other(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    boots = ConfigBoots(tmp_path / "run")

    async def body() -> None:
        pod = Pod("pod", config(), place=False, start_sandbox=boots)
        await pod.create("pause", bundle_of(tmp_path, "p", ARM64), stdin=False)
        assert boots.configs[0].hypervisor.arch == "arm64" and pod.arch == "arm64"
        with pytest.raises(ConfigError, match=r"container app is built for amd64, but pod "
                           "pod's VM is arm64: a pod's containers share one VM"):  # fmt: skip
            await pod.create("app", bundle_of(tmp_path, "a", AMD64), stdin=False)
        assert "app" not in pod.containers
        await pod.create("app2", bundle_of(tmp_path, "a2", ARM64), stdin=False)
        assert len(boots.booted) == 1
        await pod.close()
        assert pod.arch == ""

    run(body)


def test_a_fifo_or_a_device_is_never_opened_for_reading(tmp_path: Path) -> None:
    """A rootfs can hold anything under a program's name; looking it up must not block."""
    import os

    root = tmp_path / "r"
    (root / "bin").mkdir(parents=True)
    os.mkfifo(root / "bin/fifo")
    assert guestarch.program_machine(root, {"args": ["/bin/fifo"]}) is None
    assert guestarch._head(root / "bin/fifo") is None
    assert guestarch._head(Path("/dev/null")) is None
