"""The host netlink module on real links, in a network namespace the test made (no VM)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from conftest import in_netns

from runvm.network import netlink


@pytest.fixture
def pod_ns() -> Iterator[str]:
    name = f"rvn{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    ip = ["ip", "-n", name]
    subprocess.run([*ip, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name",
                    "peer0"], check=True)  # fmt: skip
    subprocess.run([*ip, "addr", "add", "10.79.0.5/24", "dev", "eth0"], check=True)
    subprocess.run([*ip, "link", "set", "eth0", "up"], check=True)
    subprocess.run([*ip, "link", "set", "peer0", "up"], check=True)
    subprocess.run([*ip, "route", "add", "default", "via", "10.79.0.1"], check=True)
    subprocess.run([*ip, "neigh", "add", "10.79.0.7", "lladdr", "02:00:00:00:00:07", "dev",
                    "eth0", "nud", "permanent"], check=True)  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_scan_sees_the_pod_interfaces_routes_and_neighbours(pod_ns: str) -> None:
    topo = in_netns(pod_ns, netlink.scan)
    names = sorted(i.name for i in topo.interfaces)
    assert names == ["eth0", "peer0"]  # veths; never lo
    eth0 = next(i for i in topo.interfaces if i.name == "eth0")
    assert eth0.mtu == 1400 and eth0.kind == "veth"
    assert [(a.address, a.prefix) for a in eth0.addresses] == [("10.79.0.5", 24)]
    assert [(r.dest, r.gateway, r.device) for r in topo.routes] == [("", "10.79.0.1", "eth0")]
    assert [(n.address, n.lladdr) for n in topo.neighbours] == [("10.79.0.7", "02:00:00:00:00:07")]


def test_tap_redirect_and_cleanup(pod_ns: str) -> None:
    def plug() -> tuple[list[int], bool, bool, list[str]]:
        eth0 = netlink.link_index("eth0")
        fds = netlink.open_tap("tap9_rv", 2, 1400)
        tap = netlink.link_index("tap9_rv")
        netlink.redirect(eth0, tap)
        both = netlink.has_ingress(eth0) and netlink.has_ingress(tap)
        netlink.unredirect(eth0)
        netlink.unredirect(eth0)  # idempotent
        return fds, both, netlink.has_ingress(eth0), [i.name for i in netlink.scan().interfaces]

    fds, both, left, names = in_netns(pod_ns, plug)
    assert len(fds) == 2 and both and not left
    assert "tap9_rv" not in names  # runvm's own links are never pod interfaces
    filters = subprocess.run(["tc", "-n", pod_ns, "filter", "show", "dev", "tap9_rv", "ingress"],
                             capture_output=True, text=True).stdout  # fmt: skip
    assert "mirred" in filters and "Redirect to device eth0" in filters, filters
    for fd in fds:
        os.close(fd)
    links = subprocess.run(["ip", "-n", pod_ns, "-o", "link"], capture_output=True, text=True)
    assert "tap9_rv" not in links.stdout  # gone with its last fd


def test_links_without_pyroute2_see_candidates_and_changes(pod_ns: str) -> None:
    def watch() -> tuple[list[str], bool, bool]:
        from runvm.network import links

        events = links.LinkEvents()
        try:
            quiet = events.drain()
            subprocess.run(["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                           check=True)  # fmt: skip
            subprocess.run(["ip", "tuntap", "add", "tap3_rv", "mode", "tap"], check=True)
            changed = events.drain()
            return links.candidates(), quiet, changed
        finally:
            events.close()

    names, quiet, changed = in_netns(pod_ns, watch)
    assert not quiet and changed
    assert sorted(names) == ["d0", "d1", "eth0", "peer0"]  # not loopback, not runvm's own

    def empty() -> list[str]:
        from runvm.network import links

        return links.candidates()

    bare = f"rvn{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", bare], check=True)
    try:
        assert in_netns(bare, empty) == []
    finally:
        subprocess.run(["ip", "netns", "del", bare], capture_output=True)
