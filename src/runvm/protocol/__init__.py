"""The agent API shared by host and guest: generated messages plus a typed client facade."""

from runvm.protocol import agent_pb2 as pb
from runvm.protocol.version import PROTOCOL_VERSION

AGENT_SERVICE = "runvm.agent.v1.AgentService"
HEALTH_SERVICE = "runvm.agent.v1.Health"

DEBUG_OFF = "the debug console is off: set [debug] console = true in the runvm config"
"""What the agent and the sandbox's owner answer a debug shell asked for while it is off."""

__all__ = ["AGENT_SERVICE", "DEBUG_OFF", "HEALTH_SERVICE", "PROTOCOL_VERSION", "pb"]
