"""The agent's mount of a share: a hot-plugged virtio-fs device the guest is still probing
(its tag unknown: EINVAL) is waited for; other failures are not."""

from __future__ import annotations

import asyncio
import errno

import pytest

from runvm.agent import storage, syscalls


def test_an_unknown_virtiofs_tag_is_retried_until_the_device_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        calls.append(fstype)
        if len(calls) < 3:
            raise OSError(errno.EINVAL, "mount: Invalid argument")

    monkeypatch.setattr(syscalls, "mount", mount)
    asyncio.run(storage._mount("runvm", "/run/runvm/shared", "virtiofs", 0, ""))
    assert calls == ["virtiofs"] * 3


@pytest.mark.parametrize(("fstype", "code"), [("9p", errno.EINVAL), ("virtiofs", errno.EPERM)])
def test_other_failures_are_not_retried(
    monkeypatch: pytest.MonkeyPatch, fstype: str, code: int
) -> None:
    calls: list[str] = []

    def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        calls.append(fstype)
        raise OSError(code, "no")

    monkeypatch.setattr(syscalls, "mount", mount)
    with pytest.raises(OSError):
        asyncio.run(storage._mount("runvm", "/run/runvm/shared", fstype, 0, ""))
    assert len(calls) == 1


def test_a_tag_that_never_appears_fails_after_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        raise OSError(errno.EINVAL, "mount: Invalid argument")

    monkeypatch.setattr(syscalls, "mount", mount)
    monkeypatch.setattr(storage, "DISK_WAIT", 0.2)
    with pytest.raises(OSError, match="Invalid argument"):
        asyncio.run(storage._mount("nope", "/run/runvm/shared", "virtiofs", 0, ""))
