"""Entering or creating the network namespace a container's config.json names.

Python 3.11 has neither os.setns nor os.unshare, hence ctypes. :func:`apply` moves the
calling thread for good: call it only in a process that owns nothing else (the freshly
forked monitor, a shim serving one pod). A process serving several pods keeps each one's
namespace as a file descriptor (:func:`open_namespace`) and visits it (:func:`inside`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator, Mapping
from typing import Any

from runvm.errors import ConfigError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def enter(path: str) -> None:
    """Join the network namespace at ``path`` (e.g. /var/run/netns/x, /proc/N/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"network namespace {path}: {exc.strerror}") from exc
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise _fail(f"setns {path}")
    finally:
        os.close(fd)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise _fail(f"setns {what}")


def _own() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def unshare() -> None:
    """Move into a new, empty network namespace."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        raise _fail("unshare(CLONE_NEWNET)")


def network_namespace(spec: Mapping[str, Any]) -> tuple[bool, str]:
    """(wanted, path) from config.json: no entry = stay in the caller's namespace."""
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network":
            return True, str(ns.get("path") or "")
    return False, ""


def apply(spec: Mapping[str, Any]) -> None:
    """Enter or create the namespace the spec asks for (nothing if it asks for none)."""
    wanted, path = network_namespace(spec)
    if wanted:
        enter(path) if path else unshare()


def open_namespace(spec: Mapping[str, Any]) -> int | None:
    """A descriptor of the namespace the spec asks for, the named one or a new one, with the
    calling thread left where it was; None if the spec asks for none."""
    wanted, path = network_namespace(spec)
    if not wanted:
        return None
    if path:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"network namespace {path}: {exc.strerror}") from exc
    own = _own()
    try:
        unshare()
        try:
            return _own()
        finally:
            _setns(own, "back to the caller's namespace")
    finally:
        os.close(own)


@contextlib.contextmanager
def inside(fd: int | None) -> Iterator[None]:
    """The calling thread in namespace ``fd`` for the block, then back (None: stays). Sockets
    and taps made in the block stay in that namespace."""
    if fd is None:
        yield
        return
    own = _own()
    try:
        _setns(fd, "into the pod's namespace")
        try:
            yield
        finally:
            _setns(own, "back to the caller's namespace")
    finally:
        os.close(own)
