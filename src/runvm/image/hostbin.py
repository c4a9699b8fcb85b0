"""Putting a host program (and the shared libraries it loads) into a busybox rootfs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def copy_program(rootfs: Path, name: str) -> None:
    """Copy ``name`` from the host PATH and every library ``ldd`` lists into ``rootfs``, at
    the same paths (symlinks kept as links to the resolved copies)."""
    binary = Path(shutil.which(name) or f"/usr/bin/{name}")
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    files = [binary] + [Path(w) for line in out.splitlines() for w in line.split()
                        if w.startswith("/")]  # fmt: skip
    for path in files:
        target = rootfs / str(path.resolve()).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path.resolve(), target)
        link = rootfs / str(path).lstrip("/")
        if link != target and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
