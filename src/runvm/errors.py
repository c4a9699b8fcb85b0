"""The runvm error tree.

Every error runvm raises on purpose derives from :class:`RunvmError`; its ``str()`` is one
line that names the thing at fault and, where there is one, the fix::

    RunvmError
     +-- ConfigError            bad configuration or OCI spec (user input)
     +-- StateError             an operation not allowed in the current lifecycle state
     +-- NotFoundError          a container, sandbox or file that does not exist
     +-- ExistsError            a container or process id that is already taken
     +-- ProcessError           a child process (QEMU, virtiofsd, hook) failed
     |    +-- LaunchError       ... failed to start or become ready (argv, exit code, log tail)
     +-- HypervisorError        the VM could not be created or controlled
     +-- ImageError             the guest kernel/image is missing or could not be built
     +-- ProtocolError          malformed or oversized data on a wire (ttrpc, agent)
     |    +-- FrameTooLarge     a frame whose length exceeds the limit
     +-- RpcError               a remote call returned a non-OK status (code, message)
     |    +-- GuestError        ... the agent's, worded for the user (what was asked, why not)
     +-- AgentError             the guest agent is unreachable, too slow or incompatible
          +-- AgentTimeout      no answer within the deadline
          +-- VersionMismatch   the agent speaks another protocol version
"""

from __future__ import annotations

from collections.abc import Sequence


class RunvmError(Exception):
    """Root of all runvm errors."""


class ConfigError(RunvmError):
    """Invalid configuration, OCI spec or command-line input."""


class StateError(RunvmError):
    """An operation was asked for in a state that does not allow it."""

    def __init__(self, what: str, state: str, allowed: Sequence[str]) -> None:
        self.what = what
        self.state = state
        self.allowed = tuple(allowed)
        super().__init__(f"{what}: not allowed in state {state!r} (needs {', '.join(allowed)})")


class NotFoundError(RunvmError):
    """A named object does not exist."""


class ExistsError(RunvmError):
    """A new object's name is already taken."""


class ProcessError(RunvmError):
    """A child process failed; carries its argv, exit code and the tail of its log."""

    def __init__(
        self, message: str, argv: Sequence[str], exitcode: int | None, log_tail: str = ""
    ) -> None:
        self.argv = list(argv)
        self.exitcode = exitcode
        self.log_tail = log_tail
        super().__init__(message)

    def __str__(self) -> str:
        """What failed, how it ended and its last words (the argv stays in ``argv``)."""
        text = str(self.args[0])
        if self.exitcode is not None:
            text += (f" (exit status {self.exitcode})" if self.exitcode >= 0
                     else f" (killed by signal {-self.exitcode})")  # fmt: skip
        said = [line.strip() for line in self.log_tail.splitlines() if line.strip()]
        return text + (": " + "; ".join(said[-3:]) if said else "")


class LaunchError(ProcessError):
    """A child process failed to start or to become ready."""


class HypervisorError(RunvmError):
    """The hypervisor could not create or control the VM."""


class ImageError(RunvmError):
    """The guest kernel or image is missing, stale or could not be built."""


class ProtocolError(RunvmError):
    """Malformed data on a wire."""


class FrameTooLarge(ProtocolError):
    """A frame announced a length above the allowed maximum."""

    def __init__(self, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(f"message length {length} exceeds maximum message size of {limit}")


class RpcError(RunvmError):
    """A remote call answered with a non-OK status (gRPC code numbers)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"rpc error: code = {code} desc = {message}")


class GuestError(RpcError):
    """The agent refused a request: its status code, and a message that names what was
    asked and gives the guest's reason (its ``str`` is that message alone)."""

    def __str__(self) -> str:
        return self.message


class AgentError(RunvmError):
    """The guest agent is unreachable or misbehaves."""


class AgentTimeout(AgentError):
    """The agent did not answer within the deadline."""


class VersionMismatch(AgentError):
    """The agent speaks a protocol version this host does not."""
