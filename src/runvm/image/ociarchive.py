"""A busybox container image as an OCI image-layout tar archive, built locally.

Contract: :func:`busybox_archive` writes a one-layer OCI archive (``oci-layout``,
``index.json``, ``blobs/sha256/...``) of the busybox rootfs from
:mod:`runvm.image.busybox`, named ``ref`` (``org.opencontainers.image.ref.name`` and
``io.containerd.image.name`` annotations), ready for ``podman load``, ``docker load`` (via
skopeo) or ``ctr image import``. Reproducible: file times are zeroed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runvm import arch as arches
from runvm.image.busybox import make_rootfs
from runvm.oci.default import DEFAULT_PATH

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _tar_tree(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _descriptor(media: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data), **extra}  # fmt: skip


def busybox_archive(
    out: Path,
    ref: str = "localhost/runvm/busybox:latest",
    cmd: tuple[str, ...] = ("sh",),
    extra: Callable[[Path], None] | None = None,
    arch: str = "",
) -> Path:
    """Write the archive to ``out``; returns ``out``. ``cmd`` is the image's default
    command (a pod's pause image: something that waits forever); ``extra(rootfs)`` adds to
    the busybox tree before it is packed; ``arch`` is the image's platform (default: the
    host's)."""
    arch = arch or arches.host().name
    with tempfile.TemporaryDirectory(prefix="runvm-img-") as tmp:
        make_rootfs(Path(tmp), arch)
        if extra is not None:
            extra(Path(tmp))
        layer_tar = _tar_tree(Path(tmp))
    layer = gzip.compress(layer_tar, mtime=0)
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Env": [DEFAULT_PATH], "Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": _descriptor(MEDIA_CONFIG, config),
        "layers": [_descriptor(MEDIA_LAYER, layer)],
    }, sort_keys=True).encode()  # fmt: skip
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [_descriptor(MEDIA_MANIFEST, manifest, annotations={
            "org.opencontainers.image.ref.name": tag, "io.containerd.image.name": ref},
            platform={"architecture": arch, "os": "linux"})],
    }).encode()  # fmt: skip
    with tarfile.open(out, "w") as tar:
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index),
            *((f"blobs/sha256/{hashlib.sha256(b).hexdigest()}", b)
              for b in (layer, config, manifest)),
        ):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out
