"""The owner's side of ``runvm debug``: debug shells in a pod's guest, for the CLI.

Contract: :func:`handlers` serves :data:`SERVICE` on the socket an owner already serves (the
CLI monitor's, the shim's). Its methods are the agent's process calls, with the agent's
messages, for processes of no container only (``container_id`` ""): each is forwarded as it
is to the agent of the pod named by the :data:`SANDBOX_KEY` metadata (a pod id or the id of
one of its containers; the owner's only pod if absent). With ``[debug] console`` off every
call is refused (FAILED_PRECONDITION, naming the setting) before anything reaches a guest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError, Message

from runvm.config import RunvmConfig
from runvm.errors import RpcError
from runvm.protocol import AGENT_SERVICE, DEBUG_OFF
from runvm.protocol import agent_pb2 as pb
from runvm.runtime.lifecycle import SandboxState
from runvm.runtime.pod import Pod
from runvm.ttrpc import CallContext, Code, Handler

SERVICE = "runvm.debug.v1.Console"
SANDBOX_KEY = "runvm-sandbox"
METHODS: dict[str, type[Message]] = {
    "ExecProcess": pb.ExecProcessRequest,
    "SignalProcess": pb.SignalProcessRequest,
    "WaitProcess": pb.WaitProcessRequest,
    "WriteStdin": pb.WriteStreamRequest,
    "ReadStdout": pb.ReadStreamRequest,
    "ReadStderr": pb.ReadStreamRequest,
    "CloseStdin": pb.CloseStdinRequest,
    "TtyWinResize": pb.TtyWinResizeRequest,
}


def find_pod(pods: Sequence[Pod], name: str) -> Pod:
    """The pod ``name`` identifies (its id, or one of its containers'); NOT_FOUND if none."""
    if not name and len(pods) == 1:
        return pods[0]
    for pod in pods:
        if name == pod.id or name in pod.containers:
            return pod
    raise RpcError(Code.NOT_FOUND, f"sandbox {name!r} is not served here")


def handlers(config: RunvmConfig, pods: Callable[[], Sequence[Pod]]) -> dict[str, Handler]:
    def relay(method: str, request_type: type[Message]) -> Handler:
        async def handler(payload: bytes, ctx: CallContext) -> bytes:
            if not config.debug.console:
                raise RpcError(Code.FAILED_PRECONDITION, DEBUG_OFF)
            try:
                request = request_type.FromString(payload)
            except DecodeError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, f"{method}: {exc}") from exc
            if getattr(request, "container_id", ""):
                raise RpcError(Code.INVALID_ARGUMENT, "a debug shell belongs to no container")
            pod = find_pod(pods(), (ctx.metadata.get(SANDBOX_KEY) or [""])[0])
            sandbox = pod.sandbox
            if sandbox is None or sandbox.agent is None or sandbox.state is not SandboxState.READY:
                why = f": {sandbox.failure}" if sandbox is not None and sandbox.failure else ""
                raise RpcError(Code.FAILED_PRECONDITION, f"pod {pod.id} has no running VM{why}")
            return await sandbox.agent.forward(AGENT_SERVICE, method, payload, ctx.timeout)

        return handler

    return {method: relay(method, request_type) for method, request_type in METHODS.items()}
