"""``runvm metrics serve``: collect in the background, serve the last page over HTTP.

Contract: :func:`parse_listen` refuses a bad address (ConfigError naming it). :func:`serve`
binds first (an address in use or not assignable is a ConfigError, and nothing is left
behind), then runs a collection round every ``interval`` seconds and serves ``/metrics``
from the page the last round rendered: a scrape costs the copy of that page, never a wait
for an owner. SIGTERM or SIGINT end it: the listening socket is closed and the loop stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST

from runvm.errors import ConfigError
from runvm.metrics import DEFAULT_LISTEN, DEFAULT_PORT, export
from runvm.metrics.collect import Collector


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv4 or ``[IPv6]`` literal) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 < number < 65536:
        raise ConfigError(f"invalid --listen {text!r}: use ADDRESS:PORT with an IP address, "
                          f"e.g. {DEFAULT_LISTEN} or [::1]:{DEFAULT_PORT}")  # fmt: skip
    return host, number


class Page:
    """The page the last round rendered; swapped whole, read by the HTTP threads."""

    def __init__(self) -> None:
        self.body = b""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    page: Page


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served")
            return
        body = self.server.page.body
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


class _Server6(_Server):
    address_family = socket.AF_INET6


def bind(host: str, port: int) -> _Server:
    """The HTTP server on ``host:port``, bound and listening, not yet serving."""
    try:
        server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    server.page = Page()
    return server


async def run(collector: Collector, server: _Server, interval: float) -> None:
    """Rounds every ``interval`` seconds until SIGTERM/SIGINT; the page after each."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server.page.body = export.render(collector)  # a valid page before the first round ends
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    try:
        while not stop.is_set():
            began = time.monotonic()
            await collector.round()
            server.page.body = await asyncio.to_thread(export.render, collector)
            left = interval - (time.monotonic() - began)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.1, left))
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await asyncio.to_thread(server.shutdown)
        server.server_close()


def serve(state_root: Path, listen: str, interval: float, timeout: float) -> None:
    """See the module docstring."""
    if not 0.1 <= interval <= 3600:
        raise ConfigError(f"invalid --interval {interval:g}: use 0.1 to 3600 seconds")
    if not 0 < timeout <= interval:
        raise ConfigError(f"invalid --timeout {timeout:g}: use more than 0, at most --interval")
    host, port = parse_listen(listen)
    server = bind(host, port)
    try:
        print(f"runvm metrics: serving {state_root} on http://{listen}/metrics",
              file=sys.stderr, flush=True)  # fmt: skip
        asyncio.run(run(Collector(state_root, timeout), server, interval))
    finally:
        server.server_close()
