"""Container state on disk: one directory per container under the CLI's ``--root``.

Layout: ``<root>/<id>/state.json`` (written atomically: temp file + rename), ``<root>/<id>/lock``
(``flock`` held by every command that changes the container). The monitor's control socket
lives in the sandbox's run directory, whose path is short enough for AF_UNIX whatever --root is.

The lifecycle follows the runtime spec: ``creating -> created -> running -> stopped``; start only
from ``created``; kill only in ``created``/``running``; delete only ``stopped`` (unless forced).
A container whose monitor process is gone is ``stopped``, whatever the file says: the monitor's
life is the container's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runvm import files
from runvm.errors import ConfigError, NotFoundError
from runvm.names import check_id
from runvm.runtime import lifecycle
from runvm.runtime.lifecycle import LIVE, State

OCI_VERSION = "1.0.2"


Status = State  # the CLI's states are the runtime's (runvm.runtime.lifecycle)


def require(what: str, status: Status, container_id: str) -> None:
    lifecycle.require(what, status, f"container {container_id}")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _owner() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a live process from a recycled pid.

    None when the process is gone or a zombie: it has exited, only its parent (a subreaper
    such as containerd's shim or conmon) has not collected its status yet.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass
class ContainerState:
    id: str
    bundle: str
    rootfs: str
    status: Status = Status.CREATING
    pid: int = 0  # the monitor: its life is the container init's
    pid_start_time: int = 0
    created: str = field(default_factory=now_rfc3339)
    annotations: dict[str, str] = field(default_factory=dict)
    owner: str = field(default_factory=_owner)
    exit_status: int | None = None
    sandbox_dir: str = ""

    def monitor_socket(self) -> Path:
        return Path(self.sandbox_dir) / "monitor.sock"

    def monitor_alive(self) -> bool:
        return self.pid > 0 and _start_time(self.pid) == self.pid_start_time

    def effective_status(self) -> Status:
        if self.status in LIVE and not self.monitor_alive():
            return Status.STOPPED
        return self.status

    def oci(self) -> dict[str, Any]:
        """The OCI state document (runc's fields and formats)."""
        status = self.effective_status()
        doc: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": self.pid if status in LIVE else 0,
            "status": status.value,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
        }
        if self.annotations:
            doc["annotations"] = self.annotations
        return doc


class StateStore:
    """The ``--root`` directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, container_id: str) -> Path:
        """The container's directory; ConfigError for an id that is not a plain name."""
        return self.root / check_id(container_id, "container")

    def exists(self, container_id: str) -> bool:
        return (self.dir(container_id) / "state.json").exists()

    def load(self, container_id: str) -> ContainerState:
        path = self.dir(container_id) / "state.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFoundError("container does not exist") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"state of {container_id} is unreadable: {exc}") from exc
        raw["status"] = Status(raw["status"])
        return ContainerState(**raw)

    def save(self, state: ContainerState) -> None:
        directory = self.dir(state.id)
        data = asdict(state)
        data["status"] = state.status.value
        files.write_atomic(directory / "state.json", json.dumps(data).encode())

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/state.json"))

    @contextlib.contextmanager
    def locked(self, container_id: str, create: bool = False) -> Iterator[Path]:
        """Hold the container's lock; with ``create`` make its directory (must be new)."""
        directory = self.dir(container_id)
        if create:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                directory.mkdir(mode=0o700)
            except FileExistsError:
                raise ConfigError(f"container with id {container_id} already exists") from None
        elif not directory.is_dir():
            raise NotFoundError("container does not exist")
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield directory
        finally:
            os.close(fd)

    def record_monitor(self, state: ContainerState, pid: int) -> None:
        state.pid = pid
        state.pid_start_time = _start_time(pid) or 0
