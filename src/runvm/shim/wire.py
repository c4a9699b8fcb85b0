"""containerd's names for our messages: ttrpc services, event type URLs and topics, options.

The messages in ``shim_api_pb2`` live in a package of ours (``runvm.shim.v1``); containerd only sees
field numbers, plus the strings kept here. Never use ``Any.Pack``: it would write our package
name (and a ``type.googleapis.com/`` prefix) where containerd expects its own type URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from runvm.errors import ProtocolError
from runvm.shim import shim_api_pb2 as pb

TASK_SERVICE = "containerd.task.v2.Task"
EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
FORWARD_METHOD = "Forward"

# Task method name -> (request class, response class); all unary (protocols.md §2.5).
TASK_METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "State": (pb.StateRequest, pb.StateResponse),
    "Create": (pb.CreateTaskRequest, pb.CreateTaskResponse),
    "Start": (pb.StartRequest, pb.StartResponse),
    "Delete": (pb.DeleteRequest, pb.DeleteResponse),
    "Pids": (pb.PidsRequest, pb.PidsResponse),
    "Pause": (pb.PauseRequest, empty_pb2.Empty),
    "Resume": (pb.ResumeRequest, empty_pb2.Empty),
    "Checkpoint": (pb.CheckpointTaskRequest, empty_pb2.Empty),
    "Kill": (pb.KillRequest, empty_pb2.Empty),
    "Exec": (pb.ExecProcessRequest, empty_pb2.Empty),
    "ResizePty": (pb.ResizePtyRequest, empty_pb2.Empty),
    "CloseIO": (pb.CloseIORequest, empty_pb2.Empty),
    "Update": (pb.UpdateTaskRequest, empty_pb2.Empty),
    "Wait": (pb.WaitRequest, pb.WaitResponse),
    "Stats": (pb.StatsRequest, pb.StatsResponse),
    "Connect": (pb.ConnectRequest, pb.ConnectResponse),
    "Shutdown": (pb.ShutdownRequest, empty_pb2.Empty),
}

OPTIONS_TYPE_URL = "runtimeoptions.v1.Options"


class EventKind(NamedTuple):
    type_url: str
    topic: str


# Event class -> containerd's Any type URL (typeurl v1: bare proto full name) and topic (§2.8).
EVENTS: dict[type[Message], EventKind] = {
    pb.TaskCreate: EventKind("containerd.events.TaskCreate", "/tasks/create"),
    pb.TaskStart: EventKind("containerd.events.TaskStart", "/tasks/start"),
    pb.TaskOOM: EventKind("containerd.events.TaskOOM", "/tasks/oom"),
    pb.TaskExit: EventKind("containerd.events.TaskExit", "/tasks/exit"),
    pb.TaskDelete: EventKind("containerd.events.TaskDelete", "/tasks/delete"),
    pb.TaskExecAdded: EventKind("containerd.events.TaskExecAdded", "/tasks/exec-added"),
    pb.TaskExecStarted: EventKind("containerd.events.TaskExecStarted", "/tasks/exec-started"),
    pb.TaskPaused: EventKind("containerd.events.TaskPaused", "/tasks/paused"),
    pb.TaskResumed: EventKind("containerd.events.TaskResumed", "/tasks/resumed"),
    pb.TaskCheckpointed: EventKind("containerd.events.TaskCheckpointed", "/tasks/checkpointed"),
}


class OptionsError(ProtocolError, ValueError):
    """The runtime options on the shim's stdin are not a serialized ``google.protobuf.Any``."""


def _kind(msg: Message) -> EventKind:
    try:
        return EVENTS[type(msg)]
    except KeyError:
        raise TypeError(f"{type(msg).__name__} is not a containerd task event") from None


def event_any(msg: Message) -> any_pb2.Any:
    """Pack an event under containerd's type URL (e.g. ``containerd.events.TaskExit``)."""
    return any_pb2.Any(type_url=_kind(msg).type_url, value=msg.SerializeToString())


def topic_of(msg: Message) -> str:
    """The topic containerd files an event under (e.g. ``/tasks/exit``)."""
    return _kind(msg).topic


def envelope(namespace: str, msg: Message, now: datetime) -> pb.ForwardRequest:
    """The request for ``Events.Forward`` that publishes ``msg`` in ``namespace``."""
    return pb.ForwardRequest(
        envelope=pb.Envelope(
            timestamp=timestamp(now), namespace=namespace, topic=topic_of(msg), event=event_any(msg)
        )
    )


def parse_options(data: bytes) -> str | None:
    """The ``config_path`` from runtime options handed to ``start`` on stdin.

    containerd writes a serialized ``Any`` of ``runtimeoptions.v1.Options`` when the runtime
    has options, nothing otherwise. Returns None for no input, for options of another type
    (e.g. runc's) and for an empty ``config_path``.
    """
    if not data:
        return None
    what = f"runtime options on stdin ({len(data)} bytes)"
    try:
        wrapped = any_pb2.Any.FromString(data)
        # Bytes that happen to parse still carry no type URL; containerd always sets one.
        if not wrapped.type_url:
            raise OptionsError(f"{what}: not a serialized google.protobuf.Any (no type_url)")
        if wrapped.type_url != OPTIONS_TYPE_URL:
            return None
        options = pb.Options.FromString(wrapped.value)
    except DecodeError as exc:
        raise OptionsError(
            f"{what}: not a serialized google.protobuf.Any of {OPTIONS_TYPE_URL}: {exc}"
        ) from exc
    return options.config_path or None


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp for an aware datetime (naive ones are refused: their zone is a guess)."""
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when.isoformat()}: give it a time zone")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def to_datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    """The aware UTC datetime of a Timestamp."""
    return ts.ToDatetime(tzinfo=UTC)


def exit_status(returncode: int) -> int:
    """containerd's exit status for a ``subprocess``-style return code (§2.7).

    A normal exit gives its code; death by signal N (returncode -N) gives 128+N.
    """
    if returncode < 0:
        return 128 - returncode
    if returncode > 255:
        raise ValueError(f"exit code {returncode} is out of range 0..255")
    return returncode


class ExitFields(NamedTuple):
    """The ``exit_status`` and ``exited_at`` fields shared by TaskExit, TaskDelete,
    WaitResponse, DeleteResponse and StateResponse: ``pb.WaitResponse(**f._asdict())``."""

    exit_status: int
    exited_at: timestamp_pb2.Timestamp


def exit_status_to_event_fields(returncode: int, exited_at: datetime) -> ExitFields:
    """The exit fields for a process that ended with ``returncode`` at ``exited_at``."""
    return ExitFields(exit_status(returncode), timestamp(exited_at))


def task_exit(
    container_id: str, exec_id: str, pid: int, returncode: int, exited_at: datetime
) -> pb.TaskExit:
    """The ``/tasks/exit`` event; ``exec_id`` "" means the init process, whose event ``id``
    is the container id."""
    fields = exit_status_to_event_fields(returncode, exited_at)
    return pb.TaskExit(
        container_id=container_id,
        id=exec_id or container_id,
        pid=pid,
        exit_status=fields.exit_status,
        exited_at=fields.exited_at,
    )
