"""Health and sandbox-level handlers of the agent API."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from runvm import __version__
from runvm.agent import cpus
from runvm.agent import syscalls as sc
from runvm.agent.containers import ContainerService
from runvm.agent.debug import DebugShells
from runvm.agent.network import NetworkService, loopback_up
from runvm.agent.ports import PortService
from runvm.agent.reaper import Reaper
from runvm.agent.rpc import unary
from runvm.agent.storage import STORAGE_HANDLERS, mount_all
from runvm.errors import RpcError
from runvm.protocol import AGENT_SERVICE, HEALTH_SERVICE, PROTOCOL_VERSION
from runvm.protocol import agent_pb2 as pb
from runvm.ttrpc import Code, Server

log = logging.getLogger("runvm.agent")

POWEROFF_DELAY = 0.2
MIN_SEED, MAX_SEED = 32, 4096
INSTANCE_ID = re.compile(r"[0-9a-f]{32}")
RNDADDENTROPY, RNDRESEEDCRNG = 0x40085203, 0x5207  # <linux/random.h>


def _meminfo(key: str = "MemTotal") -> int:
    """A /proc/meminfo figure, in bytes (0 if the kernel has none)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class AgentState:
    """What the agent knows about itself; one per guest boot (or clone)."""

    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    sandbox_id: str = ""
    init_boottime: float = field(
        default_factory=lambda: float(os.environ.get("RUNVM_INIT_BOOTTIME", "0"))
    )
    serving_boottime: float = 0.0
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)


class HealthService:
    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def check(self, _: pb.CheckRequest) -> pb.HealthCheckResponse:
        return pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVING)

    async def version(self, request: pb.VersionRequest) -> pb.VersionResponse:
        if request.host_protocol and request.host_protocol != PROTOCOL_VERSION:
            log.warning("host speaks protocol %d, agent %d", request.host_protocol,
                        PROTOCOL_VERSION)  # fmt: skip
        return pb.VersionResponse(agent_version=__version__, protocol=PROTOCOL_VERSION)


class SandboxService:
    def __init__(self, state: AgentState, shells: DebugShells) -> None:
        self.state = state
        self.shells = shells

    async def guest_details(self, _: pb.GuestDetailsRequest) -> pb.GuestDetailsResponse:
        return pb.GuestDetailsResponse(
            kernel_release=os.uname().release,
            mem_total_bytes=_meminfo(),
            mem_available_bytes=_meminfo("MemAvailable"),
            cpus=os.cpu_count() or 1,
            instance_id=self.state.instance_id,
            boot_id=Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            agent_version=__version__,
            storage_handlers=list(STORAGE_HANDLERS),
            supports_seccomp=True,
            agent_uptime_ms=int((time.monotonic() - self.state.started) * 1000),
            init_boottime_ms=int(self.state.init_boottime * 1000),
            serving_boottime_ms=int(self.state.serving_boottime * 1000),
            boottime_ms=int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000),
        )

    async def online_cpus(self, request: pb.OnlineCPUsRequest) -> pb.GuestResources:
        count = await cpus.online(request.wanted, request.timeout_ms / 1000)
        return pb.GuestResources(cpus_online=count, mem_total_bytes=_meminfo())

    async def create_sandbox(self, request: pb.CreateSandboxRequest) -> pb.Empty:
        if self.state.sandbox_id:
            raise RpcError(Code.ALREADY_EXISTS, f"sandbox {self.state.sandbox_id} exists")
        if request.host_time_ns > 0:
            time.clock_settime_ns(time.CLOCK_REALTIME, request.host_time_ns)
        if request.hostname:
            sc.sethostname(request.hostname[:64])
        await mount_all(list(request.storages))
        loopback_up()
        self.shells.enabled = request.debug_console
        if request.debug_console:
            log.warning("sandbox %s: debug shells may be started", request.sandbox_id)
        self.state.sandbox_id = request.sandbox_id or "sandbox"
        return pb.Empty()

    async def resume_clone(self, request: pb.ResumeCloneRequest) -> pb.GuestDetailsResponse:
        """First call in a VM cloned from a template: every clone starts with the template's
        RNG state, clock and instance id; give it its own."""
        if self.state.sandbox_id:
            raise RpcError(Code.FAILED_PRECONDITION, "ResumeClone after CreateSandbox")
        if not MIN_SEED <= len(request.random_seed) <= MAX_SEED:
            raise RpcError(Code.INVALID_ARGUMENT,
                           f"random_seed must be {MIN_SEED}..{MAX_SEED} bytes")  # fmt: skip
        if not INSTANCE_ID.fullmatch(request.instance_id):
            raise RpcError(Code.INVALID_ARGUMENT, "instance_id must be 32 hex digits")
        reseed(request.random_seed)
        if request.host_time_ns > 0:
            time.clock_settime_ns(time.CLOCK_REALTIME, request.host_time_ns)
        self.state.instance_id = request.instance_id
        self.state.started = time.monotonic()
        return await self.guest_details(pb.GuestDetailsRequest())

    async def destroy_sandbox(self, _: pb.DestroySandboxRequest) -> pb.Empty:
        """Flush everything the guest wrote to the host, then answer: the host may end QEMU
        from then on. The guest powers itself off shortly after, should the host not."""
        self.state.shutting_down.set()
        os.sync()  # (the guest's Python has no thread pool; nothing else runs by now)
        asyncio.get_running_loop().call_later(POWEROFF_DELAY, power_off)
        return pb.Empty()


def reseed(seed: bytes) -> None:
    """Credit ``seed`` to the kernel's entropy pool and force the CRNG to reseed from it."""
    with open("/dev/urandom", "wb", buffering=0) as dev:
        fcntl.ioctl(dev, RNDADDENTROPY, struct.pack("ii", 8 * len(seed), len(seed)) + seed)
        fcntl.ioctl(dev, RNDRESEEDCRNG)


def power_off() -> None:
    """Flush and power the VM off; QEMU exits."""
    os.sync()
    sc.reboot(sc.LINUX_REBOOT_CMD_POWER_OFF)


def register(server: Server, state: AgentState, reaper: Reaper) -> None:
    """Register every agent handler on ``server``."""
    health = HealthService(state)
    server.register(HEALTH_SERVICE, {
        "Check": unary(pb.CheckRequest, health.check),
        "Version": unary(pb.VersionRequest, health.version),
    })  # fmt: skip
    shells = DebugShells(reaper)
    sandbox = SandboxService(state, shells)
    methods = {
        "GuestDetails": unary(pb.GuestDetailsRequest, sandbox.guest_details),
        "CreateSandbox": unary(pb.CreateSandboxRequest, sandbox.create_sandbox),
        "DestroySandbox": unary(pb.DestroySandboxRequest, sandbox.destroy_sandbox),
        "ResumeClone": unary(pb.ResumeCloneRequest, sandbox.resume_clone),
        "OnlineCPUs": unary(pb.OnlineCPUsRequest, sandbox.online_cpus),
        **ContainerService(reaper, shells).handlers(),
        **NetworkService().handlers(),
        **PortService().handlers(),
    }
    server.register(AGENT_SERVICE, methods)
