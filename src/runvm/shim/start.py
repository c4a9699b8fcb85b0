"""``containerd-shim-runvm-v2 ... start``: find or start the group's shim, print its address.

Cheap by design (containerd runs it for every container): read the runtime options on stdin
and the bundle's annotations, compute the group's socket; if a shim already answers there
(a pod's later containers), just write the ``address`` file and print the address. Otherwise
bind the socket, fork the server with it (detached from containerd's pipes, in a new
session), wait until it is ready, then write and print the address. Concurrent starts of one
group are serialized by a lock file; a shim of the group that is still exiting is waited for
(:mod:`runvm.shim.owner`).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from runvm import config as cfg
from runvm import files
from runvm.errors import RunvmError
from runvm.shim import bundle as bundle_files
from runvm.shim.cmdline import ShimArgs, container_kind, group_id
from runvm.shim.layout import SHARED, Layout
from runvm.shim.owner import alive, locked, wait_for_owner
from runvm.spawn import fork_helper

MAX_OPTIONS = 1 << 20


def read_options() -> str | None:
    """The config path from the runtime options containerd writes on stdin, if any."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    data = sys.stdin.buffer.read(MAX_OPTIONS + 1)
    if len(data) > MAX_OPTIONS:
        raise RunvmError(f"runtime options on stdin are larger than {MAX_OPTIONS} bytes")
    if not data:
        return None
    from runvm.shim import wire  # protobuf: only when there are options to decode

    return wire.parse_options(data)


def start_main(args: ShimArgs) -> int:
    config_path = read_options()
    config = cfg.load(Path(config_path) if config_path else None)
    bundle = Path(args.bundle or os.getcwd())
    bundle_files.write_config_path(bundle, config_path)
    annotations = bundle_files.read_annotations(bundle)
    group = group_id(annotations, args.id)
    layout = Layout.of(config, args.address, args.namespace, group, config_path)
    files.make_dirs(layout.socket.parent)
    with locked(layout.lock):
        try:
            if not alive(layout.socket):
                if container_kind(annotations, args.id) == "container":
                    raise RunvmError(f"container {args.id}: its pod sandbox {group} has no "
                                     "running shim (create the sandbox first)")  # fmt: skip
                serves = layout.of_pod(SHARED) if config.shim.scope == "namespace" else layout
                wait_for_owner(serves.owner)  # a shim on its way out finishes first
                _spawn_server(args, serves, config, bundle)
        except BaseException:
            layout.lock.unlink(missing_ok=True)  # no shim: nothing of the group may stay
            raise
    bundle_files.write_address(bundle, layout.address)
    sys.stdout.write(layout.address)
    sys.stdout.flush()
    return 0


def _spawn_server(args: ShimArgs, layout: Layout, config: cfg.RunvmConfig, bundle: Path) -> None:
    from runvm.shim.server import ServeArgs, serve_main

    layout.socket.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(layout.socket))
        os.chmod(layout.socket, 0o600)
        sock.listen(128)
        serve = ServeArgs(layout, config, bundle, sock.fileno(), args.debug)
        fork_helper(lambda ready: serve_main(serve, ready), keep=(sock.fileno(),))
    except BaseException:
        layout.socket.unlink(missing_ok=True)
        raise
    finally:
        sock.close()
