"""Checkpoint and restore of a container's processes with CRIU, inside the guest.

The host shares three directories in for the call: the image's tools (CRIU, with the
libraries the guest image lacks), the checkpoint's image directory and a work directory for
CRIU's logs and statistics. Only the guest parses what CRIU wrote: a broken or hostile image
can harm nothing but this VM.

Dump (:func:`dump`): the container's init and every process below it, frozen through its
cgroup. The mounts CRIU cannot make inside the container are external: shares and disks by
their mount point, binds of the guest's device nodes (masked paths) by the node.
:data:`RECORD` (in the images) lists them with the init's stdio (the pipes the agent holds)
so a restore can hand the new container's in their place. Without ``leave_running`` CRIU
kills the processes once the images are complete.

Restore (:func:`restore`): into a container set up as for a create (its bundle and held
root), with a cgroup of its own that CRIU runs in; every external mount gets the new
container's source for the same mount point, fresh stdio pipes replace the recorded ones, and
the restored init becomes the agent's child. crun's state is written for it, so crun's other
commands (exec, kill, pause, update) work as for a container crun made.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from runvm.agent import crun
from runvm.agent.proc import Proc
from runvm.agent.reaper import Reaper

RECORD = "container.json"
MAX_RECORD = 1 << 20
MAX_MOUNTS = 1024
MAX_LOG = 64 * 1024
INTERNAL = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup2", "cgroup"}
_OCTAL = re.compile(r"\\([0-7]{3})")
_PIPE = re.compile(r"pipe:\[\d+\]")
BUSYBOX = "/bin/busybox"


class CriuError(Exception):
    """CRIU failed; the message names the phase and CRIU's last words."""


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def external_mounts(mountinfo: str) -> list[dict[str, str]]:
    """The mounts of a container (its init's ``mountinfo``) CRIU must be told are external:
    ``{"mountpoint", "cookie", "kind"}`` with kind ``device`` (a bind of a guest device node,
    restored from the same node) or ``share`` (a share or disk, restored from the new
    container's source for the same mount point). The root and the kernel's own file
    systems made inside the container are CRIU's to restore."""
    found = []
    for line in mountinfo.splitlines()[:MAX_MOUNTS]:
        left, sep, right = line.partition(" - ")
        fields, kinds = left.split(), right.split()
        if not sep or len(fields) < 5 or not kinds:
            continue
        root, point, fstype = _unescape(fields[3]), _unescape(fields[4]), kinds[0]
        if point == "/" or fstype in INTERNAL:
            continue
        if fstype == "devtmpfs":
            found.append({"mountpoint": point, "cookie": f"/dev{root}", "kind": "device"})
        else:
            found.append({"mountpoint": point, "cookie": point, "kind": "share"})
    return found


def criu_env(tools: Path) -> dict[str, str]:
    """CRIU's environment: the tools' programs (it runs tar and gzip) and libraries first."""
    dirs = sorted({str(p.parent) for p in tools.rglob("*.so*")})
    path = ":".join([f"{tools}/usr/sbin", f"{tools}/usr/bin", f"{tools}/bin",
                     "/usr/sbin:/usr/bin:/sbin:/bin"])  # fmt: skip
    return {"PATH": path, "LD_LIBRARY_PATH": ":".join(dirs)}


def _tail(log: Path) -> str:
    lines = crun.tail_lines(log)
    errors = [ln for ln in lines if "Error" in ln] or lines
    return "; ".join(ln.strip() for ln in errors[-3:])


def _flags(options: Any) -> list[str]:
    flags = []
    if options.tcp_established:  # lock the connections with the guest's nftables
        flags += ["--tcp-established", "--network-lock", "nftables"]
    if options.file_locks:
        flags.append("--file-locks")
    return flags


async def dump(reaper: Reaper, cid: str, pid: int, root: Path, cgroup: Path,
               options: Any) -> None:  # fmt: skip
    """See the module docstring; ``root``: the container's root as the agent sees it."""
    images, work, tools = Path(options.images), Path(options.work), Path(options.tools)
    mounts = external_mounts(Path(f"/proc/{pid}/mountinfo").read_text())
    stdio = []
    for fd in range(3):
        try:
            stdio.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            stdio.append("")
    (images / RECORD).write_text(json.dumps({"container_id": cid, "mounts": mounts,
                                             "stdio": stdio}))  # fmt: skip
    argv = [str(tools / "usr/sbin/criu"), "dump", "-t", str(pid), "-D", str(images),
            "-W", str(work), "-o", "dump.log", "-v4", "--root", str(root), "--freeze-cgroup",
            str(cgroup), "--manage-cgroups=ignore", *_flags(options)]  # fmt: skip
    for m in mounts:
        argv += ["--external", f"mnt[{m['mountpoint']}]:{m['cookie']}"]
    if options.leave_running:
        argv.append("--leave-running")
    if await reaper.run(argv, criu_env(tools)) != 0:
        raise CriuError(f"checkpoint of {cid}: CRIU's dump failed: {_tail(work / 'dump.log')}")


def read_record(images: Path) -> dict[str, Any]:
    """What :func:`dump` recorded, checked (ValueError names what is wrong)."""
    try:
        with (images / RECORD).open("rb") as f:
            data = f.read(MAX_RECORD + 1)
    except OSError as exc:
        raise ValueError(f"{RECORD}: {exc.strerror}") from exc
    if len(data) > MAX_RECORD:
        raise ValueError(f"{RECORD} is over {MAX_RECORD} bytes")
    record = json.loads(data)
    mounts, stdio = record.get("mounts"), record.get("stdio")
    if not isinstance(mounts, list) or not isinstance(stdio, list) or len(stdio) != 3:
        raise ValueError(f"{RECORD} is not a checkpoint's record")
    for m in mounts[:MAX_MOUNTS]:
        if not (isinstance(m, dict) and all(isinstance(m.get(k), str) for k in
                                            ("mountpoint", "cookie", "kind"))):  # fmt: skip
            raise ValueError(f"{RECORD}: a mount is malformed")
    if not all(isinstance(s, str) for s in stdio):
        raise ValueError(f"{RECORD}: its stdio is malformed")
    return {"mounts": mounts[:MAX_MOUNTS], "stdio": stdio}


def mount_map(record: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """``--external`` arguments mapping each recorded external mount to its new source."""
    sources = {os.path.normpath(str(m.get("destination", ""))): str(m.get("source", ""))
               for m in spec.get("mounts") or [] if isinstance(m, dict)}  # fmt: skip
    args = []
    for m in record["mounts"]:
        if m["kind"] == "device":
            path = m["cookie"]
            if not path.startswith("/dev/") or ".." in path.split("/"):
                raise ValueError(f"mount {m['mountpoint']}: not a device node: {path!r}")
        else:
            path = sources.get(os.path.normpath(m["mountpoint"]), "")
            if not path:
                raise ValueError(f"the checkpoint has a mount at {m['mountpoint']}; the new "
                                 "container has none there")  # fmt: skip
        args += ["--external", f"mnt[{m['cookie']}]:{path}"]
    return args


def make_mountpoints(root: Path, spec: dict[str, Any]) -> None:
    """Create the bind mounts' mount points the new rootfs lacks (a restore needs them; a
    create has crun make them), as files or directories like their sources; never outside
    ``root``, and none below another mount's tmpfs (restored with its contents)."""
    mounts = [m for m in spec.get("mounts") or [] if isinstance(m, dict)][:MAX_MOUNTS]
    tmpfs = [str(m.get("destination", "")).rstrip("/") + "/" for m in mounts
             if m.get("type") == "tmpfs"]  # fmt: skip
    top = os.path.realpath(root)
    for m in mounts:
        options = m.get("options") or []
        if m.get("type") != "bind" and "bind" not in options and "rbind" not in options:
            continue
        dest = os.path.normpath("/" + str(m.get("destination", "")).lstrip("/"))
        if dest == "/" or any(dest.startswith(t) for t in tmpfs):
            continue
        target = os.path.realpath(os.path.join(top, dest.lstrip("/")))
        if not target.startswith(top + "/") or os.path.lexists(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(str(m.get("source", ""))):
            os.mkdir(target)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


async def restore(reaper: Reaper, cid: str, proc: Proc, root: Path, cgroup: Path,
                  spec: dict[str, Any], stdin: bool, options: Any) -> int:  # fmt: skip
    """See the module docstring; returns the restored init's pid, ``proc`` gets its stdio."""
    images, work, tools = Path(options.images), Path(options.work), Path(options.tools)
    try:
        record = read_record(images)
        externals = mount_map(record, spec)
        make_mountpoints(root, spec)
    except ValueError as exc:
        raise CriuError(f"restore of {cid}: the checkpoint cannot be used: {exc}") from exc
    ends, inherit = {3 + i: end for i, end in enumerate(proc.pipes(stdin))}, []
    for fd, old in enumerate(record["stdio"]):
        if _PIPE.fullmatch(old):  # the old pipe's place goes to the new one
            inherit += ["--inherit-fd", f"fd[{3 + fd}]:{old}"]
    pid_file = work / "restored.pid"
    pid_file.unlink(missing_ok=True)
    criu = [str(tools / "usr/sbin/criu"), "restore", "-D", str(images), "-W", str(work),
            "-o", "restore.log", "-v4", "--root", str(root), "--restore-detached",
            "--restore-sibling", "--pidfile", str(pid_file), "--manage-cgroups=ignore",
            "--evasive-devices", *_flags(options), *externals, *inherit]  # fmt: skip
    # CRIU joins the container's cgroup before it forks: the restored processes start there
    argv = [BUSYBOX, "sh", "-c", 'echo 0 > "$0" && exec "$@"', str(cgroup / "cgroup.procs"),
            *criu]  # fmt: skip
    try:
        status = await reaper.run(argv, criu_env(tools), ends)
    finally:
        for fd in ends.values():
            os.close(fd)
    if status != 0:
        raise CriuError(f"restore of {cid}: CRIU's restore failed: "
                        f"{_tail(work / 'restore.log')}")  # fmt: skip
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise CriuError(f"restore of {cid}: CRIU wrote no pid ({exc})") from exc


def write_crun_state(cid: str, pid: int, bundle: Path, rootfs: str, cgroup_path: str) -> None:
    """crun's record of a running container, as ``crun create`` writes it, for the restored
    one: its later commands (exec, kill, pause, update, delete) then find it."""
    state = Path(crun.CRUN_ROOT) / cid
    state.mkdir(parents=True, exist_ok=True)
    stat = Path(f"/proc/{pid}/stat").read_text()
    start_time = int(stat.rpartition(")")[2].split()[19])
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    status = {"pid": pid, "process-start-time": start_time, "cgroup-path": cgroup_path,
              "rootfs": rootfs, "systemd-cgroup": False, "bundle": str(bundle),
              "created": created, "detached": True, "external_descriptors": "[]"}  # fmt: skip
    (state / "status").write_text(json.dumps(status))
    with contextlib.suppress(FileExistsError):
        os.symlink(bundle / "config.json", state / "config.json")
