"""Minimal Kubernetes CRI v1 client (RuntimeService and ImageService) for tests.

Methods are called generically by full name over a Unix-socket gRPC channel, with the
messages of the subset in ``api.proto``. gRPC failures propagate as ``grpc.RpcError``;
callers inspect ``.code()`` and ``.details()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from . import api_pb2 as api

RUNTIME = "runtime.v1.RuntimeService"
IMAGES = "runtime.v1.ImageService"
MAX_MESSAGE = 64 << 20  # ExecSync may return up to 16 MiB on each of stdout and stderr
GRACE = 30.0  # extra deadline over server-side timeouts carried in a request

R = TypeVar("R", bound=Message)


class CriClient:
    """A CRI v1 client on the gRPC Unix socket ``socket_path``.

    ``timeout`` is the deadline, in seconds, of every call; calls that carry their own
    server-side timeout get that plus GRACE if it is longer.
    """

    def __init__(self, socket_path: str, timeout: float = 120) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            f"unix://{socket_path}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )

    def close(self) -> None:
        """Close the channel; the client is unusable afterwards."""
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[R],
        timeout: float | None = None,
    ) -> R:
        """Unary call ``/<service>/<method>``; raises grpc.RpcError on failure."""
        stub = self._channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        deadline = self.timeout if timeout is None else max(self.timeout, timeout)
        response: R = stub(request, timeout=deadline)
        return response

    # ------------------------------------------------------------ runtime

    def version(self, api_version: str = "v1") -> api.VersionResponse:
        """Runtime name, runtime version and CRI API version."""
        return self._call(
            RUNTIME, "Version", api.VersionRequest(version=api_version), api.VersionResponse
        )

    def status(self, verbose: bool = False) -> api.StatusResponse:
        """Runtime conditions (RuntimeReady, NetworkReady) and, if ``verbose``, info."""
        return self._call(RUNTIME, "Status", api.StatusRequest(verbose=verbose), api.StatusResponse)

    # ------------------------------------------------------------ pod sandboxes

    def run_pod_sandbox(self, config: api.PodSandboxConfig, handler: str = "") -> str:
        """Create and start a sandbox with runtime handler ``handler``; return its id."""
        request = api.RunPodSandboxRequest(config=config, runtime_handler=handler)
        return self._call(
            RUNTIME, "RunPodSandbox", request, api.RunPodSandboxResponse
        ).pod_sandbox_id

    def stop_pod_sandbox(self, pod_id: str) -> None:
        """Stop the sandbox and its containers (idempotent)."""
        request = api.StopPodSandboxRequest(pod_sandbox_id=pod_id)
        self._call(RUNTIME, "StopPodSandbox", request, api.StopPodSandboxResponse)

    def remove_pod_sandbox(self, pod_id: str) -> None:
        """Remove the sandbox and its containers (idempotent)."""
        request = api.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        self._call(RUNTIME, "RemovePodSandbox", request, api.RemovePodSandboxResponse)

    def pod_sandbox_status(
        self, pod_id: str, verbose: bool = False
    ) -> api.PodSandboxStatusResponse:
        """The sandbox's status; with ``verbose`` also the runtime's ``info`` map (JSON values)."""
        request = api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        return self._call(RUNTIME, "PodSandboxStatus", request, api.PodSandboxStatusResponse)

    def list_pod_sandbox(self, **filter_fields: Any) -> list[api.PodSandbox]:
        """Sandboxes matching a PodSandboxFilter built from ``filter_fields`` (all if none)."""
        request = api.ListPodSandboxRequest(filter=api.PodSandboxFilter(**filter_fields))
        return list(
            self._call(RUNTIME, "ListPodSandbox", request, api.ListPodSandboxResponse).items
        )

    # ------------------------------------------------------------ containers

    def create_container(
        self, pod_id: str, config: api.ContainerConfig, sandbox_config: api.PodSandboxConfig
    ) -> str:
        """Create a container in sandbox ``pod_id``; return its id."""
        request = api.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config
        )
        return self._call(
            RUNTIME, "CreateContainer", request, api.CreateContainerResponse
        ).container_id

    def start_container(self, container_id: str) -> None:
        """Start a created container."""
        request = api.StartContainerRequest(container_id=container_id)
        self._call(RUNTIME, "StartContainer", request, api.StartContainerResponse)

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        """Stop the container, killing it after ``timeout`` seconds (0: at once)."""
        request = api.StopContainerRequest(container_id=container_id, timeout=timeout)
        self._call(RUNTIME, "StopContainer", request, api.StopContainerResponse, timeout + GRACE)

    def remove_container(self, container_id: str) -> None:
        """Remove the container, killing it first if it runs (idempotent)."""
        request = api.RemoveContainerRequest(container_id=container_id)
        self._call(RUNTIME, "RemoveContainer", request, api.RemoveContainerResponse)

    def container_status(
        self, container_id: str, verbose: bool = False
    ) -> api.ContainerStatusResponse:
        """The container's status; with ``verbose`` also the runtime's ``info`` map."""
        request = api.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self._call(RUNTIME, "ContainerStatus", request, api.ContainerStatusResponse)

    def list_containers(self, **filter_fields: Any) -> list[api.Container]:
        """Containers matching a ContainerFilter built from ``filter_fields`` (all if none)."""
        request = api.ListContainersRequest(filter=api.ContainerFilter(**filter_fields))
        response = self._call(RUNTIME, "ListContainers", request, api.ListContainersResponse)
        return list(response.containers)

    def update_container_resources(
        self,
        container_id: str,
        linux_resources: api.LinuxContainerResources,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Apply ``linux_resources`` to the running container."""
        request = api.UpdateContainerResourcesRequest(
            container_id=container_id, linux=linux_resources, annotations=annotations or {}
        )
        self._call(
            RUNTIME, "UpdateContainerResources", request, api.UpdateContainerResourcesResponse
        )

    def container_stats(self, container_id: str) -> api.ContainerStats:
        """CPU, memory and writable-layer usage of the container."""
        request = api.ContainerStatsRequest(container_id=container_id)
        return self._call(RUNTIME, "ContainerStats", request, api.ContainerStatsResponse).stats

    # ------------------------------------------------------------ exec and streaming

    def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout: int = 0
    ) -> tuple[int, bytes, bytes]:
        """Run ``cmd`` in the container to completion: ``(exit_code, stdout, stderr)``.

        ``timeout`` (seconds, 0: none) is enforced by the runtime.
        """
        request = api.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        response = self._call(
            RUNTIME, "ExecSync", request, api.ExecSyncResponse, timeout + GRACE if timeout else None
        )
        return response.exit_code, response.stdout, response.stderr

    def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        tty: bool = False,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool | None = None,
    ) -> str:
        """Prepare a streaming exec of ``cmd``; return the one-shot streaming URL.

        ``stderr`` None means ``not tty`` (the API forbids stderr with a TTY).
        """
        request = api.ExecRequest(
            container_id=container_id,
            cmd=list(cmd),
            tty=tty,
            stdin=stdin,
            stdout=stdout,
            stderr=not tty if stderr is None else stderr,
        )
        return self._call(RUNTIME, "Exec", request, api.ExecResponse).url

    def attach(
        self,
        container_id: str,
        tty: bool = False,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool | None = None,
    ) -> str:
        """Prepare a streaming attach to the container's process; return the URL.

        ``tty`` must match the container's config; ``stderr`` None means ``not tty``.
        """
        request = api.AttachRequest(
            container_id=container_id,
            tty=tty,
            stdin=stdin,
            stdout=stdout,
            stderr=not tty if stderr is None else stderr,
        )
        return self._call(RUNTIME, "Attach", request, api.AttachResponse).url

    def port_forward(self, pod_id: str, ports: Sequence[int]) -> str:
        """Prepare port forwarding into sandbox ``pod_id``; return the streaming URL."""
        request = api.PortForwardRequest(pod_sandbox_id=pod_id, port=list(ports))
        return self._call(RUNTIME, "PortForward", request, api.PortForwardResponse).url

    # ------------------------------------------------------------ images

    def list_images(self) -> list[api.Image]:
        """All images the runtime knows."""
        request = api.ListImagesRequest()
        return list(self._call(IMAGES, "ListImages", request, api.ListImagesResponse).images)

    def image_status(self, image: str) -> api.Image | None:
        """The image named ``image`` (reference or id), or None if absent."""
        request = api.ImageStatusRequest(image=api.ImageSpec(image=image))
        response = self._call(IMAGES, "ImageStatus", request, api.ImageStatusResponse)
        return response.image if response.HasField("image") else None

    def pull_image(self, image: str, sandbox_config: api.PodSandboxConfig | None = None) -> str:
        """Pull ``image`` (no registry auth); return the image reference the runtime stored."""
        request = api.PullImageRequest(
            image=api.ImageSpec(image=image), sandbox_config=sandbox_config
        )
        return self._call(IMAGES, "PullImage", request, api.PullImageResponse).image_ref

    def remove_image(self, image: str) -> None:
        """Remove ``image`` (idempotent)."""
        request = api.RemoveImageRequest(image=api.ImageSpec(image=image))
        self._call(IMAGES, "RemoveImage", request, api.RemoveImageResponse)
