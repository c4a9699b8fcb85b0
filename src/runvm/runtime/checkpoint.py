"""Checkpoint images on the host: what a checkpoint is made of, and whether one can be used.

A checkpoint's image directory holds what CRIU wrote in the guest (its ``*.img`` files, the
agent's ``container.json``) and :data:`META`, written by the host last: what made it (runvm's
version, the guest kernel, CRIU's version, the machine) and the size and sha256 of every
other file in the directory. The directory is untrusted input when read back (it may come
from another host, or have been edited): :func:`check` reads :data:`META` with limits and
refuses, naming the reason, a directory without one, one this runvm or guest image cannot
restore, and one whose files are missing, cut short or changed. CRIU's images themselves are
only ever parsed in the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runvm import __version__, files
from runvm.errors import ConfigError
from runvm.protocol import agent_pb2 as pb
from runvm.storage.shared import ReadOnly, SharedDir

if TYPE_CHECKING:
    from runvm.image.manifest import ImageInfo

META = "runvm.json"
FORMAT = 1
MAX_META = 1 << 20
MAX_FILES = 10_000
MAX_NAME = 255
MAX_BYTES = 1 << 40


@dataclass(frozen=True)
class CheckpointOptions:
    """runc's checkpoint choices runvm takes (the rest are refused by the front ends)."""

    images: Path
    work: Path
    leave_running: bool = False
    tcp_established: bool = False
    file_locks: bool = False


@dataclass(frozen=True)
class RestoreOptions:
    images: Path
    work: Path
    tcp_established: bool = False
    file_locks: bool = False


@dataclass(frozen=True)
class Made:
    """What the guest that made a checkpoint ran: a restore needs the same."""

    kernel_release: str
    criu: str  # CRIU's package version in the image's tools
    arch: str


def _inventory(images: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for entry in sorted(os.scandir(images), key=lambda e: e.name):
        if entry.name == META or not entry.is_file(follow_symlinks=False):
            continue
        found[entry.name] = {
            "size": entry.stat().st_size,
            "sha256": files.sha256_file(Path(entry.path)),
        }
    return found


def write_meta(images: Path, container_id: str, made: Made, terminal: bool,
               config: dict[str, str]) -> None:  # fmt: skip
    """Describe the finished checkpoint in ``images`` (its last file); ``config``: the
    settings of the sandbox it was made in (for the reader: a restore needs none of them)."""
    meta = {
        "format": FORMAT, "runvm": __version__, "container": container_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel_release": made.kernel_release, "criu": made.criu, "arch": made.arch,
        "terminal": terminal, "config": config, "files": _inventory(images),
    }  # fmt: skip
    files.write_atomic(images / META, json.dumps(meta, indent=1).encode())


def _text(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise ConfigError(f"{META}: {key} is missing or malformed")
    return value


def check(images: Path, made: Made) -> dict[str, Any]:
    """The checkpoint in ``images`` if this host's ``made`` guest can restore it; else a
    ConfigError that says why (see the module docstring)."""
    where = f"checkpoint {images}"
    if not images.is_dir():
        raise ConfigError(f"{where}: no such directory")
    try:
        with (images / META).open("rb") as f:
            raw = f.read(MAX_META + 1)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no {META}: not a runvm checkpoint, or an unfinished "
                          "one") from None  # fmt: skip
    except OSError as exc:
        raise ConfigError(f"{where}: {META}: {exc.strerror}") from exc
    if len(raw) > MAX_META:
        raise ConfigError(f"{where}: {META} is over {MAX_META} bytes")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {META} is not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{where}: {META} is not of a format this runvm reads ({FORMAT})")
    for key, have, what in (
        ("runvm", __version__, "runvm"), ("arch", made.arch, "guest architecture"),
        ("kernel_release", made.kernel_release, "guest kernel"), ("criu", made.criu, "CRIU"),
    ):  # fmt: skip
        theirs = _text(meta, key)
        if theirs != have:
            raise ConfigError(f"{where}: made by {what} {theirs!r}; this host has {have!r} "
                              "(a restore needs the same runvm and guest image)")  # fmt: skip
    _text(meta, "container")
    listed = meta.get("files")
    if not isinstance(listed, dict) or not 0 < len(listed) <= MAX_FILES:
        raise ConfigError(f"{where}: {META} lists no files, or too many")
    for name, want in listed.items():
        if (not isinstance(name, str) or "/" in name or name in (".", "..", META)
                or len(name) > MAX_NAME or not isinstance(want, dict)):  # fmt: skip
            raise ConfigError(f"{where}: {META} lists a bad file name")
        size, digest = want.get("size"), want.get("sha256")
        if not isinstance(size, int) or not 0 <= size <= MAX_BYTES or not isinstance(digest, str):
            raise ConfigError(f"{where}: {META}: the entry of {name} is malformed")
        path = images / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise ConfigError(f"{where}: {name} is missing") from None
        if not path.is_file() or path.is_symlink():
            raise ConfigError(f"{where}: {name} is not a regular file")
        if st.st_size != size:
            raise ConfigError(f"{where}: {name} is {st.st_size} bytes, the checkpoint wrote "
                              f"{size}: truncated or changed")  # fmt: skip
        if files.sha256_file(path) != digest:
            raise ConfigError(f"{where}: {name} does not match its checksum: changed since "
                              "the checkpoint")  # fmt: skip
    return meta


def made_by(image: ImageInfo | None, what: str) -> Made:
    """What a guest of ``image`` makes and restores; ConfigError without CRIU in it."""
    if image is None or not image.tools or not Path(image.tools).is_dir():
        raise ConfigError(
            f"{what}: needs CRIU from a built guest image's tools; rebuild it "
            "with `runvm image build` (an explicit image.kernel/initrd has none)"
        )
    return Made(image.kernel_release, image.packages.get("criu", ""), image.arch)


@contextlib.asynccontextmanager
async def shared_dirs(
    shared: SharedDir, container_id: str, tools: Path, images: Path, work: Path,
    images_readonly: bool,
) -> AsyncIterator[pb.CriuOptions]:  # fmt: skip
    """CRIU's directories shared into the guest for one call (removed after it): the tools
    (read-only), the images (read-only for a restore) and the work directory."""
    added: list[str] = []
    guest: dict[str, str] = {}
    try:
        for name, source, readonly in (("criu-tools", tools, True),
                                       ("criu-images", images, images_readonly),
                                       ("criu-work", work, False)):  # fmt: skip
            path = await asyncio.to_thread(shared.add_bind, container_id, name, source,
                                           ReadOnly.ALL if readonly else ReadOnly.NO)  # fmt: skip
            added.append(name)
            guest[name] = shared.guest_path(path)
        yield pb.CriuOptions(tools=guest["criu-tools"], images=guest["criu-images"],
                             work=guest["criu-work"])  # fmt: skip
    finally:
        for name in reversed(added):
            await asyncio.to_thread(shared.remove_bind, container_id, name)
