"""One shim serving every pod of a containerd namespace (``shim.scope = "namespace"``).

Contract: each pod (group) has its own :class:`TaskService` (``shared``: it never moves the
process into a pod's network namespace or host cgroup). A Create goes to the service of the
pod its bundle names, made on first use; every other request to the service that owns the
task it names (NOT_FOUND if none does). A pod whose last task is deleted is forgotten
(``on_forget``). ``Shutdown`` ends the shim (``done``) once no pod is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from runvm import config as cfg
from runvm.errors import RpcError
from runvm.shim import bundle as bundle_files
from runvm.shim import shim_api_pb2 as spb
from runvm.shim.cmdline import group_id
from runvm.shim.events import Publisher
from runvm.shim.service import METHODS, TaskService, unary
from runvm.ttrpc import Code, Handler


class PodRouter:
    def __init__(self, namespace: str, config: cfg.RunvmConfig, publisher: Publisher) -> None:
        self.namespace = namespace
        self.config = config  # every pod's (its state root is the namespace's)
        self.events = publisher
        self.pods: dict[str, TaskService] = {}
        self.owner: dict[str, TaskService] = {}  # task id -> its pod's service
        self.done = asyncio.Event()
        self.on_change: Callable[[TaskService], None] = lambda service: None
        self.on_forget: Callable[[TaskService], None] = lambda service: None

    def handlers(self) -> dict[str, Handler]:
        return {name: unary(name, functools.partial(self._route, name)) for name in METHODS}

    async def _route(self, name: str, req: Any) -> Message:
        if name == "Create":
            return await self._create(req)
        if name == "Shutdown":
            if not self.pods:
                self.done.set()
            return empty_pb2.Empty()
        service = self.owner.get(req.id)
        if service is None:
            raise RpcError(Code.NOT_FOUND, f"container {req.id}: not found")
        response: Message = await getattr(service, METHODS[name])(req)
        if name == "Delete" and not req.exec_id:
            self.owner.pop(req.id, None)
            await service.pod.stopped()  # this shim outlives the pod: nothing else waits
            self._forget_if_empty(service)
        return response

    async def _create(self, req: spb.CreateTaskRequest) -> Message:
        annotations = await asyncio.to_thread(bundle_files.read_annotations, Path(req.bundle))
        group = group_id(annotations, req.id)
        service = self.pods.get(group)
        if service is None:
            service = TaskService(group, self.namespace, self.config, self.events, shared=True)
            service.pod.on_change = functools.partial(self.on_change, service)
            self.pods[group] = service
        try:
            response = await service.create(req)
        except BaseException:
            self._forget_if_empty(service)
            raise
        self.owner[req.id] = service
        return response

    def _forget_if_empty(self, service: TaskService) -> None:
        pod = service.pod
        if pod.containers or pod.lock.locked() or self.pods.get(service.group) is not service:
            return  # still in use, or a create of its pod is under way
        del self.pods[service.group]
        self.on_forget(service)

    async def close(self) -> None:
        """The shim is going away: every pod's tasks and VM end."""
        for service in list(self.pods.values()):
            with contextlib.suppress(Exception):
                await service.close()
            self.on_forget(service)
        self.pods.clear()
        self.owner.clear()
