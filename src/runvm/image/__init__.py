"""The guest image: Debian's cloud kernel and an initramfs whose /init is the Python agent.

``build()`` makes one (cached by the hash of its inputs), ``current()`` finds the newest,
``append_files()`` derives a variant initramfs with some files replaced.
"""

from runvm.image.builder import build, current, default_cache_dir
from runvm.image.cpio import append_files
from runvm.image.manifest import ImageInfo
from runvm.image.spec import DEFAULT_SPEC, ImageSpec

__all__ = [
    "DEFAULT_SPEC",
    "ImageInfo",
    "ImageSpec",
    "append_files",
    "build",
    "current",
    "default_cache_dir",
]
