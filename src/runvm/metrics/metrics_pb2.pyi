from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentMethod(_message.Message):
    __slots__ = ["latency", "lost", "method", "rpc_errors", "timeouts"]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RPC_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    latency: Histogram
    lost: int
    method: str
    rpc_errors: int
    timeouts: int
    def __init__(self, method: _Optional[str] = ..., latency: _Optional[_Union[Histogram, _Mapping]] = ..., timeouts: _Optional[int] = ..., lost: _Optional[int] = ..., rpc_errors: _Optional[int] = ...) -> None: ...

class BootStep(_message.Message):
    __slots__ = ["name", "seconds"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    seconds: float
    def __init__(self, name: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class ContainerFigures(_message.Message):
    __slots__ = ["cpu_system_usec", "cpu_usage_usec", "cpu_user_usec", "has_stats", "id", "io_read_bytes", "io_read_ops", "io_write_bytes", "io_write_ops", "memory_current", "memory_max", "name", "oom_kills", "pids_current", "pids_max", "state"]
    CPU_SYSTEM_USEC_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_USEC_FIELD_NUMBER: _ClassVar[int]
    CPU_USER_USEC_FIELD_NUMBER: _ClassVar[int]
    HAS_STATS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    IO_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_READ_OPS_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_OPS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CURRENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MAX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    PIDS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    PIDS_MAX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    cpu_system_usec: int
    cpu_usage_usec: int
    cpu_user_usec: int
    has_stats: bool
    id: str
    io_read_bytes: int
    io_read_ops: int
    io_write_bytes: int
    io_write_ops: int
    memory_current: int
    memory_max: int
    name: str
    oom_kills: int
    pids_current: int
    pids_max: int
    state: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., has_stats: bool = ..., cpu_usage_usec: _Optional[int] = ..., cpu_user_usec: _Optional[int] = ..., cpu_system_usec: _Optional[int] = ..., memory_current: _Optional[int] = ..., memory_max: _Optional[int] = ..., pids_current: _Optional[int] = ..., pids_max: _Optional[int] = ..., oom_kills: _Optional[int] = ..., io_read_bytes: _Optional[int] = ..., io_write_bytes: _Optional[int] = ..., io_read_ops: _Optional[int] = ..., io_write_ops: _Optional[int] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ["bounds", "counts", "sum"]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    bounds: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    sum: float
    def __init__(self, bounds: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ..., sum: _Optional[float] = ...) -> None: ...

class HostProcess(_message.Message):
    __slots__ = ["pid", "role"]
    PID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    role: str
    def __init__(self, role: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class PodFigures(_message.Message):
    __slots__ = ["agent_instance", "agent_methods", "boot_steps", "containers", "failure", "guest_memory_available_bytes", "guest_memory_total_bytes", "has_guest_memory", "origin", "pod_name", "pod_namespace", "processes", "run_dir", "sandbox_id", "state"]
    AGENT_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    AGENT_METHODS_FIELD_NUMBER: _ClassVar[int]
    BOOT_STEPS_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    GUEST_MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GUEST_MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    HAS_GUEST_MEMORY_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    agent_instance: str
    agent_methods: _containers.RepeatedCompositeFieldContainer[AgentMethod]
    boot_steps: _containers.RepeatedCompositeFieldContainer[BootStep]
    containers: _containers.RepeatedCompositeFieldContainer[ContainerFigures]
    failure: str
    guest_memory_available_bytes: int
    guest_memory_total_bytes: int
    has_guest_memory: bool
    origin: str
    pod_name: str
    pod_namespace: str
    processes: _containers.RepeatedCompositeFieldContainer[HostProcess]
    run_dir: str
    sandbox_id: str
    state: str
    def __init__(self, sandbox_id: _Optional[str] = ..., pod_name: _Optional[str] = ..., pod_namespace: _Optional[str] = ..., state: _Optional[str] = ..., origin: _Optional[str] = ..., run_dir: _Optional[str] = ..., agent_instance: _Optional[str] = ..., failure: _Optional[str] = ..., processes: _Optional[_Iterable[_Union[HostProcess, _Mapping]]] = ..., boot_steps: _Optional[_Iterable[_Union[BootStep, _Mapping]]] = ..., has_guest_memory: bool = ..., guest_memory_total_bytes: _Optional[int] = ..., containers: _Optional[_Iterable[_Union[ContainerFigures, _Mapping]]] = ..., agent_methods: _Optional[_Iterable[_Union[AgentMethod, _Mapping]]] = ..., guest_memory_available_bytes: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ["pods"]
    PODS_FIELD_NUMBER: _ClassVar[int]
    pods: _containers.RepeatedCompositeFieldContainer[PodFigures]
    def __init__(self, pods: _Optional[_Iterable[_Union[PodFigures, _Mapping]]] = ...) -> None: ...
