"""Publishing task events to containerd through ``Events.Forward`` on ``$TTRPC_ADDRESS``.

Contract: :meth:`Publisher.publish` queues an event and returns at once; one background task
sends them strictly in queue order, reconnecting and retrying each up to ``RETRIES`` times
with a growing delay (containerd may be restarting), then drops it with a log line. Without
an address (a caller other than containerd) events are only logged. :meth:`flush` waits until
everything queued so far was sent or dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from google.protobuf.message import Message

from runvm.errors import RunvmError
from runvm.shim import wire
from runvm.ttrpc import Client

log = logging.getLogger(__name__)

QUEUE_MAX = 2048
RETRIES = 6
FIRST_DELAY = 0.25
CALL_TIMEOUT = 5.0


class Publisher:
    def __init__(self, address: str, namespace: str) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self.queue: asyncio.Queue[tuple[Message, datetime]] = asyncio.Queue(QUEUE_MAX)
        self.sent: list[str] = []  # topics, in order (for logs and tests)
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None

    def publish(self, event: Message) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        try:
            self.queue.put_nowait((event, datetime.now(UTC)))
        except asyncio.QueueFull:
            log.error("event queue full: dropped %s", wire.topic_of(event))

    async def flush(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()

    async def _run(self) -> None:
        while True:
            event, when = await self.queue.get()
            try:
                await self._send(event, when)
            finally:
                self.queue.task_done()

    async def _send(self, event: Message, when: datetime) -> None:
        topic = wire.topic_of(event)
        if not self.address:
            log.info("event %s (no TTRPC_ADDRESS: not forwarded)", topic)
            return
        payload = wire.envelope(self.namespace, event, when).SerializeToString()
        delay = FIRST_DELAY
        for attempt in range(RETRIES):
            try:
                if self._client is None or self._client.closed:
                    self._client = await Client.connect_unix(self.address)
                await self._client.call(wire.EVENTS_SERVICE, wire.FORWARD_METHOD, payload,
                                        timeout=CALL_TIMEOUT)  # fmt: skip
                self.sent.append(topic)
                return
            except (OSError, RunvmError, TimeoutError) as exc:
                log.warning("forwarding %s failed (attempt %d): %s", topic, attempt + 1, exc)
                if self._client is not None:
                    await self._client.close()
                    self._client = None
                await asyncio.sleep(delay)
                delay *= 2
        log.error("event %s dropped after %d attempts", topic, RETRIES)
