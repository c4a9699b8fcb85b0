"""What the shim keeps beside each runtime process: containerd's stdio names, the host ends
of them, and the process as containerd's wire types show it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from runvm.runtime.lifecycle import State
from runvm.runtime.proc import Process
from runvm.shim import shim_api_pb2 as spb
from runvm.shim.stdio import HostStdio

STATUS = {
    State.CREATING: spb.UNKNOWN, State.CREATED: spb.CREATED, State.RUNNING: spb.RUNNING,
    State.PAUSED: spb.PAUSED, State.STOPPED: spb.STOPPED,
}  # fmt: skip
"""The runtime's lifecycle states as containerd's task status."""


@dataclass
class Proc:
    io: spb.TaskIO
    process: Process
    host: HostStdio | None = None

    @property
    def event_id(self) -> str:
        return self.process.exec_id or self.process.container_id

    def attach(self) -> None:
        """Relay the guest process's stdio to the host ends (owned: FIFOs, pipes, files)."""
        host = self.host or HostStdio()
        self.process.attach(host.stdout, host.stderr, host.stdin, self.io.terminal, owned=True)

    async def release(self) -> None:
        """Stop the relays, then close the host ends (idempotent)."""
        await self.process.release()
        if self.host is not None:
            self.host.close()

    def state(self, bundle: str, pid: int) -> spb.StateResponse:
        """``pid`` is the VM's; an exec not started yet has none."""
        p = self.process
        pid = 0 if p.exec_id and p.state is State.CREATED else pid
        return spb.StateResponse(
            id=p.container_id, bundle=bundle, pid=pid, status=STATUS[p.state],
            stdin=self.io.stdin, stdout=self.io.stdout, stderr=self.io.stderr,
            terminal=self.io.terminal, exec_id=p.exec_id, **exit_fields(p),
        )  # fmt: skip


def exit_fields(process: Process) -> dict[str, Any]:
    """``exit_status`` and ``exited_at`` (once exited) as containerd's TaskExit, TaskDelete,
    WaitResponse, DeleteResponse and StateResponse carry them."""
    fields: dict[str, Any] = {"exit_status": process.exit_status}
    if process.exited_at_ns:
        fields["exited_at"] = timestamp_pb2.Timestamp()
        fields["exited_at"].FromNanoseconds(process.exited_at_ns)
    return fields
