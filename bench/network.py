"""Network benchmark: iperf3 TCP throughput from a container to a peer, three ways, one run.

All traffic stays in namespaces made here: a "router" netns with bridge br0 (10.78.0.1/24)
and a peer netns (10.78.0.2) running ``iperf3 -s``. The client is ``iperf3 -c`` in:
- runc:  a runc container in a pod netns whose veth is on the bridge (no VM at all);
- runvm: ``runvm run`` of the same bundle in another pod netns (veth -> tc mirred -> tap ->
         virtio-net -> guest);
- floor: the same guest image and container, but the VM's NIC is a plain tap on the bridge
         (no veth, no tc redirect): what any QEMU VM pays, which runvm's path adds to.
Prints bits/s of each and the ratios runvm/runc and runvm/floor.

Usage (root, after scripts/install): python3 bench/network.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from runvm import config as cfg
from runvm.hypervisor.base import NetSpec
from runvm.image.busybox import make_bundle
from runvm.image.hostbin import copy_program
from runvm.network import netlink, netns
from runvm.protocol import agent_pb2 as pb
from runvm.runtime.container import Container
from runvm.runtime.sandbox import Sandbox, SandboxOptions

PEER = "10.78.0.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def add_pod(router: str, name: str, address: str, k: int) -> None:
    ip("netns", "add", name)
    ip("-n", router, "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0", "netns",
       name)  # fmt: skip
    ip("-n", router, "link", "set", f"v{k}", "master", "br0", "up")
    ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
    ip("-n", name, "link", "set", "eth0", "up")
    ip("-n", name, "link", "set", "lo", "up")


def client_bundle(path: Path, netns_path: str | None, seconds: int) -> Path:
    spec = make_bundle(path, ["iperf3", "-c", PEER, "-t", str(seconds), "-J"])
    copy_program(path / "rootfs", "iperf3")
    spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"})
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network" and netns_path:
            ns["path"] = netns_path
    (path / "config.json").write_text(json.dumps(spec))
    return path


def bits_per_second(output: bytes) -> float:
    report = json.loads(output)
    if "error" in report:
        raise SystemExit(f"iperf3: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"])


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """This thread in the network namespace at ``path`` for the block."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        netns.enter(path)
        yield
    finally:
        netns.enter(f"/proc/self/fd/{home}")
        os.close(home)


async def floor(router: str, bundle: Path, config: cfg.RunvmConfig) -> bytes:
    with entered(f"/var/run/netns/{router}"):
        fds = netlink.open_tap("rvfloor", 1, 1500)
        ip("-n", router, "link", "set", "rvfloor", "master", "br0")
    mac = "02:52:56:00:00:13"
    nic = NetSpec(id="net0", mac=mac, fds=tuple(fds))
    sandbox = await Sandbox.start("netfloor", config, SandboxOptions(extra_devices=[nic]))
    try:
        for fd in fds:
            os.close(fd)
        assert sandbox.agent is not None
        await sandbox.agent.update_interface(pb.Interface(
            name="eth0", hw_addr=mac, mtu=1500,
            addresses=[pb.IPAddress(family=2, address="10.78.0.13", prefix=24)],
        ))  # fmt: skip
        container = await Container.create(sandbox, "iperf", bundle, stdin=False)
        await container.start()
        out = b""
        while chunk := await sandbox.agent.read_stream("stdout", "iperf"):
            out += chunk
        await sandbox.agent.wait_process("iperf")
        await container.remove()
        return out
    finally:
        await sandbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:6]
    router, peer, pod_runc, pod_runvm = (f"rvb{x}{tag}" for x in ("r", "p", "c", "v"))
    tmp = Path(tempfile.mkdtemp(prefix="rvbn-", dir="/tmp"))
    state = Path(tempfile.mkdtemp(prefix="rvs-", dir="/tmp"))
    conf = tmp / "runvm.toml"
    conf.write_text(f'[runtime]\nstate_root = "{state}"\n')
    env = {**os.environ, "RUNVM_CONFIG": str(conf)}
    server = None
    try:
        ip("netns", "add", router)
        ip("-n", router, "link", "add", "br0", "type", "bridge")
        ip("-n", router, "addr", "add", "10.78.0.1/24", "dev", "br0")
        ip("-n", router, "link", "set", "br0", "up")
        for k, (name, address) in enumerate(((peer, PEER), (pod_runc, "10.78.0.11"),
                                             (pod_runvm, "10.78.0.12"))):  # fmt: skip
            add_pod(router, name, address, k)
        server = subprocess.Popen(["ip", "netns", "exec", peer, "iperf3", "-s"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        results: dict[str, float] = {}

        b = client_bundle(tmp / "runc", f"/var/run/netns/{pod_runc}", args.seconds)
        r = subprocess.run(["runc", "--root", str(tmp / "runc-root"), "run", "--bundle", str(b),
                            "bench-runc"], capture_output=True, check=True)  # fmt: skip
        results["runc"] = bits_per_second(r.stdout)

        b = client_bundle(tmp / "runvm", f"/var/run/netns/{pod_runvm}", args.seconds)
        runvm = ["runvm", "--root", str(tmp / "runvm-root"), "run", "--bundle", str(b)]
        r = subprocess.run([*runvm, "bench-runvm"], capture_output=True, env=env, check=True)
        results["runvm"] = bits_per_second(r.stdout)

        b = client_bundle(tmp / "floor", None, args.seconds)
        config = cfg.RunvmConfig(runtime=cfg.RuntimeConfig(state_root=str(state)))
        results["floor"] = bits_per_second(asyncio.run(floor(router, b, config)))

        print(f"iperf3 TCP, {args.seconds} s, container -> peer through a bridge")
        for name, value in results.items():
            print(f"  {name:6} {value / 1e6:10.1f} Mbit/s")
        print(f"  runvm/runc  = {results['runvm'] / results['runc']:.3f}")
        print(f"  runvm/floor = {results['runvm'] / results['floor']:.3f}")
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        for name in (pod_runvm, pod_runc, peer, router):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
