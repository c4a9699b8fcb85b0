"""A busybox OCI bundle built from Debian's busybox-static (the demo and test container).

Contract: :func:`make_bundle` writes ``<dir>/rootfs`` (the static busybox, its applet links,
/etc/passwd and /etc/group with root and nobody, /tmp) and ``<dir>/config.json`` (the
default spec running ``args``). For the host's architecture the busybox binary is the one
the busybox-static package installed; for another (``arch``), the one in Debian's
busybox-static of that architecture, fetched with apt into the image cache's ``debs/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from runvm import arch as arches
from runvm.errors import ImageError
from runvm.image import debs, emulate
from runvm.oci.default import default_spec

BUSYBOX = Path("/bin/busybox")
PACKAGE = "busybox-static"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _static_busybox() -> Path:
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} not found: install the Debian package busybox-static")
    with BUSYBOX.open("rb") as f:
        head = f.read(4096)  # a dynamic executable names its loader in PT_INTERP, up front
    if b"ld-linux" in head:
        raise ImageError(f"{BUSYBOX} is dynamically linked: install busybox-static")
    return BUSYBOX


def _foreign_busybox(arch: str, into: Path) -> Path:
    """``bin/busybox`` of Debian's busybox-static for ``arch``, unpacked under ``into``."""
    from runvm.image.builder import default_cache_dir

    (pkg,) = debs.packages([PACKAGE], arch)
    deb = debs.download([pkg], default_cache_dir() / "debs")[PACKAGE]
    debs.extract(deb, into)
    return into / "bin/busybox"


def make_rootfs(rootfs: Path, arch: str = "") -> None:
    """The busybox tree at ``rootfs``, for ``arch`` (default: the host's)."""
    arch = arch or arches.host().name
    if arch == arches.host().name:
        _fill(rootfs, _static_busybox(), [])
        return
    with tempfile.TemporaryDirectory(prefix="runvm-busybox-") as tmp:
        _fill(rootfs, _foreign_busybox(arch, Path(tmp)), emulate.runner(arch))


def _fill(rootfs: Path, busybox: Path, runner: list[str]) -> None:
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys",
                "dev"):  # fmt: skip
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(busybox, rootfs / "bin/busybox")
    listing = subprocess.run(
        [*runner, str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in listing:
        link = rootfs / applet
        if applet != "bin/busybox" and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (rootfs / "etc/passwd").write_text(PASSWD)
    (rootfs / "etc/group").write_text(GROUP)


def make_bundle(
    path: Path, args: list[str] | None = None, arch: str = "", **process: Any
) -> dict[str, Any]:
    """Create a busybox bundle of ``arch`` (default: the host's) at ``path``; ``process``
    overrides fields of process."""
    make_rootfs(path / "rootfs", arch)
    spec = default_spec(args or ["sh"])
    spec["process"].update(process)
    (path / "config.json").write_text(json.dumps(spec, indent=2))
    return spec
