"""The minimal guest kernel: built from Debian's linux-source package and runvm's fragments.

The configuration is ``allnoconfig`` plus the kernel's own ``tiny.config`` files plus the
fragments in ``runvm/image/kconfig/*.config`` (each option documented there). A build fails if
any option a fragment names did not end up as written: Kconfig silently drops an option whose
dependencies are off, and a guest without, say, virtio-fs is worse than no build.

Builds are cached by the hash of the source package version and the fragments::

    kernels/<sha256>/bzImage, vmlinux, config, release
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

from runvm.errors import ImageError

SOURCE_PACKAGE = "linux-source-6.1"
FRAGMENTS = ("base", "virtio", "fs", "net", "hotplug", "security", "workloads", "checkpoint")
KCONFIG_DIR = Path(__file__).parent / "kconfig"
_TINY = ("kernel/configs/tiny.config", "arch/x86/configs/tiny.config")
_OUTPUTS = ("bzImage", "vmlinux", "config", "release")
_OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KernelBuild:
    """A built minimal kernel."""

    directory: Path
    release: str
    source_version: str

    @property
    def bzimage(self) -> Path:
        return self.directory / "bzImage"

    @property
    def vmlinux(self) -> Path:
        """The uncompressed ELF with a PVH note: QEMU boots it directly, no decompression."""
        return self.directory / "vmlinux"


def fragments() -> dict[str, str]:
    """The shipped fragments' text by name, in :data:`FRAGMENTS` order."""
    return {name: (KCONFIG_DIR / f"{name}.config").read_text() for name in FRAGMENTS}


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


def build_hash(version: str, texts: Mapping[str, str]) -> str:
    """sha256 of the source version and the fragments' options (comments do not count)."""
    digest = hashlib.sha256(f"{SOURCE_PACKAGE}\0{version}\0".encode())
    for name, text in texts.items():
        options = "".join(f"{k}={v}\n" for k, v in parse_config(text).items())
        digest.update(f"{name}\0{len(options)}\0{options}".encode())
    return digest.hexdigest()


def cached(cache: Path) -> KernelBuild | None:
    """The build for the current source and fragments if it exists, else None."""
    version = source_version()
    directory = cache / "kernels" / build_hash(version, fragments())
    if all((directory / name).is_file() for name in _OUTPUTS):
        return KernelBuild(directory, (directory / "release").read_text().strip(), version)
    return None


def build(cache: Path, report: Progress, *, jobs: int | None = None) -> KernelBuild:
    """The minimal kernel, built unless cached. The caller holds the image cache's lock."""
    if (done := cached(cache)) is not None:
        report(f"minimal kernel up to date: {done.directory}")
        return done
    version, texts = source_version(), fragments()
    final = cache / "kernels" / build_hash(version, texts)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        report(f"unpack {source_tarball().name} ({SOURCE_PACKAGE} {version})")
        _run(["tar", "-xf", str(source_tarball()), "-C", str(work)], work)
        (tree,) = [p for p in work.iterdir() if p.is_dir()]
        _configure(tree, texts, report)
        _compile(tree, jobs or os.cpu_count() or 1, report)
        out = work / "out"
        out.mkdir()
        shutil.copyfile(tree / "arch/x86/boot/bzImage", out / "bzImage")
        shutil.copyfile(tree / "vmlinux", out / "vmlinux")
        shutil.copyfile(tree / ".config", out / "config")
        release = _run(["make", "-s", "ARCH=x86_64", "kernelrelease"], tree).strip()
        (out / "release").write_text(release + "\n")
        if final.exists():
            final.rename(work / "old")
        out.rename(final)
    report(f"minimal kernel {release} built: {final}")
    return KernelBuild(final, release, version)


def _configure(tree: Path, texts: Mapping[str, str], report: Progress) -> None:
    report(f"configure: allnoconfig + tiny.config + {', '.join(texts)}")
    merged = "".join((tree / rel).read_text() + "\n" for rel in _TINY)
    merged += "".join(texts.values())
    (tree / "runvm.config").write_text(merged)
    _run(["make", "-s", "ARCH=x86_64", "allnoconfig", "KCONFIG_ALLCONFIG=runvm.config"], tree)
    requested: dict[str, str] = {}
    for text in texts.values():
        requested.update(parse_config(text))
    unmet = unmet_options(requested, (tree / ".config").read_text())
    if unmet:
        raise ImageError(
            "minimal kernel configuration: options a fragment asks for are not set (a "
            "dependency is missing from runvm/image/kconfig): " + ", ".join(unmet)
        )


def _compile(tree: Path, jobs: int, report: Progress) -> None:
    """``make bzImage`` at low priority, reporting progress every 30 s."""
    report(f"compile with {jobs} jobs at nice 10 (about 12 minutes on 2 cores)")
    argv = ["nice", "-n", "10", "make", f"-j{jobs}", "ARCH=x86_64", "bzImage"]
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
