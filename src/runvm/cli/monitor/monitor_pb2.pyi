from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CheckpointRequest(_message.Message):
    __slots__ = ["file_locks", "image_path", "leave_running", "tcp_established", "work_path"]
    FILE_LOCKS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    WORK_PATH_FIELD_NUMBER: _ClassVar[int]
    file_locks: bool
    image_path: str
    leave_running: bool
    tcp_established: bool
    work_path: str
    def __init__(self, image_path: _Optional[str] = ..., work_path: _Optional[str] = ..., leave_running: bool = ..., tcp_established: bool = ..., file_locks: bool = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class KillRequest(_message.Message):
    __slots__ = ["all", "signal"]
    ALL_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    signal: int
    def __init__(self, signal: _Optional[int] = ..., all: bool = ...) -> None: ...

class StartRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class StartResponse(_message.Message):
    __slots__ = ["warnings"]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, warnings: _Optional[_Iterable[str]] = ...) -> None: ...
