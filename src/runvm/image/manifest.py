"""What a built image is (``manifest.json``) and the hash of what it is built from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runvm.errors import ImageError
from runvm.image.debs import DebPackage
from runvm.image.kernel import KernelBuild
from runvm.image.spec import FORMAT_VERSION, ImageSpec

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ImageInfo:
    """A built guest image; mirrors its ``manifest.json``."""

    kernel: Path  # bzImage (boots on every x86 machine type), or arm64's Image
    kernel_pvh: str  # uncompressed vmlinux with a PVH entry ("" if the image has none)
    initrd: Path
    root_image: str  # the same tree as a read-only ext4 image for DAX boots ("" if none)
    arch: str  # amd64 | arm64: the guest's architecture
    variant: str  # debian | minimal (see ImageSpec.variant)
    kernel_release: str
    kernel_package: str  # the Debian package the kernel was taken or built from
    kernel_version: str
    kernel_sha256: str  # of the kernel .deb, or the minimal kernel build's hash
    python_version: str
    packages: Mapping[str, str]  # Debian package -> version
    sha256: str  # of the inputs; the image directory's name
    initrd_sha256: str
    sizes: Mapping[str, int]  # kernel, initrd, initrd_uncompressed (bytes)
    modules: tuple[str, ...]  # kernel modules in load order, paths inside the guest
    tools: str  # programs shared into a guest when needed (image/toolset.py): CRIU

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(
            kernel=str(self.kernel),
            initrd=str(self.initrd),
            packages=dict(self.packages),
            sizes=dict(self.sizes),
            modules=list(self.modules),
        )
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> ImageInfo:
        fix = "rebuild it with `runvm image build --force`"
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ImageError(f"{where}: not a guest image manifest of this runvm; {fix}")
        try:
            info = cls(
                kernel=Path(_typed(data["kernel"], str)),
                initrd=Path(_typed(data["initrd"], str)),
                packages={_typed(k, str): _typed(v, str) for k, v in data["packages"].items()},
                sizes={_typed(k, str): _typed(v, int) for k, v in data["sizes"].items()},
                modules=tuple(_typed(m, str) for m in data["modules"]),
                **{name: _typed(data[name], str) for name in names - _NON_STR},
            )
        except (TypeError, AttributeError) as exc:
            raise ImageError(f"{where}: malformed guest image manifest ({exc}); {fix}") from exc
        return info


_T = TypeVar("_T")
_NON_STR = {"kernel", "initrd", "packages", "sizes", "modules"}


def _typed(value: Any, kind: type[_T]) -> _T:
    if not isinstance(value, kind):
        raise TypeError(f"{value!r} is not a {kind.__name__}")
    return value


def load(directory: Path) -> ImageInfo:
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read the guest image manifest: {exc}") from exc
    return ImageInfo.from_json(data, str(path))


def write(info: ImageInfo, directory: Path) -> None:
    text = json.dumps(info.to_json(), indent=2, sort_keys=True) + "\n"
    (directory / MANIFEST).write_text(text)


def agent_digest(agent_files: Mapping[str, bytes]) -> str:
    """sha256 over the shipped runvm sources (paths and contents, in path order)."""
    digest = hashlib.sha256()
    for rel in sorted(agent_files):
        data = agent_files[rel]
        digest.update(b"%s\0%d\0" % (rel.encode(), len(data)))
        digest.update(data)
    return digest.hexdigest()


def inputs_hash(
    packages: Sequence[DebPackage],
    agent_files: Mapping[str, bytes],
    spec: ImageSpec,
    built_kernel: KernelBuild | None = None,
) -> str:
    """sha256 of everything an image is built from; equal inputs give an equal image."""
    canonical = {
        "kernel": built_kernel.directory.name if built_kernel else "",
        "format": FORMAT_VERSION,
        "packages": sorted([p.name, p.version, p.architecture, p.sha256] for p in packages),
        "agent": agent_digest(agent_files),
        "spec": dataclasses.asdict(spec),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
