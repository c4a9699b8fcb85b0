"""The owner's debug relay: refused while off, for processes of no container only, routed
to the pod the caller names."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from runvm import config as cfg
from runvm.errors import RpcError
from runvm.protocol import DEBUG_OFF
from runvm.protocol import agent_pb2 as pb
from runvm.runtime import debug
from runvm.runtime.lifecycle import SandboxState
from runvm.ttrpc import CallContext, Code

ON = cfg.parse({"debug": {"console": True}})


class Agent:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def forward(self, service: str, method: str, payload: bytes, timeout: Any) -> bytes:
        self.calls.append((method, payload))
        return pb.ExecProcessResponse(pid=7).SerializeToString()


def pod(pod_id: str, *containers: str, state: SandboxState = SandboxState.READY) -> Any:
    sandbox = SimpleNamespace(agent=Agent(), state=state, failure="the VM died")
    return SimpleNamespace(id=pod_id, containers=dict.fromkeys(containers), sandbox=sandbox)


def call(config: cfg.RunvmConfig, pods: list[Any], request: pb.ExecProcessRequest,
         sandbox: str = "") -> bytes:  # fmt: skip
    handler = debug.handlers(config, lambda: pods)["ExecProcess"]
    metadata = {debug.SANDBOX_KEY: [sandbox]} if sandbox else {}
    ctx = CallContext(debug.SERVICE, "ExecProcess", metadata, None)

    async def go() -> bytes:
        return await handler(request.SerializeToString(), ctx)

    return asyncio.run(go())


def test_off_refuses_before_any_guest_is_asked() -> None:
    p = pod("p1")
    with pytest.raises(RpcError) as err:
        call(cfg.RunvmConfig(), [p], pb.ExecProcessRequest(exec_id="e1"))
    assert err.value.code == Code.FAILED_PRECONDITION and err.value.message == DEBUG_OFF
    assert p.sandbox.agent.calls == []


def test_only_processes_of_no_container_are_relayed() -> None:
    p = pod("p1", "c1")
    with pytest.raises(RpcError) as err:
        call(ON, [p], pb.ExecProcessRequest(container_id="c1", exec_id="e1"))
    assert err.value.code == Code.INVALID_ARGUMENT and p.sandbox.agent.calls == []


def test_routed_to_the_named_pod_by_its_id_or_a_container() -> None:
    p1, p2 = pod("p1", "c1"), pod("p2", "c2")
    request = pb.ExecProcessRequest(exec_id="e1")
    assert pb.ExecProcessResponse.FromString(call(ON, [p1, p2], request, "c2")).pid == 7
    assert call(ON, [p1, p2], request, "p1")
    assert [len(p.sandbox.agent.calls) for p in (p1, p2)] == [1, 1]
    assert p2.sandbox.agent.calls == [("ExecProcess", request.SerializeToString())]
    with pytest.raises(RpcError) as err:
        call(ON, [p1, p2], request, "nope")
    assert err.value.code == Code.NOT_FOUND
    with pytest.raises(RpcError) as err:  # two pods: one must be named
        call(ON, [p1, p2], request)
    assert err.value.code == Code.NOT_FOUND


def test_a_pod_without_a_running_vm_says_why() -> None:
    with pytest.raises(RpcError) as err:
        call(ON, [pod("p1", state=SandboxState.FAILED)], pb.ExecProcessRequest(exec_id="e1"))
    assert err.value.code == Code.FAILED_PRECONDITION
    assert "pod p1 has no running VM: the VM died" in err.value.message
