"""Pod rules, host cgroup paths and the shim's file layout (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runvm import config as cfg
from runvm.errors import ConfigError
from runvm.oci.default import default_spec
from runvm.runtime import hostcgroup
from runvm.runtime.pod import join_map
from runvm.shim import pod
from runvm.shim.cmdline import container_kind, group_id
from runvm.shim.layout import Layout


def test_pod_containers_must_not_ask_for_host_namespaces() -> None:
    spec = default_spec()
    spec["linux"]["namespaces"].append({"type": "network", "path": "/var/run/netns/p"})
    pod.check_namespaces(spec, "c", "sandbox")
    pod.check_namespaces({"linux": {}}, "c", None)  # a lone container: the CLI rules apply
    for ns_type, what in (("network", "host network"), ("pid", "host PID"), ("ipc", "host IPC")):
        partial = default_spec()
        partial["linux"]["namespaces"] = [
            n for n in spec["linux"]["namespaces"] if n["type"] != ns_type
        ]
        with pytest.raises(ConfigError, match=f"pod container c: {what} is not possible"):
            pod.check_namespaces(partial, "c", "container")


def test_join_map_names_the_sandbox_init_in_the_guest() -> None:
    join = join_map(1234, 56)
    assert join["/proc/1234/ns/uts"] == "/proc/56/ns/uts"
    assert set(join) == {f"/proc/1234/ns/{t}" for t in ("ipc", "uts", "pid", "cgroup")}


def test_container_kind_and_group() -> None:
    cri = {"io.kubernetes.cri.container-type": "container",
           "io.kubernetes.cri.sandbox-id": "pod1"}  # fmt: skip
    assert (container_kind(cri, "c"), group_id(cri, "c")) == ("container", "pod1")
    crio = {"io.kubernetes.cri-o.ContainerType": "sandbox"}
    assert (container_kind(crio, "s"), group_id(crio, "s")) == ("sandbox", "s")
    assert (container_kind({}, "x"), group_id({}, "x")) == (None, "x")
    with pytest.raises(ConfigError, match="no sandbox id"):
        group_id({"io.kubernetes.cri.container-type": "container"}, "c")


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("/default/c1", "/default/c1"),
        ("default/c1", "/default/c1"),
        ("system.slice:runvm:c1", "/system.slice/runvm-c1.scope"),
        ("kubepods-besteffort-pod12.slice:cri-containerd:abc",
         "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/"
         "cri-containerd-abc.scope"),
        (":cri:abc", "/system.slice/cri-abc.scope"),
    ],
)  # fmt: skip
def test_cgroups_path_forms(value: str, path: str) -> None:
    assert hostcgroup.normalize(value) == path


@pytest.mark.parametrize("value", ["/a/../b", "a:b", "x.scope:p:n"])
def test_bad_cgroups_paths(value: str) -> None:
    with pytest.raises(ConfigError):
        hostcgroup.normalize(value)


def test_cgroup_dirs_v1_and_v2(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    assert hostcgroup.cgroup_dirs("/k/p", v2) == [v2 / "k/p"]
    v1 = tmp_path / "v1"
    for name in ("memory", "cpu", "pids"):
        (v1 / name).mkdir(parents=True)
    assert sorted(hostcgroup.cgroup_dirs("/k/p", v1)) == sorted(
        v1 / n / "k/p" for n in ("memory", "cpu", "pids")
    )


def test_layout_keeps_socket_paths_short() -> None:
    config = cfg.RunvmConfig(runtime=cfg.RuntimeConfig(state_root="/run/runvm"))
    layout = Layout.of(config, "/run/containerd/containerd.sock", "k8s.io", "a" * 64)
    assert str(layout.socket).startswith("/run/runvm/s/") and len(str(layout.socket)) < 100
    assert layout.run_dir.parent == Path("/run/runvm/k/k8s.io/sandboxes")
    assert len(layout.run_dir.name) == 16  # long ids are hashed
    assert layout.pod_config(config).runtime.state_root == "/run/runvm/k/k8s.io"
    other = Layout.of(config, "/run/containerd/containerd.sock", "default", "a" * 64)
    assert other.socket != layout.socket  # namespaces never share a shim


def test_memory_limit_is_the_tightest_above_the_pod(tmp_path: Path) -> None:
    for name in ("memory", "pids"):
        (tmp_path / name).mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    pods = tmp_path / "memory" / "kubepods"
    pods.mkdir()
    (pods / "memory.limit_in_bytes").write_text(str(512 << 20))
    group = hostcgroup.HostCgroup.create("/kubepods/pod1/sandbox", root=tmp_path)
    assert group.memory_limit() == 512 << 20
    (tmp_path / "memory" / "kubepods" / "pod1" / "memory.limit_in_bytes").write_text(str(192 << 20))
    assert group.memory_limit() == 192 << 20
    (pods / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "memory" / "kubepods" / "pod1" / "memory.limit_in_bytes").write_text("0x")
    assert group.memory_limit() is None
