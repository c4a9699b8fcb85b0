"""Which guest kernel and initrd a sandbox boots: the config's explicit files or the image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runvm import arch as arches
from runvm.config import RunvmConfig
from runvm.errors import ImageError

if TYPE_CHECKING:
    from runvm.image.manifest import ImageInfo


@dataclass(frozen=True)
class GuestFiles:
    kernel: Path
    initrd: Path
    root_image: Path | None = None  # boot from this on virtio-pmem with DAX (image.dax)
    image: ImageInfo | None = None  # the built image they are from (None: explicit files)

    @property
    def root_image_bytes(self) -> int:
        return self.root_image.stat().st_size if self.root_image else 0


def resolve_guest_files(config: RunvmConfig) -> GuestFiles:
    """The config's ``image.kernel``/``image.initrd`` if set, else the built image of the
    configured variant for the guests' architecture (``hypervisor.arch``; its PVH vmlinux
    unless ``image.boot`` says otherwise)."""
    if config.image.kernel or config.image.initrd:
        if config.image.dax:
            raise ImageError("image.dax boots the built image's root image: it cannot be "
                             "combined with an explicit image.kernel or image.initrd")  # fmt: skip
        files = GuestFiles(Path(config.image.kernel), Path(config.image.initrd))
    else:
        from runvm import image  # the builder is only needed when no explicit files are set

        cache = Path(config.image.dir) if config.image.dir else None
        info = image.current(
            cache, config.image.variant, arches.resolve(config.hypervisor.arch).name
        )
        if config.image.boot == "pvh" and not info.kernel_pvh:
            raise ImageError(f"image.boot = pvh, but the {info.variant} {info.arch} guest image "
                             "has no PVH kernel (the amd64 minimal variant has one)")  # fmt: skip
        pvh = config.image.boot != "bzimage" and info.kernel_pvh
        root_image = None
        if config.image.dax:
            if not info.root_image:
                raise ImageError(f"image.dax = true, but the {info.variant} guest image has no "
                                 "root image (the minimal variant has one)")  # fmt: skip
            root_image = Path(info.root_image)
        files = GuestFiles(Path(info.kernel_pvh) if pvh else info.kernel, info.initrd, root_image,
                           info)  # fmt: skip
    for path, what in ((files.kernel, "kernel"), (files.initrd, "initrd")):
        if not path.is_file():
            raise ImageError(f"guest {what} {path} does not exist: run `runvm image build`")
    return files
