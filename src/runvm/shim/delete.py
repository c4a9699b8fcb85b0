"""``containerd-shim-runvm-v2 ... delete``: clean up after a shim that is gone.

containerd runs it when it loses a shim (killed, crashed) and after every normal shutdown.
If the group's shim still answers, it owns its pod and nothing is touched. One that stopped
answering but is still exiting (it stops accepting before its ``Shutdown`` reply) is waited
for, so that nothing of the pod is left once ``delete`` returns. Then the pod's leftovers are
removed: the VM's run directory, the socket, the record and the host
cgroup directories (processes still in them are killed first: QEMU and virtiofsd die with
the shim by themselves, this is the net under them). Mounts need no cleanup: they lived in
the shim's own mount namespace. Prints a serialized ``DeleteResponse`` (status 137, as for a
process killed by SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runvm import config as cfg
from runvm.errors import RunvmError
from runvm.shim import bundle as bundle_files
from runvm.shim import shim_api_pb2 as spb
from runvm.shim import wire
from runvm.shim.cmdline import ShimArgs, group_id
from runvm.shim.layout import SHARED, Layout
from runvm.shim.owner import alive, locked, wait_for_owner

KILLED_STATUS = 128 + signal.SIGKILL


def delete_main(args: ShimArgs) -> int:
    bundle = Path(args.bundle or os.getcwd())
    group = group_id(bundle_files.read_annotations(bundle), args.id)
    config_path = bundle_files.read_config_path(bundle)
    config = cfg.load(Path(config_path) if config_path else None)
    layout = Layout.of(config, args.address, args.namespace, group, config_path)
    if layout.socket.parent.is_dir():
        with locked(layout.lock):
            if not alive(layout.socket):
                wait_for_owner(owner_of(layout, config))  # a shim that stopped accepting ends
                cleanup(layout)
                if config.shim.scope == "namespace":  # the shared shim's own log
                    for path in layout.of_pod(SHARED).logs:
                        path.unlink(missing_ok=True)
    response = spb.DeleteResponse(
        pid=0, exit_status=KILLED_STATUS, exited_at=wire.timestamp(datetime.now(UTC))
    )
    sys.stdout.buffer.write(response.SerializeToString())
    sys.stdout.flush()
    return 0


def owner_of(layout: Layout, config: cfg.RunvmConfig) -> Path:
    """The pid file of the shim process serving ``layout``'s socket."""
    return layout.of_pod(SHARED).owner if config.shim.scope == "namespace" else layout.owner


def cleanup(layout: Layout) -> None:
    """Remove what a dead shim of ``layout.group`` left behind (idempotent)."""
    record: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        record = dict(json.loads(layout.record.read_text()))
    for directory in sorted(record.get("cgroups") or [], key=len, reverse=True):
        _remove_cgroup(Path(directory))
    network = record.get("network") or {}
    if network.get("netns"):  # QEMU is gone (the cgroups above, or PDEATHSIG)
        from runvm.network.plug import clean_up

        with contextlib.suppress(OSError, RunvmError):
            clean_up(str(network["netns"]), network)
    shutil.rmtree(layout.run_dir, ignore_errors=True)
    for path in (layout.socket, layout.record, layout.lock, layout.owner, *layout.logs):
        path.unlink(missing_ok=True)


def _remove_cgroup(directory: Path, attempts: int = 30) -> None:
    for _ in range(attempts):
        with contextlib.suppress(OSError):
            for pid in (directory / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
