"""What goes into the guest image: the builder's inputs as one frozen value.

Every field takes part in the image hash, so changing a constant here rebuilds the image.
Bump :data:`FORMAT_VERSION` when the builder changes how it lays out the image.
"""

from __future__ import annotations

from dataclasses import dataclass

from runvm import arch as arches

FORMAT_VERSION = 6

#: Kernel modules the guest loads; their ``depends=`` closure is added and ordered.
KERNEL_MODULES = (
    "virtio_pci",
    "virtio_mmio",
    "virtio_console",
    "virtio_net",
    "virtio_blk",
    "virtio_rng",
    "virtio_balloon",
    "virtio_mem",
    "virtiofs",
    "overlay",
    "vmw_vsock_virtio_transport",
)

#: Debian packages holding the interpreter, its standard library, protobuf and pyroute2
#: (the agent configures the guest's NICs over netlink).
PYTHON_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3-protobuf",
    "python3-pyroute2",
)

#: Programs the agent runs (paths inside their packages) and the packages holding them.
#: crun creates the containers (runvm.agent.crun runs /usr/bin/crun); busybox (static, about
#: 2 MB) is the debug console's shell (runvm.agent.debug).
TOOLS = ("usr/bin/crun", "bin/busybox")
TOOL_PACKAGES = ("crun", "busybox-static")

#: Programs kept beside the image and shared into a guest only when needed (image/toolset.py):
#: CRIU dumps and restores a container's processes (runvm checkpoint / restore); it runs
#: GNU tar and gzip for the contents of a container's tmpfs mounts. With the libraries they
#: need that the image lacks (about 10 MB that no boot unpacks).
CHECKPOINT_TOOLS = ("usr/sbin/criu", "bin/tar", "bin/gzip")
CHECKPOINT_PACKAGES = (
    "criu",
    "tar",
    "gzip",
    "libacl1",
    "libselinux1",
    "libpcre2-8-0",
    "libprotobuf-c1",
    "libnl-3-200",
    "libnet1",
    "libnftables1",
    "libbsd0",
    "libmd0",
    "libgnutls30",
    "libp11-kit0",
    "libidn2-0",
    "libunistring2",
    "libtasn1-6",
    "libnettle8",
    "libhogweed6",
    "libgmp10",
    "libjansson4",
    "libmnl0",
    "libnftnl11",
    "libxtables12",
)

#: Debian packages holding the shared libraries the kept ELF files need. A build that needs a
#: library from none of these fails and names the package to add.
LIBRARY_PACKAGES = (
    # python3.11 and the kept lib-dynload modules
    "libc6",
    "zlib1g",
    "libffi8",
    "libexpat1",
    "libuuid1",
    # crun, and libsystemd0's own needs
    "libcap2",
    "libseccomp2",
    "libyajl2",
    "libsystemd0",
    "libgcrypt20",
    "libgpg-error0",
    "liblz4-1",
    "liblzma5",
    "libzstd1",
)

#: The agent's entry point, imported by ``/init``.
ENTRY_MODULE = "runvm.agent.main"

#: Parts of the runvm source tree shipped to the guest (paths relative to ``src/``); every
#: module under them is imported when the Python closure is computed.
SHIPPED_PACKAGES = (
    "runvm/__init__.py",
    "runvm/errors.py",
    "runvm/agent",
    "runvm/protocol",
    "runvm/ttrpc",
    "runvm/oci",
)

#: Standard-library modules kept even if the agent does not import them at start-up
#: (``pkg.*`` takes every module of a package that imports on Linux).
STDLIB_MODULES = (
    "encodings.*",
    "asyncio",
    "ctypes",
    "errno",
    "fcntl",
    "json",
    "logging",
    "platform",
    "pty",
    "resource",
    "select",
    "selectors",
    "signal",
    "socket",
    "struct",
    "termios",
    "tty",
    "uuid",
)

#: Modules the agent imports only when it first needs them (pyroute2: the pod's NICs, about
#: 0.5 s of an emulated boot that a pod without NICs never pays); kept all the same.
LAZY_MODULES = ("pyroute2.iproute.linux", "pyroute2.netlink.exceptions")

#: Modules made unimportable in the closure (and so absent in the guest). Their importers
#: fall back cleanly (asyncio without ssl, hashlib without OpenSSL, shutil without bz2/lzma),
#: and they would pull in libssl/libcrypto, libbz2 and liblzma.
EXCLUDED_MODULES = ("ssl", "_ssl", "_hashlib", "_bz2", "_lzma")


@dataclass(frozen=True)
class ImageSpec:
    """Everything the builder is told; :data:`DEFAULT_SPEC` is the production image."""

    #: The guest's architecture (``amd64``, ``arm64``): its kernel and Debian packages.
    arch: str = arches.AMD64
    #: ``debian``: Debian's cloud kernel package, its modules loaded by /init; ``minimal``: a
    #: kernel built here from linux-source with runvm's fragments, everything built in.
    variant: str = "debian"
    kernel_metapackage: str = "linux-image-cloud-{arch}"
    kernel_modules: tuple[str, ...] = KERNEL_MODULES
    python_packages: tuple[str, ...] = PYTHON_PACKAGES
    tool_packages: tuple[str, ...] = TOOL_PACKAGES
    tools: tuple[str, ...] = TOOLS
    library_packages: tuple[str, ...] = LIBRARY_PACKAGES
    checkpoint_packages: tuple[str, ...] = CHECKPOINT_PACKAGES
    checkpoint_tools: tuple[str, ...] = CHECKPOINT_TOOLS
    python: str = "usr/bin/python3.11"
    entry_module: str = ENTRY_MODULE
    shipped: tuple[str, ...] = SHIPPED_PACKAGES
    stdlib_modules: tuple[str, ...] = STDLIB_MODULES
    lazy_modules: tuple[str, ...] = LAZY_MODULES
    excluded_modules: tuple[str, ...] = EXCLUDED_MODULES
    zstd_level: int = 10
    #: Test flag: build even if the entry module or a shipped package does not exist yet.
    allow_missing_agent: bool = False


DEFAULT_SPEC = ImageSpec()
VARIANTS = ("debian", "minimal")
