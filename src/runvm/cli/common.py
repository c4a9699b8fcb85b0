"""What the OCI verbs share: the state store, the monitor client, the dead-monitor reaper."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
from pathlib import Path

from google.protobuf.message import Message

from runvm import config as cfg
from runvm.cli.monitor import SERVICE
from runvm.errors import NotFoundError, RpcError, RunvmError
from runvm.runtime.state import ContainerState, StateStore, Status
from runvm.storage.shared import SharedDir
from runvm.ttrpc import Client

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/run/runvm")
SIGNALS = {s.name: s.value for s in signal.Signals}


def store(args: argparse.Namespace) -> StateStore:
    return StateStore(Path(args.root) if args.root else DEFAULT_ROOT / "containers")


def load_config(args: argparse.Namespace) -> cfg.RunvmConfig:
    return cfg.load(args.config)


def parse_signal(text: str) -> int:
    """A signal by number, name or SIG-less name (runc's forms)."""
    if text.isdigit():
        value = int(text)
        if 0 < value < signal.NSIG:
            return value
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in SIGNALS:
            return SIGNALS[name]
    raise RunvmError(f"unknown signal {text!r}")


async def call_monitor(st: StateStore, container_id: str, method: str, request: Message) -> bytes:
    path = st.load(container_id).monitor_socket()
    try:
        client = await Client.connect_unix(str(path))
    except OSError as exc:
        raise RunvmError(f"container {container_id} is not running ({exc.strerror})") from exc
    try:
        return await client.call(SERVICE, method, request.SerializeToString(), timeout=120)
    except RpcError as exc:
        raise RunvmError(exc.message) from exc
    except OSError as exc:  # the monitor ends its connections when the container stops
        raise RunvmError(f"container {container_id}: the monitor closed the connection") from exc
    finally:
        await client.close()


def monitor_request(st: StateStore, container_id: str, method: str, request: Message) -> bytes:
    return asyncio.run(call_monitor(st, container_id, method, request))


def clean_sandbox(state: ContainerState) -> None:
    """Remove what a dead monitor left: shared mounts and the sandbox run directory."""
    if state.sandbox_dir:
        clean_sandbox_dir(Path(state.sandbox_dir))


MAX_LEFTOVERS = 64 << 10


def clean_sandbox_dir(path: Path) -> None:
    """Remove what a dead monitor left in its pod's network namespace (the run directory's
    ``network.json``, read with limits), detach the shared mounts under the sandbox run
    directory ``path``, then remove it."""
    if not path.is_dir():
        return
    _clean_network(path / "network.json")
    SharedDir(path / "shared").teardown()
    shutil.rmtree(path, ignore_errors=True)


def _clean_network(record: Path) -> None:
    try:
        with record.open("rb") as f:
            leftovers = json.loads(f.read(MAX_LEFTOVERS + 1)[:MAX_LEFTOVERS])
    except (OSError, ValueError):
        return
    if not isinstance(leftovers, dict) or not isinstance(leftovers.get("netns"), str):
        return
    from runvm.network.plug import clean_up

    lists = {k: [i for i in v if isinstance(i, int)]
             for k, v in leftovers.items() if isinstance(v, list)}  # fmt: skip
    try:
        clean_up(leftovers["netns"], lists)
    except (OSError, RunvmError) as exc:
        log.warning("network leftovers in %s not removed: %s", leftovers["netns"], exc)


def reap_dead(st: StateStore) -> None:
    """Mark containers whose monitor died (e.g. kill -9) stopped and clean up after them."""
    for cid in st.ids():
        lock = st.dir(cid) / "lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # busy: a command is at work on it
            with contextlib.suppress(NotFoundError, RunvmError):
                state = st.load(cid)
                if state.status != Status.STOPPED and not state.monitor_alive():
                    clean_sandbox(state)
                    state.status = Status.STOPPED
                    st.save(state)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
