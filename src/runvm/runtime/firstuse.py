"""Templates made on first use: a sandbox that may be a clone and finds no template for its
configuration makes one, then clones it (``[factory] first_use``).

``[factory] templates_dir`` (on a tmpfs) holds one template per configuration, named by a
hash of its template key (:func:`runvm.runtime.template.template_key`)::

    <hash>/            a complete template (memory, state, template.json), renamed into place
    <hash>.new-<pid>   one being made by process <pid>
    <hash>.failed      the last failure to make it (JSON): no new attempt for RETRY_AFTER s
    .lock              flock'ed while a template is made, so racing first starts make one

Contract of :func:`template_for`: a usable template for ``config`` (made first if there is
none) or None, with the reason logged; a template problem never fails a start (the sandbox
boots cold). While one is made, templates whose QEMU, kernel, initrd, root image or runvm
are no longer the installed ones, and leftovers of makers that died, are removed. Every
directory here is 0700 and root's: one owned by someone else, or a symlink, is refused (a
template's memory becomes every clone's guest).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runvm import __version__
from runvm import files as own_files
from runvm.config import RunvmConfig
from runvm.errors import ConfigError
from runvm.hypervisor.accel import AccelReport
from runvm.protocol import PROTOCOL_VERSION
from runvm.runtime import template
from runvm.runtime.guestimage import GuestFiles
from runvm.storage import mounts

log = logging.getLogger(__name__)

RETRY_AFTER = 300.0  # seconds without a new attempt after a template could not be made
LOCK_POLL = 0.1
FILES = ("qemu", "kernel", "initrd", "root_image")  # key entries naming installed files


def key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) 0700, and refuse it unless it is a real directory
    of this user that nobody else may write."""
    own_files.make_dirs(path)
    for directory in (path, path.parent):
        st = os.lstat(directory)
        if directory == path.parent and st.st_mode & stat.S_ISVTX:
            continue  # a sticky shared parent (/dev/shm) is fine: entries stay their owners'
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ConfigError(f"factory.templates_dir: {directory} must be a directory of uid "
                              f"{os.geteuid()} that only it may write")  # fmt: skip


def _stale(meta: Mapping[str, Any]) -> bool:
    """Whether a template names a runvm, protocol or installed file that is no longer ours."""
    key = meta.get("key")
    if not isinstance(key, dict):
        return True
    if key.get("runvm") != __version__ or key.get("protocol") != PROTOCOL_VERSION:
        return True
    for name in FILES:
        ident = key.get(name)
        if ident is None:
            continue
        try:
            st = os.stat(ident[0])
        except (OSError, TypeError, IndexError):
            return True
        if [ident[0], st.st_size, st.st_mtime_ns] != ident:
            return True
    return False


def _alive(pid: str) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        stat_line = Path(f"/proc/{int(pid)}/stat").read_text()
    except (ValueError, OSError):
        return False
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def _sweep(root: Path, state_root: Path) -> None:
    """Under the lock: remove stale templates and what dead makers left (their template
    directories here, their template VMs' run directories in the state root)."""
    with contextlib.suppress(OSError):
        for entry in state_root.glob(f"{template.RUN_DIR_PREFIX}*-*"):
            if not _alive(entry.name[len(template.RUN_DIR_PREFIX) :].partition("-")[0]):
                shutil.rmtree(entry, ignore_errors=True)
    for entry in root.iterdir():
        if ".new-" in entry.name:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_dir() and not entry.is_symlink():
            tpl = template.load_from(entry)
            if tpl is None or _stale(tpl.meta):
                log.info("factory: removing the stale template %s", entry)
                shutil.rmtree(entry, ignore_errors=True)


def _failed_recently(marker: Path) -> str:
    try:
        failure = json.loads(marker.read_text())
        if time.time() - float(failure["at"]) < RETRY_AFTER:
            return str(failure["why"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return ""


async def _locked(lock: Path) -> int:
    """An fd holding an exclusive flock on ``lock`` (polled, so a waiter stays cancellable)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL)
    except BaseException:
        os.close(fd)
        raise


async def template_for(
    config: RunvmConfig, files: GuestFiles, accel: AccelReport
) -> template.Template | None:
    """See the module docstring."""
    root = Path(config.factory.templates_dir)
    key = template.template_key(config, files, accel.accel.value,
                                template.qemu_binary(config))  # fmt: skip
    name = key_hash(key)
    found = template.load_from(root / name)
    if found is not None and not template.mismatch(found.meta, key):
        return found
    try:
        _private_dir(root)
        if mounts.fs_type(str(root)) != "tmpfs":
            raise ConfigError(f"factory.templates_dir {root} is not on a tmpfs")
        why = _failed_recently(root / f"{name}.failed")
        if why:
            log.info("factory: no template for this configuration (%s failed %s ago at most: "
                     "%s); booting cold", name, f"{RETRY_AFTER:.0f} s", why)  # fmt: skip
            return None
        fd = await _locked(root / ".lock")
    except (OSError, ConfigError) as exc:
        log.warning("factory: no template made on first use: %s; booting cold", exc)
        return None
    try:
        found = template.load_from(root / name)  # made while this start waited for the lock
        if found is not None and not template.mismatch(found.meta, key):
            return found
        return await _make(config, root, name, files, accel)
    finally:
        os.close(fd)


async def _make(
    config: RunvmConfig, root: Path, name: str, files: GuestFiles, accel: AccelReport
) -> template.Template | None:
    _sweep(root, Path(config.runtime.state_root))
    work = root / f"{name}.new-{os.getpid()}"
    work.mkdir(mode=0o700)
    started = time.monotonic()
    try:
        await template.make(config, work, files, accel)
        os.rename(work, root / name)
    except Exception as exc:
        shutil.rmtree(work, ignore_errors=True)
        log.warning("factory: making a template for this configuration failed: %s; booting "
                    "cold (next attempt in %.0f s)", exc, RETRY_AFTER)  # fmt: skip
        with contextlib.suppress(OSError):
            (root / f"{name}.failed").write_text(json.dumps({"at": time.time(), "why": str(exc)}))
        return None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    (root / f"{name}.failed").unlink(missing_ok=True)
    log.info("factory: template %s made on first use in %.2f s", root / name,
             time.monotonic() - started)  # fmt: skip
    return template.load_from(root / name)
