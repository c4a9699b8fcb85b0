"""Container and process handlers of the agent API (create, start, exec, signal, wait, I/O).

Contract: ids are validated; a container id is unique while it exists; process I/O goes
through bounded buffers; ``WaitProcess`` returns the exit code or 128+signal; output that a
process wrote before it exited stays readable until end of stream, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runvm.agent import bundle as bundles
from runvm.agent import cgroups, checkpoint, crun, procattrs
from runvm.agent.debug import DebugShells
from runvm.agent.proc import Proc
from runvm.agent.reaper import Reaper
from runvm.agent.rpc import Handler, unary
from runvm.agent.stdio import set_winsize
from runvm.agent.storage import mount_all, unmount_all
from runvm.errors import ConfigError, RpcError
from runvm.oci import parse_process, parse_spec
from runvm.protocol import agent_pb2 as pb
from runvm.ttrpc import Code

log = logging.getLogger(__name__)

BUNDLES = Path("/run/runvm/bundles")
SHARED_ROOT = "/run/runvm/shared/"
DISK_ROOT = "/run/runvm/disks/"  # block-device rootfs, mounted per container
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_CONTAINERS = 1024
MAX_EXECS = 1024
MAX_LISTED = 65536
CGROUP_ROOT = "/sys/fs/cgroup/runvm"  # the host sets cgroupsPath /runvm/<id>
OOM_POLL = 0.25  # seconds between looks at memory.events (WaitOOM)
DESTROY_WAIT = 5.0  # seconds a removed container's processes get to die after cgroup.kill


@dataclass
class Container:
    id: str
    bundle: Path
    init: Proc
    started: bool = False
    execs: dict[str, Proc] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)  # the container's storages, unmounted last
    poststart: bool = False  # crun runs poststart hooks of its own (the host strips them)


def _resources(spec: dict[str, Any]) -> dict[str, Any]:
    resources: dict[str, Any] = (spec.get("linux") or {}).get("resources") or {}
    return resources


def _check_id(value: str, what: str) -> str:
    if not ID_RE.match(value):
        raise RpcError(Code.INVALID_ARGUMENT, f"invalid {what} {value!r}")
    return value


class ContainerService:
    """Containers, and their processes; a process of no container is a debug shell."""

    def __init__(self, reaper: Reaper, shells: DebugShells) -> None:
        self.reaper = reaper
        self.shells = shells
        self.containers: dict[str, Container] = {}

    def _get(self, container_id: str) -> Container:
        try:
            return self.containers[container_id]
        except KeyError:
            raise RpcError(Code.NOT_FOUND, f"container {container_id!r} not found") from None

    def _proc(self, container_id: str, exec_id: str) -> Proc:
        if not container_id:
            return self.shells.get(exec_id)
        container = self._get(container_id)
        if not exec_id:
            return container.init
        try:
            return container.execs[exec_id]
        except KeyError:
            raise RpcError(Code.NOT_FOUND, f"process {exec_id!r} not found") from None

    async def _watch_pid(self, proc: Proc, pid_file: Path) -> None:
        try:
            proc.pid = int(pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise RpcError(Code.INTERNAL, f"crun wrote no pid file: {exc}") from exc
        self.reaper.watch(proc.pid, proc.on_exit)

    async def create_container(self, req: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
        cid, spec, mounted = await self._prepare(req)
        try:
            proc = await self._create(cid, spec, req.stdin)
        except BaseException:
            unmount_all(mounted)
            raise
        await self._admit(cid, spec, proc, mounted)
        log.info("container %s created (pid %d)", cid, proc.pid)
        return pb.CreateContainerResponse(pid=proc.pid)

    async def _prepare(
        self, req: pb.CreateContainerRequest | pb.RestoreContainerRequest
    ) -> tuple[str, dict[str, Any], list[str]]:
        """A new container's id and spec, checked, with its storages mounted."""
        cid = _check_id(req.container_id, "container id")
        if cid in self.containers:
            raise RpcError(Code.ALREADY_EXISTS, f"container {cid} already exists")
        if len(self.containers) >= MAX_CONTAINERS:
            raise RpcError(Code.RESOURCE_EXHAUSTED, "too many containers")
        try:
            spec = parse_spec(req.oci_spec_json)
        except ConfigError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from exc
        try:
            bundles.apply_vm_sysctls(spec)
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from exc
        root = os.path.normpath(spec["root"]["path"])
        if not root.startswith((SHARED_ROOT, DISK_ROOT)):
            raise RpcError(Code.INVALID_ARGUMENT, f"root.path {root!r} is not a shared rootfs")
        mounted = await mount_all(list(req.storages))
        if not os.path.isdir(root):
            unmount_all(mounted)
            raise RpcError(Code.INVALID_ARGUMENT, f"root.path {root!r} is not a directory")
        return cid, spec, mounted

    async def _admit(self, cid: str, spec: dict[str, Any], proc: Proc, mounted: list[str],
                     started: bool = False) -> None:  # fmt: skip
        """Keep the container; then what crun 1.8 does not know (before the user program
        runs, for a created one)."""
        poststart = bool((spec.get("hooks") or {}).get("poststart"))
        self.containers[cid] = Container(cid, BUNDLES / cid, proc, started=started,
                                         mounts=mounted, poststart=poststart)  # fmt: skip
        try:
            if not started:
                procattrs.apply_init_attrs(proc.pid, spec["process"])
            procattrs.apply_cpu_burst(Path(CGROUP_ROOT) / cid, _resources(spec))
        except OSError as exc:
            await self.remove_container(pb.RemoveContainerRequest(container_id=cid))
            raise RpcError(Code.INVALID_ARGUMENT, f"create {cid}: {exc}") from exc

    async def _create(self, cid: str, spec: dict[str, Any], stdin: bool) -> Proc:
        bundle = BUNDLES / cid
        bundle.mkdir(parents=True, exist_ok=False)
        spec["root"]["path"] = bundles.hold_root(bundle, spec["root"]["path"])
        (bundle / "config.json").write_text(json.dumps(spec))
        proc = Proc(exec_id="")
        terminal = bool(spec.get("process", {}).get("terminal"))
        args = ["create", "--bundle", str(bundle), "--pid-file", str(bundle / "init.pid"), cid]
        try:
            await bundles.spawn_with_io(self.reaper, proc, args, bundle, terminal, stdin)
            await self._watch_pid(proc, bundle / "init.pid")
        except crun.CrunError as exc:
            bundles.release_root(bundle)
            shutil.rmtree(bundle, ignore_errors=True)
            program = str((spec["process"].get("args") or [""])[0])
            raise RpcError(Code.FAILED_PRECONDITION, crun.explain(str(exc), program)) from exc
        return proc

    async def checkpoint_container(self, req: pb.CheckpointContainerRequest) -> pb.Empty:
        """The container's processes into CRIU images (agent/checkpoint.py)."""
        container = self._get(req.container_id)
        if not container.started or container.init.exited.is_set():
            raise RpcError(Code.FAILED_PRECONDITION, f"container {container.id} is not running")
        if container.init.pty_master is not None:
            raise RpcError(Code.FAILED_PRECONDITION, f"container {container.id} has a terminal:"
                           " its checkpoint is not supported")  # fmt: skip
        try:
            await checkpoint.dump(self.reaper, container.id, container.init.pid,
                                  container.bundle / "root" / "rootfs",
                                  Path(CGROUP_ROOT, container.id), req.criu)  # fmt: skip
        except (checkpoint.CriuError, OSError, ValueError) as exc:
            raise RpcError(Code.FAILED_PRECONDITION, str(exc)) from exc
        log.info("container %s checkpointed%s", container.id,
                 " (left running)" if req.criu.leave_running else "")  # fmt: skip
        return pb.Empty()

    async def restore_container(
        self, req: pb.RestoreContainerRequest
    ) -> pb.CreateContainerResponse:
        """A running container whose processes come from a checkpoint (agent/checkpoint.py)."""
        cid, spec, mounted = await self._prepare(req)
        bundle, proc = BUNDLES / cid, Proc(exec_id="")
        cgroup = Path(CGROUP_ROOT, cid)
        try:
            if spec["process"].get("terminal"):
                raise RpcError(Code.FAILED_PRECONDITION, f"container {cid} has a terminal: its "
                               "restore is not supported")  # fmt: skip
            bundle.mkdir(parents=True, exist_ok=False)
            spec["root"]["path"] = root = bundles.hold_root(bundle, spec["root"]["path"])
            (bundle / "config.json").write_text(json.dumps(spec))
            cgroups.make(cgroup)
            proc.pid = await checkpoint.restore(self.reaper, cid, proc, Path(root), cgroup, spec,
                                                req.stdin, req.criu)  # fmt: skip
            self.reaper.watch(proc.pid, proc.on_exit)
            checkpoint.write_crun_state(cid, proc.pid, bundle, root, f"/runvm/{cid}")
        except BaseException as exc:
            if proc.pid:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.close()
            with contextlib.suppress(OSError, TimeoutError):
                await cgroups.destroy(cgroup, DESTROY_WAIT)
            crun.forget(cid)
            bundles.release_root(bundle)
            shutil.rmtree(bundle, ignore_errors=True)
            unmount_all(mounted)
            if isinstance(exc, (checkpoint.CriuError, OSError)):
                raise RpcError(Code.FAILED_PRECONDITION, str(exc)) from exc
            raise
        await self._admit(cid, spec, proc, mounted, started=True)
        resources = _resources(spec)
        if resources:  # the new container's limits, on its cgroup
            update = pb.UpdateContainerRequest(
                container_id=cid, resources_json=json.dumps(resources).encode()
            )
            try:
                await self.update_container(update)
            except RpcError:
                await self.remove_container(pb.RemoveContainerRequest(container_id=cid))
                raise
        log.info("container %s restored (pid %d)", cid, proc.pid)
        return pb.CreateContainerResponse(pid=proc.pid)

    async def start_container(self, req: pb.StartContainerRequest) -> pb.StartContainerResponse:
        container = self._get(req.container_id)
        if container.started:
            raise RpcError(Code.FAILED_PRECONDITION, f"container {container.id} already started")
        before = bundles.image_of(container.init.pid)
        try:
            if container.poststart:
                await crun.run_crun(self.reaper, ["start", container.id],
                                    container.bundle / "crun.log")  # fmt: skip
            else:  # what `crun start` does, without a crun process (0.2-0.3 s under TCG)
                crun.release(container.id)
        except crun.CrunError as exc:
            raise RpcError(Code.FAILED_PRECONDITION, f"start {container.id}: {exc}") from exc
        except OSError as exc:
            raise RpcError(Code.FAILED_PRECONDITION, f"start {container.id}: its init no longer "
                           f"waits to be started ({exc.strerror})") from exc  # fmt: skip
        container.started = True
        await bundles.until_executed(container.init.pid, before)
        log.info("container %s started", container.id)
        return pb.StartContainerResponse(pid=container.init.pid)

    async def exec_process(self, req: pb.ExecProcessRequest) -> pb.ExecProcessResponse:
        eid = _check_id(req.exec_id, "exec id")
        if not req.container_id:
            shell = await self.shells.start(eid, self._process(req.process_json), req.stdin)
            return pb.ExecProcessResponse(pid=shell.pid)
        container = self._get(req.container_id)
        if eid in container.execs:
            raise RpcError(Code.ALREADY_EXISTS, f"exec {eid} already exists")
        if len(container.execs) >= MAX_EXECS:
            raise RpcError(Code.RESOURCE_EXHAUSTED, "too many execs")
        if container.init.exited.is_set():
            raise RpcError(Code.FAILED_PRECONDITION, f"container {container.id} is not running")
        process = self._process(req.process_json)
        spec_file = container.bundle / f"exec-{eid}.json"
        spec_file.write_text(json.dumps(process))
        pid_file = container.bundle / f"exec-{eid}.pid"
        proc = Proc(exec_id=eid)
        args = ["exec", "--process", str(spec_file), "--detach", "--pid-file", str(pid_file),
                container.id]  # fmt: skip
        try:
            await bundles.spawn_with_io(self.reaper, proc, args, container.bundle,
                                 bool(process.get("terminal")), req.stdin)  # fmt: skip
            await self._watch_pid(proc, pid_file)
        except crun.CrunError as exc:
            program = str((process.get("args") or [""])[0])
            raise RpcError(Code.FAILED_PRECONDITION, crun.explain(str(exc), program)) from exc
        container.execs[eid] = proc
        log.info("exec %s in container %s started (pid %d)", eid, container.id, proc.pid)
        return pb.ExecProcessResponse(pid=proc.pid)

    @staticmethod
    def _process(process_json: bytes) -> dict[str, Any]:
        try:
            return parse_process(process_json)
        except ConfigError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from exc

    async def signal_process(self, req: pb.SignalProcessRequest) -> pb.Empty:
        if not 0 < req.signal < signal.NSIG:
            raise RpcError(Code.INVALID_ARGUMENT, f"invalid signal {req.signal}")
        if not req.container_id:
            self.shells.signal(req.exec_id, req.signal)
            return pb.Empty()
        container = self._get(req.container_id)
        if req.all:
            await crun.run_crun(self.reaper, ["kill", "--all", container.id, str(req.signal)],
                                container.bundle / "crun.log")  # fmt: skip
            return pb.Empty()
        proc = self._proc(req.container_id, req.exec_id)
        if proc.exited.is_set() or not proc.pid:
            raise RpcError(Code.NOT_FOUND, "process already finished")
        os.kill(proc.pid, req.signal)
        return pb.Empty()

    async def wait_process(self, req: pb.WaitProcessRequest) -> pb.WaitProcessResponse:
        proc = self._proc(req.container_id, req.exec_id)
        await proc.exited.wait()
        assert proc.status is not None
        return pb.WaitProcessResponse(status=proc.status, exited_at_ns=proc.exited_at_ns)

    async def write_stdin(self, req: pb.WriteStreamRequest) -> pb.WriteStreamResponse:
        proc = self._proc(req.container_id, req.exec_id)
        if proc.stdin is None:
            raise RpcError(Code.FAILED_PRECONDITION, "process has no stdin")
        try:
            return pb.WriteStreamResponse(len=await proc.stdin.write(req.data))
        except OSError as exc:
            raise RpcError(Code.FAILED_PRECONDITION, f"stdin: {exc.strerror}") from exc

    async def _read(self, req: pb.ReadStreamRequest, which: str) -> pb.ReadStreamResponse:
        proc = self._proc(req.container_id, req.exec_id)
        stream = proc.stdout if which == "stdout" else proc.stderr
        if stream is None:
            return pb.ReadStreamResponse(data=b"")
        return pb.ReadStreamResponse(data=await stream.read(max(1, min(req.len, 1 << 20))))

    async def read_stdout(self, req: pb.ReadStreamRequest) -> pb.ReadStreamResponse:
        return await self._read(req, "stdout")

    async def read_stderr(self, req: pb.ReadStreamRequest) -> pb.ReadStreamResponse:
        return await self._read(req, "stderr")

    async def close_stdin(self, req: pb.CloseStdinRequest) -> pb.Empty:
        proc = self._proc(req.container_id, req.exec_id)
        if proc.stdin is not None and proc.pty_master is None:
            proc.stdin.close()
        return pb.Empty()

    async def tty_win_resize(self, req: pb.TtyWinResizeRequest) -> pb.Empty:
        proc = self._proc(req.container_id, req.exec_id)
        if proc.pty_master is None:
            raise RpcError(Code.FAILED_PRECONDITION, "process has no terminal")
        set_winsize(proc.pty_master, min(req.row, 0xFFFF), min(req.column, 0xFFFF))
        return pb.Empty()

    async def list_processes(self, req: pb.ListProcessesRequest) -> pb.ListProcessesResponse:
        container = self._get(req.container_id)
        pids: list[int] = []
        for procs in sorted(Path(CGROUP_ROOT, container.id).glob("**/cgroup.procs")):
            with contextlib.suppress(OSError, ValueError):
                pids += [int(line) for line in procs.read_text().split()]
        return pb.ListProcessesResponse(pids=sorted(set(pids))[:MAX_LISTED])

    async def _crun(self, container: Container, *args: str) -> None:
        try:
            await crun.run_crun(self.reaper, [*args, container.id], container.bundle / "crun.log")
        except crun.CrunError as exc:
            raise RpcError(Code.FAILED_PRECONDITION, f"{args[0]} {container.id}: {exc}") from exc

    async def pause_container(self, req: pb.PauseContainerRequest) -> pb.Empty:
        await self._crun(self._get(req.container_id), "pause")
        return pb.Empty()

    async def resume_container(self, req: pb.ResumeContainerRequest) -> pb.Empty:
        await self._crun(self._get(req.container_id), "resume")
        return pb.Empty()

    async def update_container(self, req: pb.UpdateContainerRequest) -> pb.Empty:
        container = self._get(req.container_id)
        try:
            resources = json.loads(req.resources_json)
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"resources: {exc}") from exc
        if not isinstance(resources, dict) or len(req.resources_json) > 1 << 20:
            raise RpcError(Code.INVALID_ARGUMENT, "resources must be a JSON object")
        path = container.bundle / "update.json"
        path.write_text(json.dumps(resources))
        await self._crun(container, "update", "--resources", str(path))
        try:
            procattrs.apply_cpu_burst(Path(CGROUP_ROOT) / container.id, resources)
        except OSError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"update {container.id}: {exc}") from exc
        return pb.Empty()

    async def stats_container(self, req: pb.StatsContainerRequest) -> pb.StatsContainerResponse:
        container = self._get(req.container_id)
        return cgroups.stats(Path(CGROUP_ROOT, container.id))

    async def wait_oom(self, req: pb.WaitOOMRequest) -> pb.WaitOOMResponse:
        cgroup = Path(CGROUP_ROOT, self._get(req.container_id).id)
        while True:
            count = cgroups.oom_kills(cgroup)
            if count > req.seen:
                return pb.WaitOOMResponse(oom_kills=count)
            await asyncio.sleep(OOM_POLL)
            self._get(req.container_id)  # NOT_FOUND once it was removed

    async def remove_container(self, req: pb.RemoveContainerRequest) -> pb.Empty:
        container = self._get(req.container_id)
        if not container.init.exited.is_set():
            with contextlib.suppress(OSError):
                os.kill(container.init.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(container.init.exited.wait(), req.timeout or 10)
        await self._delete(container)
        for proc in (container.init, *container.execs.values()):
            proc.close()
        bundles.release_root(container.bundle)
        shutil.rmtree(container.bundle, ignore_errors=True)
        unmount_all(container.mounts)
        del self.containers[container.id]
        log.info("container %s removed", container.id)
        return pb.Empty()

    async def _delete(self, container: Container) -> None:
        """What ``crun delete --force`` does for a container without hooks (the host runs
        them), without a crun process (0.15-0.3 s under TCG): kill what is left in its
        cgroup, remove the cgroup and crun's state. crun itself is the fallback."""
        try:
            await cgroups.destroy(Path(CGROUP_ROOT, container.id), DESTROY_WAIT)
            crun.forget(container.id)
        except (OSError, TimeoutError) as exc:
            log.warning("delete %s without crun: %s; running crun delete", container.id, exc)
            with contextlib.suppress(crun.CrunError):
                await crun.run_crun(self.reaper, ["delete", "--force", container.id],
                                    container.bundle / "crun.log")  # fmt: skip

    def handlers(self) -> dict[str, Handler]:
        return {
            "CreateContainer": unary(pb.CreateContainerRequest, self.create_container),
            "StartContainer": unary(pb.StartContainerRequest, self.start_container),
            "ExecProcess": unary(pb.ExecProcessRequest, self.exec_process),
            "SignalProcess": unary(pb.SignalProcessRequest, self.signal_process),
            "WaitProcess": unary(pb.WaitProcessRequest, self.wait_process),
            "WriteStdin": unary(pb.WriteStreamRequest, self.write_stdin),
            "ReadStdout": unary(pb.ReadStreamRequest, self.read_stdout),
            "ReadStderr": unary(pb.ReadStreamRequest, self.read_stderr),
            "CloseStdin": unary(pb.CloseStdinRequest, self.close_stdin),
            "TtyWinResize": unary(pb.TtyWinResizeRequest, self.tty_win_resize),
            "RemoveContainer": unary(pb.RemoveContainerRequest, self.remove_container),
            "ListProcesses": unary(pb.ListProcessesRequest, self.list_processes),
            "PauseContainer": unary(pb.PauseContainerRequest, self.pause_container),
            "ResumeContainer": unary(pb.ResumeContainerRequest, self.resume_container),
            "UpdateContainer": unary(pb.UpdateContainerRequest, self.update_container),
            "StatsContainer": unary(pb.StatsContainerRequest, self.stats_container),
            "WaitOOM": unary(pb.WaitOOMRequest, self.wait_oom),
            "CheckpointContainer": unary(pb.CheckpointContainerRequest,
                                         self.checkpoint_container),
            "RestoreContainer": unary(pb.RestoreContainerRequest, self.restore_container),
        }  # fmt: skip
