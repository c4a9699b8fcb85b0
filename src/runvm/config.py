"""runvm configuration: a TOML file read into frozen dataclasses.

Contract: :func:`load` returns a :class:`RunvmConfig`; an unknown table or key, a value of
the wrong type or out of range raises :class:`ConfigError` naming the key. A missing file
yields the defaults documented on each field. The file is ``$RUNVM_CONFIG`` if set, else
``/etc/runvm/config.toml``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from runvm.errors import ConfigError

DEFAULT_PATH = Path("/etc/runvm/config.toml")

Accelerator = Literal["auto", "kvm", "tcg"]
GuestArch = Literal["auto", "amd64", "arm64"]
Machine = Literal["pc", "q35", "microvm"]
Variant = Literal["minimal", "debian"]
Boot = Literal["auto", "bzimage", "pvh"]
Channel = Literal["auto", "virtio-serial", "vsock"]
NetworkModel = Literal["tcfilter", "macvtap", "none"]
VirtiofsCache = Literal["auto", "always", "none"]
SharedFs = Literal["virtio-fs", "9p"]
ShimScope = Literal["pod", "namespace"]


@dataclass(frozen=True)
class HypervisorConfig:
    # The guests' architecture: auto (each pod's VM is that of its first container's program,
    # the host's for a VM without one), or amd64 | arm64 (every VM; a container built for
    # another architecture is refused). See docs/design.md, "Guest architectures".
    arch: GuestArch = "auto"
    # QEMU binary, looked up on PATH; {target} is QEMU's name of the guest's architecture
    # (x86_64, aarch64).
    path: str = "qemu-system-{target}"
    accelerator: Accelerator = (
        "auto"  # auto (KVM if a guest really runs under it, else TCG) | kvm | tcg
    )
    # The machine of x86_64 guests: pc | q35 | microvm. arm64 guests run on virt.
    machine: Machine = "pc"
    # The machine of a sandbox that hot-plugs devices (a block-device rootfs or volume) when
    # `machine` cannot (microvm); "" refuses such containers instead.
    hotplug_machine: Literal["pc", "q35", ""] = "pc"
    vcpus: int = 1  # the VM's base: each container's CPU and memory limits come on top
    memory_mib: int = 256
    max_vcpus: int = 0  # caps on a sized VM (runtime/sizing.py); 0: the host's CPUs
    max_memory_mib: int = 0  # 0: the host's RAM
    tcg_tb_size_mib: int = 32  # translation cache under TCG (MiB; a guest fills it)
    kernel_params: str = ""  # appended to the guest kernel command line
    boot_timeout: float = 90.0  # seconds from QEMU start until the agent must answer
    console_log_max_kib: int = 512  # per-sandbox console log cap (two files of this size)
    seccomp: bool = True  # run QEMU under its seccomp sandbox (-sandbox on,...=deny)
    # Run QEMU as this unprivileged user (with its group and /dev/kvm's), not root; "" = root.
    # Works with virtio-fs; refused with 9p or templates (they need root's files).
    user: str = ""


@dataclass(frozen=True)
class ImageConfig:
    dir: str = ""  # guest image cache; "" = $RUNVM_IMAGE_DIR or /var/lib/runvm/images
    # Which built image sandboxes boot: minimal (runvm's own kernel config, everything built
    # in: boots faster, QEMU uses less memory, has 9p) or debian (Debian's cloud kernel).
    variant: Variant = "minimal"
    # How the kernel is loaded: auto (the uncompressed vmlinux through its PVH entry when the
    # image has one, else the bzImage), bzimage, pvh.
    boot: Boot = "auto"
    # Boot from the image's read-only root filesystem on a virtio-pmem device mapped with DAX
    # (all VMs share its pages on the host) instead of the initramfs: minimal variant, pc/q35.
    dax: bool = False
    kernel: str = ""  # explicit kernel path instead of the built image
    initrd: str = ""  # explicit initrd path instead of the built image


@dataclass(frozen=True)
class AgentConfig:
    channel: Channel = "auto"  # auto (vsock where /dev/vhost-vsock exists) | virtio-serial | vsock
    timeout: float = 60.0  # default deadline of one agent request, seconds


@dataclass(frozen=True)
class RuntimeConfig:
    state_root: str = "/run/runvm"  # per-sandbox run directories (sockets, logs)
    cache_dir: str = "/var/cache/runvm"  # accelerator probe results


@dataclass(frozen=True)
class StorageConfig:
    # virtiofsd's cache mode: auto (metadata and data cached briefly, revalidated: host-side
    # edits reach the container within about a second), always (cached until the guest drops
    # it: fastest, host-side edits may stay unseen), none (every access goes to the host: FUSE
    # direct I/O). bench/storage.py under TCG: none is 4-5x faster for sequential I/O (the
    # guest's page-cache copies are emulated), auto and always are even. auto stays the default
    # because with none a 6.1 guest refuses shared writable mmap (ENODEV), which databases use.
    virtiofs_cache: VirtiofsCache = "auto"
    # How container rootfs and volumes reach the guest: virtio-fs (virtiofsd per sandbox) or
    # 9p (served by QEMU itself; needs a guest kernel with 9p: image.variant = "minimal").
    shared_fs: SharedFs = "virtio-fs"


@dataclass(frozen=True)
class NetworkConfig:
    # How the pod's interfaces reach the VM: tcfilter (a tap per interface, tc mirred
    # redirects both ways), macvtap, or none (no NIC).
    model: NetworkModel = "tcfilter"
    # Connections to the pod namespace's loopback (containerd's CRI PortForward, which is
    # `kubectl port-forward`) are relayed to the same port on the guest's loopback. Needs
    # iptables on the host; the rules live in the pod's namespace only.
    port_forward: bool = True


@dataclass(frozen=True)
class FactoryConfig:
    # Start sandboxes as clones of a saved template VM: a clone starts in a fraction of a
    # cold boot and shares the template's memory pages copy-on-write; its share is 9p.
    # Templates hold a guest booted before any container existed (kernel and agent, never a
    # container's data), but clones of one template share pages and the kernel's boot-time
    # secrets (docs/density.md, "Templates and tenants"): on a host whose pods belong to
    # mutually untrusting tenants, set enable = false (each pod then boots its own VM).
    # Sandboxes that cannot be clones (microvm, the debian kernel, hypervisor.user, sized or
    # with extra devices) boot as if this were off.
    enable: bool = True
    # A sandbox that finds no template for its configuration makes one, then clones it (one
    # at a time: racing first starts make one); off: only `runvm factory init` makes one.
    first_use: bool = True
    dir: str = "/run/runvm/factory"  # `runvm factory init` mounts a tmpfs here for its template
    # Where first use makes templates, one per configuration: must be on a tmpfs.
    templates_dir: str = "/dev/shm/runvm/templates"


@dataclass(frozen=True)
class CacheConfig:
    # Take a booted VM from `runvm cache serve` when one runs and has a VM that matches; else
    # boot cold or clone as usual (a missing daemon costs one failed connect). On by default:
    # the fastest start that shares no memory between pods; running the daemon turns it on.
    enable: bool = True
    socket: str = "/run/runvm/cache.sock"
    size: int = 2


@dataclass(frozen=True)
class ShimConfig:
    # containerd's shim processes: one per pod ("pod": a shim that dies takes only its pod),
    # or one serving every pod of a containerd namespace ("namespace": the shim's memory is
    # paid once instead of per pod; a shim that dies takes all of them).
    scope: ShimScope = "pod"
    # A shim that no Create reaches within this many seconds of its start exits, leaving
    # nothing behind: containerd sends Create at once, so a shim still unclaimed then was
    # started by something that went away (or gave it an address nobody serves).
    unclaimed_timeout: float = 120.0


@dataclass(frozen=True)
class DebugConfig:
    # `runvm debug ID` opens a shell (busybox sh, as root) in the sandbox's guest itself,
    # outside its containers: the guest's kernel, agent, mounts and every container's
    # processes in view. It is a way into every guest for whoever may reach the sandbox's
    # owner (root on the host); off, both the owner and the agent refuse.
    console: bool = False


@dataclass(frozen=True)
class RunvmConfig:
    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    factory: FactoryConfig = field(default_factory=FactoryConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    shim: ShimConfig = field(default_factory=ShimConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


_RANGES = {
    ("hypervisor", "vcpus"): (1, 256),
    ("hypervisor", "memory_mib"): (64, 1 << 20),
    ("hypervisor", "max_vcpus"): (0, 256),
    ("hypervisor", "max_memory_mib"): (0, 1 << 24),
    ("hypervisor", "tcg_tb_size_mib"): (1, 2048),
    ("hypervisor", "boot_timeout"): (1, 3600),
    ("hypervisor", "console_log_max_kib"): (4, 1 << 20),
    ("agent", "timeout"): (1, 3600),
    ("cache", "size"): (1, 1024),
    ("shim", "unclaimed_timeout"): (1, 86400),
}


def _section(cls: type[Any], name: str, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: [{name}] must be a table")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"config: unknown key {name}.{key}")
        want = hints[key]
        choices = get_args(want) if get_origin(want) is Literal else ()
        if choices:
            if value not in choices:
                raise ConfigError(
                    f"config: {name}.{key} = {value!r}: must be one of {', '.join(choices)}"
                )
            values[key] = value
            continue
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"config: {name}.{key} must be {want.__name__}, got {value!r}")
        bounds = _RANGES.get((name, key))
        if bounds and not bounds[0] <= value <= bounds[1]:
            raise ConfigError(f"config: {name}.{key}={value} is outside {bounds[0]}..{bounds[1]}")
        values[key] = value
    return cls(**values)


def parse(data: dict[str, Any]) -> RunvmConfig:
    """Build a config from a parsed TOML document."""
    sections = {f.name: f.type for f in dataclasses.fields(RunvmConfig)}
    hints = get_type_hints(RunvmConfig)
    out: dict[str, Any] = {}
    for name, raw in data.items():
        if name not in sections:
            raise ConfigError(f"config: unknown table [{name}]")
        out[name] = _section(hints[name], name, raw)
    return RunvmConfig(**out)


def load(path: Path | None = None) -> RunvmConfig:
    """Read the config file (see module docstring); defaults when it does not exist."""
    explicit = path is not None or "RUNVM_CONFIG" in os.environ
    path = path or Path(os.environ.get("RUNVM_CONFIG", DEFAULT_PATH))
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist") from None
        return RunvmConfig()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    return parse(data)
