"""The KSM throttler: its schedule of sysfs writes, restoring, and the kick socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from runvm.ksm import server
from runvm.ksm.throttler import LEVELS, SYSFS, TUNABLES, Throttler

PAGE = os.sysconf("SC_PAGE_SIZE")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_sysfs(tmp_path: Path) -> tuple[Path, Path]:
    sysfs = tmp_path / "ksm"
    sysfs.mkdir()
    for name, value in (("run", "0"), ("pages_to_scan", "100"), ("sleep_millisecs", "20")):
        (sysfs / name).write_text(value + "\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: 100 kB\nAnonPages: {1000 * PAGE // 1024} kB\n")
    return sysfs, meminfo


def values(sysfs: Path) -> tuple[str, ...]:
    return tuple((sysfs / n).read_text().strip() for n in TUNABLES)


def test_schedule_steps_down_and_restores(tmp_path: Path) -> None:
    sysfs, meminfo = fake_sysfs(tmp_path)
    clock = Clock()
    t = Throttler(sysfs, meminfo, clock)
    assert t.available and t.tick() is None  # nothing pending before a kick
    t.kick()
    assert values(sysfs) == ("1", "100", "1")  # 1000 anon pages / 10, every 1 ms
    clock.now += LEVELS[0].lasts - 1
    assert t.tick() == 1000.0 + LEVELS[0].lasts and values(sysfs)[2] == "1"
    clock.now += 1
    t.tick()
    assert values(sysfs) == ("1", "10", "10")  # standard
    clock.now += LEVELS[1].lasts
    t.tick()
    assert values(sysfs) == ("1", "2", "100")  # slow
    t.kick()  # a new sandbox: back to aggressive at once
    assert values(sysfs) == ("1", "100", "1")
    for level in LEVELS:  # each level lasts its time from when it was set
        clock.now += level.lasts
        t.tick()
    assert values(sysfs) == ("0", "100", "20") and t.tick() is None  # as found


def test_writes_stop_run_before_changing_settings(tmp_path: Path) -> None:
    sysfs, meminfo = fake_sysfs(tmp_path)
    t = Throttler(sysfs, meminfo, Clock())
    seen: list[tuple[str, str]] = []
    original = Path.write_text

    def spy(self: Path, data: str, *args: object, **kw: object) -> int:
        if self.parent == sysfs:
            seen.append((self.name, data.strip()))
        return original(self, data)

    pytest.MonkeyPatch().setattr(Path, "write_text", spy)
    t.kick()
    assert seen == [("run", "0"), ("pages_to_scan", "100"), ("sleep_millisecs", "1"),
                    ("run", "1")]  # fmt: skip


def test_without_ksm_nothing_is_written(tmp_path: Path) -> None:
    t = Throttler(tmp_path / "absent", tmp_path / "meminfo", Clock())
    assert not t.available
    t.kick()
    assert t.tick() is None
    t.restore()
    assert not (tmp_path / "absent").exists()


def test_server_kicks_and_restores_on_stop(tmp_path: Path) -> None:
    sysfs, meminfo = fake_sysfs(tmp_path)
    sock = tmp_path / "ksm.sock"
    assert not server.kick(sock)  # nobody listens: False, at once
    t = Throttler(sysfs, meminfo)
    loop = asyncio.new_event_loop()
    task = loop.create_task(server.serve(sock, t))

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not sock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        assert server.kick(sock)
        while values(sysfs)[0] != "1":
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(5)
    assert values(sysfs) == ("0", "100", "20") and not sock.exists()


@pytest.mark.skipif(
    not os.access(SYSFS / "run", os.W_OK), reason="needs a writable /sys/kernel/mm/ksm"
)
def test_real_ksm_is_restored(tmp_path: Path) -> None:
    before = values(SYSFS)
    t = Throttler()
    try:
        t.kick()
        assert values(SYSFS)[0] == "1" and values(SYSFS)[2] == "1"
    finally:
        t.restore()
    assert values(SYSFS) == before
