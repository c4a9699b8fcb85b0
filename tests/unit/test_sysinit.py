"""The agent's PID 1 steps that are pure file writes, on a fake sysfs file."""

from __future__ import annotations

from pathlib import Path

import pytest

from runvm.agent import sysinit


def test_page_reporting_order_from_the_kernel_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    knob = tmp_path / "page_reporting_order"
    knob.write_text("10\n")
    monkeypatch.setattr(sysinit, "PAGE_REPORTING_ORDER", knob)
    sysinit.set_page_reporting_order({"channel": "virtio-serial"})
    assert knob.read_text() == "10\n"  # not asked: the kernel's default stays
    sysinit.set_page_reporting_order({"page_reporting_order": "x; reboot"})
    assert knob.read_text() == "10\n"  # not a number: ignored
    sysinit.set_page_reporting_order({"page_reporting_order": "5"})
    assert knob.read_text() == "5"
    monkeypatch.setattr(sysinit, "PAGE_REPORTING_ORDER", tmp_path / "absent")
    sysinit.set_page_reporting_order({"page_reporting_order": "5"})  # no balloon: no error
    assert not (tmp_path / "absent").exists()
