"""Running the guest architecture's programs while an image is built: as they are on a host
of that architecture, under user-mode QEMU (started explicitly, with the sysroot) otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runvm import arch as arches
from runvm.errors import ImageError
from runvm.image import emulate


def test_the_hosts_programs_run_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arches, "host", lambda: arches.ARCHES["amd64"])
    assert emulate.runner("amd64", Path("/staging")) == []


def test_another_architectures_run_under_user_mode_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arches, "host", lambda: arches.ARCHES["amd64"])
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert emulate.runner("arm64", Path("/staging")) == ["/usr/bin/qemu-aarch64", "-L", "/staging"]
    assert emulate.runner("arm64") == ["/usr/bin/qemu-aarch64"]  # a static program
    monkeypatch.setattr(arches, "host", lambda: arches.ARCHES["arm64"])
    assert emulate.runner("amd64", Path("/s"))[0] == "/usr/bin/qemu-x86_64"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    want = "qemu-x86_64 not found: building the amd64 guest image on this arm64 host runs its"
    with pytest.raises(ImageError, match=want + " programs under the Debian package qemu-user"):
        emulate.runner("amd64")


def test_an_architecture_without_guests_is_refused() -> None:
    from runvm.errors import ConfigError

    with pytest.raises(ConfigError, match="runs guests of amd64 and arm64 only"):
        emulate.runner("riscv64")
