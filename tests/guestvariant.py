"""The built guest image with some initramfs files replaced (tests that need a broken guest)."""

from __future__ import annotations

from pathlib import Path

from runvm import config as cfg
from runvm import image
from runvm.runtime.guestimage import GuestFiles


def variant(tmp_path: Path, files: dict[str, bytes]) -> GuestFiles:
    """The configured image variant's kernel, with ``files`` added to or replacing its
    initramfs (written under ``tmp_path``)."""
    info = image.current(variant=cfg.RunvmConfig().image.variant)
    out = tmp_path / "variant.img"
    image.append_files(Path(info.initrd), files, out)
    return GuestFiles(Path(info.kernel), out)
