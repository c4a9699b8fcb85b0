"""The agent protocol version. Host and agent must carry the same number."""

# 2: host sessions on one virtio-serial port (agent/channel.py); 3: ports; 4: OnlineCPUs;
# 5: debug shells (ExecProcess without a container)
PROTOCOL_VERSION = 5
