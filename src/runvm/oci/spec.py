"""Parsing and validating config.json and process.json.

Contract: :func:`parse_spec` takes bytes (at most ``MAX_SPEC_BYTES``) and returns the spec
as a plain dict after checking the fields runvm relies on; anything malformed raises
:class:`ConfigError` with the JSON path of the problem (``config.json: process.args: ...``).
Unknown fields are kept (the spec allows extensions); the checked ones have the right types.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from runvm.errors import ConfigError
from runvm.oci.fields import check_exec_fields, check_fields, check_process_fields
from runvm.oci.resources import check_capabilities, check_resources

MAX_SPEC_BYTES = 4 << 20
MAX_ARGS = 4096
MAX_DEPTH = 64
VERSION_1X = re.compile(r"1\.\d{1,4}\.\d{1,4}([-+][0-9A-Za-z.+-]{0,64})?")
"""Every runtime-spec 1.x version, with a pre-release or build suffix (1.0.2-dev, 1.1.0-rc.1)."""

Spec = dict[str, Any]


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def _type(
    obj: Any, key: str, kind: type | tuple[type, ...], where: str, required: bool = False
) -> Any:
    if key not in obj:
        if required:
            raise _fail(where, f"{key} is required")
        return None
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _fail(
            f"{where}.{key}", f"must be {names.replace('dict', 'object').replace('list', 'array')}"
        )
    return value


def _strings(obj: Any, key: str, where: str) -> list[str]:
    value = _type(obj, key, list, where) or []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(f"{where}.{key}[{i}]", "must be a string")
    return value


def _loads(data: bytes, name: str) -> Any:
    if len(data) > MAX_SPEC_BYTES:
        raise ConfigError(f"{name}: {len(data)} bytes is larger than {MAX_SPEC_BYTES}")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{name}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: must be a JSON object")
    if _depth(doc) > MAX_DEPTH:
        raise ConfigError(f"{name}: nested deeper than {MAX_DEPTH}")
    return doc


def check_process(proc: Any, where: str) -> dict[str, Any]:
    if not isinstance(proc, dict):
        raise _fail(where, "must be an object")
    args = _strings(proc, "args", where)
    if not args:
        raise _fail(f"{where}.args", "must name the program to run")
    if len(args) > MAX_ARGS:
        raise _fail(f"{where}.args", f"more than {MAX_ARGS} arguments")
    for i, env in enumerate(_strings(proc, "env", where)):
        if "=" not in env:
            raise _fail(f"{where}.env[{i}]", f"{env!r} is not KEY=VALUE")
    cwd = _type(proc, "cwd", str, where, required=False)
    if cwd is not None and not cwd.startswith("/"):
        raise _fail(f"{where}.cwd", f"{cwd!r} must be an absolute path")
    _type(proc, "terminal", bool, where)
    user = _type(proc, "user", dict, where)
    if user is not None:
        for key in ("uid", "gid"):
            value = _type(user, key, int, f"{where}.user")
            if value is not None and not 0 <= value < 2**32:
                raise _fail(f"{where}.user.{key}", "out of range")
        _type(user, "additionalGids", list, f"{where}.user")
    _type(proc, "rlimits", list, where)
    caps = _type(proc, "capabilities", dict, where)
    if caps is not None:
        check_capabilities(caps, f"{where}.capabilities")
    _type(proc, "noNewPrivileges", bool, where)
    check_process_fields(proc, where)
    return proc


def parse_spec(data: bytes, name: str = "config.json") -> Spec:
    """Parse and check a bundle's config.json; see the module docstring."""
    spec: Spec = _loads(data, name)
    version = _type(spec, "ociVersion", str, name, required=True)
    if not VERSION_1X.fullmatch(version):
        raise _fail(f"{name}.ociVersion", f"unsupported version {version!r} (runvm runs "
                    "runtime-spec 1.x: 1.0.0 to 1.3.x)")  # fmt: skip
    root = _type(spec, "root", dict, name, required=True)
    _type(root, "path", str, f"{name}.root", required=True)
    _type(root, "readonly", bool, f"{name}.root")
    if "process" in spec:
        check_process(spec["process"], f"{name}.process")
    _type(spec, "hostname", str, name)
    for i, mount in enumerate(_type(spec, "mounts", list, name) or []):
        where = f"{name}.mounts[{i}]"
        if not isinstance(mount, dict):
            raise _fail(where, "must be an object")
        dest = _type(mount, "destination", str, where, required=True)
        if not dest.startswith("/"):
            raise _fail(f"{where}.destination", f"{dest!r} must be an absolute path")
        if ".." in dest.split("/"):
            raise _fail(f"{where}.destination", f"{dest!r}: '..' is not allowed")
        _type(mount, "type", str, where)
        _type(mount, "source", str, where)
        _strings(mount, "options", where)
    linux = _type(spec, "linux", dict, name)
    if linux is not None:
        for i, ns in enumerate(_type(linux, "namespaces", list, f"{name}.linux") or []):
            if not isinstance(ns, dict) or not isinstance(ns.get("type"), str):
                raise _fail(f"{name}.linux.namespaces[{i}]", "needs a string type")
        resources = _type(linux, "resources", dict, f"{name}.linux")
        if resources is not None:
            check_resources(resources, f"{name}.linux.resources")
        _type(linux, "seccomp", dict, f"{name}.linux")
        _strings(linux, "maskedPaths", f"{name}.linux")
        _strings(linux, "readonlyPaths", f"{name}.linux")
    _type(spec, "annotations", dict, name)
    _type(spec, "hooks", dict, name)
    check_fields(spec, name)
    return spec


def parse_process(data: bytes, name: str = "process.json") -> dict[str, Any]:
    """Parse and check an OCI process object (exec)."""
    proc: dict[str, Any] = check_process(_loads(data, name), name)
    check_exec_fields(proc, name)
    return proc


def load_spec(bundle: Path) -> Spec:
    """Read ``<bundle>/config.json``; a missing or unreadable file is a ConfigError."""
    path = bundle / "config.json"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: is {bundle} an OCI bundle?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse_spec(data, str(path))
