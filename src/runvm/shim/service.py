"""containerd's Task service over the runtime core: the containers of one pod VM.

Contract: one :class:`TaskService` serves every task of one group (a pod, or a lone
container): alone in its shim process, or ``shared`` with other pods' services behind a
:class:`~runvm.shim.router.PodRouter`, when it must not move the process (network namespace,
host cgroup) and keeps the pod's namespace as a descriptor instead. The first Create (the
pod sandbox, or the lone container) enters the network namespace and host cgroup its config
names and boots the VM; later Creates of the pod add containers to the same VM. Deleting
the last task stops the VM; ``Shutdown`` with no task left ends the shim (``done`` is set).
Events are published in containerd's order:
create, start, exec-added, exec-started, exit (after the output was drained), delete,
paused, resumed. Requests about unknown ids fail NOT_FOUND; bad input INVALID_ARGUMENT;
requests in the wrong state FAILED_PRECONDITION.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import DecodeError, Message

from runvm import config as cfg
from runvm.errors import AgentError, ConfigError, RpcError, RunvmError
from runvm.network import netns
from runvm.oci import parse_process
from runvm.protocol import agent_pb2 as apb
from runvm.protocol.client import AgentClient
from runvm.runtime.container import Container
from runvm.runtime.guestspec import with_path
from runvm.runtime.hostcgroup import HostCgroup
from runvm.runtime.sandbox import Sandbox, SandboxOptions
from runvm.shim import pod, wire
from runvm.shim import shim_api_pb2 as spb
from runvm.shim.cmdline import container_kind
from runvm.shim.events import Publisher
from runvm.shim.stdio import open_stdio
from runvm.shim.tasks import DRAIN_TIMEOUT, Proc, Task
from runvm.storage import blockdev, mounts
from runvm.ttrpc import CallContext, Code, Handler

log = logging.getLogger(__name__)

METRICS_TYPE_URL = "io.containerd.cgroups.v2.Metrics"
MAX_JSON = 1 << 20  # exec process / resources documents
VERSION = "runvm-shim 1"


METHODS = {
    "Create": "create", "Start": "start", "Delete": "delete", "State": "state", "Pids": "pids",
    "Pause": "pause", "Resume": "resume", "Checkpoint": "checkpoint", "Kill": "kill",
    "Exec": "exec", "ResizePty": "resize_pty", "CloseIO": "close_io", "Update": "update",
    "Wait": "wait", "Stats": "stats", "Connect": "connect", "Shutdown": "shutdown",
}  # fmt: skip
"""containerd's Task methods -> the :class:`TaskService` coroutine serving each."""


def unary(name: str, fn: Callable[[Any], Awaitable[Message]]) -> Handler:
    """A ttrpc handler for Task method ``name``: decode the request, call ``fn``, map errors to
    codes (bad input INVALID_ARGUMENT, runtime failures INTERNAL)."""
    request_type = wire.TASK_METHODS[name][0]

    async def handler(payload: bytes, ctx: CallContext) -> bytes:
        try:
            request = request_type.FromString(payload)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"{name}: {exc}") from exc
        log.debug("-> %s %s", name, request)
        try:
            return (await fn(request)).SerializeToString()
        except RpcError as exc:
            log.debug("<- %s: %s", name, exc)
            raise
        except ConfigError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from exc
        except (RunvmError, OSError) as exc:
            log.error("%s: %s", name, exc)
            raise RpcError(Code.INTERNAL, str(exc)) from exc

    return handler


class TaskService:
    def __init__(
        self,
        group: str,
        namespace: str,
        config: cfg.RunvmConfig,
        publisher: Publisher,
        shared: bool = False,
    ) -> None:
        self.group = group
        self.shared = shared
        self.netns_fd: int | None = None  # shared: the pod's network namespace
        self.netns_path = ""  # the pod's namespace, if its config names one
        self.namespace = namespace
        self.config = config
        self.events = publisher
        self.tasks: dict[str, Task] = {}
        self.sandbox: Sandbox | None = None
        self.sandbox_task = ""  # the task whose create booted the VM
        self.cgroup: HostCgroup | None = None
        self.lock = asyncio.Lock()  # create/delete change the pod
        self.done = asyncio.Event()
        self.on_change: Callable[[], None] = lambda: None  # the task set or its NICs changed

    # --- plumbing ------------------------------------------------------------------------
    def handlers(self) -> dict[str, Handler]:
        return {name: unary(name, getattr(self, attr)) for name, attr in METHODS.items()}

    def _task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise RpcError(Code.NOT_FOUND, f"container {task_id}: not found")
        return task

    def _proc(self, task_id: str, exec_id: str) -> tuple[Task, Proc]:
        task = self._task(task_id)
        proc = task.proc(exec_id)
        if proc is None:
            raise RpcError(Code.NOT_FOUND, f"process {exec_id} of {task_id}: not found")
        return task, proc

    @property
    def agent(self) -> AgentClient:
        if self.sandbox is None or self.sandbox.agent is None:
            raise RpcError(Code.FAILED_PRECONDITION, "the pod VM is not running")
        return self.sandbox.agent

    @property
    def details(self) -> apb.GuestDetailsResponse | None:
        return self.sandbox.details if self.sandbox is not None else None

    def network_leftovers(self) -> dict[str, Any]:
        """For ``delete`` after this process died: what to remove in which namespace."""
        net = self.sandbox.network if self.sandbox is not None else None
        if net is None or not self.netns_path:
            return {}
        return {"netns": self.netns_path, **net.leftovers()}

    @property
    def vm_pid(self) -> int:
        if self.sandbox is None or self.sandbox.vm is None:
            return 0
        return self.sandbox.vm.child.pid or 0

    # --- create / start / delete -----------------------------------------------------
    async def create(self, req: spb.CreateTaskRequest) -> spb.CreateTaskResponse:
        if req.checkpoint:
            raise RpcError(Code.UNIMPLEMENTED, "checkpoint/restore is not supported by runvm")
        async with self.lock:
            if req.id in self.tasks:
                raise RpcError(Code.ALREADY_EXISTS, f"container {req.id}: already exists")
            bundle = Path(req.bundle)
            task = Task(req.id, bundle, None, Proc(req.id, "", _task_io(req)))
            try:
                await self._create(task, req)
            except BaseException:
                await self._undo_create(task)
                raise
            self.tasks[task.id] = task
            task.oom_watch = asyncio.ensure_future(self._watch_oom(task.id))
            self.on_change()
        self.events.publish(spb.TaskCreate(
            container_id=task.id, bundle=req.bundle, rootfs=req.rootfs, io=task.init.io,
            pid=task.init.pid,
        ))  # fmt: skip
        return spb.CreateTaskResponse(pid=task.init.pid)

    async def _create(self, task: Task, req: spb.CreateTaskRequest) -> None:
        rootfs = task.bundle / "rootfs"
        # A block filesystem (devmapper snapshotter, loop image) goes to the VM as a disk.
        block = blockdev.from_mounts((m.type, m.source, m.options) for m in req.rootfs)
        for m in req.rootfs if block is None else ():
            mounts.mount_spec(m.type, m.source, str(rootfs), list(m.options))
            task.rootfs_mounted = True
        spec, _ = Container.load(task.id, task.bundle)
        annotations = spec.get("annotations") or {}
        task.kind = container_kind(annotations, task.id)
        pod.check_namespaces(spec, task.id, task.kind)
        join: dict[str, str] = {}
        if self.sandbox is None:
            if task.kind == "container":
                raise RpcError(Code.FAILED_PRECONDITION,
                               f"container {task.id}: its pod sandbox {self.group} is not "
                               "running in this shim")  # fmt: skip
            await self._boot(task, spec, block is not None or blockdev.needs_disks(spec))
        elif self.sandbox_task in self.tasks:
            join = pod.join_map(self.vm_pid, self.tasks[self.sandbox_task].init.guest_pid)
        assert self.sandbox is not None
        stdin = bool(req.stdin) or bool(req.terminal)
        task.container = await Container.create(self.sandbox, task.id, task.bundle, stdin, join,
                                                block, host_pid=self.vm_pid,
                                                hooks_log=task.bundle / "hooks.log")  # fmt: skip
        init = task.init
        init.pid, init.guest_pid = self.vm_pid, task.container.guest_pid
        init.host = await asyncio.to_thread(
            open_stdio, req.stdin, req.stdout, req.stderr, task.id, self.namespace
        )
        init.attach(self.agent)
        init.watch(self.agent, self._exited)

    async def _boot(self, task: Task, spec: dict[str, Any], needs_hotplug: bool) -> None:
        """The pod's first container: network namespace, host cgroup, then the VM."""
        try:
            await self._boot_vm(task, spec, needs_hotplug)
        except BaseException:
            await self._stop_vm()
            raise

    async def _boot_vm(self, task: Task, spec: dict[str, Any], needs_hotplug: bool) -> None:
        self.netns_path = netns.network_namespace(spec)[1]
        if self.shared:
            self.netns_fd = netns.open_namespace(spec)
        else:
            netns.apply(spec)
        cgroups_path = (spec.get("linux") or {}).get("cgroupsPath")
        if cgroups_path:
            try:
                self.cgroup = HostCgroup.create(cgroups_path)
                if not self.shared:  # QEMU and virtiofsd start in it
                    self.cgroup.enter()
            except (OSError, RunvmError) as exc:
                log.warning("host cgroup %s: %s (the pod runs outside it)", cgroups_path, exc)
        hostname = spec.get("hostname") or task.id[:63]
        limit = self.cgroup.memory_limit() if self.cgroup is not None else None
        options = SandboxOptions(hostname=hostname, network=netns.network_namespace(spec)[0],
                                 needs_hotplug=needs_hotplug, netns_fd=self.netns_fd,
                                 memory_limit=limit)  # fmt: skip
        self.sandbox = sandbox = await Sandbox.start(self.group, self.config, options)
        sandbox.on_network_change = lambda: self.on_change()  # the record lists the NICs
        self.sandbox_task = task.id
        if self.shared and self.cgroup is not None:  # moved in once started
            for child in (sandbox.vm, sandbox.virtiofsd):
                if child is not None:
                    try:
                        self.cgroup.enter(child.pid)
                    except OSError as exc:
                        log.warning("host cgroup: pid %d not moved: %s", child.pid, exc)
        steps = " ".join(f"{k}={v:.3f}" for k, v in self.sandbox.timings.items())
        log.info("pod %s: VM up (pid %d, %s; %s)", self.group, self.vm_pid,
                 self.sandbox.accel.accel.value if self.sandbox.accel else "?", steps)  # fmt: skip

    async def _watch_oom(self, task_id: str) -> None:
        """Publish /tasks/oom each time the guest counts a new OOM kill in the container."""
        while (task := self.tasks.get(task_id)) is not None:
            try:
                count = await self.agent.wait_oom(task_id, task.oom_seen)
            except (RpcError, AgentError):  # removed, VM gone, or an agent without WaitOOM
                return
            self._oom(task, count)

    def _oom(self, task: Task, count: int) -> None:
        if count > task.oom_seen:
            task.oom_seen = count
            self.events.publish(spb.TaskOOM(container_id=task.id))

    async def _undo_create(self, task: Task) -> None:
        if task.oom_watch is not None:
            task.oom_watch.cancel()
        await task.init.release()
        if task.init.watcher is not None:
            task.init.watcher.cancel()
        if task.container is not None:
            with contextlib.suppress(Exception):
                await task.container.remove()
        if task.rootfs_mounted:
            with contextlib.suppress(OSError):
                mounts.umount(str(task.bundle / "rootfs"))
        if self.sandbox_task == task.id and not self.tasks:
            await self._stop_vm()

    async def _stop_vm(self) -> None:
        if self.sandbox is not None:
            await self.sandbox.stop()
            self.sandbox = None
        self.sandbox_task = ""
        if self.cgroup is not None:
            self.cgroup.leave()
            await asyncio.to_thread(self.cgroup.remove)
            self.cgroup = None
        if self.netns_fd is not None:
            os.close(self.netns_fd)
            self.netns_fd = None

    async def _exited(self, proc: Proc) -> None:
        task = self.tasks.get(proc.container_id)
        if task is not None and not proc.exec_id:  # an OOM kill that ended it comes first
            with contextlib.suppress(RunvmError):
                self._oom(task, (await self.agent.stats_container(task.id)).memory_oom_kills)
        self.events.publish(spb.TaskExit(
            container_id=proc.container_id, id=proc.event_id, pid=proc.pid,
            exit_status=proc.exit_status, exited_at=proc.exited_at,
        ))  # fmt: skip

    async def start(self, req: spb.StartRequest) -> spb.StartResponse:
        task, proc = self._proc(req.id, req.exec_id)
        async with proc.start_lock:
            if proc.status != spb.CREATED:
                raise RpcError(Code.FAILED_PRECONDITION,
                               f"{proc.event_id}: cannot start a process that is "
                               f"{spb.Status.Name(proc.status).lower()}")  # fmt: skip
            if not req.exec_id:
                assert task.container is not None

                def started() -> None:  # before the poststart hooks
                    proc.status = spb.RUNNING
                    self.events.publish(spb.TaskStart(container_id=task.id, pid=proc.pid))

                task.container.on_started = started
                await task.container.start()
                return spb.StartResponse(pid=proc.pid)
            request = apb.ExecProcessRequest(
                container_id=task.id, exec_id=req.exec_id, stdin=bool(proc.io.stdin)
                or proc.io.terminal, process_json=json.dumps(proc.process).encode(),
            )  # fmt: skip
            proc.guest_pid = await self.agent.exec_process(request)
            proc.pid = self.vm_pid
            proc.status = spb.RUNNING
            proc.attach(self.agent)
            proc.watch(self.agent, self._exited)
            self.events.publish(spb.TaskExecStarted(container_id=task.id, exec_id=req.exec_id,
                                                    pid=proc.pid))  # fmt: skip
        return spb.StartResponse(pid=proc.pid)

    async def delete(self, req: spb.DeleteRequest) -> spb.DeleteResponse:
        task, proc = self._proc(req.id, req.exec_id)
        if proc.status == spb.RUNNING:
            raise RpcError(Code.FAILED_PRECONDITION,
                           f"{proc.event_id}: cannot delete a running process")  # fmt: skip
        if req.exec_id:
            await proc.release()
            del task.execs[req.exec_id]
            return _delete_response(proc)
        async with self.lock:
            if proc.status == spb.CREATED:  # never started: its init waits in the guest
                with contextlib.suppress(RunvmError):
                    await self.agent.signal_process(task.id, "", 9, True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.exited.wait(), 10)
            for other in task.execs.values():
                await other.release()
            await proc.release()
            await self._undo_create(task)
            self.tasks.pop(task.id, None)
            if not self.tasks:
                await self._stop_vm()
            self.on_change()
            if task.container is not None:
                await task.container.poststop()
        self.events.publish(spb.TaskDelete(
            container_id=task.id, pid=proc.pid, exit_status=proc.exit_status,
            exited_at=proc.exited_at, id="",
        ))  # fmt: skip
        return _delete_response(proc)

    # --- processes ---------------------------------------------------------------------
    async def exec(self, req: spb.ExecProcessRequest) -> empty_pb2.Empty:
        task = self._task(req.id)
        if task.init.status != spb.RUNNING:
            raise RpcError(Code.FAILED_PRECONDITION, f"container {task.id} is not running")
        if not req.exec_id or req.exec_id in task.execs:
            raise RpcError(Code.ALREADY_EXISTS, f"exec {req.exec_id!r} of {task.id}: "
                           "already exists (or empty)")  # fmt: skip
        if len(req.spec.value) > MAX_JSON:
            raise RpcError(Code.INVALID_ARGUMENT, f"exec process spec over {MAX_JSON} bytes")
        process = with_path(parse_process(req.spec.value, f"exec {req.exec_id} process"))
        proc = Proc(task.id, req.exec_id, spb.TaskIO(stdin=req.stdin, stdout=req.stdout,
                    stderr=req.stderr, terminal=req.terminal), process=process)  # fmt: skip
        proc.host = await asyncio.to_thread(
            open_stdio, req.stdin, req.stdout, req.stderr, task.id, self.namespace
        )
        task.execs[req.exec_id] = proc
        self.events.publish(spb.TaskExecAdded(container_id=task.id, exec_id=req.exec_id))
        return empty_pb2.Empty()

    async def kill(self, req: spb.KillRequest) -> empty_pb2.Empty:
        task, proc = self._proc(req.id, req.exec_id)
        if proc.status == spb.STOPPED:  # with --all too: a stopped init leaves none behind
            raise RpcError(Code.NOT_FOUND, f"{proc.event_id}: process already finished")
        if self.sandbox is not None and self.sandbox.failure:  # the VM is gone: so is it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.exited.wait(), DRAIN_TIMEOUT * 2)
            raise RpcError(Code.NOT_FOUND, f"{proc.event_id}: process already finished "
                           f"({self.sandbox.failure})")  # fmt: skip
        if proc.status == spb.CREATED and req.exec_id:
            raise RpcError(Code.FAILED_PRECONDITION, f"{proc.event_id}: not started")
        await self.agent.signal_process(task.id, req.exec_id, req.signal, req.all)
        return empty_pb2.Empty()

    async def wait(self, req: spb.WaitRequest) -> spb.WaitResponse:
        _, proc = self._proc(req.id, req.exec_id)
        await proc.exited.wait()
        return spb.WaitResponse(exit_status=proc.exit_status, exited_at=proc.exited_at)

    async def state(self, req: spb.StateRequest) -> spb.StateResponse:
        task, proc = self._proc(req.id, req.exec_id)
        return proc.state(str(task.bundle), task.paused)

    async def close_io(self, req: spb.CloseIORequest) -> empty_pb2.Empty:
        _, proc = self._proc(req.id, req.exec_id)
        if req.stdin:
            await proc.close_stdin(self.agent)
        return empty_pb2.Empty()

    async def resize_pty(self, req: spb.ResizePtyRequest) -> empty_pb2.Empty:
        task, proc = self._proc(req.id, req.exec_id)
        if proc.status == spb.RUNNING or (proc.status == spb.CREATED and not req.exec_id):
            await self.agent.tty_win_resize(task.id, req.exec_id, req.height, req.width)
        return empty_pb2.Empty()

    # --- the container as a whole -----------------------------------------------------
    async def pids(self, req: spb.PidsRequest) -> spb.PidsResponse:
        task = self._task(req.id)
        pids = await self.agent.list_processes(task.id)
        return spb.PidsResponse(processes=[spb.ProcessInfo(pid=pid) for pid in pids])

    async def pause(self, req: spb.PauseRequest) -> empty_pb2.Empty:
        task = self._task(req.id)
        await self.agent.pause_container(task.id)
        task.paused = True
        self.events.publish(spb.TaskPaused(container_id=task.id))
        return empty_pb2.Empty()

    async def resume(self, req: spb.ResumeRequest) -> empty_pb2.Empty:
        task = self._task(req.id)
        await self.agent.resume_container(task.id)
        task.paused = False
        self.events.publish(spb.TaskResumed(container_id=task.id))
        return empty_pb2.Empty()

    async def update(self, req: spb.UpdateTaskRequest) -> empty_pb2.Empty:
        task = self._task(req.id)
        if len(req.resources.value) > MAX_JSON:
            raise RpcError(Code.INVALID_ARGUMENT, f"resources over {MAX_JSON} bytes")
        try:
            json.loads(req.resources.value or b"{}")
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"resources: not JSON: {exc}") from exc
        await self.agent.update_container(task.id, req.resources.value or b"{}")
        return empty_pb2.Empty()

    async def stats(self, req: spb.StatsRequest) -> spb.StatsResponse:
        task = self._task(req.id)
        s = await self.agent.stats_container(task.id)
        metrics = spb.CgroupsV2Metrics(
            pids=spb.PidsStat(current=s.pids_current, limit=s.pids_max),
            cpu=spb.CPUStat(usage_usec=s.cpu_usage_usec, user_usec=s.cpu_user_usec,
                            system_usec=s.cpu_system_usec),
            memory=spb.MemoryStat(usage=s.memory_current, usage_limit=s.memory_max),
            memory_events=spb.MemoryEvents(oom_kill=s.memory_oom_kills),
        )  # fmt: skip
        stats = any_pb2.Any(type_url=METRICS_TYPE_URL, value=metrics.SerializeToString())
        return spb.StatsResponse(stats=stats)

    async def checkpoint(self, req: spb.CheckpointTaskRequest) -> empty_pb2.Empty:
        raise RpcError(Code.UNIMPLEMENTED, "checkpoint is not supported by runvm")

    # --- the shim ---------------------------------------------------------------------
    async def connect(self, req: spb.ConnectRequest) -> spb.ConnectResponse:
        return spb.ConnectResponse(shim_pid=os.getpid(), task_pid=self.vm_pid, version=VERSION)

    async def shutdown(self, req: spb.ShutdownRequest) -> empty_pb2.Empty:
        if not self.tasks:
            self.done.set()
        return empty_pb2.Empty()

    async def close(self) -> None:
        """The shim is going away: end every task and stop the VM."""
        async with self.lock:
            for task in list(self.tasks.values()):
                for proc in (task.init, *task.execs.values()):
                    await proc.release()
                await self._undo_create(task)
            self.tasks.clear()
            await self._stop_vm()


def _task_io(req: spb.CreateTaskRequest) -> spb.TaskIO:
    return spb.TaskIO(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
                      terminal=req.terminal)  # fmt: skip


def _delete_response(proc: Proc) -> spb.DeleteResponse:
    return spb.DeleteResponse(pid=proc.pid, exit_status=proc.exit_status,
                              exited_at=proc.exited_at)  # fmt: skip
