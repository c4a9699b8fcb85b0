"""The agent API shared by host and guest: generated messages plus a typed client facade."""

from runvm.protocol import agent_pb2 as pb
from runvm.protocol.version import PROTOCOL_VERSION

AGENT_SERVICE = "runvm.agent.v1.AgentService"
HEALTH_SERVICE = "runvm.agent.v1.Health"

__all__ = ["AGENT_SERVICE", "HEALTH_SERVICE", "PROTOCOL_VERSION", "pb"]
