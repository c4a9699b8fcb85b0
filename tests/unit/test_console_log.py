from __future__ import annotations

from pathlib import Path

from runvm.hypervisor.qemu.driver import ConsoleLog


def test_console_log_is_capped_at_twice_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    log = ConsoleLog(path, cap=100)
    for i in range(50):
        log.write(f"line {i:04}\n".encode())  # 10 bytes each, 500 in all
    log.write(b"x" * 1000)  # one chunk larger than the cap keeps only its tail
    log.close()
    rotated = path.with_name("console.log.1")
    assert path.stat().st_size <= 100 and rotated.stat().st_size <= 100
    assert path.read_bytes() == b"x" * 100
    assert rotated.read_bytes().endswith(b"line 0049\n")
