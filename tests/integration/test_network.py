"""Pod networking into the VM: two VM pods on a bridge in a router namespace the test made.

Every packet stays inside namespaces created here: a "router" netns holds the bridge and the
gateway address; each pod netns holds one end of a veth (the other end is on the bridge),
as a CNI bridge plugin would leave it. The containers run through the CLI, whose config
names the pod netns.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config, cache_settings, guest_arch, in_netns

from runvm.image.busybox import make_bundle

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

RUNVM = ["runvm"]
SERVER = "#!/bin/sh\nread line\necho echo-$line\n"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


class Pods:
    """A router netns with bridge br0 (10.77.0.1/24) and pod netns p1, p2 (10.77.0.1N)."""

    def __init__(self, mtu: int = 1400) -> None:
        tag = uuid.uuid4().hex[:6]
        self.router = f"rvr{tag}"
        self.pods = [f"rvp1{tag}", f"rvp2{tag}"]
        self.mtu = mtu
        ip("netns", "add", self.router)
        for pod in self.pods:
            ip("netns", "add", pod)
        r = ["-n", self.router]
        ip(*r, "link", "add", "br0", "mtu", str(mtu), "type", "bridge")
        ip(*r, "addr", "add", "10.77.0.1/24", "dev", "br0")
        ip(*r, "link", "set", "br0", "up")
        for k, pod in enumerate(self.pods, start=1):
            ip(*r, "link", "add", f"v{k}", "mtu", str(mtu), "type", "veth", "peer", "name",
               "eth0", "netns", pod)  # fmt: skip
            ip(*r, "link", "set", f"v{k}", "master", "br0", "up")
            ip("-n", pod, "addr", "add", f"10.77.0.1{k}/24", "dev", "eth0")
            ip("-n", pod, "link", "set", "eth0", "mtu", str(mtu), "up")
            ip("-n", pod, "link", "set", "lo", "up")
            ip("-n", pod, "route", "add", "default", "via", "10.77.0.1")

    def path(self, k: int) -> str:
        return f"/var/run/netns/{self.pods[k]}"

    def host_side_clean(self, k: int) -> bool:
        """No runvm tap/macvtap and no ingress qdisc left in pod ``k``'s namespace."""
        links = ip("-n", self.pods[k], "-o", "link")
        qdiscs = subprocess.run(["tc", "-n", self.pods[k], "qdisc", "show", "dev", "eth0"],
                                capture_output=True, text=True).stdout  # fmt: skip
        forwarding = nat_output(self.pods[k])
        return "_rv" not in links and "ingress" not in qdiscs and "runvm" not in forwarding

    def delete(self) -> None:
        for ns in (*self.pods, self.router):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def pods() -> Iterator[Pods]:
    made = Pods()
    try:
        yield made
    finally:
        made.delete()


def nat_output(ns: str) -> str:
    """The nat OUTPUT rules (both families) of namespace ``ns``."""
    return "".join(subprocess.run(["ip", "netns", "exec", ns, tool, "-t", "nat", "-S", "OUTPUT"],
                                  capture_output=True, text=True).stdout
                   for tool in ("iptables", "ip6tables"))  # fmt: skip


def forward(ns: str, port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """``data`` sent to ``host``:``port`` from namespace ``ns``, then a half-close: the
    answer, read until the peer closes (ConnectionResetError if it resets)."""
    import socket

    def talk() -> bytes:
        with socket.create_connection((host, port), timeout=30) as conn:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            return answer

    return bytes(in_netns(ns, talk))


def pod_bundle(path: Path, netns: str, script: str) -> Path:
    spec = make_bundle(path, ["sh", "-c", script], arch=guest_arch())
    (path / "rootfs/srv.sh").write_text(SERVER)
    (path / "rootfs/srv.sh").chmod(0o755)
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = netns
    caps = spec["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind] = [*caps.get(kind, []), "CAP_NET_RAW"]
    (path / "config.json").write_text(json.dumps(spec))
    return path


def runvm(env: dict[str, str], *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*RUNVM, "--root", env["RUNVM_TEST_ROOT"], *args], env=env,
                          capture_output=True, timeout=240, **kw)  # fmt: skip


@pytest.mark.parametrize(("model", "vcpus", "start"),
                         [pytest.param("tcfilter", 2, "cold", marks=pytest.mark.smoke),
                          ("macvtap", 1, "cold"), ("tcfilter", 1, "cloned"),
                          ("tcfilter", 1, "cached")])  # fmt: skip
def test_two_vm_pods_on_a_bridge(
    model: str,
    vcpus: int,
    start: str,
    pods: Pods,
    tmp_path: Path,
    cli_env: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    """tcfilter with 2 vCPUs: a multi-queue tap, one queue pair per vCPU. ``cloned``: both
    pods are clones of a template, ``cached``: both are VMs the cache daemon booted; in both
    their NICs are hot-plugged once the VM runs."""
    conf = Path(cli_env["RUNVM_CONFIG"])
    add_config(conf, f'[network]\nmodel = "{model}"\n'
                    f"[hypervisor]\nvcpus = {vcpus}\n")  # fmt: skip
    if start == "cloned":
        request.getfixturevalue("factory")
    if start == "cached":
        add_config(conf, cache_settings(2))
        request.getfixturevalue("cache_daemon").wait(ready=2)
    server = pod_bundle(tmp_path / "server", pods.path(0), "nc -ll -p 5000 -e /srv.sh")
    # A permanent neighbour in the pod's namespace is copied into the guest.
    ip("-n", pods.pods[1], "neigh", "add", "10.77.0.99", "lladdr", "02:00:00:00:00:99", "dev",
       "eth0", "nud", "permanent")  # fmt: skip
    client = pod_bundle(
        tmp_path / "client", pods.path(1),
        "ls /sys/class/net/eth0/queues | grep -c rx; cat /sys/class/net/eth0/mtu; "
        "ping -c 2 -W 10 10.77.0.11 >/dev/null && echo ping-peer; "
        "ping -c 1 -W 10 10.77.0.1 >/dev/null && echo ping-gateway; "
        "echo hi | nc -w 10 10.77.0.11 5000; "
        "grep -q '10.77.0.99.*02:00:00:00:00:99' /proc/net/arp && echo neighbour; "
        "cat /etc/resolv.conf /etc/hosts",
    )  # fmt: skip
    # resolv.conf and hosts come as bind mounts, as engines provide them.
    (tmp_path / "resolv.conf").write_text("nameserver 10.77.0.53\n")
    (tmp_path / "hosts").write_text("10.77.0.11 server-pod\n")
    spec = json.loads((client / "config.json").read_text())
    for name in ("resolv.conf", "hosts"):
        source = str(tmp_path / name)
        spec["mounts"].append({"destination": f"/etc/{name}", "type": "bind", "source": source,
                               "options": ["rbind", "ro"]})  # fmt: skip
    (client / "config.json").write_text(json.dumps(spec))
    # Detached: the monitor keeps its stdio, so give it files rather than our pipes.
    with (tmp_path / "srv.err").open("wb") as err:
        r = subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "-d", "-b",
                            str(server), "srv"], env=cli_env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=err, timeout=240)  # fmt: skip
    assert r.returncode == 0, (tmp_path / "srv.err").read_text()
    try:
        ps = subprocess.run(["ps", "-ewwo", "args"], capture_output=True, text=True).stdout
        srv = [a for a in ps.splitlines() if "qemu-system" in a and "runvm-srv" in a]
        if start == "cached":
            assert not srv and request.getfixturevalue("cache_daemon").status()["leased"] == 1
        else:
            assert srv and ("-incoming defer" in srv[0]) == (start == "cloned"), srv
        r = runvm(cli_env, "run", "-b", str(client), "cli", stdin=subprocess.DEVNULL)
        expected = [str(vcpus), "1400", "ping-peer", "ping-gateway", "echo-hi", "neighbour",
                    "nameserver", "10.77.0.53", "10.77.0.11", "server-pod"]  # fmt: skip
        assert r.stdout.decode().split() == expected, (r.stdout, r.stderr)
        assert r.returncode == 0
        # The gateway (in the router namespace) reaches the VM pod too.
        ping = subprocess.run(["ip", "netns", "exec", pods.router, "busybox", "ping", "-c", "1",
                               "-W", "10", "10.77.0.11"], capture_output=True)  # fmt: skip
        assert ping.returncode == 0, ping.stdout
        # The pod namespace's loopback reaches the guest's (port forwarding), and a port
        # nothing listens on in the guest is refused.
        assert forward(pods.pods[0], 5000, b"fwd\n") == b"echo-fwd\n"
        with pytest.raises(ConnectionResetError):
            forward(pods.pods[0], 5001, b"x")
        assert "runvm port forwarding" in nat_output(pods.pods[0])
    finally:
        runvm(cli_env, "kill", "srv", "KILL")
        runvm(cli_env, "delete", "--force", "srv")
        runvm(cli_env, "delete", "--force", "cli")
    assert pods.host_side_clean(0) and pods.host_side_clean(1)


def wait_for_text(path: Path, text: str, timeout: float = 90) -> None:
    import time

    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"no {text!r} in {path}: {path.read_text()!r}"
        time.sleep(0.3)


def test_interfaces_added_and_removed_later_are_hot_plugged(
    pods: Pods, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    late = f"{pods.router}l"
    ip("netns", "add", late)
    pods.pods.append(late)  # deleted with the others
    script = (
        "until ping -c 1 -W 1 10.77.0.1 >/dev/null 2>&1; do sleep 0.5; done; echo reached; "
        "while [ -e /sys/class/net/eth0 ]; do sleep 0.5; done; echo gone; sleep 1000"
    )
    b = pod_bundle(tmp_path / "late", f"/var/run/netns/{late}", script)
    out = tmp_path / "late.out"
    with out.open("wb") as sink:
        r = subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "-d", "-b",
                            str(b), "late"], env=cli_env, stdin=subprocess.DEVNULL, stdout=sink,
                           stderr=sink, timeout=240)  # fmt: skip
    assert r.returncode == 0, out.read_text()
    try:
        # The VM runs; now the pod gets its interface, as a hook or a CNI plugin would add it.
        r_ns = ["-n", pods.router]
        ip(*r_ns, "link", "add", "v9", "mtu", "1400", "type", "veth", "peer", "name", "eth0",
           "netns", late)  # fmt: skip
        ip(*r_ns, "link", "set", "v9", "master", "br0", "up")
        ip("-n", late, "addr", "add", "10.77.0.19/24", "dev", "eth0")
        ip("-n", late, "link", "set", "eth0", "mtu", "1400", "up")
        ip("-n", late, "route", "add", "default", "via", "10.77.0.1")
        wait_for_text(out, "reached")
        ip("-n", late, "link", "del", "eth0")
        wait_for_text(out, "gone")
    finally:
        runvm(cli_env, "kill", "late", "KILL")
        runvm(cli_env, "delete", "--force", "late")
    links = ip("-n", late, "-o", "link")
    assert "_rv" not in links, links


def test_model_none_gives_the_vm_no_nic(
    pods: Pods, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    conf = Path(cli_env["RUNVM_CONFIG"])
    add_config(conf, '[network]\nmodel = "none"\n')
    b = pod_bundle(tmp_path / "b", pods.path(0), "ls /sys/class/net")
    r = runvm(cli_env, "run", "-b", str(b), "nonet", stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout.split()) == (0, [b"lo"]), r.stderr
    assert pods.host_side_clean(0)


def test_vhost_net_where_the_host_has_it(hardware_skip: Any) -> None:
    from runvm.network.plug import VHOST_NET, open_vhost

    if not Path(VHOST_NET).exists():
        hardware_skip("vhost-net", f"{VHOST_NET} does not exist on this host")
    fds = open_vhost(2)
    try:
        assert len(fds) == 2
    finally:
        for fd in fds:
            import os

            os.close(fd)


def test_a_killed_monitor_leaves_nothing_in_the_pod_namespace(
    pods: Pods, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The monitor's redirects and port-forwarding rules outlive a kill -9 of it; the next
    `delete` removes them."""
    import os
    import signal
    import time

    server = pod_bundle(tmp_path / "server", pods.path(0), "nc -ll -p 5000 -e /srv.sh")
    with (tmp_path / "kd.err").open("wb") as err:
        r = subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "run", "-d", "-b",
                            str(server), "kd"], env=cli_env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=err, timeout=240)  # fmt: skip
    assert r.returncode == 0, (tmp_path / "kd.err").read_text()
    assert not pods.host_side_clean(0)  # a redirect and the forwarding rules are in place
    state = json.loads(runvm(cli_env, "state", "kd").stdout)
    os.kill(state["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "runvm-kd," in subprocess.run(["ps", "-ewwo", "args"], capture_output=True,
                                         text=True).stdout:  # fmt: skip
        assert time.monotonic() < deadline, "QEMU outlived its monitor"
        time.sleep(0.2)
    assert not pods.host_side_clean(0)  # nobody cleaned up yet
    r = runvm(cli_env, "delete", "--force", "kd")
    assert r.returncode == 0, r.stderr
    assert pods.host_side_clean(0), nat_output(pods.pods[0])
