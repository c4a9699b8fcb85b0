"""CRI test client, pure parts: wire numbers of the api.proto subset, stream status parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cri import api_pb2 as api
from cri import stream
from cri.client import CriClient
from google.protobuf.descriptor import FieldDescriptor

# (message, field, number, type) as in kubernetes/cri-api pkg/apis/runtime/v1/api.proto.
T = FieldDescriptor
UPSTREAM_FIELDS = [
    ("VersionResponse", "runtime_api_version", 4, T.TYPE_STRING),
    ("RunPodSandboxRequest", "config", 1, T.TYPE_MESSAGE),
    ("RunPodSandboxRequest", "runtime_handler", 2, T.TYPE_STRING),
    ("PodSandboxConfig", "port_mappings", 5, T.TYPE_MESSAGE),
    ("PodSandboxConfig", "annotations", 7, T.TYPE_MESSAGE),
    ("PodSandboxConfig", "linux", 8, T.TYPE_MESSAGE),
    ("LinuxPodSandboxConfig", "sysctls", 3, T.TYPE_MESSAGE),
    ("LinuxSandboxSecurityContext", "run_as_group", 8, T.TYPE_MESSAGE),
    ("LinuxSandboxSecurityContext", "privileged", 6, T.TYPE_BOOL),
    ("NamespaceOption", "network", 1, T.TYPE_ENUM),
    ("NamespaceOption", "target_id", 4, T.TYPE_STRING),
    ("PodSandboxStatus", "network", 5, T.TYPE_MESSAGE),
    ("PodSandboxNetworkStatus", "additional_ips", 2, T.TYPE_MESSAGE),
    ("PodSandboxStatusResponse", "info", 2, T.TYPE_MESSAGE),
    ("ImageSpec", "user_specified_image", 18, T.TYPE_STRING),
    ("ContainerConfig", "log_path", 11, T.TYPE_STRING),
    ("ContainerConfig", "tty", 14, T.TYPE_BOOL),
    ("ContainerConfig", "linux", 15, T.TYPE_MESSAGE),
    ("ContainerConfig", "CDI_devices", 17, T.TYPE_MESSAGE),
    ("LinuxContainerResources", "memory_limit_in_bytes", 4, T.TYPE_INT64),
    ("LinuxContainerResources", "cpuset_cpus", 6, T.TYPE_STRING),
    ("LinuxContainerResources", "memory_swap_limit_in_bytes", 10, T.TYPE_INT64),
    ("LinuxContainerSecurityContext", "run_as_group", 12, T.TYPE_MESSAGE),
    ("LinuxContainerSecurityContext", "no_new_privs", 11, T.TYPE_BOOL),
    ("ContainerStatus", "exit_code", 7, T.TYPE_INT32),
    ("ContainerStatus", "image_id", 17, T.TYPE_STRING),
    ("ExecSyncResponse", "stdout", 1, T.TYPE_BYTES),
    ("ExecSyncResponse", "stderr", 2, T.TYPE_BYTES),
    ("ExecSyncResponse", "exit_code", 3, T.TYPE_INT32),
    ("ExecRequest", "stderr", 6, T.TYPE_BOOL),
    ("AttachRequest", "stdin", 2, T.TYPE_BOOL),
    ("AttachRequest", "tty", 3, T.TYPE_BOOL),
    ("PortForwardRequest", "port", 2, T.TYPE_INT32),
    ("UpdateContainerResourcesRequest", "annotations", 4, T.TYPE_MESSAGE),
    ("ContainerStats", "writable_layer", 4, T.TYPE_MESSAGE),
    ("MemoryUsage", "working_set_bytes", 2, T.TYPE_MESSAGE),
    ("UInt64Value", "value", 1, T.TYPE_UINT64),
    ("Image", "size", 4, T.TYPE_UINT64),
    ("PullImageRequest", "sandbox_config", 3, T.TYPE_MESSAGE),
]


@pytest.mark.parametrize(("message", "field", "number", "ftype"), UPSTREAM_FIELDS)
def test_field_numbers_and_types_match_upstream(
    message: str, field: str, number: int, ftype: int
) -> None:
    descriptor = getattr(api, message).DESCRIPTOR.fields_by_name[field]
    assert (descriptor.number, descriptor.type) == (number, ftype)


def test_package_and_enums_match_upstream() -> None:
    assert api.DESCRIPTOR.package == "runtime.v1"
    assert (api.POD, api.CONTAINER, api.NODE, api.TARGET) == (0, 1, 2, 3)
    assert (api.CONTAINER_CREATED, api.CONTAINER_RUNNING, api.CONTAINER_EXITED) == (0, 1, 2)
    assert (api.SANDBOX_READY, api.SANDBOX_NOTREADY) == (0, 1)


def test_exec_sync_response_wire_bytes() -> None:
    raw = api.ExecSyncResponse(stdout=b"o", stderr=b"e", exit_code=3).SerializeToString()
    assert raw == b"\x0a\x01o\x12\x01e\x18\x03"


def v4_failure(code: str) -> bytes:
    return json.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code}]},
        }
    ).encode()


@pytest.mark.parametrize("protocol", [stream.V4, stream.V5])
def test_status_v4_exit_code(protocol: str) -> None:
    assert stream.parse_status(v4_failure("42"), protocol) == 42
    assert stream.parse_status(b'{"metadata":{},"status":"Success"}', protocol) == 0


def test_status_v4_failure_without_exit_code_raises() -> None:
    internal = b'{"status":"Failure","message":"error executing command","reason":"InternalError"}'
    with pytest.raises(stream.StreamError, match="error executing command"):
        stream.parse_status(internal, stream.V4)
    with pytest.raises(stream.StreamError, match="without a status"):
        stream.parse_status(b"", stream.V4)


def test_status_pre_v4_is_plain_text() -> None:
    assert stream.parse_status(b"", stream.V1) == 0
    with pytest.raises(stream.StreamError, match="boom"):
        stream.parse_status(b"boom", stream.V1)


def test_frames_and_url() -> None:
    assert stream.encode_frame(stream.STDIN, b"hi") == b"\x00hi"
    assert stream.encode_frame(stream.CLOSE, bytes([stream.STDIN])) == b"\xff\x00"
    frame = stream.resize_frame(80, 24)
    assert frame[0] == stream.RESIZE and json.loads(frame[1:]) == {"Width": 80, "Height": 24}
    assert stream.ws_url("http://127.0.0.1:1234/exec/tok") == "ws://127.0.0.1:1234/exec/tok"
    assert stream.ws_url("https://h/attach/x") == "wss://h/attach/x"
    assert stream.SUBPROTOCOLS[:2] == ("v5.channel.k8s.io", "v4.channel.k8s.io")


def test_client_construction_does_not_connect(tmp_path: Path) -> None:
    client = CriClient(f"{tmp_path}/absent.sock", timeout=1)
    client.close()
