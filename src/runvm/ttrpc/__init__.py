"""A generic ttrpc engine: framing, an async client and an async server.

It knows nothing of containerd or the agent; those bring their own services and messages.
"""

from runvm.ttrpc.client import Client
from runvm.ttrpc.codec import MAX_MESSAGE
from runvm.ttrpc.server import CallContext, Handler, Server
from runvm.ttrpc.status import Code, code_for

__all__ = ["MAX_MESSAGE", "CallContext", "Client", "Code", "Handler", "Server", "code_for"]
