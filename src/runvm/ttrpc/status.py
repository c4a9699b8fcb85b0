"""gRPC status codes, as carried in a ttrpc Response's ``status.code``."""

from __future__ import annotations

import enum

from runvm import errors


class Code(enum.IntEnum):
    """The gRPC status codes (``google.golang.org/grpc/codes``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


def code_for(exc: Exception) -> Code:
    """The status a server answers for one of runvm's errors: a missing object NOT_FOUND, a
    wrong lifecycle state FAILED_PRECONDITION, a taken id ALREADY_EXISTS, bad input
    INVALID_ARGUMENT, a remote error its own code, anything else INTERNAL."""
    if isinstance(exc, errors.RpcError):
        return Code(exc.code) if exc.code in set(Code) else Code.UNKNOWN
    for kind, code in (
        (errors.NotFoundError, Code.NOT_FOUND), (errors.StateError, Code.FAILED_PRECONDITION),
        (errors.ExistsError, Code.ALREADY_EXISTS), (errors.ConfigError, Code.INVALID_ARGUMENT),
    ):  # fmt: skip
        if isinstance(exc, kind):
            return code
    return Code.INTERNAL
