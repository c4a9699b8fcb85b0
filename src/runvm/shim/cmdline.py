"""The shim binary's command line, its socket address and its pod grouping (protocols.md §2.2-2.4).

containerd runs ``containerd-shim-runvm-v1 -namespace NS -address A -publish-binary P -id ID
[-debug] [-bundle B] start|delete`` with Go ``flag`` syntax: one or two dashes, ``-flag value``
or ``-flag=value``, booleans only as ``-flag`` or ``-flag=true|false``, and flags end at the
first non-flag argument or ``--``.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from runvm.errors import ConfigError

Action = Literal["start", "delete"]
ACTIONS: tuple[Action, ...] = ("start", "delete")

SOCKET_ROOT = "/run/containerd/s"
# containerd's socketPathLimit (runtime/v2/shim/util_unix.go): longer paths are refused.
SOCKET_PATH_LIMIT = 106

_STRING_FLAGS = {
    "namespace": "namespace",
    "address": "address",
    "publish-binary": "publish_binary",
    "id": "id",
    "bundle": "bundle",
    "socket": "socket",
}
_BOOL_FLAGS = {"debug": "debug", "v": "version"}
# Go's strconv.ParseBool, which the flag package uses for booleans.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True)
class ShimArgs:
    """The parsed command line. ``action`` is None only when ``version`` is set."""

    action: Action | None
    namespace: str = ""
    address: str = ""
    publish_binary: str = "containerd"
    id: str = ""
    bundle: str = ""
    socket: str = ""
    debug: bool = False
    version: bool = False


def parse_args(argv: Sequence[str]) -> ShimArgs:
    """Parse the arguments after the program name; raises ConfigError with the reason."""
    strings: dict[str, str] = {}
    flags: dict[str, bool] = {}
    rest = list(argv)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        arg = rest.pop(0)
        if arg == "--":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if not name or arg.startswith("---"):
            raise ConfigError(f"shim: bad flag syntax: {arg}")
        if name in _BOOL_FLAGS:
            if not has_value or value in _TRUE:
                flags[_BOOL_FLAGS[name]] = True
            elif value in _FALSE:
                flags[_BOOL_FLAGS[name]] = False
            else:
                raise ConfigError(f"shim: invalid boolean value {value!r} for flag -{name}")
        elif name in _STRING_FLAGS:
            if not has_value:
                if not rest:
                    raise ConfigError(f"shim: flag needs an argument: -{name}")
                value = rest.pop(0)
            strings[_STRING_FLAGS[name]] = value
        else:
            known = ", ".join(f"-{flag}" for flag in (*_STRING_FLAGS, *_BOOL_FLAGS))
            raise ConfigError(f"shim: flag provided but not defined: -{name} (known: {known})")

    if flags.get("version"):
        return _build(None, strings, flags)
    if not rest:
        raise ConfigError(f"shim: missing action: expected one of {', '.join(ACTIONS)}")
    action, *extra = rest
    if action not in ACTIONS:
        raise ConfigError(f"shim: unknown action {action!r}: expected one of {', '.join(ACTIONS)}")
    if extra:
        raise ConfigError(f"shim: unexpected arguments after {action!r}: {' '.join(extra)}")
    for required in ("namespace", "id", "address"):
        if not strings.get(required):
            raise ConfigError(f"shim {action}: -{required} is required and cannot be empty")
    return _build(action, strings, flags)


def _build(action: Action | None, strings: dict[str, str], flags: dict[str, bool]) -> ShimArgs:
    return ShimArgs(
        action=action,
        namespace=strings.get("namespace", ""),
        address=strings.get("address", ""),
        publish_binary=strings.get("publish_binary", "containerd"),
        id=strings.get("id", ""),
        bundle=strings.get("bundle", ""),
        socket=strings.get("socket", ""),
        debug=flags.get("debug", False),
        version=flags.get("version", False),
    )


def socket_address(
    containerd_address: str, namespace: str, group_id: str, socket_root: str = SOCKET_ROOT
) -> str:
    """The shim's ttrpc address: ``unix://<socket_root>/<hex sha256>`` (Go ``SocketAddress``).

    The hash is over Go's ``filepath.Join(containerd_address, namespace, group_id)``: the
    non-empty parts joined with "/" and then cleaned (duplicate slashes, "." and ".." go), so
    the same pod gets the same address as a Go shim would compute.
    """
    joined = _go_clean("/".join(part for part in (containerd_address, namespace, group_id) if part))
    digest = hashlib.sha256(joined.encode()).hexdigest()
    path = f"{socket_root.rstrip('/')}/{digest}"
    if len(path.encode()) > SOCKET_PATH_LIMIT:
        raise ConfigError(
            f"shim socket path {path} is longer than {SOCKET_PATH_LIMIT} bytes: "
            "use a shorter socket directory"
        )
    return f"unix://{path}"


def _go_clean(path: str) -> str:
    # posixpath.normpath is Go's path.Clean except that it keeps a leading "//" (POSIX).
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    return cleaned[1:] if cleaned.startswith("//") else cleaned


# Keys in the order Kata reads them (KATA/src/runtime/pkg/oci/utils.go): containerd CRI,
# CRI-O, dockershim.
CONTAINER_TYPE_KEYS = (
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
    "io.kubernetes.docker.type",
)
SANDBOX_ID_KEYS = (
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
    "io.kubernetes.sandbox.id",
)
_SANDBOX_TYPES = ("sandbox", "podsandbox")
_CONTAINER_TYPE = "container"


def container_kind(annotations: Mapping[str, str], container_id: str) -> str | None:
    """``sandbox`` (a pod's sandbox), ``container`` (a pod's app container) or None (a lone
    container: no CRI annotations); the first key present decides."""
    for key in CONTAINER_TYPE_KEYS:
        if key not in annotations:
            continue
        kind = annotations[key]
        if kind in _SANDBOX_TYPES:
            return "sandbox"
        if kind != _CONTAINER_TYPE:
            raise ConfigError(
                f"container {container_id}: unknown container type {kind!r} in annotation {key}"
            )
        return "container"
    return None


def group_id(annotations: Mapping[str, str], container_id: str) -> str:
    """The id whose shim serves this container: its pod sandbox's id, else its own.

    A pod sandbox (``sandbox``, dockershim's ``podsandbox``) and a container without CRI
    annotations start their own shim; a pod's app container (``container``) joins the shim of
    the sandbox named by the first sandbox-id key present.
    """
    if container_kind(annotations, container_id) != "container":
        return container_id
    for id_key in SANDBOX_ID_KEYS:
        if annotations.get(id_key):
            return annotations[id_key]
    raise ConfigError(
        f"container {container_id}: a pod container (annotation container-type=container) "
        f"but no sandbox id (one of {', '.join(SANDBOX_ID_KEYS)})"
    )
