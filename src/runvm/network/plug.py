"""A pod's network namespace wired into its VM, and the same network configured in the guest.

Where ``/dev/vhost-net`` exists the NICs use it (one fd per queue), otherwise vhost is off.

Contract of :class:`PodNetwork` (run in the pod's network namespace, on the thread that
entered it): :meth:`plug` gives each pod interface (see ``netlink.scan``) a device QEMU opens
by fd, per the model: ``tcfilter`` (a tap in the same namespace, tc mirred redirects both
ways; one queue per vCPU) or ``macvtap`` (a macvtap in passthru mode on the interface). The
guest NIC takes the interface's MAC. :meth:`handed_over` closes our copies once QEMU holds
the fds (the devices then live exactly as long as QEMU). :meth:`configure` applies the
addresses, MTU, routes and permanent neighbours through the agent. :meth:`unplug` removes
what we added on the host (qdiscs, filters, macvtaps); it is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from runvm.errors import ConfigError, RunvmError
from runvm.hypervisor.base import VM, NetSpec
from runvm.network import links, netns
from runvm.protocol import agent_pb2 as pb

if TYPE_CHECKING:
    from runvm.network import netlink

log = logging.getLogger(__name__)

MODELS = ("tcfilter", "macvtap", "none")


VHOST_NET = "/dev/vhost-net"


def open_vhost(queues: int) -> list[int]:
    """One /dev/vhost-net fd per queue where the host has vhost-net (in-kernel virtio-net
    backend), none otherwise (QEMU then moves the packets itself)."""
    if not os.path.exists(VHOST_NET):
        return []
    fds: list[int] = []
    try:
        for _ in range(queues):
            fds.append(os.open(VHOST_NET, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        log.warning("vhost-net unusable (%s): QEMU moves the packets", exc)
        return []
    return fds


class GuestNetwork(Protocol):
    """The agent's network calls (an AgentClient): the pod's network applied in the guest."""

    async def update_interface(self, interface: pb.Interface) -> pb.Interface: ...
    async def remove_interface(self, interface: pb.Interface) -> None: ...
    async def update_routes(self, routes: list[pb.Route]) -> None: ...
    async def add_arp_neighbors(self, neighbors: list[pb.ARPNeighbor]) -> None: ...


@dataclass
class Plugged:
    iface: netlink.Interface
    fds: list[int]
    spec: NetSpec
    host_link: int = 0  # the tap or macvtap we made


@dataclass
class PodNetwork:
    model: str
    queues: int = 1
    work_dir: Path | None = None  # where a macvtap's device node is made
    plugged: list[Plugged] = field(default_factory=list)
    topology: netlink.Topology | None = None
    next_id: int = 0
    # The pod's namespace when the caller is not in it (a shim serving several pods); None:
    # the calling thread is in it.
    netns_fd: int | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"network model {self.model!r}: use one of {', '.join(MODELS)}")

    def inside(self) -> contextlib.AbstractContextManager[None]:
        """The calling thread in the pod's namespace for a block of netlink work."""
        return netns.inside(self.netns_fd)

    def plug(self) -> list[NetSpec]:
        if self.model == "none":
            return []
        with self.inside():
            self.topology = _scan()
            if self.topology is None:
                return []
            try:
                for iface in self.topology.interfaces:
                    self.plugged.append(self._plug_here(iface))
            except BaseException:
                self.unplug()
                raise
        return [p.spec for p in self.plugged]

    def _plug_one(self, iface: netlink.Interface) -> Plugged:
        with self.inside():
            return self._plug_here(iface)

    def _plug_here(self, iface: netlink.Interface) -> Plugged:
        from runvm.network import netlink

        i, self.next_id = self.next_id, self.next_id + 1
        if self.model == "tcfilter":
            name = netlink.tap_name(iface)
            fds = netlink.open_tap(name, self.queues, iface.mtu)
            try:
                tap = netlink.link_index(name)
                netlink.redirect(iface.index, tap)
            except BaseException:
                for fd in fds:
                    os.close(fd)
                raise
        else:
            assert self.work_dir is not None
            tap, fd = netlink.open_macvtap(iface, self.work_dir)
            fds = [fd]
        vhost = open_vhost(len(fds))
        log.info("network: %s (%s) -> %s fds %s vhost %s", iface.name, iface.mac, self.model,
                 fds, vhost)  # fmt: skip
        spec = NetSpec(id=f"net{i}", mac=iface.mac, fds=tuple(fds), vhost_fds=tuple(vhost))
        return Plugged(iface, [*fds, *vhost], spec, tap)

    def handed_over(self, only: list[Plugged] | None = None) -> None:
        for p in self.plugged if only is None else only:
            for fd in p.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            p.fds = []

    def _remove(self, p: Plugged) -> None:
        from runvm.network import netlink

        self.handed_over([p])
        with self.inside():
            if self.model == "tcfilter":
                netlink.unredirect(p.iface.index)
            else:
                netlink.delete_link(p.host_link)

    def leftovers(self) -> dict[str, list[int]]:
        """What outlives QEMU in the pod's namespace if this process is killed: ingress
        redirects on its interfaces (tcfilter) and macvtap links; see :func:`clean_up`."""
        redirects = [p.iface.index for p in self.plugged if self.model == "tcfilter"]
        links = [p.host_link for p in self.plugged if self.model == "macvtap"]
        return {"redirects": redirects, "links": links}

    def unplug(self) -> None:
        for p in self.plugged:
            self._remove(p)
        self.plugged.clear()

    async def sync(self, vm: VM, agent: GuestNetwork) -> None:
        """Hot-plug interfaces that appeared since (a prestart hook's veth), unplug the
        ones that went away. Must run on the thread that is in the pod's namespace."""
        if self.model == "none":
            return
        with self.inside():
            topology = _scan()
        found = topology.interfaces if topology is not None else []
        present = {i.index: i for i in found}
        for p in [p for p in self.plugged if p.iface.index not in present]:
            log.info("network: %s went away: unplugging %s", p.iface.name, p.spec.id)
            self.plugged.remove(p)
            await vm.unplug_nic(p.spec.id)
            with contextlib.suppress(RunvmError):
                await agent.remove_interface(pb.Interface(name=p.iface.name, hw_addr=p.iface.mac))
            self._remove(p)
        known = {p.iface.index for p in self.plugged}
        added = []
        for iface in found:
            if iface.index in known:
                continue
            p = self._plug_one(iface)
            self.plugged.append(p)
            try:
                await vm.hotplug_nic(p.spec)
            except BaseException:
                self.plugged.remove(p)
                self._remove(p)
                raise
            self.handed_over([p])
            added.append(p)
            log.info("network: hot-plugged %s as %s", iface.name, p.spec.id)
        self.topology = topology
        if added:
            await self.configure(agent, added)

    async def configure(self, agent: GuestNetwork, only: list[Plugged] | None = None) -> None:
        if not self.plugged or self.topology is None:
            return
        for p in self.plugged if only is None else only:
            iface = p.iface
            await agent.update_interface(pb.Interface(
                name=iface.name, hw_addr=iface.mac, mtu=iface.mtu,
                addresses=[pb.IPAddress(family=a.family, address=a.address, prefix=a.prefix)
                           for a in iface.addresses],
            ))  # fmt: skip
        topo = self.topology
        if topo.routes:
            await agent.update_routes([
                pb.Route(family=r.family, dest=r.dest, dest_len=r.dest_len, gateway=r.gateway,
                         device=r.device, source=r.source, scope=r.scope)
                for r in sorted(topo.routes, key=lambda r: bool(r.gateway))  # links first
            ])  # fmt: skip
        if topo.neighbours:
            await agent.add_arp_neighbors([
                pb.ARPNeighbor(address=n.address, lladdr=n.lladdr, device=n.device)
                for n in topo.neighbours
            ])  # fmt: skip


def _scan() -> netlink.Topology | None:
    """The namespace's topology; None, without loading netlink, when it has no interface."""
    if not links.candidates():
        return None
    from runvm.network import netlink

    return netlink.scan()


def clean_up(netns_path: str, leftovers: dict[str, list[int]]) -> None:
    """Remove :meth:`PodNetwork.leftovers` of a dead process from the namespace at
    ``netns_path`` (gone already: nothing to do)."""
    try:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with netns.inside(fd):
            if leftovers.get("redirects") or leftovers.get("links"):
                from runvm.network import netlink
            for index in leftovers.get("redirects", []):
                netlink.unredirect(index)
            for index in leftovers.get("links", []):
                netlink.delete_link(index)
            if leftovers.get("port_forward"):
                from runvm.network.portforward import remove_rules

                for port in leftovers["port_forward"]:
                    if isinstance(port, int) and 0 < port < 65536:  # (read back from disk)
                        remove_rules(port)
    finally:
        os.close(fd)
