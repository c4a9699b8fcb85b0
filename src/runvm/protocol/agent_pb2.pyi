from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ARPNeighbor(_message.Message):
    __slots__ = ["address", "device", "lladdr"]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LLADDR_FIELD_NUMBER: _ClassVar[int]
    address: str
    device: str
    lladdr: str
    def __init__(self, address: _Optional[str] = ..., lladdr: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class AddARPNeighborsRequest(_message.Message):
    __slots__ = ["neighbors"]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    neighbors: _containers.RepeatedCompositeFieldContainer[ARPNeighbor]
    def __init__(self, neighbors: _Optional[_Iterable[_Union[ARPNeighbor, _Mapping]]] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ["service"]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class CheckpointContainerRequest(_message.Message):
    __slots__ = ["container_id", "criu"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    CRIU_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    criu: CriuOptions
    def __init__(self, container_id: _Optional[str] = ..., criu: _Optional[_Union[CriuOptions, _Mapping]] = ...) -> None: ...

class ClosePortRequest(_message.Message):
    __slots__ = ["stream_id", "write_only"]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    WRITE_ONLY_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    write_only: bool
    def __init__(self, stream_id: _Optional[int] = ..., write_only: bool = ...) -> None: ...

class CloseStdinRequest(_message.Message):
    __slots__ = ["container_id", "exec_id"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ["container_id", "oci_spec_json", "stdin", "storages"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    OCI_SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STORAGES_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    oci_spec_json: bytes
    stdin: bool
    storages: _containers.RepeatedCompositeFieldContainer[Storage]
    def __init__(self, container_id: _Optional[str] = ..., oci_spec_json: _Optional[bytes] = ..., storages: _Optional[_Iterable[_Union[Storage, _Mapping]]] = ..., stdin: bool = ...) -> None: ...

class CreateContainerResponse(_message.Message):
    __slots__ = ["pid"]
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ["debug_console", "dns", "host_time_ns", "hostname", "sandbox_id", "storages"]
    DEBUG_CONSOLE_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    HOST_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    STORAGES_FIELD_NUMBER: _ClassVar[int]
    debug_console: bool
    dns: _containers.RepeatedScalarFieldContainer[str]
    host_time_ns: int
    hostname: str
    sandbox_id: str
    storages: _containers.RepeatedCompositeFieldContainer[Storage]
    def __init__(self, sandbox_id: _Optional[str] = ..., hostname: _Optional[str] = ..., storages: _Optional[_Iterable[_Union[Storage, _Mapping]]] = ..., dns: _Optional[_Iterable[str]] = ..., host_time_ns: _Optional[int] = ..., debug_console: bool = ...) -> None: ...

class CriuOptions(_message.Message):
    __slots__ = ["file_locks", "images", "leave_running", "tcp_established", "tools", "work"]
    FILE_LOCKS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    WORK_FIELD_NUMBER: _ClassVar[int]
    file_locks: bool
    images: str
    leave_running: bool
    tcp_established: bool
    tools: str
    work: str
    def __init__(self, tools: _Optional[str] = ..., images: _Optional[str] = ..., work: _Optional[str] = ..., tcp_established: bool = ..., file_locks: bool = ..., leave_running: bool = ...) -> None: ...

class DestroySandboxRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class Empty(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ExecProcessRequest(_message.Message):
    __slots__ = ["container_id", "exec_id", "process_json", "stdin"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_JSON_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    process_json: bytes
    stdin: bool
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., process_json: _Optional[bytes] = ..., stdin: bool = ...) -> None: ...

class ExecProcessResponse(_message.Message):
    __slots__ = ["pid"]
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class GuestDetailsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class GuestDetailsResponse(_message.Message):
    __slots__ = ["agent_uptime_ms", "agent_version", "boot_id", "boottime_ms", "cpus", "init_boottime_ms", "instance_id", "kernel_release", "mem_available_bytes", "mem_total_bytes", "serving_boottime_ms", "storage_handlers", "supports_seccomp"]
    AGENT_UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BOOTTIME_MS_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    INIT_BOOTTIME_MS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    KERNEL_RELEASE_FIELD_NUMBER: _ClassVar[int]
    MEM_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVING_BOOTTIME_MS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_HANDLERS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_SECCOMP_FIELD_NUMBER: _ClassVar[int]
    agent_uptime_ms: int
    agent_version: str
    boot_id: str
    boottime_ms: int
    cpus: int
    init_boottime_ms: int
    instance_id: str
    kernel_release: str
    mem_available_bytes: int
    mem_total_bytes: int
    serving_boottime_ms: int
    storage_handlers: _containers.RepeatedScalarFieldContainer[str]
    supports_seccomp: bool
    def __init__(self, kernel_release: _Optional[str] = ..., mem_total_bytes: _Optional[int] = ..., cpus: _Optional[int] = ..., instance_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., storage_handlers: _Optional[_Iterable[str]] = ..., supports_seccomp: bool = ..., agent_uptime_ms: _Optional[int] = ..., init_boottime_ms: _Optional[int] = ..., serving_boottime_ms: _Optional[int] = ..., boottime_ms: _Optional[int] = ..., mem_available_bytes: _Optional[int] = ...) -> None: ...

class GuestResources(_message.Message):
    __slots__ = ["cpus_online", "mem_total_bytes"]
    CPUS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpus_online: int
    mem_total_bytes: int
    def __init__(self, cpus_online: _Optional[int] = ..., mem_total_bytes: _Optional[int] = ...) -> None: ...

class HealthCheckResponse(_message.Message):
    __slots__ = ["status"]
    class ServingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = []
    NOT_SERVING: HealthCheckResponse.ServingStatus
    SERVING: HealthCheckResponse.ServingStatus
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN: HealthCheckResponse.ServingStatus
    status: HealthCheckResponse.ServingStatus
    def __init__(self, status: _Optional[_Union[HealthCheckResponse.ServingStatus, str]] = ...) -> None: ...

class IPAddress(_message.Message):
    __slots__ = ["address", "family", "prefix"]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    address: str
    family: int
    prefix: int
    def __init__(self, family: _Optional[int] = ..., address: _Optional[str] = ..., prefix: _Optional[int] = ...) -> None: ...

class Interface(_message.Message):
    __slots__ = ["addresses", "hw_addr", "mtu", "name"]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    HW_ADDR_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedCompositeFieldContainer[IPAddress]
    hw_addr: str
    mtu: int
    name: str
    def __init__(self, name: _Optional[str] = ..., hw_addr: _Optional[str] = ..., mtu: _Optional[int] = ..., addresses: _Optional[_Iterable[_Union[IPAddress, _Mapping]]] = ...) -> None: ...

class ListProcessesRequest(_message.Message):
    __slots__ = ["container_id"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class ListProcessesResponse(_message.Message):
    __slots__ = ["pids"]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    pids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pids: _Optional[_Iterable[int]] = ...) -> None: ...

class OnlineCPUsRequest(_message.Message):
    __slots__ = ["timeout_ms", "wanted"]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    WANTED_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    wanted: int
    def __init__(self, wanted: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class OpenPortRequest(_message.Message):
    __slots__ = ["ipv6", "port"]
    IPV6_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    ipv6: bool
    port: int
    def __init__(self, port: _Optional[int] = ..., ipv6: bool = ...) -> None: ...

class OpenPortResponse(_message.Message):
    __slots__ = ["stream_id"]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    def __init__(self, stream_id: _Optional[int] = ...) -> None: ...

class PauseContainerRequest(_message.Message):
    __slots__ = ["container_id"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class ReadPortRequest(_message.Message):
    __slots__ = ["len", "stream_id"]
    LEN_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    len: int
    stream_id: int
    def __init__(self, stream_id: _Optional[int] = ..., len: _Optional[int] = ...) -> None: ...

class ReadStreamRequest(_message.Message):
    __slots__ = ["container_id", "exec_id", "len"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    LEN_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    len: int
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., len: _Optional[int] = ...) -> None: ...

class ReadStreamResponse(_message.Message):
    __slots__ = ["data"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RemoveContainerRequest(_message.Message):
    __slots__ = ["container_id", "timeout"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    timeout: int
    def __init__(self, container_id: _Optional[str] = ..., timeout: _Optional[int] = ...) -> None: ...

class RestoreContainerRequest(_message.Message):
    __slots__ = ["container_id", "criu", "oci_spec_json", "stdin", "storages"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    CRIU_FIELD_NUMBER: _ClassVar[int]
    OCI_SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STORAGES_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    criu: CriuOptions
    oci_spec_json: bytes
    stdin: bool
    storages: _containers.RepeatedCompositeFieldContainer[Storage]
    def __init__(self, container_id: _Optional[str] = ..., oci_spec_json: _Optional[bytes] = ..., storages: _Optional[_Iterable[_Union[Storage, _Mapping]]] = ..., stdin: bool = ..., criu: _Optional[_Union[CriuOptions, _Mapping]] = ...) -> None: ...

class ResumeCloneRequest(_message.Message):
    __slots__ = ["host_time_ns", "instance_id", "random_seed"]
    HOST_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    RANDOM_SEED_FIELD_NUMBER: _ClassVar[int]
    host_time_ns: int
    instance_id: str
    random_seed: bytes
    def __init__(self, random_seed: _Optional[bytes] = ..., instance_id: _Optional[str] = ..., host_time_ns: _Optional[int] = ...) -> None: ...

class ResumeContainerRequest(_message.Message):
    __slots__ = ["container_id"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ["dest", "dest_len", "device", "family", "gateway", "scope", "source"]
    DEST_FIELD_NUMBER: _ClassVar[int]
    DEST_LEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    dest: str
    dest_len: int
    device: str
    family: int
    gateway: str
    scope: int
    source: str
    def __init__(self, family: _Optional[int] = ..., dest: _Optional[str] = ..., dest_len: _Optional[int] = ..., gateway: _Optional[str] = ..., device: _Optional[str] = ..., source: _Optional[str] = ..., scope: _Optional[int] = ...) -> None: ...

class SignalProcessRequest(_message.Message):
    __slots__ = ["all", "container_id", "exec_id", "signal"]
    ALL_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    container_id: str
    exec_id: str
    signal: int
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., signal: _Optional[int] = ..., all: bool = ...) -> None: ...

class StartContainerRequest(_message.Message):
    __slots__ = ["container_id"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class StartContainerResponse(_message.Message):
    __slots__ = ["pid"]
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class StatsContainerRequest(_message.Message):
    __slots__ = ["container_id"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class StatsContainerResponse(_message.Message):
    __slots__ = ["cpu_system_usec", "cpu_usage_usec", "cpu_user_usec", "io_read_bytes", "io_read_ops", "io_write_bytes", "io_write_ops", "memory_current", "memory_max", "memory_oom_kills", "paused", "pids_current", "pids_max"]
    CPU_SYSTEM_USEC_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_USEC_FIELD_NUMBER: _ClassVar[int]
    CPU_USER_USEC_FIELD_NUMBER: _ClassVar[int]
    IO_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_READ_OPS_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_OPS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CURRENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MAX_FIELD_NUMBER: _ClassVar[int]
    MEMORY_OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PIDS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    PIDS_MAX_FIELD_NUMBER: _ClassVar[int]
    cpu_system_usec: int
    cpu_usage_usec: int
    cpu_user_usec: int
    io_read_bytes: int
    io_read_ops: int
    io_write_bytes: int
    io_write_ops: int
    memory_current: int
    memory_max: int
    memory_oom_kills: int
    paused: bool
    pids_current: int
    pids_max: int
    def __init__(self, cpu_usage_usec: _Optional[int] = ..., cpu_user_usec: _Optional[int] = ..., cpu_system_usec: _Optional[int] = ..., memory_current: _Optional[int] = ..., memory_max: _Optional[int] = ..., pids_current: _Optional[int] = ..., pids_max: _Optional[int] = ..., paused: bool = ..., memory_oom_kills: _Optional[int] = ..., io_read_bytes: _Optional[int] = ..., io_write_bytes: _Optional[int] = ..., io_read_ops: _Optional[int] = ..., io_write_ops: _Optional[int] = ...) -> None: ...

class Storage(_message.Message):
    __slots__ = ["driver", "fstype", "mount_point", "options", "source"]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    FSTYPE_FIELD_NUMBER: _ClassVar[int]
    MOUNT_POINT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    driver: str
    fstype: str
    mount_point: str
    options: _containers.RepeatedScalarFieldContainer[str]
    source: str
    def __init__(self, driver: _Optional[str] = ..., source: _Optional[str] = ..., fstype: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ..., mount_point: _Optional[str] = ...) -> None: ...

class TtyWinResizeRequest(_message.Message):
    __slots__ = ["column", "container_id", "exec_id", "row"]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    column: int
    container_id: str
    exec_id: str
    row: int
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., row: _Optional[int] = ..., column: _Optional[int] = ...) -> None: ...

class UpdateContainerRequest(_message.Message):
    __slots__ = ["container_id", "resources_json"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_JSON_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    resources_json: bytes
    def __init__(self, container_id: _Optional[str] = ..., resources_json: _Optional[bytes] = ...) -> None: ...

class UpdateRoutesRequest(_message.Message):
    __slots__ = ["routes"]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class VersionRequest(_message.Message):
    __slots__ = ["host_protocol", "host_version"]
    HOST_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_VERSION_FIELD_NUMBER: _ClassVar[int]
    host_protocol: int
    host_version: str
    def __init__(self, host_protocol: _Optional[int] = ..., host_version: _Optional[str] = ...) -> None: ...

class VersionResponse(_message.Message):
    __slots__ = ["agent_version", "protocol"]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    protocol: int
    def __init__(self, agent_version: _Optional[str] = ..., protocol: _Optional[int] = ...) -> None: ...

class WaitOOMRequest(_message.Message):
    __slots__ = ["container_id", "seen"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    seen: int
    def __init__(self, container_id: _Optional[str] = ..., seen: _Optional[int] = ...) -> None: ...

class WaitOOMResponse(_message.Message):
    __slots__ = ["oom_kills"]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    oom_kills: int
    def __init__(self, oom_kills: _Optional[int] = ...) -> None: ...

class WaitProcessRequest(_message.Message):
    __slots__ = ["container_id", "exec_id"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ...) -> None: ...

class WaitProcessResponse(_message.Message):
    __slots__ = ["exited_at_ns", "status"]
    EXITED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    exited_at_ns: int
    status: int
    def __init__(self, status: _Optional[int] = ..., exited_at_ns: _Optional[int] = ...) -> None: ...

class WritePortRequest(_message.Message):
    __slots__ = ["data", "stream_id"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    stream_id: int
    def __init__(self, stream_id: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteStreamRequest(_message.Message):
    __slots__ = ["container_id", "data", "exec_id"]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    data: bytes
    exec_id: str
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteStreamResponse(_message.Message):
    __slots__ = ["len"]
    LEN_FIELD_NUMBER: _ClassVar[int]
    len: int
    def __init__(self, len: _Optional[int] = ...) -> None: ...
