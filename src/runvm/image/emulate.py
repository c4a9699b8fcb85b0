"""Running a guest architecture's programs on this host while an image is built.

The builder runs the staged Python (its import closure, bytecode) and busybox (its applet
list) itself. For the host's architecture they run as they are; for another one under
Debian's user-mode QEMU (``qemu-user``: ``qemu-aarch64 -L <sysroot>``), started explicitly,
so no binfmt handler is registered on the host.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from runvm import arch as arches
from runvm.errors import ImageError


def runner(arch: str, sysroot: Path | None = None) -> list[str]:
    """The argv prefix that runs a program of ``arch`` (whose libraries and loader live under
    ``sysroot``) here: empty on a host of ``arch``. ImageError naming the package to install
    when user-mode QEMU is missing."""
    guest = arches.get(arch)
    if guest == arches.host():
        return []
    for name in (f"qemu-{guest.uname}", f"qemu-{guest.uname}-static"):
        found = shutil.which(name)
        if found:
            return [found, *(["-L", str(sysroot)] if sysroot is not None else [])]
    raise ImageError(
        f"qemu-{guest.uname} not found: building the {arch} guest image on this "
        f"{arches.host().name} host runs its programs under the Debian package qemu-user"
    )
