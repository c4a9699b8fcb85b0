"""Starting the virtiofsd that exports one sandbox's shared directory.

QEMU 7.2's C virtiofsd serves one VM connection and exits when the VM disconnects.
It runs sandboxed in its own namespaces (``sandbox=namespace``) and leaves RLIMIT_NOFILE as
it is (``--rlimit-nofile=0``: raising it needs CAP_SYS_RESOURCE, which not every host has).
"""

from __future__ import annotations

import os
from pathlib import Path

from runvm.errors import LaunchError
from runvm.process import Child, ChildSpec

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
READY_TIMEOUT = 10.0


def argv(
    socket_path: Path, source: Path, binary: str = VIRTIOFSD, cache: str = "auto"
) -> list[str]:
    return [
        binary, f"--socket-path={socket_path}", "-o", f"source={source}",
        "-o", f"cache={cache}", "-o", "sandbox=namespace", "-o", "xattr",
        "--rlimit-nofile=0",
    ]  # fmt: skip


async def start(socket_path: Path, source: Path, log_path: Path, cache: str = "auto") -> Child:
    """Start virtiofsd; returns once its socket exists (it then waits for QEMU)."""
    args = argv(socket_path, source, cache=cache)
    if not os.access(VIRTIOFSD, os.X_OK):
        raise LaunchError(
            f"{VIRTIOFSD} not found: install the Debian package qemu-system-common", args, None
        )
    child = await Child.launch(
        ChildSpec(name="virtiofsd", argv=args, log_path=log_path, stamped=True)
    )
    await child.wait_ready(socket_path.exists, READY_TIMEOUT)
    return child
