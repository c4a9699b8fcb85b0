"""The pod's network inside the VM: NICs, routes and neighbours, over netlink (pyroute2).

pyroute2 is imported when a NIC is first configured (:func:`preload` imports it at once:
the agents of templates and cached VMs, which pods with NICs will use).

Contract: :func:`loopback_up` brings ``lo`` up. :meth:`NetworkService.update_interface`
finds the NIC with the request's MAC (waiting up to ``NIC_WAIT`` s for a hot-plugged one),
renames it (moving a NIC that holds the wanted name aside), sets the MTU, replaces its
addresses with the requested ones and brings it up. Routes and neighbours name configured
NICs. Every request is bounded: counts and string lengths are checked before any netlink
call, and a netlink refusal becomes INVALID_ARGUMENT with the kernel's reason.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import ipaddress
import re
import socket
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from runvm.agent.rpc import unary
from runvm.errors import RpcError
from runvm.protocol import agent_pb2 as pb
from runvm.ttrpc import Code, Handler

NIC_WAIT = 10.0
MAX_ADDRESSES = 64
MAX_ROUTES = 1024
MAX_NEIGHBOURS = 1024
NUD_PERMANENT = 0x80
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
T = TypeVar("T")


def _bad(message: str) -> RpcError:
    return RpcError(Code.INVALID_ARGUMENT, message)


def preload() -> None:
    """Import pyroute2 now (about 0.5 s under emulation) rather than at the first NIC."""
    IPRoute().close()


def IPRoute() -> Any:
    """A pyroute2 IPRoute, the package imported on first use. Not ``from pyroute2 import
    IPRoute``: the package root gets its names from entry points, which the guest image (the
    package files alone) does not have."""
    from pyroute2.iproute.linux import IPRoute as Class

    return Class()


def _netlink(what: str, call: Callable[[], T]) -> T:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return call()
    except NetlinkError as exc:
        raise _bad(f"{what}: {exc.args[-1] if exc.args else exc}") from exc


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags in its 24-byte union


def loopback_up() -> None:
    """``lo`` up, with an ioctl (no netlink library needed for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack(IFREQ, b"lo", 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def _check_address(family: int, address: str, prefix: int) -> None:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError as exc:
        raise _bad(f"address {address[:64]!r}: {exc}") from None
    want = socket.AF_INET if parsed.version == 4 else socket.AF_INET6
    if family != want or not 0 <= prefix <= (32 if want == socket.AF_INET else 128):
        raise _bad(f"address {address}/{prefix}: wrong family or prefix")


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise RpcError(Code.NOT_FOUND, f"no interface {name!r}")
    return int(found[0])


class NetworkService:
    def _by_mac(self, ipr: Any, mac: str) -> Any | None:
        for link in ipr.get_links():
            if (link.get_attr("IFLA_ADDRESS") or "").lower() == mac:
                return link
        return None

    async def update_interface(self, req: pb.Interface) -> pb.Interface:
        mac = req.hw_addr.lower()
        if not MAC_RE.match(mac) or not NAME_RE.match(req.name):
            raise _bad(f"interface {req.name[:32]!r} {req.hw_addr[:32]!r}: bad name or MAC")
        if len(req.addresses) > MAX_ADDRESSES or not 68 <= req.mtu <= 65535:
            raise _bad(f"interface {req.name}: too many addresses or MTU {req.mtu} out of range")
        for a in req.addresses:
            _check_address(a.family, a.address, a.prefix)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NIC_WAIT
        while True:
            with IPRoute() as ipr:
                link = self._by_mac(ipr, mac)
                if link is not None:
                    self._configure(ipr, link, req)
                    return req
            if loop.time() > deadline:
                raise RpcError(Code.NOT_FOUND, f"no NIC with MAC {mac} appeared in the guest")
            await asyncio.sleep(0.1)

    def _configure(self, ipr: Any, link: Any, req: pb.Interface) -> None:
        index = link["index"]
        _netlink("link down", lambda: ipr.link("set", index=index, state="down"))
        if link.get_attr("IFLA_IFNAME") != req.name:
            holder = ipr.link_lookup(ifname=req.name)
            if holder:  # another NIC has the name: move it aside
                aside = f"rv{holder[0]}"
                _netlink("rename", lambda: ipr.link("set", index=holder[0], ifname=aside))
            _netlink("rename", lambda: ipr.link("set", index=index, ifname=req.name))
        _netlink("mtu", lambda: ipr.link("set", index=index, mtu=req.mtu))
        for old in ipr.get_addr(index=index):
            if old["scope"] == 0:
                ipr.addr("del", index=index, address=old.get_attr("IFA_ADDRESS"),
                         prefixlen=old["prefixlen"])  # fmt: skip
        for a in req.addresses:
            add = functools.partial(ipr.addr, "add", index=index, address=a.address,
                                    prefixlen=a.prefix)  # fmt: skip
            _netlink(f"address {a.address}/{a.prefix}", add)
        _netlink("link up", lambda: ipr.link("set", index=index, state="up"))

    async def remove_interface(self, req: pb.Interface) -> pb.Empty:
        with IPRoute() as ipr:
            link = self._by_mac(ipr, req.hw_addr.lower())
            if link is not None:
                _netlink("link down", lambda: ipr.link("set", index=link["index"], state="down"))
        return pb.Empty()

    async def update_routes(self, req: pb.UpdateRoutesRequest) -> pb.Empty:
        if len(req.routes) > MAX_ROUTES:
            raise _bad(f"{len(req.routes)} routes: at most {MAX_ROUTES}")
        with IPRoute() as ipr:
            for r in req.routes:
                spec: dict[str, Any] = {"oif": _index(ipr, r.device), "family": r.family,
                                        "scope": r.scope}  # fmt: skip
                if r.dest:
                    _check_address(r.family, r.dest, r.dest_len)
                    spec["dst"] = f"{r.dest}/{r.dest_len}"
                elif r.family == socket.AF_INET:
                    spec["dst"] = "0.0.0.0/0"
                else:
                    spec["dst"] = "::/0"
                if r.gateway:
                    _check_address(r.family, r.gateway, 0)
                    spec["gateway"] = r.gateway
                if r.source:
                    _check_address(r.family, r.source, 0)
                    spec["prefsrc"] = r.source
                _netlink(f"route {spec['dst']}", functools.partial(ipr.route, "replace", **spec))
        return pb.Empty()

    async def add_arp_neighbors(self, req: pb.AddARPNeighborsRequest) -> pb.Empty:
        if len(req.neighbors) > MAX_NEIGHBOURS:
            raise _bad(f"{len(req.neighbors)} neighbours: at most {MAX_NEIGHBOURS}")
        with IPRoute() as ipr:
            for n in req.neighbors:
                if not MAC_RE.match(n.lladdr.lower()):
                    raise _bad(f"neighbour {n.address[:64]}: bad link-layer address")
                family = socket.AF_INET6 if ":" in n.address else socket.AF_INET
                _check_address(family, n.address, 0)
                index = _index(ipr, n.device)
                replace = functools.partial(ipr.neigh, "replace", dst=n.address, lladdr=n.lladdr,
                                            ifindex=index, state=NUD_PERMANENT)  # fmt: skip
                _netlink(f"neighbour {n.address}", replace)
        return pb.Empty()

    def handlers(self) -> dict[str, Handler]:
        return {
            "UpdateInterface": unary(pb.Interface, self.update_interface),
            "RemoveInterface": unary(pb.Interface, self.remove_interface),
            "UpdateRoutes": unary(pb.UpdateRoutesRequest, self.update_routes),
            "AddARPNeighbors": unary(pb.AddARPNeighborsRequest, self.add_arp_neighbors),
        }
