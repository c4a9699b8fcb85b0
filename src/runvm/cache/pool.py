"""The cache daemon's pool: keep ``size`` VMs ready, hand one over per request, and make
sure a handed-over VM dies with the sandbox process that took it.

Contract:
- :meth:`Pool.fill` boots pooled sandboxes (cold: a taker's virtio-fs needs shared guest
  RAM) one at a time until ``size`` wait ready; a ready VM that dies is replaced; boot
  failures back off.
- :meth:`Pool.take` hands the oldest ready VM to the sandbox of process ``peer`` whose run
  directory is to be ``run_dir`` (a new directory under the daemon's state root, on its
  filesystem): the daemon lets go of its agent link and QMP, moves the VM's directory there,
  records the lease and returns the QEMU pid and a pidfd. From then on the daemon
  watches the peer: if it exits while QEMU still runs, QEMU is killed (so a sandbox process
  killed with SIGKILL takes its VM along). CacheMiss says why nothing was handed over.
- QEMU of a pooled VM does not die with the daemon (it may already belong to a sandbox).
  :meth:`Pool.recover`, run first by every daemon, kills the pool VMs a dead daemon left,
  and watches again the leases whose sandbox process still lives (or kills their VM).
- :meth:`Pool.close` stops the ready VMs and leaves leased ones running and recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runvm import files
from runvm.cache import records
from runvm.config import RunvmConfig
from runvm.errors import RunvmError
from runvm.hypervisor.base import VM
from runvm.names import check_id
from runvm.process import ForeignProcess, start_time

log = logging.getLogger(__name__)

BACKOFF_MAX = 60.0


class CacheMiss(RunvmError):
    """Nothing handed over; the message says why."""


class PooledVM(Protocol):
    """A VM booted for the pool (a pooled sandbox): its name, run directory and VM."""

    @property
    def id(self) -> str: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def vm(self) -> VM | None: ...
    @property
    def timings(self) -> dict[str, float]: ...

    async def release(self) -> None: ...  # let go of the agent link and QMP, leave it running


class PoolBoot(Protocol):
    """How the pool's VMs are made (the runtime's ``pooled.PooledBoot``)."""

    def run_dir(self, vm_id: str) -> Path: ...
    async def key(self) -> dict[str, Any]: ...
    async def boot(self, vm_id: str) -> PooledVM: ...


@dataclass
class Ready:
    sandbox: PooledVM
    watcher: asyncio.Task[None] | None = None


class Pool:
    def __init__(self, config: RunvmConfig, size: int, booter: PoolBoot) -> None:
        self.config = config
        self.booter = booter
        self.size = size
        self.records = records.records_dir(config.runtime.state_root)
        self.ready: list[Ready] = []
        self.leases: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._key: dict[str, Any] | None = None
        self._closing = False

    async def key(self) -> dict[str, Any]:
        """What this pool's VMs are made with (compared with each request's key)."""
        if self._key is None:
            self._key = await self.booter.key()
        return self._key

    def status(self) -> dict[str, Any]:
        return {"ready": len(self.ready), "leased": len(self.leases), "size": self.size}

    async def fill(self) -> None:
        """Runs until cancelled; see the module docstring."""
        backoff = 1.0
        while not self._closing:
            if len(self.ready) >= self.size:
                self._wake.clear()
                await self._wake.wait()
                continue
            vm_id = f"cache-{uuid.uuid4().hex[:10]}"
            run_dir = self.booter.run_dir(vm_id)
            records.write(self.records, vm_id, run_dir, None)
            try:
                sandbox = await self.booter.boot(vm_id)
            except asyncio.CancelledError:  # the start undid itself
                records.remove(self.records, vm_id)
                raise
            except (RunvmError, OSError) as exc:
                records.remove(self.records, vm_id)
                log.error("cache: a VM for the pool failed to start: %s (retry in %g s)",
                          exc, backoff)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = 1.0
            # Let go of the agent link now: the taker's session starts with a handshake on
            # a port the agent keeps open, whether or not it has seen this one end.
            try:
                await sandbox.release()
            except asyncio.CancelledError:
                await self._discard(sandbox)
                raise
            entry = Ready(sandbox)
            entry.watcher = asyncio.ensure_future(self._watch_ready(entry))
            self.ready.append(entry)
            log.info("cache: %s ready (booted in %.2f s); %d ready", vm_id,
                     sum(sandbox.timings.values()), len(self.ready))  # fmt: skip

    async def _watch_ready(self, entry: Ready) -> None:
        """A ready VM that dies leaves the pool (and is replaced)."""
        assert entry.sandbox.vm is not None
        await entry.sandbox.vm.wait()
        if entry in self.ready:
            self.ready.remove(entry)
            log.warning("cache: ready VM %s exited; replacing it", entry.sandbox.id)
            await self._kill(None, entry.sandbox.run_dir)
            records.remove(self.records, entry.sandbox.id)
            self._wake.set()

    async def take(self, run_dir: Path, key: object, peer: int) -> tuple[int, int, str]:
        """(QEMU pid, pidfd, vm id); see the module docstring."""
        target = self._target(run_dir)
        mine = await self.key()
        if key != mine:
            theirs = key if isinstance(key, dict) else {}
            diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise CacheMiss(f"the cache's VMs differ in {', '.join(diff)}")
        if not self.ready:
            raise CacheMiss("no VM is ready")
        peer_start = start_time(peer)
        if peer_start is None:
            raise CacheMiss(f"the requesting process {peer} is gone")
        entry = self.ready.pop(0)
        self._wake.set()
        if entry.watcher is not None:
            entry.watcher.cancel()
        sandbox, vm = entry.sandbox, entry.sandbox.vm
        assert vm is not None
        try:
            if vm.returncode is not None:
                raise CacheMiss("the ready VM exited while being handed over")
            os.rename(sandbox.run_dir, target)
            pidfd = os.pidfd_open(vm.pid)
        except (CacheMiss, OSError) as exc:
            await self._kill(vm.pid, sandbox.run_dir)
            records.remove(self.records, sandbox.id)
            raise CacheMiss(f"hand-over failed: {exc}") from exc
        records.write(self.records, sandbox.id, target, (peer, peer_start))
        self.leases[sandbox.id] = asyncio.ensure_future(
            self._lease(sandbox.id, ForeignProcess(vm.pid, os.dup(pidfd)), peer)
        )
        log.info("cache: %s handed over: %s (pid %d)", sandbox.id, target, peer)
        return vm.pid, pidfd, sandbox.id

    def _target(self, run_dir: Path) -> Path:
        """``run_dir`` if a VM's directory may become it; CacheMiss naming the problem if not.
        Its parent is made (0700) when missing."""
        root = Path(self.config.runtime.state_root)
        if not run_dir.is_absolute() or ".." in run_dir.parts or not run_dir.is_relative_to(root):
            raise CacheMiss(f"run_dir {str(run_dir)!r} is not a path under {root}")
        check_id(run_dir.name, "run directory")
        if run_dir.exists():
            raise CacheMiss(f"run_dir {run_dir} already exists")
        files.make_dirs(run_dir.parent)
        return run_dir

    async def _lease(self, vm_id: str, qemu: ForeignProcess, peer: int) -> None:
        """Kill QEMU if the process that took it exits first."""
        try:
            holder = ForeignProcess(peer, os.pidfd_open(peer))
        except OSError:  # already gone
            holder = None
        try:
            if holder is not None:
                waits = {asyncio.ensure_future(qemu.wait()), asyncio.ensure_future(holder.wait())}
                _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
            if qemu.returncode is None:
                log.warning("cache: the sandbox process %d of %s is gone; killing its VM",
                            peer, vm_id)  # fmt: skip
                qemu.signal(signal.SIGKILL)
                await qemu.wait()
            records.remove(self.records, vm_id)
        finally:
            qemu.close()
            if holder is not None:
                holder.close()
            self.leases.pop(vm_id, None)

    async def _discard(self, sandbox: PooledVM) -> None:
        """Stop a released pool VM of ours (SIGTERM: QEMU exits cleanly) and forget it."""
        if sandbox.vm is not None:
            await sandbox.vm.terminate()
        await self._kill(None, sandbox.run_dir)
        records.remove(self.records, sandbox.id)

    async def _kill(self, pid: int | None, run_dir: Path) -> None:
        """Kill a pool VM's QEMU (a pid not ours to wait for) and remove its directory (pool
        VMs have no share: nothing is mounted in it)."""
        if pid is not None:
            with contextlib.suppress(OSError):
                qemu = ForeignProcess(pid, os.pidfd_open(pid))
                qemu.signal(signal.SIGKILL)
                await qemu.wait()
                qemu.close()
        shutil.rmtree(run_dir, ignore_errors=True)

    async def recover(self) -> None:
        """See the module docstring: what a previous daemon left."""
        for record in records.read_all(self.records):
            vm_id, run_dir, peer = record["vm"], Path(record["dir"]), record.get("peer")
            pid = records.qemu_of(vm_id)
            if peer is not None and records.alive(peer) and pid is not None:
                qemu = ForeignProcess(pid, os.pidfd_open(pid))
                self.leases[vm_id] = asyncio.ensure_future(self._lease(vm_id, qemu, peer[0]))
                log.info("cache: watching %s again (taken by pid %d)", vm_id, peer[0])
                continue
            if peer is None or pid is not None:
                log.info("cache: removing %s, left by an earlier daemon", vm_id)
                await self._kill(pid, run_dir)
            records.remove(self.records, vm_id)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        ready, self.ready = self.ready, []
        for entry in ready:
            if entry.watcher is not None:
                entry.watcher.cancel()
            await self._discard(entry.sandbox)
        for task in list(self.leases.values()):
            task.cancel()
