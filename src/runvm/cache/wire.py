"""The cache socket's protocol: one JSON object per line each way, at most ``LINE_MAX``
bytes; a handed-over VM's pidfd travels with the reply as SCM_RIGHTS.

Requests: ``{"op": "take", "run_dir": PATH, "key": {...}}`` and ``{"op": "status"}``.
Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": WHY}``. Either side drops a peer
that sends more than ``LINE_MAX`` bytes without a newline, or anything but a JSON object.
"""

from __future__ import annotations

import json
from typing import Any

from runvm.errors import RunvmError

LINE_MAX = 16384
MAX_FDS = 1


class WireError(RunvmError):
    """A malformed or oversized message on the cache socket."""


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    if len(data) > LINE_MAX:
        raise WireError(f"message of {len(data)} bytes exceeds {LINE_MAX}")
    return data


def decode(line: bytes) -> dict[str, Any]:
    """One message; WireError for anything but a JSON object within the size limit."""
    if len(line) > LINE_MAX:
        raise WireError(f"message of {len(line)} bytes exceeds {LINE_MAX}")
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise WireError(f"not a JSON object: {type(message).__name__}")
    return message
