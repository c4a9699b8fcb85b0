"""Entering or creating the network namespace a container's config.json names.

Python 3.11 has neither os.setns nor os.unshare, hence ctypes. The calling process moves:
call this only in a process that owns nothing else (the freshly forked monitor).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
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
