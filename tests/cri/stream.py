"""Client for the CRI streaming server URLs returned by Exec and Attach.

The server (containerd's CRI streaming server, a fork of kubelet's) speaks the Kubernetes
remote-command protocol over WebSocket: every binary message starts with one channel byte
(0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize) followed by the payload. With the
``v4`` and ``v5`` subprotocols the status channel carries one JSON ``metav1.Status``:
``{"status": "Success"}``, or ``"Failure"`` with ``details.causes`` holding
``{"reason": "ExitCode", "message": "<n>"}`` for a non-zero exit. Older subprotocols send the
error text alone, and nothing on success. ``v5`` adds a half-close message ``[255, channel]``;
``v4`` has no way to signal end of stdin.

The server picks the first subprotocol offered that it supports, so offering ``v5`` first
falls back to ``v4`` on servers that lack it (containerd 1.6).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import websocket

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE = 255  # v5 only: [CLOSE, channel] half-closes ``channel``
V5, V4, V1 = "v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"
SUBPROTOCOLS = (V5, V4, V1)
STATUS_PROTOCOLS = frozenset({V5, V4})  # status channel carries JSON metav1.Status
CHUNK = 32 << 10


class StreamError(Exception):
    """The server reported a failure that is not an exit code, or sent no status."""


def parse_status(payload: bytes, protocol: str) -> int:
    """Return the command's exit code from the status channel's accumulated ``payload``.

    For ``v4``/``v5``: Success is 0; Failure with an ``ExitCode`` cause is that code. For
    older subprotocols an empty payload is 0. Anything else raises StreamError.
    """
    text = payload.decode("utf-8", "replace").strip()
    if protocol not in STATUS_PROTOCOLS:
        if text:
            raise StreamError(text)
        return 0
    if not text:
        raise StreamError("stream ended without a status")
    try:
        status = json.loads(text)
    except ValueError as exc:
        raise StreamError(f"status is not JSON: {text!r}") from exc
    if not isinstance(status, dict):
        raise StreamError(f"status is not an object: {text!r}")
    if status.get("status") == "Success":
        return 0
    causes = (status.get("details") or {}).get("causes") or []
    for cause in causes:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", ""))
            except ValueError as exc:
                raise StreamError(f"bad exit code in status: {text!r}") from exc
    raise StreamError(status.get("message") or text)


def encode_frame(channel: int, data: bytes = b"") -> bytes:
    """One WebSocket message for ``channel`` (raw, not base64, subprotocols)."""
    return bytes([channel]) + data


def resize_frame(width: int, height: int) -> bytes:
    """The resize-channel message for a ``width`` x ``height`` (columns x rows) terminal."""
    return encode_frame(RESIZE, json.dumps({"Width": width, "Height": height}).encode())


def ws_url(url: str) -> str:
    """``url`` with an http(s) scheme turned into ws(s); other schemes are kept."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, *parts[1:]))


def _messages(ws: websocket.WebSocket, url: str, deadline: float) -> Iterator[tuple[int, bytes]]:
    """(channel, payload) of each message until the server closes the session."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"stream {url} still open at its deadline")
        ws.settimeout(remaining)
        try:
            opcode, data = ws.recv_data()
        except websocket.WebSocketTimeoutException as exc:
            raise TimeoutError(f"stream {url} still open at its deadline") from exc
        except websocket.WebSocketConnectionClosedException:
            return
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            ws.shutdown()  # type: ignore[no-untyped-call]  # the close reply is already sent
            return
        if data:
            yield data[0], bytes(data[1:])


def run_stream(
    url: str,
    stdin: bytes = b"",
    tty: bool = False,
    resize: tuple[int, int] | None = None,
    timeout: float = 60,
    close_stdin: bool = True,
) -> tuple[bytes, bytes, int]:
    """Drive one Exec/Attach session at ``url`` to its end: ``(stdout, stderr, exit_code)``.

    Sends ``resize`` (width, height) first if given, then ``stdin``; with ``v5`` and
    ``close_stdin`` it then half-closes stdin, otherwise it just stops sending. Reads until
    the server closes the connection. ``tty`` only documents the session: the server applies
    the Exec/Attach request's setting, and with a TTY stderr arrives merged into stdout. An
    Attach session's status carries no exit code: a clean end reads as 0. Raises StreamError
    for a non-exit-code failure, TimeoutError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    host = urlsplit(url).hostname or ""
    try:
        ws = websocket.create_connection(
            ws_url(url), timeout=timeout, subprotocols=list(SUBPROTOCOLS), http_no_proxy=[host]
        )
    except websocket.WebSocketTimeoutException as exc:
        raise TimeoutError(f"connecting to {url}") from exc
    protocol = ws.getsubprotocol() or V1
    send_error: list[BaseException] = []

    def send() -> None:
        frames: list[bytes] = [] if resize is None else [resize_frame(*resize)]
        frames += [encode_frame(STDIN, stdin[i : i + CHUNK]) for i in range(0, len(stdin), CHUNK)]
        if close_stdin and protocol == V5:
            frames.append(encode_frame(CLOSE, bytes([STDIN])))
        try:
            for frame in frames:
                ws.send(frame, websocket.ABNF.OPCODE_BINARY)
        except (websocket.WebSocketConnectionClosedException, OSError):
            pass  # the session ended before taking all input; its status says how
        except BaseException as exc:  # re-raised in the caller's thread
            send_error.append(exc)

    sender = threading.Thread(target=send, name="cri-stream-send", daemon=True)
    sender.start()
    out: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray(), ERROR: bytearray()}
    try:
        for channel, payload in _messages(ws, url, deadline):
            if channel in out:
                out[channel] += payload
            # CLOSE ([255, channel]) and unknown channels carry nothing to keep.
    finally:
        ws.close(timeout=1)  # no-op once shut down
        sender.join(timeout=5)
    if send_error:
        raise send_error[0]
    return bytes(out[STDOUT]), bytes(out[STDERR]), parse_status(bytes(out[ERROR]), protocol)


PORT_FORWARD_PROTOCOL = "v4.channel.k8s.io"  # binary channels; one data + one error per port


def port_forward(url: str, data: bytes, timeout: float = 60) -> tuple[bytes, bytes]:
    """Drive one PortForward session for a request of one port: ``(received, error)``.

    The server opens two channels per port, data (0) and error (1), and starts each with
    the port number (uint16, little-endian), which is checked and dropped. ``data`` goes to
    the pod on channel 0; the session is read until the server closes it (containerd does
    about a second after the pod's side of the connection ended). ``error`` is the text the
    server wrote on channel 1 (``b""`` when forwarding succeeded).
    """
    deadline = time.monotonic() + timeout
    host = urlsplit(url).hostname or ""
    ws = websocket.create_connection(ws_url(url), timeout=timeout,
                                     subprotocols=[PORT_FORWARD_PROTOCOL],
                                     http_no_proxy=[host])  # fmt: skip
    channels: dict[int, bytearray] = {0: bytearray(), 1: bytearray()}
    prefixed: set[int] = set()
    try:
        for i in range(0, len(data), CHUNK):
            ws.send(encode_frame(0, data[i : i + CHUNK]), websocket.ABNF.OPCODE_BINARY)
        for channel, payload in _messages(ws, url, deadline):
            if channel not in channels:
                continue
            if channel not in prefixed:  # the port number first
                if len(payload) < 2:
                    raise StreamError(f"channel {channel} began with {payload!r}, not a port")
                prefixed.add(channel)
                payload = payload[2:]
            channels[channel] += payload
    finally:
        ws.close(timeout=1)
    return bytes(channels[0]), bytes(channels[1])
