"""The long-lived shim server, forked by ``start`` with the listening socket already bound.

Recipe: leave containerd's pipes (stdio to /dev/null), move into a mount namespace of our own
(container rootfs and shares mounted here vanish with the shim, even after SIGKILL), log to
the bundle's ``log`` FIFO and the pod's log file, serve the Task service on the socket, keep
the pod record current for ``delete``, and say "ready". It ends on ``Shutdown`` with no task
left (it stops accepting connections before the reply), on SIGTERM/SIGINT, or when no Create
began within ``shim.unclaimed_timeout`` of its start (its starter went away): every task and
the VM are stopped, then the socket, lock, record and host cgroup are removed, and last the
pid file whose lock it held all along (:mod:`runvm.shim.owner`). With
``shim.scope = "namespace"`` the same holds for every pod of the namespace, each with its own
record, behind one :class:`PodRouter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runvm import config as cfg
from runvm import files, trace
from runvm.metrics import SERVICE as METRICS_SERVICE
from runvm.metrics import owner as metrics_owner
from runvm.metrics.figures import PodFigures
from runvm.runtime import debug
from runvm.runtime.telemetry import pod_figures
from runvm.shim import wire
from runvm.shim.events import Publisher
from runvm.shim.layout import Layout
from runvm.shim.owner import hold_owner
from runvm.shim.router import PodRouter
from runvm.shim.service import TaskService
from runvm.spawn import ReadyPipe
from runvm.storage import mounts
from runvm.ttrpc import CallContext, Handler, Server

log = logging.getLogger(__name__)

LOG_MAX = 1 << 20
FLUSH_TIMEOUT = 5.0
REPLY_WAIT = 0.2  # at most, for the calls in flight when the shim ends to answer


@dataclass
class ServeArgs:
    layout: Layout
    config: cfg.RunvmConfig
    bundle: Path
    listen_fd: int
    debug: bool = False


class _FifoHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to containerd's log FIFO without ever blocking (lines are dropped instead)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError):
            os.write(self.fd, (self.format(record) + "\n").encode(errors="replace"))


def _setup_logging(args: ServeArgs) -> None:
    prefix = f"runvm-shim[{os.getpid()}] "
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if args.debug else logging.INFO)
    logging.raiseExceptions = False
    files.make_dirs(args.layout.pod_root)
    own = files.RotatingLog(args.layout.log, maxBytes=LOG_MAX, backupCount=1)
    own.setFormatter(files.StampedFormatter(prefix))  # `runvm logs` interleaves it by time
    root.addHandler(own)
    with contextlib.suppress(OSError):
        fd = os.open(args.bundle / "log", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        fifo = _FifoHandler(fd)  # containerd stamps what it reads
        fifo.setFormatter(logging.Formatter(f"{prefix}%(levelname)s %(name)s: %(message)s"))
        root.addHandler(fifo)


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def serve_main(args: ServeArgs, ready: ReadyPipe) -> int:
    """Body of the forked server (see runvm.spawn)."""
    _detach_stdio()
    mounts.unshare_mounts()
    _setup_logging(args)
    return asyncio.run(_serve(args, ready))


def _write_record(layout: Layout, service: TaskService) -> None:
    pod = service.pod
    details = pod.sandbox.details if pod.sandbox is not None else None
    record = {
        "shim_pid": os.getpid(),
        "socket": str(layout.socket),
        "run_dir": str(layout.run_dir),
        "tasks": sorted(pod.containers),
        "cgroups": [str(p) for p in pod.cgroup.created] if pod.cgroup else [],
        "network": service.network_leftovers(),
        "vm_pid": pod.vm_pid,
        "agent_instance": details.instance_id if details is not None else "",
    }
    files.write_atomic(layout.record, json.dumps(record).encode())


async def _serve(args: ServeArgs, ready: ReadyPipe) -> int:
    layout = args.layout
    owner = hold_owner(layout.owner)  # held until this process is gone
    publisher = Publisher(os.environ.get("TTRPC_ADDRESS", ""), layout.namespace)
    config = layout.pod_config(args.config)
    server = Server()
    pods: list[Layout] = []  # whose records this shim keeps
    services: Callable[[], list[TaskService]]  # the pods served, for the metrics daemon
    if args.config.shim.scope == "namespace":
        router = PodRouter(layout.namespace, config, publisher)

        def record(service: TaskService) -> None:
            pod = layout.of_pod(service.group)
            if pod not in pods:
                pods.append(pod)
            _write_record(pod, service)

        def forget(service: TaskService) -> None:
            pod = layout.of_pod(service.group)
            pod.record.unlink(missing_ok=True)
            if pod in pods:
                pods.remove(pod)

        router.on_change, router.on_forget = record, forget
        handlers = router.handlers()
        services = lambda: list(router.pods.values())  # noqa: E731
        done, close = router.done, router.close
        what = f"the pods of namespace {layout.namespace}"
    else:
        service = TaskService(layout.group, layout.namespace, config, publisher)
        service.pod.on_change = lambda: _write_record(layout, service)
        handlers = service.handlers()
        services = lambda: [service]  # noqa: E731
        _write_record(layout, service)
        pods.append(layout)
        done, close = service.done, service.close
        what = f"group {layout.group}"
    listener = await asyncio.start_unix_server(
        server.serve_connection, sock=socket.socket(fileno=args.listen_fd)
    )
    handlers = _stop_accepting_on_exit(handlers, done, listener)
    claimed = asyncio.Event()
    server.register(wire.TASK_SERVICE, _claim_on_create(handlers, claimed))

    async def figures(budget: float) -> list[PodFigures]:  # for the metrics daemon
        pods = [s.pod for s in services()]
        return list(await asyncio.gather(*(pod_figures(p, "shim", budget) for p in pods)))

    server.register(METRICS_SERVICE, metrics_owner.handlers(figures))
    server.register(debug.SERVICE, debug.handlers(config, lambda: [s.pod for s in services()]))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    ready.ok()
    trace.mark("shim serving")
    log.info("serving %s on %s", what, layout.address)
    unclaimed = asyncio.ensure_future(
        _end_if_unclaimed(claimed, done, args.config.shim.unclaimed_timeout)
    )
    try:
        await done.wait()
        listener.close()
        await server.drain(REPLY_WAIT)  # the Shutdown reply goes out
    finally:
        unclaimed.cancel()
        listener.close()
        # containerd waits for the connection to close after Shutdown; the VM's teardown
        # need not hold it (the owner lock, held until this process is gone, still guards)
        server.close()
        try:
            await close()
            await publisher.flush(FLUSH_TIMEOUT)
            await publisher.close()
        except Exception:
            log.exception("shim teardown")
        log.info("shim for %s exits", what)
        trace.mark("shim exit")
        logging.shutdown()
        for path in (layout.socket, layout.lock, *layout.logs,
                     *(pod.record for pod in pods), layout.owner):  # fmt: skip
            path.unlink(missing_ok=True)
        os.close(owner)
    return 0


def _stop_accepting_on_exit(
    handlers: dict[str, Handler], done: asyncio.Event, listener: asyncio.Server
) -> dict[str, Handler]:
    """``handlers`` with a ``Shutdown`` that, when it ends the shim, closes the listening
    socket before its reply goes out: containerd runs ``delete`` after the reply, and a
    shim that no longer accepts is one ``delete`` waits for (:mod:`runvm.shim.owner`)."""
    inner = handlers["Shutdown"]

    async def shutdown(payload: bytes, ctx: CallContext) -> bytes:
        reply = await inner(payload, ctx)
        if done.is_set():
            listener.close()
        return reply

    return {**handlers, "Shutdown": shutdown}


def _claim_on_create(handlers: dict[str, Handler], claimed: asyncio.Event) -> dict[str, Handler]:
    """``handlers`` with a ``Create`` that marks the shim ``claimed`` as it begins."""
    inner = handlers["Create"]

    async def create(payload: bytes, ctx: CallContext) -> bytes:
        claimed.set()
        return await inner(payload, ctx)

    return {**handlers, "Create": create}


async def _end_if_unclaimed(claimed: asyncio.Event, done: asyncio.Event, timeout: float) -> None:
    """End the shim (``done``) if no Create began within ``timeout`` seconds."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(claimed.wait(), timeout)
        return
    log.warning("no Create within %.0f s of the shim's start: nobody uses it; it exits", timeout)
    done.set()
