"""containerd's Task service: wire types in, calls on the pod's runtime core, wire types out.

Contract: one :class:`TaskService` serves every task of one group (a pod, or a lone
container) through one :class:`~runvm.runtime.pod.Pod`: alone in its shim process, or
``shared`` with other pods' services behind a :class:`~runvm.shim.router.PodRouter` (then
the pod must not move the process and keeps its network namespace as a descriptor). The
pod decides (lifecycle, hooks, VM); this module maps containerd's requests onto it, opens
the host stdio containerd names, and publishes events in containerd's order: create, start,
exec-added, exec-started, oom, exit (after the output was drained), delete, paused,
resumed. Unknown ids are NOT_FOUND, bad input INVALID_ARGUMENT, a request in the wrong state
FAILED_PRECONDITION, a taken id ALREADY_EXISTS.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import DecodeError, Message

from runvm import config as cfg
from runvm import trace
from runvm.errors import (
    RpcError,
    RunvmError,
)  # fmt: skip
from runvm.oci import load_spec
from runvm.runtime import checkpoint
from runvm.runtime.container import Container
from runvm.runtime.guestimage import resolve_guest_files
from runvm.runtime.lifecycle import State
from runvm.runtime.pod import Pod
from runvm.runtime.proc import Process
from runvm.shim import pod as rules
from runvm.shim import shim_api_pb2 as spb
from runvm.shim import wire
from runvm.shim.cmdline import container_kind
from runvm.shim.events import Publisher
from runvm.shim.stdio import open_stdio
from runvm.shim.tasks import Proc, exit_fields
from runvm.ttrpc import CallContext, Code, Handler, code_for

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
    """A ttrpc handler for Task method ``name``: decode, call ``fn``, map errors to codes."""
    request_type = wire.TASK_METHODS[name][0]

    async def handler(payload: bytes, ctx: CallContext) -> bytes:
        try:
            request = request_type.FromString(payload)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"{name}: {exc}") from exc
        log.debug("-> %s %s", name, request)
        trace.mark(f"rpc {name}")
        try:
            return (await fn(request)).SerializeToString()
        except RpcError as exc:
            log.debug("<- %s: %s", name, exc)
            raise
        except (RunvmError, OSError) as exc:
            code = code_for(exc)
            (log.error if code == Code.INTERNAL else log.debug)("%s: %s", name, exc)
            raise RpcError(code, str(exc)) from exc
        finally:
            trace.mark(f"rpc {name} done")

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
        self.namespace = namespace
        self.events = publisher
        self.pod = Pod(group, config, shared=shared)
        self.pod.on_exit = self._exited
        self.pod.on_oom = lambda c: self.events.publish(spb.TaskOOM(container_id=c.id))
        self.procs: dict[tuple[str, str], Proc] = {}
        self.done = asyncio.Event()

    # --- what the shim's record reads ------------------------------------------------------
    @property
    def vm_pid(self) -> int:
        return self.pod.vm_pid

    def network_leftovers(self) -> dict[str, Any]:
        """For ``delete`` after this process died: what to remove in which namespace."""
        return self.pod.leftovers()

    def handlers(self) -> dict[str, Handler]:
        return {name: unary(name, getattr(self, attr)) for name, attr in METHODS.items()}

    def _proc(self, task_id: str, exec_id: str) -> Proc:
        self.pod.proc(task_id, exec_id)  # NotFoundError for an unknown one
        return self.procs[(task_id, exec_id)]

    # --- create / start / delete -----------------------------------------------------
    async def create(self, req: spb.CreateTaskRequest) -> spb.CreateTaskResponse:
        bundle = Path(req.bundle)
        spec = load_spec(bundle.resolve())
        restore = None
        if req.checkpoint:  # restored at Start, as runc's shim does; checked now
            images = Path(req.checkpoint)
            made = checkpoint.made_by(resolve_guest_files(self.pod.config).image,
                                      f"restore of {req.id}")  # fmt: skip
            await asyncio.to_thread(checkpoint.check, images, made)
            restore = checkpoint.RestoreOptions(images, bundle / "criu-work")
        kind = container_kind(spec.get("annotations") or {}, req.id)
        rules.check_namespaces(spec, req.id, kind)
        io = spb.TaskIO(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
                        terminal=req.terminal)  # fmt: skip
        host = await asyncio.to_thread(open_stdio, req.stdin, req.stdout, req.stderr, req.id,
                                       self.namespace)  # fmt: skip
        try:
            container = await self.pod.create(
                req.id, bundle, stdin=bool(req.stdin) or req.terminal, boots=kind != "container",
                rootfs_mounts=[(m.type, m.source, list(m.options)) for m in req.rootfs],
                hooks_log=bundle / "hooks.log", restore=restore,
            )  # fmt: skip
        except BaseException:
            host.close()
            raise
        proc = self.procs[(req.id, "")] = Proc(io, container.process, host)
        proc.attach()
        self.events.publish(spb.TaskCreate(container_id=req.id, bundle=req.bundle,
                                           rootfs=req.rootfs, io=io, pid=self.vm_pid,
                                           checkpoint=req.checkpoint))  # fmt: skip
        return spb.CreateTaskResponse(pid=self.vm_pid)

    async def _exited(self, container: Container, process: Process) -> None:
        proc = self.procs.get((container.id, process.exec_id))
        if proc is not None and proc.host is not None:
            proc.host.close()
        trace.mark("exit seen")
        self.events.publish(spb.TaskExit(container_id=container.id, id=process.exec_id or
                                         container.id, pid=self.vm_pid,
                                         **exit_fields(process)))  # fmt: skip

    async def start(self, req: spb.StartRequest) -> spb.StartResponse:
        container, process = self.pod.proc(req.id, req.exec_id)
        async with process.start_lock:
            process.require("start")
            if not req.exec_id:

                def started() -> None:  # before the poststart hooks
                    self.events.publish(spb.TaskStart(container_id=req.id, pid=self.vm_pid))

                container.on_started = started
                await container.start()
                return spb.StartResponse(pid=self.vm_pid)
            proc = self._proc(req.id, req.exec_id)
            try:
                await self.pod.start_exec(req.id, req.exec_id, lambda _: proc.attach())
            except BaseException:
                await proc.release()  # the client waits for its FIFOs to end
                raise
            self.events.publish(spb.TaskExecStarted(container_id=req.id, exec_id=req.exec_id,
                                                    pid=self.vm_pid))  # fmt: skip
        return spb.StartResponse(pid=self.vm_pid)

    async def delete(self, req: spb.DeleteRequest) -> spb.DeleteResponse:
        proc = self._proc(req.id, req.exec_id)
        if proc.process.state is State.RUNNING:
            raise RpcError(Code.FAILED_PRECONDITION,
                           f"{proc.event_id}: cannot delete a running process")  # fmt: skip
        if req.exec_id:
            await self.pod.delete_exec(req.id, req.exec_id)
            await self.procs.pop((req.id, req.exec_id)).release()
            return _delete_response(proc, self.vm_pid)
        pid = self.vm_pid
        container, warnings = await self.pod.delete(req.id)
        for warning in warnings:
            log.warning("%s", warning)
        for exec_id in ["", *container.execs]:
            gone = self.procs.pop((req.id, exec_id), None)
            if gone is not None:
                await gone.release()
        self.events.publish(spb.TaskDelete(container_id=req.id, pid=pid, id="",
                                           **exit_fields(proc.process)))  # fmt: skip
        return _delete_response(proc, pid)

    # --- processes ---------------------------------------------------------------------
    async def exec(self, req: spb.ExecProcessRequest) -> empty_pb2.Empty:
        container = self.pod.container(req.id)
        if len(req.spec.value) > MAX_JSON:
            raise RpcError(Code.INVALID_ARGUMENT, f"exec process spec over {MAX_JSON} bytes")
        process = container.add_exec(req.exec_id, req.spec.value, bool(req.stdin) or req.terminal)
        io = spb.TaskIO(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
                        terminal=req.terminal)  # fmt: skip
        try:
            host = await asyncio.to_thread(open_stdio, req.stdin, req.stdout, req.stderr, req.id,
                                           self.namespace)  # fmt: skip
        except BaseException:
            del container.execs[req.exec_id]
            raise
        self.procs[(req.id, req.exec_id)] = Proc(io, process, host)
        self.events.publish(spb.TaskExecAdded(container_id=req.id, exec_id=req.exec_id))
        return empty_pb2.Empty()

    async def kill(self, req: spb.KillRequest) -> empty_pb2.Empty:
        await self.pod.kill(req.id, req.exec_id, req.signal, req.all)
        return empty_pb2.Empty()

    async def wait(self, req: spb.WaitRequest) -> spb.WaitResponse:
        proc = self._proc(req.id, req.exec_id)
        await proc.process.wait()
        return spb.WaitResponse(**exit_fields(proc.process))

    async def state(self, req: spb.StateRequest) -> spb.StateResponse:
        proc = self._proc(req.id, req.exec_id)
        return proc.state(str(self.pod.container(req.id).bundle), self.vm_pid)

    async def close_io(self, req: spb.CloseIORequest) -> empty_pb2.Empty:
        proc = self._proc(req.id, req.exec_id)
        if req.stdin:
            await proc.process.close_stdin()
        return empty_pb2.Empty()

    async def resize_pty(self, req: spb.ResizePtyRequest) -> empty_pb2.Empty:
        _, process = self.pod.proc(req.id, req.exec_id)
        if process.state is State.RUNNING or (process.state is State.CREATED and not req.exec_id):
            await process.resize(req.height, req.width)
        return empty_pb2.Empty()

    # --- the container as a whole -----------------------------------------------------
    async def pids(self, req: spb.PidsRequest) -> spb.PidsResponse:
        pids = await self.pod.container(req.id).pids()
        return spb.PidsResponse(processes=[spb.ProcessInfo(pid=pid) for pid in pids])

    async def pause(self, req: spb.PauseRequest) -> empty_pb2.Empty:
        await self.pod.container(req.id).pause()
        self.events.publish(spb.TaskPaused(container_id=req.id))
        return empty_pb2.Empty()

    async def resume(self, req: spb.ResumeRequest) -> empty_pb2.Empty:
        await self.pod.container(req.id).resume()
        self.events.publish(spb.TaskResumed(container_id=req.id))
        return empty_pb2.Empty()

    async def update(self, req: spb.UpdateTaskRequest) -> empty_pb2.Empty:
        await self.pod.update(req.id, req.resources.value)
        return empty_pb2.Empty()

    async def stats(self, req: spb.StatsRequest) -> spb.StatsResponse:
        s = await self.pod.container(req.id).stats()
        metrics = spb.CgroupsV2Metrics(
            pids=spb.PidsStat(current=s.pids_current, limit=s.pids_max),
            cpu=spb.CPUStat(usage_usec=s.cpu_usage_usec, user_usec=s.cpu_user_usec,
                            system_usec=s.cpu_system_usec),
            memory=spb.MemoryStat(usage=s.memory_current, usage_limit=s.memory_max),
            memory_events=spb.MemoryEvents(oom_kill=s.oom_kills),
            # the guest's block devices mean nothing on the host: one entry, their sum
            io=spb.IOStat(usage=[spb.IOEntry(rbytes=s.io_read_bytes, wbytes=s.io_write_bytes,
                                             rios=s.io_read_ops, wios=s.io_write_ops)]),
        )  # fmt: skip
        stats = any_pb2.Any(type_url=METRICS_TYPE_URL, value=metrics.SerializeToString())
        return spb.StatsResponse(stats=stats)

    async def checkpoint(self, req: spb.CheckpointTaskRequest) -> empty_pb2.Empty:
        """Into ``path`` (containerd keeps what is there), or the runc options' image path;
        the task keeps running unless the options say ``exit``."""
        opts = spb.CheckpointOptions()
        if req.options.value:
            try:
                opts.ParseFromString(req.options.value)
            except DecodeError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, f"Checkpoint options: {exc}") from exc
        container = self.pod.container(req.id)
        images = Path(opts.image_path or req.path)
        work = Path(opts.work_path) if opts.work_path else container.bundle / "criu-work"
        await container.checkpoint(checkpoint.CheckpointOptions(
            images, work, leave_running=not opts.exit, tcp_established=opts.open_tcp,
            file_locks=opts.file_locks))  # fmt: skip
        return empty_pb2.Empty()

    # --- the shim ---------------------------------------------------------------------
    async def connect(self, req: spb.ConnectRequest) -> spb.ConnectResponse:
        return spb.ConnectResponse(shim_pid=os.getpid(), task_pid=self.vm_pid, version=VERSION)

    async def shutdown(self, req: spb.ShutdownRequest) -> empty_pb2.Empty:
        if not self.pod.containers:
            self.done.set()
        return empty_pb2.Empty()

    async def close(self) -> None:
        """The shim is going away: end every task and stop the VM."""
        await self.pod.close()
        for proc in self.procs.values():
            await proc.release()
        self.procs.clear()


def _delete_response(proc: Proc, pid: int) -> spb.DeleteResponse:
    return spb.DeleteResponse(pid=pid, **exit_fields(proc.process))
