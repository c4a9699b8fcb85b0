"""The shim's containerd messages: generated code is current, bytes match containerd's protos.

Expected bytes are written out by hand from the field numbers and types of protocols.md §2.5,
§2.8 and §2.11, so a wrong number or type in shim_api.proto shows up here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

import runvm.shim
from runvm.shim import shim_api_pb2 as pb

PACKAGE = Path(runvm.shim.__file__).parent


@pytest.mark.skipif(shutil.which("protoc") is None, reason="protoc is not installed")
def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["protoc", "-I.", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", "shim_api.proto"],
        cwd=PACKAGE,
        check=True,
    )
    for name in ("shim_api_pb2.py", "shim_api_pb2.pyi"):
        assert (tmp_path / name).read_text() == (PACKAGE / name).read_text(), f"{name} is stale"


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) with a one-byte length."""
    assert len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


CASES = [
    pytest.param(
        pb.KillRequest(id="c1", signal=9, all=True),
        bytes.fromhex("0a 02 63 31 18 09 20 01"),
        id="kill",
    ),
    pytest.param(
        pb.DeleteResponse(
            pid=1, exit_status=137, exited_at=timestamp_pb2.Timestamp(seconds=1, nanos=5)
        ),
        bytes.fromhex("08 01 10 89 01 1a 04 08 01 10 05"),
        id="delete-response",
    ),
    pytest.param(
        pb.StateResponse(id="c1", pid=42, status=pb.STOPPED, exit_status=7, exec_id="e1"),
        bytes.fromhex("0a 02 63 31 18 2a 20 03 48 07 5a 02 65 31"),
        id="state-response",
    ),
    pytest.param(
        pb.ConnectResponse(shim_pid=300, task_pid=0, version="1"),
        bytes.fromhex("08 ac 02 1a 01 31"),
        id="connect-response",
    ),
    pytest.param(
        pb.CreateTaskRequest(
            id="c1",
            bundle="/b",
            rootfs=[pb.Mount(type="overlay", source="overlay", options=["ro"])],
            terminal=True,
            stdin="/i",
            options=any_pb2.Any(type_url="t", value=b"\x01"),
        ),
        ld(1, b"c1")
        + ld(2, b"/b")
        + ld(3, ld(1, b"overlay") + ld(2, b"overlay") + ld(4, b"ro"))
        + bytes.fromhex("20 01")
        + ld(5, b"/i")
        + ld(10, ld(1, b"t") + ld(2, b"\x01")),
        id="create",
    ),
    pytest.param(
        pb.ExecProcessRequest(id="c1", exec_id="e1", terminal=True, stderr="/e"),
        ld(1, b"c1") + ld(2, b"e1") + bytes.fromhex("18 01") + ld(6, b"/e"),
        id="exec",
    ),
    pytest.param(
        pb.ResizePtyRequest(id="c1", width=80, height=24),
        ld(1, b"c1") + bytes.fromhex("18 50 20 18"),
        id="resize",
    ),
    pytest.param(
        pb.UpdateTaskRequest(id="c1", annotations={"k": "v"}),
        ld(1, b"c1") + ld(3, ld(1, b"k") + ld(2, b"v")),
        id="update-annotations",
    ),
    pytest.param(
        pb.PidsResponse(processes=[pb.ProcessInfo(pid=5)]),
        ld(1, bytes.fromhex("08 05")),
        id="pids",
    ),
    pytest.param(
        pb.ShutdownRequest(id="c1", now=True),
        ld(1, b"c1") + bytes.fromhex("10 01"),
        id="shutdown",
    ),
    pytest.param(
        pb.TaskExit(
            container_id="c1",
            id="c1",
            pid=9,
            exit_status=2,
            exited_at=timestamp_pb2.Timestamp(seconds=3),
        ),
        ld(1, b"c1") + ld(2, b"c1") + bytes.fromhex("18 09 20 02") + ld(5, b"\x08\x03"),
        id="task-exit",
    ),
    pytest.param(
        pb.TaskDelete(container_id="c1", pid=9, exit_status=2, id="e1"),
        ld(1, b"c1") + bytes.fromhex("10 09 18 02") + ld(5, b"e1"),
        id="task-delete",
    ),
    pytest.param(
        pb.TaskCreate(container_id="c1", io=pb.TaskIO(stdout="/o", terminal=True), pid=7),
        ld(1, b"c1") + ld(4, ld(2, b"/o") + b"\x20\x01") + bytes.fromhex("30 07"),
        id="task-create",
    ),
    pytest.param(
        pb.TaskExecStarted(container_id="c1", exec_id="e1", pid=3),
        ld(1, b"c1") + ld(2, b"e1") + bytes.fromhex("18 03"),
        id="task-exec-started",
    ),
    pytest.param(
        pb.ForwardRequest(
            envelope=pb.Envelope(
                timestamp=timestamp_pb2.Timestamp(seconds=1),
                namespace="ns",
                topic="/t",
                event=any_pb2.Any(type_url="u"),
            )
        ),
        ld(1, ld(1, b"\x08\x01") + ld(2, b"ns") + ld(3, b"/t") + ld(4, ld(1, b"u"))),
        id="forward",
    ),
    pytest.param(
        pb.Options(type_url="x", config_path="/c"),
        ld(1, b"x") + ld(2, b"/c"),
        id="runtime-options",
    ),
]


@pytest.mark.parametrize(("msg", "wire"), CASES)
def test_messages_have_containerd_wire_bytes(msg: Message, wire: bytes) -> None:
    assert msg.SerializeToString(deterministic=True) == wire
    assert type(msg).FromString(wire) == msg


def test_status_enum_values() -> None:
    assert list(range(6)) == [pb.UNKNOWN, pb.CREATED, pb.RUNNING, pb.STOPPED, pb.PAUSED, pb.PAUSING]
