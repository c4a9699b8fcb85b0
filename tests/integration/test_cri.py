"""Kubernetes' path, up to containerd: CRI v1 -> containerd's CRI plugin -> CNI -> runvm.

A private containerd runs inside a network namespace the test made (so the CNI bridge, the
pod's gateway and the streaming server live there), with the CRI plugin on, a runtime
handler ``runvm`` (io.containerd.runvm.v2), a locally built pause image, and Debian's CNI
bridge + host-local plugins configured in a private directory. The test speaks CRI over
gRPC as kubelet does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runvm.image.ociarchive import busybox_archive

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

PAUSE = "localhost/runvm/pause:1"
IMAGE = "localhost/runvm/busybox:latest"
SUBNET = "10.91.0"


class Cri:
    """A containerd with CRI in netns ``ns``, its CRI client and the pod log directory."""

    def __init__(self, daemon: Any, client: Any, ns: str, base: Path) -> None:
        self.daemon, self.client, self.ns, self.base = daemon, client, ns, base

    def in_netns(self, fn: Any) -> Any:
        """``fn()`` inside the daemon's namespace (the streaming server is on its loopback)."""
        from conftest import in_netns

        return in_netns(self.ns, fn)


@pytest.fixture
def cri(state_root: Path, accel_cache: Path, tmp_path: Path) -> Iterator[Cri]:
    for tool in ("containerd", "ctr", "nsenter"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}")
    if not Path("/usr/lib/cni/bridge").exists():
        pytest.skip("needs Debian's containernetworking-plugins")
    from conftest import PrivateContainerd, write_config
    from cri.client import CriClient

    ns = f"rvk{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    base = Path(tempfile.mkdtemp(prefix="rvc-", dir="/tmp"))
    conf = write_config(tmp_path / "runvm.toml", state_root, accel_cache)
    (base / "cni").mkdir()
    (base / "cni" / "10-rvpods.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "rvpods",
        "plugins": [{
            "type": "bridge", "bridge": "rvbr0", "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "dataDir": str(base / "ipam"),
                     "ranges": [[{"subnet": f"{SUBNET}.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    }))  # fmt: skip
    table = 'plugins."io.containerd.grpc.v1.cri"'
    cri_config = (
        f'  sandbox_image = "{PAUSE}"\n  restrict_oom_score_adj = true\n'
        '  stream_server_address = "127.0.0.1"\n  stream_server_port = "0"\n'
        f"[{table}.containerd]\n  snapshotter = \"overlayfs\"\n"
        '  default_runtime_name = "runvm"\n'
        f"[{table}.containerd.runtimes.runvm]\n"
        '  runtime_type = "io.containerd.runvm.v2"\n'
        f"[{table}.containerd.runtimes.runvm.options]\n  ConfigPath = \"{conf}\"\n"
        f'[{table}.cni]\n  bin_dir = "/usr/lib/cni"\n  conf_dir = "{base / "cni"}"\n'
    )  # fmt: skip
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    env = {**os.environ, "RUNVM_CONFIG": str(conf), "PATH": path}
    try:
        daemon = PrivateContainerd(base, env, cri=cri_config,
                                   wrap=("nsenter", f"--net=/var/run/netns/{ns}"))  # fmt: skip
    except BaseException:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        raise
    client = CriClient(daemon.address)
    try:
        wait_ready(client, base)
        for ref, cmd in ((PAUSE, ("sleep", "2147483647")), (IMAGE, ("sh",))):
            archive = busybox_archive(tmp_path / f"{ref.rsplit('/', 1)[1]}.tar", ref, cmd)
            r = daemon.ctr("-n", "k8s.io", "image", "import", str(archive))
            assert r.returncode == 0, r.stderr
        yield Cri(daemon, client, ns, base)
    finally:
        import grpc

        with contextlib.suppress(grpc.RpcError):
            for pod in client.list_pod_sandbox():
                client.stop_pod_sandbox(pod.id)
                client.remove_pod_sandbox(pod.id)
        client.close()
        daemon.stop()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_ready(client: Any, base: Path, timeout: float = 30) -> None:
    """Until the CRI plugin answers (its log tail if it never does)."""
    import time

    import grpc

    deadline = time.monotonic() + timeout
    while True:
        try:
            client.version()
            return
        except grpc.RpcError as exc:
            if time.monotonic() > deadline:
                log = (base / "containerd.log").read_text(errors="replace")
                lines = [ln for ln in log.splitlines() if "cri" in ln.lower()]
                raise AssertionError("CRI did not come up:\n" + "\n".join(lines[-15:])) from exc
            time.sleep(0.5)


def pod_config(api: Any, name: str, logs: Path, host_network: bool = False) -> Any:
    mode = api.NODE if host_network else api.POD
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname=f"{name}-host", log_directory=str(logs),
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=f"/rvpods/{name}",
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(network=mode, pid=api.CONTAINER,
                                                      ipc=api.POD)),
        ),
    )  # fmt: skip


def container_config(api: Any, name: str, script: str, **kw: Any) -> Any:
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=IMAGE),
        command=["sh", "-c", script], log_path=f"{name}.log", **kw,
    )  # fmt: skip


def qemu_count(state_root: Path) -> int:
    out = subprocess.run(["ps", "-ewwo", "args"], capture_output=True, text=True).stdout
    return sum("qemu-system" in line and str(state_root) in line for line in out.splitlines())


def test_cri_pod_of_two_containers_in_one_vm(cri: Cri, state_root: Path) -> None:
    import grpc
    from cri import api_pb2 as api
    from cri.stream import run_stream

    client = cri.client
    assert client.version().runtime_name == "containerd"
    logs = cri.base / "logs"
    logs.mkdir()
    sandbox = pod_config(api, "pod1", logs)
    pod = client.run_pod_sandbox(sandbox, "runvm")
    status = client.pod_sandbox_status(pod).status
    pod_ip = status.network.ip
    assert pod_ip.startswith(f"{SUBNET}."), status
    assert qemu_count(state_root) == 1

    c1 = client.create_container(pod, container_config(api, "c1", WEB_SERVER), sandbox)
    c2 = client.create_container(
        pod, container_config(api, "c2", "read x; echo got-$x", stdin=True, stdin_once=True),
        sandbox,
    )  # fmt: skip
    for cid in (c1, c2):
        client.start_container(cid)

    probe = ["sh", "-c", "hostname; cat /proc/sys/kernel/random/boot_id; "
             "ip -4 addr show eth0 | grep -o 'inet [0-9.]*'; exit 3"]  # fmt: skip
    seen = []
    for cid in (c1, c2):
        code, out, err = client.exec_sync(cid, probe, timeout=60)
        assert code == 3, err
        seen.append(out.decode().split())
    assert seen[0] == seen[1], seen  # one VM: same boot id, same NIC
    assert seen[0][0] == "pod1-host" and seen[0][-1] == pod_ip, seen
    assert qemu_count(state_root) == 1
    records = list((state_root / "k" / "k8s.io").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["agent_instance"]

    # Exec with a terminal, and Attach, through the streaming server.
    # (-it, as kubectl does: with a terminal, containerd ends the output when stdin ends)
    url = client.exec(c1, ["sh", "-c", "read x; tty; stty size; echo got-$x; exit 4"], tty=True,
                      stdin=True)  # fmt: skip
    out, _, code = cri.in_netns(
        lambda: run_stream(url, stdin=b"line\r", tty=True, resize=(100, 30), close_stdin=False)
    )
    assert b"/dev/pts/" in out and b"30 100" in out and b"got-line" in out, out
    assert code == 4
    url = client.attach(c2, stdin=True)
    out, _, _ = cri.in_netns(lambda: run_stream(url, stdin=b"hello\n"))
    assert out == b"got-hello\n", out

    check_port_forward(cri, pod, c1)
    check_growth_and_oom(cri, pod, sandbox, c1)

    # A program the guest cannot run: kubelet (and kubectl's events) get the path and errno.
    bad = container_config(api, "bad", "")
    bad.command[:] = ["/nonexistent/prog"]
    bad_id = client.create_container(pod, bad, sandbox)
    with pytest.raises(grpc.RpcError) as cannot:
        client.start_container(bad_id)
    said = 'exec: "/nonexistent/prog": stat /nonexistent/prog: no such file or directory'
    assert said in (cannot.value.details() or ""), cannot.value.details()
    client.remove_container(bad_id)

    stats = client.container_stats(c1)
    assert stats.memory.working_set_bytes.value > 0 and stats.cpu.usage_core_nano_seconds.value > 0
    client.update_container_resources(c1, api.LinuxContainerResources(
        memory_limit_in_bytes=150 << 20, cpu_period=100000, cpu_quota=50000))  # fmt: skip
    r = cri.daemon.ctr("-n", "k8s.io", "task", "metrics", c1)
    limit = next(int(ln.split()[1]) for ln in r.stdout.decode().splitlines()
                 if ln.startswith("memory.usage_limit"))  # fmt: skip
    assert limit == 150 << 20, r.stdout

    # A pod on the host's network cannot be a VM pod.
    with pytest.raises(grpc.RpcError) as refused:
        client.run_pod_sandbox(pod_config(api, "hostnet", logs, host_network=True), "runvm")
    assert "host network is not possible in a VM pod" in (refused.value.details() or "")

    client.stop_pod_sandbox(pod)
    client.remove_pod_sandbox(pod)
    assert qemu_count(state_root) == 0
    assert client.list_pod_sandbox() == []
    links = subprocess.run(["ip", "-n", cri.ns, "-o", "link"], capture_output=True, text=True)
    assert "_rv" not in links.stdout


SEEN = ["sh", "-c", "awk '/MemTotal/ {print $2}' /proc/meminfo; nproc"]


def check_growth_and_oom(cri: Cri, pod: str, sandbox: Any, c1: str) -> None:
    """A container of 512 MiB and 1 CPU grows the pod's VM when its task is created and gives
    both back at its removal; a container that passes its limit is OOM-killed: exit 137,
    reason OOMKilled."""
    from cri import api_pb2 as api

    client = cri.client

    def seen() -> tuple[int, int]:
        code, out, err = client.exec_sync(c1, SEEN, timeout=60)
        assert code == 0, err
        kib, nproc = out.split()
        return int(kib), int(nproc)

    def limited(name: str, script: str, memory: int, quota: int = 0) -> str:
        resources = api.LinuxContainerResources(memory_limit_in_bytes=memory,
                                                cpu_period=100000, cpu_quota=quota)  # fmt: skip
        config = container_config(api, name, script,
                                  linux=api.LinuxContainerConfig(resources=resources))  # fmt: skip
        return str(client.create_container(pod, config, sandbox))

    before = seen()
    big = limited("big", "exec sleep 600", 512 << 20, 100000)
    client.start_container(big)  # (containerd creates the task here)
    grown = seen()
    assert grown[1] == before[1] + 1, (before, grown)
    assert 500 * 1024 <= grown[0] - before[0] <= 520 * 1024, (before, grown)
    client.remove_container(big)
    back = seen()
    assert back[1] == before[1] and abs(back[0] - before[0]) < 8 * 1024, (before, back)

    oom = limited("oom", "tail /dev/zero", 32 << 20)  # tail keeps an endless line
    client.start_container(oom)
    deadline = time.monotonic() + 60
    while (status := client.container_status(oom).status).state != api.CONTAINER_EXITED:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status.exit_code == 137 and status.reason == "OOMKilled", status
    client.remove_container(oom)


# 1 MiB of random bytes served over HTTP on the pod's port 8080 (busybox httpd).
WEB_SERVER = ("mkdir -p /www && head -c 1048576 /dev/urandom > /www/blob && "
              "exec httpd -f -p 8080 -h /www")  # fmt: skip
GET_BLOB = b"GET /blob HTTP/1.0\r\n\r\n"
SESSIONS = 24


def check_port_forward(cri: Cri, pod: str, web: str) -> None:
    """PortForward reaches the server in the pod's VM, for SESSIONS sessions at once, each
    getting the whole blob; a port nothing listens on fails with the server's error."""
    import hashlib
    import time
    from concurrent.futures import ThreadPoolExecutor

    from cri.stream import port_forward

    client = cri.client
    code, out, err = client.exec_sync(
        web,
        [
            "sh",
            "-c",
            "until [ -e /www/blob ] && "
            "wget -q -O /dev/null 127.0.0.1:8080/blob; do "
            "sleep 0.2; done; md5sum /www/blob",
        ],
        timeout=60,
    )
    assert code == 0, err
    digest = out.split()[0].decode()

    def fetch(_: int) -> tuple[bytes, bytes]:
        url = client.port_forward(pod, [8080])
        return cri.in_netns(lambda: port_forward(url, GET_BLOB, timeout=120))  # type: ignore[no-any-return]

    started = time.monotonic()
    with ThreadPoolExecutor(SESSIONS) as pool:
        answers = list(pool.map(fetch, range(SESSIONS)))
    took = time.monotonic() - started
    for body, error in answers:
        assert error == b"" and body.split(b"\r\n", 1)[0].endswith(b" 200 OK"), (body[:200], error)
        blob = body.split(b"\r\n\r\n", 1)[1]
        assert hashlib.md5(blob).hexdigest() == digest, len(blob)
    print(f"port forward: {SESSIONS} x 1 MiB at once in {took:.1f} s")
    url = client.port_forward(pod, [8081])
    body, error = cri.in_netns(lambda: port_forward(url, GET_BLOB))
    assert body == b"" and b"8081" in error, (body, error)


NETTOOLS = "localhost/runvm/nettools:1"
XTABLES = Path("/usr/lib/x86_64-linux-gnu/xtables")


def nettools_image(cri: Cri, tmp_path: Path) -> str:
    """busybox plus Debian's iptables (legacy and nft back ends, with their extensions)
    and iproute2."""
    from runvm.image.hostbin import copy_program

    def add(rootfs: Path) -> None:
        for program in ("iptables-legacy", "iptables-nft", "ip"):  # iproute2 for tuntap
            copy_program(rootfs, program)
        shutil.copytree(XTABLES, rootfs / str(XTABLES).lstrip("/"))
        (rootfs / "run").mkdir(exist_ok=True)  # iptables' lock file

    archive = busybox_archive(tmp_path / "nettools.tar", NETTOOLS, extra=add)
    r = cri.daemon.ctr("-n", "k8s.io", "image", "import", str(archive))
    assert r.returncode == 0, r.stderr
    return NETTOOLS


BUILDS_ITS_NETWORK = """
set -e
brctl addbr foobar && ip link set foobar up && echo bridge-up
iptables-legacy -t nat -A PREROUTING -p tcp --dport 80 -j REDIRECT --to-ports 15001
iptables-legacy -t nat -S PREROUTING | grep -q 'REDIRECT --to-ports 15001' && echo legacy-nat
iptables-nft -t nat -A OUTPUT -p tcp --dport 81 -j REDIRECT --to-ports 15006
iptables-nft -t nat -S OUTPUT | grep -q 'REDIRECT --to-ports 15006' && echo nft-nat
ip link add vxlan7 type vxlan id 7 dstport 4789 dev eth0 && echo vxlan
ip link add link eth0 name eth0.5 type vlan id 5 && echo vlan
/usr/bin/ip tuntap add tun0 mode tun && echo tun  # (busybox sh runs its own ip applet)
ip rule add from 10.1.0.0/16 table 100 && echo policy-routing
test -c /dev/fuse && echo fuse
"""


def test_cri_pods_build_their_own_network(cri: Cri, tmp_path: Path) -> None:
    """A privileged container: bridge, iptables NAT (both back ends), VXLAN, VLAN, TUN,
    policy routing, FUSE; a NET_ADMIN one: a veth pair; all inside the pod's VM."""
    from cri import api_pb2 as api

    client = cri.client
    image = nettools_image(cri, tmp_path)
    logs = cri.base / "logs"
    logs.mkdir()
    sandbox = pod_config(api, "netpod", logs)
    sandbox.linux.security_context.privileged = True
    pod = client.run_pod_sandbox(sandbox, "runvm")
    privileged = container_config(api, "priv", "sleep 1000")
    privileged.image.image = image
    privileged.linux.security_context.privileged = True
    admin = container_config(api, "admin", "sleep 1000")
    admin.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
    c1 = client.create_container(pod, privileged, sandbox)
    c2 = client.create_container(pod, admin, sandbox)
    for cid in (c1, c2):
        client.start_container(cid)
    code, out, err = client.exec_sync(c1, ["sh", "-c", BUILDS_ITS_NETWORK], timeout=60)
    assert code == 0, (out, err)
    assert out.decode().split() == ["bridge-up", "legacy-nat", "nft-nat", "vxlan", "vlan", "tun",
                                    "policy-routing", "fuse"], out  # fmt: skip
    script = "ip link add va type veth && ip -o link show va | grep -c va@"
    code, out, err = client.exec_sync(c2, ["sh", "-c", script], timeout=60)
    assert (code, out) == (0, b"1\n"), err
    client.stop_pod_sandbox(pod)
    client.remove_pod_sandbox(pod)


MEMCG = Path("/sys/fs/cgroup/memory")  # these hosts are cgroup v1 + v2 hybrids


def pod_memcg(name: str) -> Path:
    return MEMCG / "rvpods" / name if MEMCG.is_dir() else Path("/sys/fs/cgroup/rvpods") / name


def limit_memory(cgroup: Path, limit: int) -> None:
    cgroup.mkdir(parents=True, exist_ok=True)
    name = "memory.limit_in_bytes" if cgroup.is_relative_to(MEMCG) else "memory.max"
    (cgroup / name).write_text(str(limit))


@pytest.mark.parametrize("death", ["sigkill", "oom"])
def test_cri_pod_whose_qemu_dies_ends_with_nothing_stuck(
    cri: Cri, state_root: Path, death: str
) -> None:
    """QEMU killed under a running pod (SIGKILL, or the host's OOM killer once the pod's
    cgroup limit is cut below what the guest touches): every container exits (255, reason
    Error), and StopPodSandbox + RemovePodSandbox complete at once, leaving nothing."""
    import time

    from cri import api_pb2 as api

    client = cri.client
    logs = cri.base / "logs"
    logs.mkdir()
    name = f"doomed-{death}"
    sandbox = pod_config(api, name, logs)
    pod = client.run_pod_sandbox(sandbox, "runvm")
    cid = client.create_container(pod, container_config(api, "c", "sleep 1000"), sandbox)
    client.start_container(cid)
    if death == "sigkill":
        out = subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True,
                             text=True).stdout  # fmt: skip
        (qemu,) = [int(ln.split()[0]) for ln in out.splitlines()
                   if "qemu-system" in ln and str(state_root) in ln]  # fmt: skip
        os.kill(qemu, 9)
    else:
        cgroup = pod_memcg(name)
        usage = int((cgroup / "memory.usage_in_bytes").read_text())
        limit_memory(cgroup, usage + (24 << 20))
        fill = ["sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=150"]
        with contextlib.suppress(Exception):  # the VM dies under it
            client.exec_sync(cid, fill, timeout=60)
    deadline = time.monotonic() + 60
    while (status := client.container_status(cid).status).state != api.CONTAINER_EXITED:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert (status.exit_code, status.reason) == (255, "Error"), status
    started = time.monotonic()
    client.stop_pod_sandbox(pod)
    client.remove_pod_sandbox(pod)
    assert time.monotonic() - started < 10
    assert client.list_pod_sandbox() == [] and client.list_containers() == []
    assert qemu_count(state_root) == 0


def test_cri_pod_too_small_for_its_vm_is_refused(cri: Cri) -> None:
    import grpc
    from cri import api_pb2 as api

    logs = cri.base / "logs"
    logs.mkdir()
    cgroup = pod_memcg("small")
    made = [p for p in (cgroup.parent, cgroup) if not p.exists()]
    limit_memory(cgroup, 192 << 20)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            cri.client.run_pod_sandbox(pod_config(api, "small", logs), "runvm")
        details = refused.value.details() or ""
        assert "memory limit (192 MiB) is below what its VM needs" in details, details
        assert "overhead.podFixed.memory" in details
        assert cri.client.list_pod_sandbox() == []
    finally:
        for directory in reversed(made):
            directory.rmdir()
