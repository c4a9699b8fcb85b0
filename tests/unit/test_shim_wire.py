"""containerd's names for the shim's messages: services, events, options, exit fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import empty_pb2, timestamp_pb2

from runvm.errors import ProtocolError
from runvm.shim import shim_api_pb2 as pb
from runvm.shim import wire


def test_service_names_and_task_methods() -> None:
    assert wire.TASK_SERVICE == "containerd.task.v2.Task"
    assert (wire.EVENTS_SERVICE, wire.FORWARD_METHOD) == (
        "containerd.services.events.ttrpc.v1.Events",
        "Forward",
    )
    assert sorted(wire.TASK_METHODS) == sorted(
        [
            "State",
            "Create",
            "Start",
            "Delete",
            "Pids",
            "Pause",
            "Resume",
            "Checkpoint",
            "Kill",
            "Exec",
            "ResizePty",
            "CloseIO",
            "Update",
            "Wait",
            "Stats",
            "Connect",
            "Shutdown",
        ]
    )
    assert wire.TASK_METHODS["Kill"] == (pb.KillRequest, empty_pb2.Empty)
    assert wire.TASK_METHODS["Create"] == (pb.CreateTaskRequest, pb.CreateTaskResponse)


TOPICS = {
    pb.TaskCreate: "/tasks/create",
    pb.TaskStart: "/tasks/start",
    pb.TaskOOM: "/tasks/oom",
    pb.TaskExit: "/tasks/exit",
    pb.TaskDelete: "/tasks/delete",
    pb.TaskExecAdded: "/tasks/exec-added",
    pb.TaskExecStarted: "/tasks/exec-started",
    pb.TaskPaused: "/tasks/paused",
    pb.TaskResumed: "/tasks/resumed",
    pb.TaskCheckpointed: "/tasks/checkpointed",
}


@pytest.mark.parametrize("cls", list(TOPICS), ids=lambda cls: cls.__name__)
def test_event_type_urls_and_topics(cls: type[pb.TaskOOM]) -> None:
    event = cls(container_id="c1")
    packed = wire.event_any(event)
    assert packed.type_url == f"containerd.events.{cls.__name__}"
    assert packed.value == event.SerializeToString()
    assert wire.topic_of(event) == TOPICS[cls]


def test_non_events_are_refused() -> None:
    with pytest.raises(TypeError, match="KillRequest is not a containerd task event"):
        wire.event_any(pb.KillRequest())
    with pytest.raises(TypeError):
        wire.topic_of(pb.TaskIO())


def test_envelope() -> None:
    now = datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    request = wire.envelope("k8s.io", pb.TaskStart(container_id="c1", pid=4), now)
    env = request.envelope
    assert (env.namespace, env.topic) == ("k8s.io", "/tasks/start")
    assert env.timestamp == timestamp_pb2.Timestamp(seconds=1704164645, nanos=6_000_000)
    assert env.event.type_url == "containerd.events.TaskStart"
    assert pb.TaskStart.FromString(env.event.value) == pb.TaskStart(container_id="c1", pid=4)


# Any{type_url(1)="runtimeoptions.v1.Options", value(2)=Options{config_path(2)="/etc/r.toml"}}
# as containerd writes it on the stdin of `start`, spelled out byte by byte.
OPTIONS_ANY = b"\x0a\x19runtimeoptions.v1.Options" + b"\x12\x0d" + b"\x12\x0b/etc/r.toml"


def test_parse_options() -> None:
    assert wire.parse_options(OPTIONS_ANY) == "/etc/r.toml"
    assert wire.parse_options(b"") is None
    # Options without a config path, and options of another runtime (runc's).
    assert wire.parse_options(b"\x0a\x19runtimeoptions.v1.Options") is None
    assert wire.parse_options(b"\x0a\x1acontainerd.runc.v1.Options\x12\x02\x08\x01") is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x30short",
        b"\xff\xff\xff",
        b"\x0a\x19runtimeoptions.v1.Options\x12\x02\x12\x09",
        b"\x08\x01",
    ],
    ids=["truncated", "bad-tag", "bad-inner", "no-type-url"],
)
def test_parse_options_garbage(data: bytes) -> None:
    with pytest.raises(ValueError, match="runtime options on stdin") as info:
        wire.parse_options(data)
    assert isinstance(info.value, ProtocolError)


def test_timestamps() -> None:
    when = datetime(2024, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    ts = wire.timestamp(when)
    assert ts == timestamp_pb2.Timestamp(seconds=1704067200)
    assert wire.to_datetime(ts) == when
    assert wire.to_datetime(ts).tzinfo is UTC
    with pytest.raises(ValueError, match="naive datetime"):
        wire.timestamp(datetime(2024, 1, 1))


@pytest.mark.parametrize(
    ("returncode", "status"), [(0, 0), (7, 7), (255, 255), (-9, 137), (-15, 143)]
)
def test_exit_status(returncode: int, status: int) -> None:
    assert wire.exit_status(returncode) == status


def test_exit_status_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        wire.exit_status(256)


def test_exit_fields_fit_every_exit_message() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    fields = wire.exit_status_to_event_fields(-9, at)
    assert fields.exit_status == 137
    assert wire.to_datetime(fields.exited_at) == at
    assert pb.WaitResponse(**fields._asdict()).exit_status == 137
    assert pb.DeleteResponse(pid=1, **fields._asdict()).exited_at == fields.exited_at


def test_task_exit_id_is_container_id_for_init() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    init = wire.task_exit("c1", "", 10, 3, at)
    assert (init.container_id, init.id, init.pid, init.exit_status) == ("c1", "c1", 10, 3)
    assert wire.task_exit("c1", "e1", 11, -9, at).id == "e1"
