"""Templates made on first use: one per configuration, made once even when starts race,
stale ones and dead makers' leftovers swept, failures remembered, unsafe directories refused.
The template VM itself is faked here (``template.make``); tests/integration/test_template.py
makes real ones."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from runvm import config as cfg
from runvm.hypervisor.accel import AccelReport
from runvm.hypervisor.base import Accel
from runvm.runtime import firstuse, template
from runvm.runtime.guestimage import GuestFiles
from runvm.storage import mounts

ACCEL = AccelReport(Accel.TCG, "absent", "no KVM here")


@pytest.fixture
def shm() -> Iterator[Path]:
    base = Path(f"/dev/shm/runvm-unit-{os.getpid()}")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def guest(tmp_path: Path) -> GuestFiles:
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd.img").write_bytes(b"initrd")
    return GuestFiles(tmp_path / "vmlinuz", tmp_path / "initrd.img")


def config_in(root: Path, memory_mib: int = 256) -> cfg.RunvmConfig:
    return cfg.RunvmConfig(
        hypervisor=cfg.HypervisorConfig(path="/bin/true", memory_mib=memory_mib),
        factory=cfg.FactoryConfig(templates_dir=str(root)),
    )


class Maker:
    """Stands in for the template VM: writes a complete template, or fails."""

    def __init__(self, fail: str = "") -> None:
        self.made: list[Path] = []
        self.fail = fail

    async def __call__(
        self, config: cfg.RunvmConfig, directory: Path, files: GuestFiles, accel: AccelReport
    ) -> template.Template:
        await asyncio.sleep(0.05)  # a racing start arrives while this one makes it
        if self.fail:
            raise RuntimeError(self.fail)
        self.made.append(directory)
        (directory / "memory").write_bytes(b"\0" * 16)
        (directory / "state").write_bytes(b"state")
        key = template.template_key(config, files, accel.accel.value, "/bin/true")
        (directory / template.META).write_text(json.dumps({"key": key}))
        return template.Template(directory, {"key": key})


def test_racing_first_starts_make_one_template_and_both_clone_it(
    shm: Path, guest: GuestFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    maker = Maker()
    monkeypatch.setattr(template, "make", maker)
    config = config_in(shm / "templates")

    async def body() -> list[template.Template | None]:
        return list(await asyncio.gather(*(firstuse.template_for(config, guest, ACCEL)
                                           for _ in range(2))))  # fmt: skip

    got = asyncio.run(body())
    assert len(maker.made) == 1 and ".new-" in maker.made[0].name
    assert got[0] is not None and got[1] is not None
    assert got[0].directory == got[1].directory and ".new-" not in got[0].directory.name
    assert sorted(p.name for p in (shm / "templates").iterdir()) == [".lock", got[0].directory.name]
    assert (shm / "templates").stat().st_mode & 0o777 == 0o700
    # a later start finds it without making another
    assert asyncio.run(firstuse.template_for(config, guest, ACCEL)) is not None
    assert len(maker.made) == 1


def test_each_configuration_gets_its_own_and_stale_ones_are_swept(
    shm: Path, guest: GuestFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    maker = Maker()
    monkeypatch.setattr(template, "make", maker)
    root = shm / "templates"
    small = asyncio.run(firstuse.template_for(config_in(root), guest, ACCEL))
    assert small is not None
    (root / "x.new-999999").mkdir()  # what a maker killed mid-way left
    big = asyncio.run(firstuse.template_for(config_in(root, 512), guest, ACCEL))
    assert big is not None and big.directory != small.directory
    assert small.directory.exists() and not (root / "x.new-999999").exists()
    guest.kernel.write_bytes(b"a rebuilt kernel")  # both templates now name a kernel gone
    newer = asyncio.run(firstuse.template_for(config_in(root, 768), guest, ACCEL))
    assert newer is not None
    assert not small.directory.exists() and not big.directory.exists()


def test_a_failure_is_remembered_and_the_start_boots_cold(
    shm: Path, guest: GuestFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    maker = Maker(fail="the template VM did not boot")
    monkeypatch.setattr(template, "make", maker)
    root = shm / "templates"
    assert asyncio.run(firstuse.template_for(config_in(root), guest, ACCEL)) is None
    failed = list(root.glob("*.failed"))
    assert len(failed) == 1 and "did not boot" in failed[0].read_text()
    assert not list(root.glob("*.new-*"))
    maker.fail = ""
    assert asyncio.run(firstuse.template_for(config_in(root), guest, ACCEL)) is None  # not yet
    monkeypatch.setattr(firstuse, "RETRY_AFTER", 0.0)
    assert asyncio.run(firstuse.template_for(config_in(root), guest, ACCEL)) is not None
    assert not list(root.glob("*.failed"))


def test_a_directory_not_on_tmpfs_or_writable_by_others_is_refused(
    shm: Path, tmp_path: Path, guest: GuestFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    maker = Maker()
    monkeypatch.setattr(template, "make", maker)
    if mounts.fs_type(str(tmp_path)) != "tmpfs":
        assert asyncio.run(firstuse.template_for(config_in(tmp_path / "t"), guest, ACCEL)) is None
    loose = shm / "loose"
    loose.mkdir(parents=True)
    loose.chmod(0o777)
    assert asyncio.run(firstuse.template_for(config_in(loose), guest, ACCEL)) is None
    link = shm / "link"
    link.symlink_to(loose)
    assert asyncio.run(firstuse.template_for(config_in(link / "t"), guest, ACCEL)) is None
    assert maker.made == []


def test_the_key_hash_depends_on_every_key_entry(guest: GuestFiles) -> None:
    config = config_in(Path("/nonexistent"))
    key = template.template_key(config, guest, "tcg", "/bin/true")
    other = template.template_key(replace(config, hypervisor=replace(config.hypervisor,
                                  vcpus=2)), guest, "tcg", "/bin/true")  # fmt: skip
    assert firstuse.key_hash(key) == firstuse.key_hash(dict(reversed(list(key.items()))))
    assert firstuse.key_hash(key) != firstuse.key_hash(other)
