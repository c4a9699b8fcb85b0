"""The owner's side of ``Snapshot``: a ttrpc handler for the socket it already serves.

Contract: :func:`handlers` wraps ``gather(budget)``, which returns the figures of the pods
this process owns within about ``budget`` seconds (what the agent did not answer in time is
left out and marked, never waited for). The budget is a share of the caller's deadline,
capped at :data:`MAX_BUDGET`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from runvm.metrics import wire
from runvm.metrics.figures import PodFigures
from runvm.ttrpc import CallContext, Handler

log = logging.getLogger(__name__)

MAX_BUDGET = 2.0
DEFAULT_BUDGET = 1.0
Gather = Callable[[float], Awaitable[Sequence[PodFigures]]]


def budget(timeout: float | None) -> float:
    """The time an owner may spend on its agents for a caller with ``timeout``."""
    if timeout is None or timeout <= 0:
        return DEFAULT_BUDGET
    return min(MAX_BUDGET, timeout * 0.6)


def handlers(gather: Gather) -> dict[str, Handler]:
    async def snapshot(payload: bytes, ctx: CallContext) -> bytes:
        return wire.encode(await gather(budget(ctx.timeout)))

    return {"Snapshot": snapshot}
