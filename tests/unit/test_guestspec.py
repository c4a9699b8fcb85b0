from __future__ import annotations

import pytest

from runvm.errors import ConfigError
from runvm.oci.default import default_spec
from runvm.runtime.guestspec import guest_spec
from runvm.storage.shared import ReadOnly


def share(calls: list[tuple[int, str]], host_only: bool = False):  # type: ignore[no-untyped-def]
    def inner(i: int, source: str, options: list[str]) -> tuple[str, bool]:
        readonly = ReadOnly.of(options)
        calls.append((i, f"{readonly.value}:{source}" if readonly else source))
        return f"/run/runvm/shared/c1/mounts/{i}", host_only

    return inner


def test_rewrites_root_binds_hooks_network_and_cgroup() -> None:
    spec = default_spec()
    spec["mounts"].append({"destination": "/etc/hosts", "source": "/host/hosts",
                           "options": ["rbind", "ro"]})  # fmt: skip
    spec["hooks"] = {"prestart": [{"path": "/bin/true"}]}
    spec["linux"]["namespaces"].append({"type": "network", "path": "/proc/1/ns/net"})
    spec["linux"]["cgroupsPath"] = "/host/cgroup"
    calls: list[tuple[int, str]] = []
    out = guest_spec(spec, "c1", "/run/runvm/shared/c1/rootfs", share(calls))
    assert out["root"]["path"] == "/run/runvm/shared/c1/rootfs"
    assert calls == [(7, "ro:/host/hosts")]  # read-only on the host side of the share too
    assert out["mounts"][7]["source"] == "/run/runvm/shared/c1/mounts/7"
    assert out["mounts"][7]["type"] == "bind"
    assert "hooks" not in out
    assert all(ns["type"] != "network" for ns in out["linux"]["namespaces"])
    assert out["linux"]["cgroupsPath"] == "/runvm/c1"
    assert spec["root"]["path"] == "rootfs"  # the input is not modified


def test_joining_a_host_namespace_is_refused() -> None:
    spec = default_spec()
    spec["linux"]["namespaces"].append({"type": "ipc", "path": "/proc/42/ns/ipc"})
    with pytest.raises(ConfigError, match="host ipc namespace"):
        guest_spec(spec, "c1", "/r", share([]))


def test_relative_bind_source_is_refused() -> None:
    spec = default_spec()
    spec["mounts"].append({"destination": "/x", "type": "bind", "source": "rel"})
    with pytest.raises(ConfigError, match="absolute source"):
        guest_spec(spec, "c1", "/r", share([]))


def test_missing_path_gets_the_default() -> None:
    spec = default_spec()
    spec["process"].pop("env")
    out = guest_spec(spec, "c1", "/r", share([]))
    assert out["process"]["env"][0].startswith("PATH=/usr/local/sbin:")
    spec["process"]["env"] = ["PATH=/custom"]
    assert guest_spec(spec, "c1", "/r", share([]))["process"]["env"] == ["PATH=/custom"]


def test_pod_namespaces_are_joined_through_the_map() -> None:
    spec = default_spec()
    ns = [n for n in spec["linux"]["namespaces"] if n["type"] not in ("uts", "ipc")]
    spec["linux"]["namespaces"] = [*ns, {"type": "uts", "path": "/proc/42/ns/uts"},
                                   {"type": "ipc", "path": "/proc/42/ns/ipc"}]  # fmt: skip
    join = {"/proc/42/ns/uts": "/proc/7/ns/uts", "/proc/42/ns/ipc": "/proc/7/ns/ipc"}
    out = guest_spec(spec, "c1", "/r", share([]), join)
    paths = {n["type"]: n.get("path") for n in out["linux"]["namespaces"]}
    assert paths["uts"] == "/proc/7/ns/uts" and paths["ipc"] == "/proc/7/ns/ipc"
    spec["linux"]["namespaces"].append({"type": "cgroup", "path": "/proc/43/ns/cgroup"})
    with pytest.raises(ConfigError, match="host cgroup namespace /proc/43"):
        guest_spec(spec, "c1", "/r", share([]), join)


def test_block_device_mounts_become_binds_of_the_guest_disk() -> None:
    spec = default_spec()
    spec["mounts"] += [
        {"destination": "/data", "type": "ext4", "source": "/dev/loop7", "options": ["ro"]},
        {"destination": "/scratch", "type": "xfs", "source": "/dev/sdb", "options": []},
    ]  # fmt: skip
    n = len(spec["mounts"])
    calls: list[tuple[int, str]] = []
    disks = {n - 2: "/run/runvm/disks/c1/m7", n - 1: "/run/runvm/disks/c1/m8"}
    out = guest_spec(spec, "c1", "/r", share(calls), None, disks)
    assert out["mounts"][n - 2] == {
        "destination": "/data",
        "type": "bind",
        "source": "/run/runvm/disks/c1/m7",
        "options": ["rbind", "ro", "rslave"],
    }
    assert out["mounts"][n - 1]["options"] == ["rbind", "rw", "rslave"]
    assert calls == []  # nothing of these is shared from the host


@pytest.mark.parametrize("version", ["1.0.2-dev", "1.1.0", "1.2.1", "1.3.0"])
def test_the_guest_gets_a_version_its_crun_knows(version: str) -> None:
    spec = default_spec()
    spec["ociVersion"] = version
    assert guest_spec(spec, "c1", "/r", share([]))["ociVersion"] == "1.0.2"
    assert spec["ociVersion"] == version


@pytest.mark.parametrize(
    ("options", "host_only", "mode", "guest"),
    [
        (["rbind", "ro"], False, "ro", ["rbind", "ro", "rslave"]),
        (["rbind", "ro"], True, "ro", ["rbind", "rslave"]),  # the host keeps submounts writable
        (["rbind", "rro"], True, "rro", ["rbind", "rro", "rslave"]),
        (["rbind", "rshared"], False, None, ["rbind", "rshared"]),
        (["rbind"], False, None, ["rbind", "rslave"]),
    ],
)
def test_read_only_binds(
    options: list[str], host_only: bool, mode: str | None, guest: list[str]
) -> None:
    spec = default_spec()
    spec["mounts"].append({"destination": "/v", "source": "/host/v", "options": options})
    calls: list[tuple[int, str]] = []
    out = guest_spec(spec, "c1", "/r", share(calls, host_only))
    assert calls == [(7, f"{mode}:/host/v" if mode else "/host/v")]
    assert out["mounts"][7]["options"] == guest


def test_binds_default_to_rslave_as_under_runc() -> None:
    spec = default_spec()
    spec["mounts"] += [
        {"destination": "/a", "source": "/h/a", "options": ["rbind"]},
        {"destination": "/b", "source": "/h/b", "options": ["rbind", "private"]},
    ]
    out = guest_spec(spec, "c1", "/r", share([]))
    assert out["linux"]["rootfsPropagation"] == "slave"
    assert [m["options"] for m in out["mounts"][7:]] == [["rbind", "rslave"], ["rbind", "private"]]
    spec["linux"]["rootfsPropagation"] = "rshared"  # the client's choice stands
    out = guest_spec(spec, "c1", "/r", share([]))
    assert out["linux"]["rootfsPropagation"] == "rshared"
    assert out["mounts"][7]["options"] == ["rbind"]
