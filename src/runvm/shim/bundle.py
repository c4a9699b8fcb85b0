"""What the shim reads from and writes to a task's bundle directory.

Besides containerd's ``address`` file, ``start`` leaves ``runvm-config`` (the config path
from the runtime options, if any) so that ``delete``, which gets no options, finds the same
state root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runvm.errors import ConfigError

MAX_CONFIG = 4 << 20
CONFIG_PATH_FILE = "runvm-config"


def read_annotations(bundle: Path) -> dict[str, str]:
    """The ``annotations`` of ``config.json`` ({} without one: ``delete`` after a failed
    create still has to work)."""
    path = bundle / "config.json"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    if len(data) > MAX_CONFIG:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG} bytes")
    try:
        value = json.loads(data).get("annotations") or {}
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: annotations must be an object")
    return {str(k): str(v) for k, v in value.items()}


def write_address(bundle: Path, address: str) -> None:
    """Write ``address`` atomically (``.address`` then rename), as containerd expects."""
    tmp = bundle / ".address"
    tmp.write_text(address)
    os.replace(tmp, bundle / "address")


def write_config_path(bundle: Path, config_path: str | None) -> None:
    if config_path:
        (bundle / CONFIG_PATH_FILE).write_text(config_path)


def read_config_path(bundle: Path) -> str | None:
    try:
        return (bundle / CONFIG_PATH_FILE).read_text()[:4096] or None
    except OSError:
        return None
