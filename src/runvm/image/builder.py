"""Build the guest kernel + initramfs, cached by the hash of their inputs.

Layout of the cache directory::

    debs/<package>_<version>_<arch>.deb    downloads, reused while the version is current
    kernels/<sha256>/                       minimal kernels (see runvm.image.kernel)
    <sha256 of the inputs>/                 vmlinuz, [vmlinux,] initrd.img, manifest.json
    minimal-amd64 -> <sha256>               the newest build of each variant and architecture
    debian-amd64, minimal-arm64, ...
    current -> <sha256>                     the newest build

``vmlinuz`` is the kernel QEMU boots: a bzImage (amd64), an uncompressed Image (arm64).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import runvm
from runvm import arch as arches
from runvm.errors import ImageError
from runvm.files import sha256_file
from runvm.image import (
    cpio,
    debs,
    emulate,
    kernel,
    kmod,
    libs,
    manifest,
    pyprune,
    rootimg,
    toolset,
)
from runvm.image.debs import DebPackage
from runvm.image.elf import is_elf
from runvm.image.manifest import MANIFEST, ImageInfo
from runvm.image.spec import DEFAULT_SPEC, FORMAT_VERSION, VARIANTS, ImageSpec

DEFAULT_CACHE_DIR = Path("/var/lib/runvm/images")
AGENT_DIR = "usr/lib/runvm"  # sys.path entry of the agent in the guest
_DIST_PACKAGES = "usr/lib/python3/dist-packages"
_PURE_PACKAGES = ("google", "pyroute2")  # copied whole (pure Python), pruned by the closure
# Mount points PID 1 needs; "sysroot" too, as a read-only (DAX) root cannot have it made.
_EMPTY_DIRS = ("proc", "sys", "dev", "run", "tmp", "mnt", "sysroot", "etc/runvm")
_NO_IMAGE = "no guest image built; run `runvm image build`"

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    return Path(os.environ.get("RUNVM_IMAGE_DIR") or DEFAULT_CACHE_DIR)


def link_name(variant: str, arch: str) -> str:
    """The cache's link to the newest image of ``variant`` for ``arch``."""
    return f"{variant}-{arch}"


def current(cache_dir: Path | None = None, variant: str = "", arch: str = "") -> ImageInfo:
    """The newest built image (of ``variant`` for ``arch``, default the host's, if a variant
    is given); ImageError naming the command that builds it if there is none."""
    arch = arch or arches.host().name
    link = (cache_dir or default_cache_dir()) / (link_name(variant, arch) if variant else "current")
    if not (link / MANIFEST).is_file():
        if variant:
            flag = "" if arch == arches.host().name else f" --arch {arch}"
            raise ImageError(f"no {variant} guest image built for {arch}; run "
                             f"`runvm image build --kernel {variant}{flag}`")  # fmt: skip
        raise ImageError(_NO_IMAGE)
    info = manifest.load(link.resolve())
    if not (info.kernel.is_file() and info.initrd.is_file()):
        raise ImageError(f"guest image {link.resolve()} is incomplete; run `runvm image build`")
    return info


def build(
    cache_dir: Path | None = None,
    *,
    progress: Progress | None = None,
    force: bool = False,
    spec: ImageSpec = DEFAULT_SPEC,
) -> ImageInfo:
    """Build the guest image unless one from the same inputs exists.

    Points the links ``<variant>-<arch>`` and ``current`` at it.
    """
    if spec.variant not in VARIANTS:
        raise ImageError(f"unknown guest image variant {spec.variant!r}: one of {VARIANTS}")
    if spec.arch not in arches.ARCHES:
        raise ImageError(f"unknown guest architecture {spec.arch!r}: one of "
                         f"{', '.join(arches.ARCHES)}")  # fmt: skip
    cache = (cache_dir or default_cache_dir()).resolve()
    report: Progress = progress or (lambda _step: None)
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache):
        report(f"resolve packages ({spec.variant} kernel, {spec.arch})")
        source = _kernel_source(cache, spec, report)
        others = debs.packages([*spec.python_packages, *spec.tool_packages,
                                *spec.library_packages, *spec.checkpoint_packages],
                               spec.arch)  # fmt: skip
        agent = shipped_sources(Path(runvm.__file__).parent.parent, spec)
        digest = manifest.inputs_hash([*source.packages, *others], agent, spec, source.built)
        final = cache / digest
        if force or not _complete(final):
            with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
                work = Path(tmp)
                _build(work, final, source, others, agent, spec, report)
                if final.exists():
                    final.rename(work / "old")
                (work / "out").rename(final)
        else:
            report(f"up to date: {final}")
        for name in (link_name(spec.variant, spec.arch), "current"):
            link = cache / f".{name}.tmp"
            link.unlink(missing_ok=True)
            link.symlink_to(digest)
            link.replace(cache / name)
        info = manifest.load(final)
    report("done")
    return info


@dataclass(frozen=True)
class _KernelSource:
    """Where the image's kernel comes from: a Debian package, or a kernel built here."""

    packages: tuple[DebPackage, ...]  # the kernel package (debian), none (minimal)
    built: kernel.KernelBuild | None  # the minimal kernel


def _kernel_source(cache: Path, spec: ImageSpec, report: Progress) -> _KernelSource:
    if spec.variant == "minimal":
        return _KernelSource((), kernel.build(cache, report, arch=spec.arch))
    name = debs.metapackage_target(spec.kernel_metapackage.format(arch=spec.arch), spec.arch)
    return _KernelSource(tuple(debs.packages([name], spec.arch)), None)


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache; leftovers of a killed build are removed."""
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in cache.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ("vmlinuz", "initrd.img", MANIFEST))


def shipped_sources(src: Path, spec: ImageSpec) -> dict[str, bytes]:
    """The ``.py`` files of the shipped runvm parts, by path relative to ``src``."""
    files: dict[str, bytes] = {}
    for rel in spec.shipped:
        path = src / rel
        if path.is_file():
            files[rel] = path.read_bytes()
        elif path.is_dir():
            for file in sorted(path.rglob("*.py")):
                files[file.relative_to(src).as_posix()] = file.read_bytes()
        elif not spec.allow_missing_agent:
            raise ImageError(f"{path} is missing: the guest image ships it to the agent")
    entry = spec.entry_module.replace(".", "/")
    if not ({f"{entry}.py", f"{entry}/__init__.py"} & files.keys() or spec.allow_missing_agent):
        raise ImageError(f"the agent entry module {spec.entry_module} is not in {src}")
    return files


def _build(
    work: Path,
    final: Path,
    source: _KernelSource,
    others: list[DebPackage],
    agent: Mapping[str, bytes],
    spec: ImageSpec,
    report: Progress,
) -> ImageInfo:
    """Build into ``work/out`` the image that will live at ``final``."""
    # A Debian kernel is unpacked apart: only vmlinuz and a few modules are taken from it.
    kernel_tree, staging, root = work / "kernel", work / "staging", work / "root"
    files = _fetch(list(source.packages) + others, final.parent / "debs", report)
    for pkg in source.packages:
        debs.extract(files[pkg.name], kernel_tree)
    for pkg in others:
        debs.extract(files[pkg.name], staging)
    if source.built is not None:
        release, modules = source.built.release, []
        kernel_file, pvh_file = source.built.image, source.built.vmlinux
        kernel_name, kernel_version = kernel.SOURCE_PACKAGE, source.built.source_version
        kernel_sha256 = source.built.directory.name
    else:
        (deb,) = source.packages
        release = _kernel_release(kernel_tree, deb)
        report(f"kernel modules for {release}")
        modules = _install_modules(kernel_tree, root, release, spec)
        kernel_file, pvh_file = kernel_tree / "boot" / f"vmlinuz-{release}", None
        kernel_name, kernel_version, kernel_sha256 = deb.name, deb.version, deb.sha256
    python_version = _install_python(staging, root, agent, spec, report)
    # Libraries last: their closure starts from every ELF file kept so far.
    report("programs and shared libraries")
    for program in (spec.python, *spec.tools):
        libs.install(staging, root, program)
    if (root / "bin/busybox").is_file():  # GNU tar (CRIU's, for the contents of a container's
        (root / "bin/sh").symlink_to("busybox")  # tmpfs mounts) runs gzip through /bin/sh
    elf_files = [p.relative_to(root) for p in sorted(root.rglob("*")) if _is_elf_file(p)]
    for rel in libs.needed_closure(staging, root, elf_files):
        libs.install(staging, root, rel)
    out = work / "out"
    out.mkdir()
    report("tools kept beside the image (CRIU)")
    toolset.install(staging, root, out / "tools", spec.checkpoint_tools)
    image_json = {
        "format": FORMAT_VERSION,
        "sha256": final.name,
        "arch": spec.arch,
        "variant": spec.variant,
        "kernel_release": release,
        "kernel_package": kernel_name,
        "kernel_version": kernel_version,
        "modules": modules,
        "python_version": python_version,
        "agent_sha256": manifest.agent_digest(agent),
    }
    _write_init(root, spec, image_json)

    report("initramfs")
    buf = io.BytesIO()
    entries = [*cpio.entries_from_tree(root), cpio.chardev("dev/console", 5, 1)]
    raw_size = cpio.write_newc(entries, buf)
    report(f"compress initramfs ({raw_size / 1e6:.1f} MB, zstd -{spec.zstd_level})")
    initrd = cpio.zstd(buf.getvalue(), spec.zstd_level)
    (out / "initrd.img").write_bytes(initrd)
    shutil.copyfile(kernel_file, out / "vmlinuz")
    sizes = {"kernel": (out / "vmlinuz").stat().st_size, "initrd": len(initrd),
             "initrd_uncompressed": raw_size}  # fmt: skip
    if pvh_file is not None:
        shutil.copyfile(pvh_file, out / "vmlinux")
        sizes["kernel_pvh"] = (out / "vmlinux").stat().st_size
    if source.built is not None:  # the minimal kernel has pmem + DAX built in
        report("root image for DAX boots")
        sizes["root_image"] = rootimg.make_ext4(root, out / "root.img")
    info = ImageInfo(
        kernel=final / "vmlinuz",
        kernel_pvh=str(final / "vmlinux") if pvh_file is not None else "",
        initrd=final / "initrd.img",
        root_image=str(final / "root.img") if source.built is not None else "",
        arch=spec.arch,
        variant=spec.variant,
        kernel_release=release,
        kernel_package=kernel_name,
        kernel_version=kernel_version,
        kernel_sha256=kernel_sha256,
        python_version=python_version,
        packages={pkg.name: pkg.version for pkg in (*source.packages, *others)},
        sha256=final.name,
        initrd_sha256=sha256_file(out / "initrd.img"),
        sizes=sizes,
        modules=tuple(modules),
        tools=str(final / "tools"),
    )
    manifest.write(info, out)
    return info


def _fetch(wanted: list[DebPackage], debs_dir: Path, report: Progress) -> dict[str, Path]:
    fetch = [f"{pkg.name} {pkg.version}" for pkg in wanted if debs.cached(pkg, debs_dir) is None]
    if fetch:
        report(f"download {', '.join(fetch)}")
    files = debs.download(wanted, debs_dir)
    report(f"unpack {len(wanted)} packages")
    return files


def _install_python(
    staging: Path, root: Path, agent: Mapping[str, bytes], spec: ImageSpec, report: Progress
) -> str:
    """Put the agent's import closure into root as bytecode; return the Python version.

    The agent, protobuf and pyroute2 are copied in whole, imported with the staged interpreter, and
    whatever that did not load is dropped again.
    """
    report("python import closure")
    python = staging / spec.python
    runner = emulate.runner(spec.arch, staging)
    agent_dir = root / AGENT_DIR
    for rel, data in agent.items():
        (agent_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (agent_dir / rel).write_bytes(data)
    ignore = shutil.ignore_patterns("*.so", "__pycache__")  # pure-Python protobuf only
    for package in _PURE_PACKAGES:
        if (staging / _DIST_PACKAGES / package).is_dir():
            shutil.copytree(staging / _DIST_PACKAGES / package, agent_dir / package,
                            ignore=ignore)  # fmt: skip
    names = [name for rel in spec.shipped for name in pyprune.modules_under(agent_dir, rel)]
    if spec.entry_module in names:  # import it first, as /init does
        names.remove(spec.entry_module)
        names.insert(0, spec.entry_module)
    modules = [*names, *spec.stdlib_modules, *spec.lazy_modules]
    closure = pyprune.closure(python, modules, [agent_dir], spec.excluded_modules, runner)
    pyprune.keep(closure, staging, root, agent_dir)
    report("compile bytecode")
    compiled = pyprune.compile_tree(python, root, runner)
    version = pyprune.python_version(python, runner)
    report(f"kept {len(closure)} Python files ({compiled} compiled), Python {version}")
    return version


def _kernel_release(kernel_tree: Path, kernel: DebPackage) -> str:
    releases = [p.name for p in (kernel_tree / "lib/modules").iterdir()]
    if len(releases) != 1 or not (kernel_tree / f"boot/vmlinuz-{releases[0]}").is_file():
        raise ImageError(f"{kernel.name}: expected one kernel and its modules, found {releases}")
    return releases[0]


def _install_modules(kernel_tree: Path, root: Path, release: str, spec: ImageSpec) -> list[str]:
    """Copy the wanted modules (uncompressed) to root; return their guest paths in load order."""
    paths: list[str] = []
    for module in kmod.resolve_modules(kernel_tree / "lib/modules" / release, spec.kernel_modules):
        path = f"lib/modules/{release}/{module.relpath}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(module.data)
        paths.append("/" + path)
    return paths


def _is_elf_file(path: Path) -> bool:
    if path.is_symlink() or not path.is_file() or path.name.endswith(".ko"):
        return False
    with path.open("rb") as f:
        return is_elf(f.read(4))


def _write_init(root: Path, spec: ImageSpec, image_json: dict[str, object]) -> None:
    """/init, the empty mount points and /etc/runvm/image.json; normalise directory modes."""
    # The interpreter finds its prefix by lib/pythonX.Y/os.py[c] and lib-dynload.
    for name in (*_EMPTY_DIRS, f"usr/lib/{Path(spec.python).name}/lib-dynload"):
        (root / name).mkdir(parents=True, exist_ok=True)
    init = root / "init"
    init.write_text(
        f"#!/{spec.python} -IS\n"
        "import os, sys, time\n"
        # The boot clock at the first line of Python: the agent reports it (bench/start.py).
        'os.environ["RUNVM_INIT_BOOTTIME"] = str(time.clock_gettime(time.CLOCK_BOOTTIME))\n'
        'os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")\n'
        f'sys.path[:0] = ["/{AGENT_DIR}"]\n'
        f"from {spec.entry_module} import main\n"
        "main()\n"
    )
    init.chmod(0o755)
    (root / "etc/runvm/image.json").write_text(json.dumps(image_json, indent=2) + "\n")
    # Every directory here was made by this builder, so umask decides nothing.
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        directory.chmod(0o755)
    (root / "tmp").chmod(0o1777)
