"""A hostile guest agent: PID 1 of a test VM (appended to the real initramfs as /init).

It answers the version handshake like the real agent, then meets the host's next request
with the behaviour named in /etc/runvm/hostile:

- garbage: random bytes, no frame at all
- oversized: a header announcing a 1 GiB frame, then zeros
- truncated: half of a well-formed response, then silence
- drip: a well-formed response, one byte every half second
- wrong-stream: a well-formed response on a stream id the host never used
- unasked: a flood of well-formed responses to requests never sent
- late: well-formed empty replies to everything until CreateSandbox, then garbage a second
  later, while the host believes the sandbox is up

Runs with the guest image's own Python and the runvm package inside it.
"""

import os
import sys
import time

sys.path[:0] = ["/usr/lib/runvm"]
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

from runvm.agent import channel, sysinit  # noqa: E402
from runvm.protocol import PROTOCOL_VERSION  # noqa: E402
from runvm.protocol import agent_pb2 as pb  # noqa: E402
from runvm.ttrpc.codec import HEADER_SIZE, Frame, MessageType, decode_header, encode_frame  # noqa: E402
from runvm.ttrpc.ttrpc_pb2 import Request, Response  # noqa: E402

sysinit.run()
with open("/etc/runvm/hostile") as f:
    MODE = f.read().strip()
print(f"hostile agent: mode {MODE}", flush=True)
FD = os.open(channel.find_port("runvm.agent"), os.O_RDWR)


def read_exact(n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(FD, n - len(buf))
        if not chunk:  # no host connected yet
            time.sleep(0.05)
            continue
        buf += chunk
    return buf


def send(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(FD, view) :]


def response(stream_id: int, payload: bytes = b"") -> bytes:
    body = Response(payload=payload).SerializeToString()
    return encode_frame(Frame(stream_id, MessageType.RESPONSE, 0, body))


def next_request() -> tuple[int, Request]:
    header = decode_header(read_exact(HEADER_SIZE))
    return header.stream_id, Request.FromString(read_exact(header.length))


while True:
    stream, request = next_request()
    if request.method == "Version":
        version = pb.VersionResponse(agent_version="hostile", protocol=PROTOCOL_VERSION)
        send(response(stream, version.SerializeToString()))
        continue
    print(f"hostile agent: {request.method} meets {MODE}", flush=True)
    if MODE == "garbage":
        send(os.urandom(4096))
    elif MODE == "oversized":
        send(b"\x40\x00\x00\x00" + stream.to_bytes(4, "big") + b"\x02\x00" + bytes(65536))
    elif MODE == "truncated":
        send(response(stream, bytes(100))[:60])
    elif MODE == "drip":
        for byte in response(stream, bytes(200)):
            send(bytes([byte]))
            time.sleep(0.5)
    elif MODE == "wrong-stream":
        send(response(stream + 1000))
    elif MODE == "unasked":
        for i in range(100000):
            send(response(2 * i + 10001))
    elif MODE == "late":
        send(response(stream))
        while request.method != "CreateSandbox":
            stream, request = next_request()
            send(response(stream))
        time.sleep(1)
        print("hostile agent: garbage now", flush=True)
        send(os.urandom(4096))
    time.sleep(3600)
