"""Setup as an ordered list of named steps, each with its undo, and per-step timings.

Contract: inside ``async with Steps() as steps``, ``await steps.run(name, coro, undo)``
runs one step and records its duration; if the block raises (or is cancelled), the undos
of the steps already done run in reverse order and the error propagates. ``commit()``
hands the undo stack to the caller (``close()`` later runs it).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from runvm import trace

T = TypeVar("T")
Undo = Callable[[], Awaitable[Any]]

log = logging.getLogger(__name__)


class Steps:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._undo: list[tuple[str, Undo]] = []
        self._committed = False

    async def run(self, name: str, action: Awaitable[T], undo: Undo | None = None) -> T:
        start = time.monotonic()
        result = await action
        self.timings[name] = time.monotonic() - start
        trace.mark(f"step {name}")
        if undo is not None:
            self._undo.append((name, undo))
        return result

    def add_undo(self, name: str, undo: Undo) -> None:
        self._undo.append((name, undo))

    def commit(self) -> None:
        self._committed = True

    async def close(self) -> None:
        """Run every pending undo, newest first; an undo that fails is logged, not raised."""
        while self._undo:
            name, undo = self._undo.pop()
            try:
                await undo()
            except Exception:
                log.exception("undo of %s failed", name)

    async def __aenter__(self) -> Steps:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None or not self._committed:
            with contextlib.suppress(Exception):
                await self.close()
