"""The minimal guest kernel: built from Debian's linux-source package and runvm's fragments.

The configuration is ``allnoconfig`` plus the kernel's own ``tiny.config`` files plus the
fragments in ``runvm/image/kconfig/*.config`` (each option documented there): the common ones
and the architecture's (``x86_64.config``, ``arm64.config``). A kernel for another
architecture than the host's is cross-compiled with Debian's ``gcc-<triplet>``. A build fails
if any option a fragment names did not end up as written: Kconfig silently drops an option
whose dependencies are off, and a guest without, say, virtio-fs is worse than no build.

Builds are cached by the hash of the architecture, the source package version and the
fragments::

    kernels/<sha256>/bzImage, vmlinux, config, release     (amd64)
    kernels/<sha256>/Image, config, release                (arm64)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runvm import arch as arches
from runvm.errors import ImageError

SOURCE_PACKAGE = "linux-source-6.1"
COMMON_FRAGMENTS = ("base", "virtio", "fs", "net", "hotplug", "security", "workloads",
                    "checkpoint")  # fmt: skip
KCONFIG_DIR = Path(__file__).parent / "kconfig"
_OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """How the kernel is built for one architecture."""

    make_arch: str  # the kernel's ARCH=, also the name of its fragment
    make_target: str
    image: str  # the built file QEMU boots, in the tree
    tiny: tuple[str, ...]  # the kernel's own tiny.config files
    pvh: bool  # also keep vmlinux: x86's PVH entry boots it without decompression

    @property
    def image_name(self) -> str:
        return Path(self.image).name


TARGETS = {
    arches.AMD64: Target("x86_64", "bzImage", "arch/x86/boot/bzImage",
                         ("kernel/configs/tiny.config", "arch/x86/configs/tiny.config"), True),
    arches.ARM64: Target("arm64", "Image", "arch/arm64/boot/Image",
                         ("kernel/configs/tiny.config",), False),
}  # fmt: skip


def target(arch: str) -> Target:
    try:
        return TARGETS[arch]
    except KeyError:
        raise ImageError(f"no minimal kernel for architecture {arch!r}: one of "
                         f"{', '.join(TARGETS)}") from None  # fmt: skip


def fragment_names(arch: str = arches.AMD64) -> tuple[str, ...]:
    """The fragments of ``arch``'s kernel: the common ones, then the architecture's."""
    return (*COMMON_FRAGMENTS, target(arch).make_arch)


@dataclass(frozen=True)
class KernelBuild:
    """A built minimal kernel."""

    directory: Path
    release: str
    source_version: str
    arch: str = arches.AMD64

    @property
    def image(self) -> Path:
        """The kernel QEMU boots: bzImage (amd64) or the uncompressed Image (arm64)."""
        return self.directory / target(self.arch).image_name

    @property
    def vmlinux(self) -> Path | None:
        """The uncompressed ELF with a PVH note (amd64): QEMU boots it directly."""
        return self.directory / "vmlinux" if target(self.arch).pvh else None

    @staticmethod
    def outputs(arch: str) -> tuple[str, ...]:
        t = target(arch)
        return (t.image_name, *(("vmlinux",) if t.pvh else ()), "config", "release")


def fragments(arch: str = arches.AMD64) -> dict[str, str]:
    """``arch``'s fragments' text by name, in :func:`fragment_names` order."""
    return {name: (KCONFIG_DIR / f"{name}.config").read_text() for name in fragment_names(arch)}


def parse_config(text: str) -> dict[str, str]:
    """Options of a ``.config`` or fragment: ``CONFIG_X`` -> value (``n`` if "is not set")."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := _OPTION.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            options[m.group(1)] = "n"
    return options


def unmet_options(requested: Mapping[str, str], config_text: str) -> list[str]:
    """The requested options the final ``.config`` does not have as requested, explained."""
    final = parse_config(config_text)
    return [
        f"{name}={want} (got {final.get(name, 'n')})"
        for name, want in requested.items()
        if final.get(name, "n") != want
    ]


def source_tarball() -> Path:
    tarballs = sorted(Path("/usr/src").glob(f"{SOURCE_PACKAGE}.tar.*"))
    if not tarballs:
        raise ImageError(
            f"/usr/src/{SOURCE_PACKAGE}.tar.xz is missing: install the Debian package "
            f"{SOURCE_PACKAGE} (scripts/install does) to build the minimal kernel"
        )
    return tarballs[0]


def source_version() -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.strip()
    tarball = source_tarball()  # not from the package: identify the file itself
    st = tarball.stat()
    return f"{tarball.name}:{st.st_size}:{st.st_mtime_ns}"


def build_hash(version: str, texts: Mapping[str, str], arch: str = arches.AMD64) -> str:
    """sha256 of the architecture, the source version and the fragments' options (comments
    do not count)."""
    digest = hashlib.sha256(f"{arch}\0{SOURCE_PACKAGE}\0{version}\0".encode())
    for name, text in texts.items():
        options = "".join(f"{k}={v}\n" for k, v in parse_config(text).items())
        digest.update(f"{name}\0{len(options)}\0{options}".encode())
    return digest.hexdigest()


def cached(cache: Path, arch: str = arches.AMD64) -> KernelBuild | None:
    """The build for the current source and ``arch``'s fragments if it exists, else None."""
    version = source_version()
    directory = cache / "kernels" / build_hash(version, fragments(arch), arch)
    if all((directory / name).is_file() for name in KernelBuild.outputs(arch)):
        release = (directory / "release").read_text().strip()
        return KernelBuild(directory, release, version, arch)
    return None


def make_args(arch: str) -> list[str]:
    """``ARCH=`` and, for another architecture than the host's, ``CROSS_COMPILE=`` (whose
    compiler must exist: ImageError naming its Debian package otherwise)."""
    args = [f"ARCH={target(arch).make_arch}"]
    if arch != arches.host().name:
        triplet = arches.get(arch).gnu_triplet
        if not shutil.which(f"{triplet}-gcc"):
            package = f"gcc-{triplet.replace('_', '-')}"
            raise ImageError(f"{triplet}-gcc not found: cross-compiling the {arch} kernel "
                             f"needs the Debian package {package}")  # fmt: skip
        args.append(f"CROSS_COMPILE={triplet}-")
    return args


def build(
    cache: Path, report: Progress, *, arch: str = arches.AMD64, jobs: int | None = None
) -> KernelBuild:
    """``arch``'s minimal kernel, built unless cached. The caller holds the image cache's
    lock."""
    if (done := cached(cache, arch)) is not None:
        report(f"minimal {arch} kernel up to date: {done.directory}")
        return done
    version, texts, make = source_version(), fragments(arch), make_args(arch)
    final = cache / "kernels" / build_hash(version, texts, arch)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        report(f"unpack {source_tarball().name} ({SOURCE_PACKAGE} {version})")
        _run(["tar", "-xf", str(source_tarball()), "-C", str(work)], work)
        (tree,) = [p for p in work.iterdir() if p.is_dir()]
        t = target(arch)
        _configure(tree, t, texts, make, report)
        _compile(tree, t, make, jobs or os.cpu_count() or 1, report)
        out = work / "out"
        out.mkdir()
        shutil.copyfile(tree / t.image, out / t.image_name)
        if t.pvh:
            shutil.copyfile(tree / "vmlinux", out / "vmlinux")
        shutil.copyfile(tree / ".config", out / "config")
        release = _run(["make", "-s", *make, "kernelrelease"], tree).strip()
        (out / "release").write_text(release + "\n")
        if final.exists():
            final.rename(work / "old")
        out.rename(final)
    report(f"minimal {arch} kernel {release} built: {final}")
    return KernelBuild(final, release, version, arch)


def _configure(
    tree: Path, t: Target, texts: Mapping[str, str], make: list[str], report: Progress
) -> None:
    report(f"configure {' '.join(make)}: allnoconfig + tiny.config + {', '.join(texts)}")
    merged = "".join((tree / rel).read_text() + "\n" for rel in t.tiny)
    merged += "".join(text + "\n" for text in texts.values())
    (tree / "runvm.config").write_text(merged)
    _run(["make", "-s", *make, "allnoconfig", "KCONFIG_ALLCONFIG=runvm.config"], tree)
    requested: dict[str, str] = {}
    for text in texts.values():
        requested.update(parse_config(text))
    unmet = unmet_options(requested, (tree / ".config").read_text())
    if unmet:
        raise ImageError(
            "minimal kernel configuration: options a fragment asks for are not set (a "
            "dependency is missing from runvm/image/kconfig): " + ", ".join(unmet)
        )


def _compile(tree: Path, t: Target, make: list[str], jobs: int, report: Progress) -> None:
    """``make bzImage`` (or ``Image``) at low priority, reporting progress every 30 s."""
    report(f"compile {t.make_target} with {jobs} jobs at nice 10 (6-12 minutes on 2 cores)")
    argv = ["nice", "-n", "10", "make", f"-j{jobs}", *make, t.make_target]
    start = last = time.monotonic()
    objects, tail = 0, list[str]()
    with subprocess.Popen(argv, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-19:], line.rstrip()]
            objects += line.lstrip().startswith("CC ")
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                report(f"compiled {objects} files in {last - start:.0f} s")
    if proc.returncode != 0:
        raise ImageError(f"minimal kernel build failed (exit {proc.returncode}):\n" +
                         "\n".join(tail))  # fmt: skip
    report(f"compiled {objects} files in {time.monotonic() - start:.0f} s")


def _run(argv: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} not found: the minimal kernel needs {exc.filename}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise ImageError(f"{' '.join(argv)} failed (exit {proc.returncode}): {tail}")
    return proc.stdout
