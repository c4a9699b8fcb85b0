"""Sandbox and container ids, and the short directory names derived from them (light: the
shim's ``start`` imports this on every container)."""

from __future__ import annotations

import hashlib
import re

from runvm.errors import ConfigError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_id(value: str, what: str = "sandbox") -> str:
    if not ID_PATTERN.fullmatch(value):
        raise ConfigError(f"invalid {what} id {value!r}: use 1-128 letters, digits, '_', '.', '-'")
    return value


def run_dir_name(sandbox_id: str) -> str:
    """A short directory name: unix socket paths inside it must stay under 108 bytes."""
    if len(sandbox_id) <= 16:
        return sandbox_id
    return hashlib.sha256(sandbox_id.encode()).hexdigest()[:16]
