"""Every netlink operation of the host side, on pyroute2, in the caller's network namespace.

Contract: :func:`scan` describes the pod's interfaces (those a CNI plugin, Docker or Podman
left: veth, macvlan, vlan, tap; never loopback or runvm's own taps), their addresses, the
routes through them and their permanent neighbours. :func:`open_tap` creates a tap (one fd
per queue; the tap disappears with its last fd, so a dead VM leaves none) and
:func:`redirect` joins two links with an ingress qdisc on each and a match-all u32 filter
whose mirred action redirects every frame to the other's egress. :func:`unredirect` removes
the qdisc (and with it the filter) from a link; it is idempotent.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runvm.errors import RunvmError
from runvm.network import pyroute
from runvm.network.links import TAP_SUFFIX
from runvm.storage import mounts

IPRoute = pyroute.module("pyroute2.iproute.linux").IPRoute
NetlinkError = pyroute.module("pyroute2.netlink.exceptions").NetlinkError

POD_KINDS = ("veth", "macvlan", "vlan", "tun", "ipvlan")
ETH_P_ALL = 0x0003
INGRESS = 0xFFFF0000
NUD_PERMANENT = 0x80
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000


class NetworkError(RunvmError):
    """A netlink or tap operation failed."""


@dataclass(frozen=True)
class Address:
    family: int  # socket.AF_INET or AF_INET6
    address: str
    prefix: int


@dataclass(frozen=True)
class Route:
    family: int
    dest: str  # "" = default
    dest_len: int
    gateway: str
    device: str
    source: str
    scope: int


@dataclass(frozen=True)
class Neighbour:
    address: str
    lladdr: str
    device: str


@dataclass
class Interface:
    name: str
    index: int
    kind: str
    mac: str
    mtu: int
    addresses: list[Address] = field(default_factory=list)


@dataclass
class Topology:
    interfaces: list[Interface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)


def _kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""


def scan() -> Topology:
    """See the module docstring."""
    topo = Topology()
    with IPRoute() as ipr:
        by_index: dict[int, Interface] = {}
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            kind = _kind(link)
            if kind not in POD_KINDS or name.endswith(TAP_SUFFIX):
                continue
            iface = Interface(name, link["index"], kind, link.get_attr("IFLA_ADDRESS"),
                              link.get_attr("IFLA_MTU"))  # fmt: skip
            by_index[iface.index] = iface
            topo.interfaces.append(iface)
        for addr in ipr.get_addr():
            owner = by_index.get(addr["index"])
            if owner is not None and addr["scope"] == 0:  # global: not link-local
                owner.addresses.append(
                    Address(addr["family"], addr.get_attr("IFA_ADDRESS"), addr["prefixlen"])
                )
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                via = by_index.get(route.get_attr("RTA_OIF") or -1)
                if via is None or route["proto"] == RTPROT_KERNEL:
                    continue  # the guest adds its own for its addresses
                topo.routes.append(Route(
                    family, route.get_attr("RTA_DST") or "", route["dst_len"],
                    route.get_attr("RTA_GATEWAY") or "", via.name,
                    route.get_attr("RTA_PREFSRC") or "", route["scope"],
                ))  # fmt: skip
        for neigh in ipr.get_neighbours():
            on = by_index.get(neigh["ifindex"])
            lladdr = neigh.get_attr("NDA_LLADDR")
            if on is not None and lladdr and neigh["state"] & NUD_PERMANENT:
                topo.neighbours.append(Neighbour(neigh.get_attr("NDA_DST"), lladdr, on.name))
    return topo


def tap_name(iface: Interface) -> str:
    return f"tap{iface.index}{TAP_SUFFIX}"


def open_tap(name: str, queues: int, mtu: int) -> list[int]:
    """Create tap ``name`` with ``queues`` queues (one fd each), set its MTU and bring it up."""
    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if queues > 1 else 0)
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, mtu=mtu, state="up")
    except (OSError, NetlinkError, IndexError) as exc:
        for fd in fds:
            os.close(fd)
        raise NetworkError(f"tap {name}: {exc}") from exc
    return fds


def link_index(name: str) -> int:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetworkError(f"no link named {name}")
    return int(found[0])


def redirect(a: int, b: int) -> None:
    """Every frame arriving on link ``a`` leaves through ``b``, and the other way round."""
    try:
        with IPRoute() as ipr:
            for src, dst in ((a, b), (b, a)):
                ipr.tc("add", "ingress", index=src, handle=INGRESS)
                ipr.tc("add-filter", "u32", index=src, parent=INGRESS, prio=49152,
                       protocol=ETH_P_ALL, keys=["0x0/0x0+0"], target=0x10001,
                       action={"kind": "mirred", "direction": "egress", "action": "redirect",
                               "ifindex": dst})  # fmt: skip
    except NetlinkError as exc:
        unredirect(a)
        unredirect(b)
        raise NetworkError(f"tc redirect between links {a} and {b}: {exc}") from exc


def unredirect(index: int) -> None:
    """Remove the ingress qdisc (and its filters) of link ``index``, if any."""
    try:
        with IPRoute() as ipr:
            ipr.tc("del", "ingress", index=index, handle=INGRESS)
    except NetlinkError:
        pass


def has_ingress(index: int) -> bool:
    with IPRoute() as ipr:
        return any(q.get_attr("TCA_KIND") == "ingress" for q in ipr.get_qdiscs(index=index))


def delete_link(index: int) -> None:
    """Delete link ``index`` if it still exists."""
    try:
        with IPRoute() as ipr:
            ipr.link("del", index=index)
    except NetlinkError:
        pass


def open_macvtap(iface: Interface, work_dir: Path) -> tuple[int, int]:
    """A passthru macvtap on ``iface``; returns (its ifindex, an open fd of its device).

    The device node ``/dev/tap<ifindex>`` is normally made by udev from sysfs; here a sysfs
    of this network namespace is mounted under ``work_dir`` to read its number, and the node
    is made (and unlinked again once open) in ``work_dir``.
    """
    name = f"mvt{iface.index}{TAP_SUFFIX}"
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="macvtap", link=iface.index,
                     macvtap_mode="passthru")  # fmt: skip
            index = int(ipr.link_lookup(ifname=name)[0])
            ipr.link("set", index=index, address=iface.mac, mtu=iface.mtu, state="up")
    except (NetlinkError, IndexError) as exc:
        raise NetworkError(f"macvtap on {iface.name}: {exc}") from exc
    try:
        return index, _open_tap_node(name, index, work_dir)
    except BaseException:
        delete_link(index)
        raise


def _open_tap_node(name: str, index: int, work_dir: Path) -> int:
    sysfs, node = work_dir / f"sys{index}", work_dir / f"tap{index}"
    sysfs.mkdir(parents=True, exist_ok=True)
    mounts.mount("sysfs", str(sysfs), "sysfs", 0)
    try:
        major, minor = (sysfs / f"class/net/{name}/macvtap/tap{index}/dev").read_text().split(":")
    except OSError as exc:
        raise NetworkError(f"macvtap {name}: no device number in sysfs: {exc}") from exc
    finally:
        mounts.umount(str(sysfs))
        sysfs.rmdir()
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(int(major), int(minor)))
    try:
        return os.open(node, os.O_RDWR | os.O_CLOEXEC)
    finally:
        node.unlink()
