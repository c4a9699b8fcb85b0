"""The agent protocol version. Host and agent must carry the same number."""

PROTOCOL_VERSION = 1
