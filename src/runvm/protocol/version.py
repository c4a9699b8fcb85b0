"""The agent protocol version. Host and agent must carry the same number."""

PROTOCOL_VERSION = 3  # 2: host sessions on one virtio-serial port (agent/channel.py); 3: ports
