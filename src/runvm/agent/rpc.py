"""Typed unary handlers on top of the ttrpc server: parse, call, serialize."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from runvm.errors import RpcError
from runvm.ttrpc import CallContext, Code

Req = TypeVar("Req", bound=Message)

Handler = Callable[[bytes, CallContext], Awaitable[bytes]]


def unary(request_type: type[Req], fn: Callable[[Req], Awaitable[Message]]) -> Handler:
    """Wrap ``fn(request) -> response`` as a raw ttrpc handler. Bad bytes: INVALID_ARGUMENT."""

    async def handler(payload: bytes, ctx: CallContext) -> bytes:
        request = request_type()
        try:
            request.ParseFromString(payload)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"{ctx.method}: bad request: {exc}") from exc
        response = await fn(request)
        return response.SerializeToString()

    return handler
