"""The agent protocol version. Host and agent must carry the same number."""

PROTOCOL_VERSION = 2  # 2: host sessions on one open virtio-serial port (agent/channel.py)
