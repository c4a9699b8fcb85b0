"""Which guest kernel and initrd a sandbox boots: the config's explicit files or the image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runvm.config import RunvmConfig
from runvm.errors import ImageError


@dataclass(frozen=True)
class GuestFiles:
    kernel: Path
    initrd: Path


def resolve_guest_files(config: RunvmConfig) -> GuestFiles:
    """The config's ``image.kernel``/``image.initrd`` if set, else the current built image."""
    if config.image.kernel or config.image.initrd:
        files = GuestFiles(Path(config.image.kernel), Path(config.image.initrd))
    else:
        from runvm import image  # the builder is only needed when no explicit files are set

        info = image.current(Path(config.image.dir) if config.image.dir else None)
        files = GuestFiles(Path(info.kernel), Path(info.initrd))
    for path, what in ((files.kernel, "kernel"), (files.initrd, "initrd")):
        if not path.is_file():
            raise ImageError(f"guest {what} {path} does not exist: run `runvm image build`")
    return files
