"""Translating a bundle's config.json into the one the agent runs in the guest (pure).

What changes and why:
- ``ociVersion`` -> :data:`GUEST_OCI_VERSION`: the guest's crun refuses versions it does not
  know; the host has already accepted the bundle's 1.x version and checked its fields;
- ``root.path`` -> the container's rootfs share as the guest sees it;
- bind mounts -> their shared copies (the guest cannot see host paths);
- block-device mounts (an ext4/xfs/btrfs ``type`` on a block device or loop image) -> binds of
  the hot-plugged disk the agent mounted;
- ``hooks`` are removed: they run on the host, in the runtime's namespace;
- the ``network`` namespace is dropped: the VM itself is the pod's network sandbox;
- a process without ``PATH`` gets the default one (runc finds the program then; crun would not);
- ``cgroupsPath`` -> ``/runvm/<id>`` in the guest's cgroup v2 tree (the host path names a
  host cgroup that does not exist in the guest);
- no ``rootfsPropagation`` -> runc's default: binds without a propagation option are
  ``rslave``, and the root a (non-recursive) ``slave``.
A namespace ``path`` other than network names a host process and cannot be honoured, unless
``join`` maps it to a guest path: a pod's containers name the pod sandbox's namespaces by a
host PID (``/proc/<pid>/ns/uts``), which the caller maps to the sandbox init's in the guest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from runvm.errors import ConfigError
from runvm.oci.default import DEFAULT_PATH
from runvm.storage.shared import ReadOnly

BIND_TYPES = ("bind", "rbind")
DEFAULT_ROOT_PROPAGATION = "slave"
"""With rslave binds, runc's default (crun's, rprivate, loses every bind's slave or shared)."""
PROPAGATIONS = {"shared", "rshared", "slave", "rslave", "private", "rprivate", "unbindable",
                "runbindable"}  # fmt: skip
GUEST_OCI_VERSION = "1.0.2"
"""The version the guest's crun (1.8) accepts; every 1.x bundle is handed over as this."""


def is_bind(mount: dict[str, Any]) -> bool:
    options = mount.get("options") or []
    return mount.get("type") in BIND_TYPES or "bind" in options or "rbind" in options


def with_path(process: dict[str, Any]) -> dict[str, Any]:
    """Give ``process`` the default PATH when its environment has none."""
    env = process.setdefault("env", [])
    if not any(item.startswith("PATH=") for item in env):
        env.insert(0, DEFAULT_PATH)
    return process


def guest_spec(
    spec: dict[str, Any],
    container_id: str,
    rootfs_guest: str,
    share_bind: Callable[[int, str, list[str]], tuple[str, bool]],
    join: Mapping[str, str] | None = None,
    disks: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The guest's config.json. ``share_bind(i, host_source, options)`` shares one bind
    source (read-only on the host side too when the mount has ``ro`` or ``rro``) and returns
    its guest path and whether the host alone must apply ``ro`` (the source has submounts,
    which stay writable under runc's non-recursive ``ro``; the guest sees one filesystem and
    would make them read-only too); ``join`` maps host namespace paths to guest ones;
    ``disks`` maps the index of a block-device mount to where the guest mounted its disk (it
    becomes a bind of that)."""
    out = copy.deepcopy(spec)
    out["ociVersion"] = GUEST_OCI_VERSION
    out["root"]["path"] = rootfs_guest
    if "process" in out:
        with_path(out["process"])
    out.pop("hooks", None)
    for i, mount in enumerate(out.get("mounts", [])):
        if disks and i in disks:
            readonly = "ro" in (mount.get("options") or [])
            mount.update(
                type="bind", source=disks[i], options=["rbind", "ro" if readonly else "rw"]
            )
        elif is_bind(mount):
            source = mount.get("source")
            if not source or not source.startswith("/"):
                raise ConfigError(f"mounts[{i}]: bind mount needs an absolute source")
            options = mount.get("options") or []
            mount["source"], host_only = share_bind(i, source, options)
            if host_only and ReadOnly.of(options) is ReadOnly.TOP:  # the guest's ro would
                # cover the submounts too
                mount["options"] = [o for o in options if o != "ro"]
            mount["type"] = "bind"
    linux = out.setdefault("linux", {})
    namespaces = []
    for ns in linux.get("namespaces", []):
        if ns["type"] == "network":
            continue
        if ns.get("path") and join and ns["path"] in join:
            ns["path"] = join[ns["path"]]
        elif ns.get("path"):
            raise ConfigError(
                f"linux.namespaces: joining the host {ns['type']} namespace {ns['path']} "
                "is not possible from inside a VM"
            )
        namespaces.append(ns)
    linux["namespaces"] = namespaces
    linux["cgroupsPath"] = f"/runvm/{container_id}"
    if "rootfsPropagation" not in linux:
        # runc's default, which crun lacks: binds are slaves of their sources unless an option
        # says otherwise. crun re-applies rootfsPropagation after pivot_root, so "/" is only
        # made a slave (not recursively, which would override each bind's own option).
        linux["rootfsPropagation"] = DEFAULT_ROOT_PROPAGATION
        for mount in out.get("mounts", []):
            options = mount.setdefault("options", [])
            if is_bind(mount) and not PROPAGATIONS & set(options):
                options.append("rslave")
    return out
